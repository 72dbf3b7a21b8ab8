"""How far the default model's label map moves a training word from its singular or plural (MODEL_CARD.md).

For every single-word training label of models/default whose singular (minus "s") or plural (plus "s") is a
GloVe word of rank <= 50k and not itself a training label: the pair's cosine in GloVe and in the joint space.

    python experiments/inflection_check.py          # a second; prints the medians and every pair
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAX_RANK = 50_000  # frequent words only: rare ones have poorly estimated vectors anyway


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from zstag.modelfile import read_model
    from zstag.words import load_words

    model = read_model("default")
    words = load_words(model)
    train = model.config["train_labels"]
    pairs = []
    for label in train:
        if " " in label:
            continue
        forms = ([label[:-1]] if label.endswith("s") and not label.endswith("ss") else []) + [label + "s"]
        for form in forms:
            rank = words.index.get(form)
            if form not in train and rank is not None and rank <= MAX_RANK:
                pairs.append((label, form))

    def cosines(vectors: np.ndarray) -> float:
        a, b = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return float(a @ b)

    glove = np.array([cosines(words.vectors(list(p))) for p in pairs])
    joint = np.array([cosines(model.embed_label_vectors(words.vectors(list(p)))) for p in pairs])
    print(f"{len(pairs)} pairs; cosine median [IQR]: GloVe {np.median(glove):.2f} "
          f"[{np.percentile(glove, 25):.2f}, {np.percentile(glove, 75):.2f}], joint space {np.median(joint):.2f} "
          f"[{np.percentile(joint, 25):.2f}, {np.percentile(joint, 75):.2f}]")
    print(", ".join(f"{a}/{b} {g:.2f} → {j:.2f}" for (a, b), g, j in zip(pairs, glove, joint)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
