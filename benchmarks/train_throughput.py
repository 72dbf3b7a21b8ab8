"""Throughput of `zstag preprocess` (files/s) and of training steps (segments/s), on CPU or a GPU.

    python benchmarks/train_throughput.py                       # 64 synthetic 30 s files, 1 and 2 workers
    python benchmarks/train_throughput.py --n 200 --workers 1,2,4 --threads 2 --steps 30
    python benchmarks/train_throughput.py --device cuda --loader-workers 4 --batch 256 --steps 100

Preprocess: synthetic 44.1 kHz stereo wav files (chords + noise, so decoding, downmixing and
resampling to 22,050 Hz all happen) into a fresh feature cache, once per worker count; the figure is
files per second of wall time, process-pool start-up included.
Training: batch-64 steps of the paper's model (forward, hinge loss, backward, SGD) on random crops read
from that cache through the training DataLoader, after 3 warm-up steps; the figure is segments per
second. Also the validation-style forward pass alone (segments/s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100
LABELS = ["rock", "jazz", "classical", "pop", "metal", "blues", "techno", "folk"]


def synth(seconds: float, seed: int) -> np.ndarray:
    """float32 [n, 2]: a few sustained chords with harmonics, plus noise; every file different."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = np.zeros_like(t)
    for note in rng.integers(45, 70, size=4):
        f = 440.0 * 2 ** ((note - 69) / 12)
        x += sum(0.1 / h * np.sin(2 * np.pi * f * h * t) for h in (1, 2, 3))
    x *= 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * t)
    x += 0.02 * rng.standard_normal(len(t))
    return np.stack([x, np.roll(x, 100)], axis=1).astype(np.float32)


def make_files(folder: Path, n: int, seconds: float):
    import soundfile as sf

    from zstag.corpora import Track

    tracks = []
    for i in range(n):
        path = folder / f"{i:05d}.wav"
        sf.write(path, synth(seconds, i), SAMPLE_RATE)
        tracks.append(Track(f"{i:05d}", path, (LABELS[i % len(LABELS)],), f"artist {i % 17}"))
    return tracks


def bench_preprocess(tracks, folder: Path, workers: int) -> tuple[float, Path]:
    from zstag.audio import PAPER
    from zstag.features import preprocess

    out = folder / f"cache-w{workers}"
    start = time.perf_counter()
    report = preprocess(tracks, out, PAPER, workers=workers, shard_size=32, progress=False)
    seconds = time.perf_counter() - start
    assert report.complete and not report.failures
    return len(tracks) / seconds, out


def bench_training(cache_dir: Path, steps: int, batch: int, device: str, loader_workers: int) -> tuple[float, float]:
    import torch

    from zstag.devices import deterministic_training, pick_device

    from zstag.features import FeatureCache
    from zstag.model import ZeroShotModel, cnn1d_config
    from zstag.train import CropDataset, TrackSet, TripletObjective, random_vectors, sample_plan

    cache = FeatureCache.open(cache_dir)
    tracks = TrackSet(cache, [e.id for e in cache.tracks], LABELS)
    frames = cache.front_end.segment_frames
    plan = sample_plan(tracks, np.random.default_rng(0), (steps + 3) * batch, 1, frames)
    target = pick_device(device)
    if target.type == "cuda":
        deterministic_training()  # as `zstag train` runs on a GPU
    sync = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
    loader = torch.utils.data.DataLoader(CropDataset(cache, tracks, plan, frames), batch_size=batch,
                                         num_workers=loader_workers, pin_memory=target.type == "cuda")
    torch.manual_seed(0)
    model = ZeroShotModel(cnn1d_config(cache.front_end, 50, "random:50:0", train_labels=LABELS)).to(target)
    objective = TripletObjective(model, 0.4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, nesterov=True)
    vectors = torch.from_numpy(random_vectors(LABELS)).to(target)
    done = 0
    for i, (x, pos, neg) in enumerate(loader):
        if i == 3:
            sync()
            start = time.perf_counter()
        loss = objective(x.to(target, non_blocking=True), pos.to(target), neg.to(target), vectors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += len(x) if i >= 3 else 0
    sync()
    train_rate = done / (time.perf_counter() - start)
    x = torch.randn(batch, cache.front_end.n_mels, frames, device=target)
    with torch.no_grad():
        model.embed_segments(x)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            model.embed_segments(x)
        sync()
    return train_rate, steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="synthetic files")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each file")
    parser.add_argument("--workers", default="1,2", help="comma-separated preprocess worker counts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for training")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (as `zstag train --device`)")
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader processes (as `zstag train`)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tracks = make_files(folder, args.n, args.seconds)
        print(f"{args.n} files × {args.seconds:g} s, 44.1 kHz stereo wav → paper log-mel (22,050 Hz, 128 mels)")
        cache = None
        for workers in (int(w) for w in args.workers.split(",")):
            rate, cache = bench_preprocess(tracks, folder, workers)
            print(f"preprocess  workers={workers}: {rate:7.1f} files/s  ({rate * args.seconds / 60:.1f} min of audio/s)")
        train_rate, forward_rate = bench_training(cache, args.steps, args.batch, args.device, args.loader_workers)
        where = f"device={args.device} threads={args.threads} loader-workers={args.loader_workers}"
        print(f"train       {where}: {train_rate:7.1f} segments/s  (batch {args.batch}, SGD step incl. loading)")
        print(f"forward     {where}: {forward_rate:7.1f} segments/s  (no gradient)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
