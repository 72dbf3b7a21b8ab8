"""Unseen labels as convex combinations of training labels (ConSE on the label side): measured, not adopted.

Instead of the trained linear map of a label's GloVe vector, an unseen label's joint-space embedding is the
GloVe-cosine-weighted mean of the (unit) joint embeddings of its K nearest training words by GloVe cosine,
which keeps it among embeddings the training placed. Same development protocol, models and seeds as
recipes/build_default_model.py (the shipped configuration: MSD penultimate, linear); K = 10 (ConSE's T) fixed
beforehand, 3 and 1 for information. Prints a markdown table: hit@1 / mean retrieval ROC-AUC per dev set.

    python experiments/convex_labels_check.py        # ~20 s; needs the cached features of build_default_model.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("linear (shipped)", "convex K=10", "convex K=3", "convex K=1")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def convex(label_glove: np.ndarray, vocab_glove: np.ndarray, vocab_joint: np.ndarray, k: int) -> np.ndarray:
    """[L, D]: each label as the GloVe-cosine-weighted mean of its k nearest training words' joint embeddings."""
    sims = unit(label_glove) @ unit(vocab_glove).T
    top = np.argsort(-sims, axis=1)[:, :k]
    weights = np.clip(np.take_along_axis(sims, top, 1), 0, None)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return np.einsum("lk,lkd->ld", weights, unit(vocab_joint)[top])


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]
    import build_default_model as B

    from zstag.words import WordVectors

    words = WordVectors.load()
    results: dict[str, dict[str, list]] = {v: {} for v in VARIANTS}
    for tracks, config, dev, train, vocab, model in B.shipped_dev_models(words):
        vocab_glove = words.vectors(vocab)
        vocab_joint = model.embed_words(vocab_glove)
        for name, s in dev.items():
            audio = model.embed_audio(np.stack([B.patch_inputs(tracks[i], config.backbones, config.outputs).mean(axis=0)
                                                for i in s["tracks"]]))
            glove = words.vectors(s["labels"])
            for v in VARIANTS:
                labels = model.embed_words(glove) if v.startswith("linear") else \
                    convex(glove, vocab_glove, vocab_joint, int(v.split("=")[1]))
                results[v].setdefault(name, []).append(B.figures(B.cosine(audio, labels), s["truth"]))
    names = list(results[VARIANTS[0]])
    main_sets = [n for n in names if n != B.POOLED_DEV]
    print("| variant | " + " | ".join(n.split(" (")[0] for n in names) + " | mean | mean AUC per seed |")
    print("|---" * (len(names) + 3) + "|")
    for v in VARIANTS:
        cells = [f"{np.mean([r[0] for r in results[v][n]]):.3f} / {np.mean([r[1] for r in results[v][n]]):.3f}"
                 for n in names]
        hit = np.mean([np.mean([r[0] for r in results[v][n]]) for n in main_sets])
        auc = np.mean([np.mean([r[1] for r in results[v][n]]) for n in main_sets])
        per_seed = [np.mean([results[v][n][k][1] for n in main_sets]) for k in range(3)]
        print(f"| {v} | " + " | ".join(cells) + f" | {hit:.3f} / {auc:.3f} | " + ", ".join(f"{x:.3f}" for x in per_seed) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
