"""`zstag embed` throughput, --engine local against --engine ray on this machine (Ray on its own CPUs).

    python benchmarks/embed_engines.py [--n 24] [--seconds 30] [--model default]

Writes N synthetic wav files (a chord and noise bursts, 22.05 kHz mono, --seconds long) and embeds them into a
new set with each engine, the SQLite cache off (--no-cache), each a fresh `python -m zstag` process: the wall
time includes start-up (torch's import; for Ray, starting a local Ray: its "cost"). Ray runs its default actor
pool here: one actor (with its decoder process) per two CPUs. Other work on the machine slows both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 22050


def write_files(folder: Path, n: int, seconds: float) -> None:
    import soundfile as sf

    folder.mkdir(parents=True)
    t = np.arange(int(seconds * SR)) / SR
    for i in range(n):
        rng = np.random.default_rng(i)
        x = sum(np.sin(2 * np.pi * 110 * 2 ** (i / 12) * r * t) for r in (1, 1.26, 1.5))
        x = x + 2.0 * rng.standard_normal(len(t)) * np.exp(-((t * 2.0) % 1.0) * 20)
        sf.write(folder / f"{i:04d}.wav", (0.8 * x / np.abs(x).max()).astype(np.float32), SR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", default="default")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zstag-embed-engines-"))
    try:
        write_files(work / "audio", options.n, options.seconds)
        print(f"{options.n} files of {options.seconds:.0f} s, model {options.model}, {os.cpu_count()} cpus, "
              f"load average {os.getloadavg()[0]:.2f}")
        for engine in ("local", "ray"):
            args = [sys.executable, "-m", "zstag", "embed", str(work / "audio"), "--out", str(work / engine),
                    "--model", options.model, "--engine", engine, "--no-cache", "--no-progress"]
            start = time.perf_counter()
            proc = subprocess.run(args, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            print(f"--engine {engine}: {seconds:.1f} s ({options.n / seconds:.2f} files/s, "
                  f"{options.n * options.seconds / seconds:.0f} s of audio per s), exit {proc.returncode}: "
                  f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
