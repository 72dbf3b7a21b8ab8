"""How a negated label ("no vocals") should be scored: measured on songs held out of training.

MTAT's top 50 tags (the MTT tagger's) have three negations ("no vocals", "no vocal", "no voice"). A zero-shot
model that embeds such a tag as the mean of the word vectors of "no" and "vocals" puts it near "vocals"; zstag
scores an untrained negated label as the opposite of what it denies (modelfile.label_embeddings). This compares,
for the three tags:

- naive: the label as its phrase (mean of "no" and "vocals"),
- negated: minus the score of "vocals" (what zstag does),
- "instrumental": the trained word the teacher mapping gives these tags (zstag.teacher), for reference,

with the development models of recipes/build_default_model.py (the shipped configuration: MSD penultimate,
linear; one per seed), on their held-out songs (the 81 songs of the dev sets) plus the 14 acceptance
recordings, none of them trained on. Truth, for want of MTAT audio: the MTT_musicnn tagger's own probability
of the tag (a tagger trained on MTAT's annotations), positives = its top quarter. Figures: ROC-AUC of ranking
the songs by the label's score, and Spearman's rho with the tagger's probability.

    python experiments/negation_check.py            # ~20 s; needs the cached features of build_default_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TAGS = ("no vocals", "no vocal", "no voice")
POSITIVE_QUANTILE = 0.75


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]
    import build_default_model as B
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from zstag.backbones.musicnn import musicnn_tags
    from zstag.words import WordVectors

    words = WordVectors.load()
    tags = musicnn_tags("MTT_musicnn")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for seed, (tracks, config, dev, train, vocab, model) in enumerate(B.shipped_dev_models(words)):
        taggram = B.track_taggrams(tracks)["MTT_musicnn"]
        held_out = sorted(set(dev[B.POOLED_DEV]["tracks"]) | {i for i, t in enumerate(tracks) if t.set in B.TEST_SETS})
        assert not set(held_out) & set(train)
        audio = model.embed_audio(np.stack([B.patch_inputs(tracks[i], config.backbones, config.outputs).mean(axis=0)
                                            for i in held_out]))

        def score(label: str) -> np.ndarray:
            return B.cosine(audio, model.embed_words(words.vectors([label])))[:, 0]

        for tag in TAGS:
            p = taggram[held_out, tags.index(tag)]
            truth = p >= np.quantile(p, POSITIVE_QUANTILE)
            denied = words.negated(tag)
            for way, s in (("naive", score(tag)), ("negated", -score(denied)), ('"instrumental"', score("instrumental"))):
                results.setdefault((tag, way), []).append((roc_auc_score(truth, s), spearmanr(p, s)[0]))
        print(f"seed {seed}: {len(held_out)} held-out songs, {len(train)} training tracks, "
              f"'vocals' trained: {'vocals' in vocab}, 'voice': {'voice' in vocab}, 'vocal': {'vocal' in vocab}")
    print("\n| tag | scored as | ROC-AUC per seed | mean ROC-AUC | mean Spearman rho |\n|---|---|---|---|---|")
    for (tag, way), per_seed in results.items():
        aucs = ", ".join(f"{a:.3f}" for a, _ in per_seed)
        print(f"| {tag} | {way} | {aucs} | {np.mean([a for a, _ in per_seed]):.3f} | "
              f"{np.mean([r for _, r in per_seed]):+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
