"""How far `zstag tag --bf16` moves the default model's scores from float32, on a labelled set.

    python experiments/bf16_check.py [--root ../shared/data/dance] [--model default]

Decodes each file of the set's manifest.csv (path, labels ';'-separated) once, embeds it with float32
products and with bfloat16 ones (devices.cpu_bfloat16), and scores the set's own labels both ways. Prints
the CPU seconds per track of each, the largest and mean score difference, on how many tracks the top label
changes, the fraction of label pairs whose order flips, and the mean retrieval ROC-AUC of the set's labels
(labels with at least one positive and one negative track) both ways. Needs a CPU with native bfloat16.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/dance"))
    parser.add_argument("--model", default="default")
    args = parser.parse_args()

    import torch

    from zstag import modelfile
    from zstag.devices import bf16_problem, cpu_bfloat16
    from zstag.embeddings import inference_threads
    from zstag.metrics import retrieval
    from zstag.model import load_model
    from zstag.words import WordVectors
    from zstag.workers import decode_file

    problem = bf16_problem(torch.device("cpu"))
    if problem:
        sys.exit(f"bf16_check: {problem}")
    manifest = args.root / "manifest.csv"
    if not manifest.is_file():
        sys.exit(f"bf16_check: {manifest}: no such file")
    rows = list(csv.DictReader(manifest.open(newline="", encoding="utf-8")))
    model = load_model(args.model)
    labels = sorted({label for row in rows for label in row["labels"].split(";")})
    label_emb = modelfile.label_embeddings(model, WordVectors.load(), labels)
    tracks = {"float32": [], "bfloat16": []}
    cpu = dict.fromkeys(tracks, 0.0)
    with inference_threads():  # one torch thread, as tag's inference threads
        for row in rows:
            segments, _ = decode_file(str(args.root / row["path"]), model.front_end.to_dict())
            for precision in tracks:
                start = time.process_time()
                with cpu_bfloat16() if precision == "bfloat16" else torch.no_grad():
                    tracks[precision].append(model.embed_track(segments))
                cpu[precision] += time.process_time() - start
    scores = {k: model.scores(np.stack(v), label_emb) for k, v in tracks.items()}
    exact, fast = scores["float32"], scores["bfloat16"]
    truth = np.array([[label in row["labels"].split(";") for label in labels] for row in rows])
    flips = np.mean([(np.sign(np.subtract.outer(a, a)) != np.sign(np.subtract.outer(b, b))).mean()
                     for a, b in zip(exact, fast)])
    gap = np.abs(exact - fast)
    print(f"{args.root}: {len(rows)} tracks, {len(labels)} labels, model {args.model}")
    print(f"CPU s per track: float32 {cpu['float32'] / len(rows):.3f}, bfloat16 {cpu['bfloat16'] / len(rows):.3f}")
    print(f"score difference: largest {gap.max():.4f}, mean {gap.mean():.5f}; top label changed on "
          f"{int((exact.argmax(1) != fast.argmax(1)).sum())} of {len(rows)} tracks; label pairs in another order "
          f"{flips:.4f}")
    for name, s in scores.items():  # labels with no positive or no negative track are skipped
        figures = retrieval(truth, s)
        print(f"mean retrieval ROC-AUC over {figures['n_scored']} labels, {name}: {figures['roc_auc']:.4f}")


if __name__ == "__main__":
    main()
