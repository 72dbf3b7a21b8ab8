"""GTZAN's "hiphop" against the training word "hip-hop" (MODEL_CARD.md, "Labels at use time"): their GloVe
ranks and nearest words; how many GloVe words (single lower-case words) the spelling rule of zstag/words.py
respells; and, with the dev models of recipes/build_default_model.py (where hip-hop is a held-out word), the
retrieval ROC-AUC of each spelling's own GloVe vector on the teacher-word dev set. One song there has hip-hop
among its teacher positives: an illustration, not a measurement of much.

    python experiments/hiphop_check.py        # ~30 s; needs the cached features of build_default_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPELLINGS = ("hip-hop", "hiphop")


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]
    import build_default_model as B
    from sklearn.metrics import roc_auc_score

    from zstag.words import WordVectors

    words = WordVectors.load()
    for spelling in SPELLINGS:
        near = ", ".join(w for w, _ in words.nearest(words.matrix[words.index[spelling]], 4)[1:])
        print(f"{spelling}: GloVe rank {words.index[spelling]}, nearest words {near}")
    changed = [w for w in words.words if w.isalpha() and w.islower() and words._resolve(w) != w]
    print(f"the rule respells {len(changed)} GloVe words, e.g. "
          + ", ".join(f"{w} → {words._resolve(w)}" for w in changed[:: max(1, len(changed) // 12)]))
    for seed, (tracks, config, dev, _, _, model) in enumerate(B.shipped_dev_models(words)):
        s = dev[B.TEACHER_DEV]
        truth = s["truth"][:, s["labels"].index("hip-hop")]
        audio = model.embed_audio(np.stack([B.patch_inputs(tracks[i], config.backbones, config.outputs).mean(axis=0)
                                            for i in s["tracks"]]))
        tokens = np.stack([words.matrix[words.index[w]] for w in SPELLINGS]).astype(np.float32)  # GloVe's own
        scores = B.cosine(audio, model.embed_words(tokens))  # tokens: words.vectors now resolves both to hip-hop
        aucs = [roc_auc_score(truth, scores[:, k]) for k in range(len(SPELLINGS))]
        print(f"seed {seed}: {len(truth)} songs, {int(truth.sum())} with hip-hop; retrieval ROC-AUC "
              + ", ".join(f"{w} {a:.3f}" for w, a in zip(SPELLINGS, aucs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
