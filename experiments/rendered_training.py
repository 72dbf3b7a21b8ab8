"""Rendered instruments as training data for the projection (#16 item 1): the *seen-words* half of the measurement.

The projection of recipes/build_default_model.py (shipped configuration) trained per dance-split seed on the fold's
training tracks with every word (gcompris never trained on), without and with the rendered-instruments set
(recipes/build_rendered_instruments.py) at the shares of the recipe's ``--grid rendered``; scored by cosine on the
26 gcompris solo instruments, the 9 gcompris styles, the dance songs' 5 unseen styles and the 12 teacher words
(teacher positives). The zero-shot half is the recipe's dev stage:
``python recipes/build_default_model.py --stage dev --grid rendered``. Rule and tables: models/default/EXPERIMENTS.md.

    python experiments/rendered_training.py [--seeds 3]     # needs the recipe's cached features of every set
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]
    import build_default_model as B

    from zstag.words import WordVectors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # small heads on a shared machine
    words = WordVectors.load()
    sets = {k: v for k, v in B.find_sets().items() if k not in B.NOT_ADOPTED_SETS}
    missing = B.missing_sets(sets) + [n for n in B.SYNTHETIC_SETS if n not in sets]
    if missing:
        raise SystemExit(f"rendered_training: {B.missing_message(missing)}")
    tracks = B.load_tracks({n: B.extract_set(n, B.read_manifest(m), log=lambda *a: None) for n, m in sets.items()})
    synthetic = B.synthetic_training(tracks, words, set())
    configs = B.grid_configs("rendered")
    results = {c.name(): {} for c in configs}
    for seed in range(args.seeds):
        dev, train = B.dev_fold(tracks, B.dance_split(seed))
        scored = {k: v for k, v in dev.items() if k != B.POOLED_DEV}
        for config in configs:
            idx = train + (synthetic if config.synthetic else [])
            vocab = B.training_vocab(tracks, idx, set())
            targets = B.make_targets([tracks[i] for i in idx], vocab, config.top_k, config.pos_min)
            patches = [B.patch_inputs(tracks[i], config.backbones, config.outputs) for i in idx]
            model = B.train_projection(patches, targets, words.vectors(vocab), config, seed, [tracks[i].set for i in idx])
            for name, s in scored.items():
                feats = np.stack([B.patch_inputs(tracks[i], config.backbones, config.outputs).mean(axis=0) for i in s["tracks"]])
                cos = B.cosine(model.embed_audio(feats), model.embed_words(words.vectors(s["labels"])))
                trained = sum(label in vocab for label in s["labels"])
                results[config.name()].setdefault(name, []).append((*B.figures(cos, s["truth"]), trained))
            print(f"seed {seed}: {config.name()}: " + ", ".join(f"{n} {r[-1][0]:.3f}/{r[-1][1]:.3f}"
                                                               for n, r in results[config.name()].items()), flush=True)
    names = list(next(iter(results.values())))
    print(f"\n### seen words (hit@1 / retrieval ROC-AUC; mean of {args.seeds} seeds; "
          "[labels among the training words])\n")
    print("| projection | " + " | ".join(names) + " | mean | gcompris instr. hit@1 per seed | mean AUC of the other sets |")
    print("|---" * (len(names) + 4) + "|")
    instruments = next(n for n in names if n.startswith("gcompris instruments"))
    for config, table in results.items():
        cells = [np.mean(table[n], axis=0) for n in names]
        mean = np.mean([c[:2] for c in cells], axis=0)
        others = np.mean([c[1] for n, c in zip(names, cells) if n != instruments])
        print(f"| {config} | " + " | ".join(f"{c[0]:.3f} / {c[1]:.3f} [{c[3]:.0f}]" for c in cells)
              + f" | {mean[0]:.3f} / {mean[1]:.3f} | " + ", ".join(f"{r[0]:.3f}" for r in table[instruments])
              + f" | {others:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
