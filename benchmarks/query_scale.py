"""Queries over a large embedding set: `zstag tag --embeddings` (20 labels, -f parquet) and `zstag search
--embeddings` on N synthetic embeddings (default 1 M) of the shipped default model.

    python benchmarks/query_scale.py [--n 1000000] [--part-rows 100000] [--keep DIR]

The set is written here directly with pyarrow in the embedding-set schema (embedset.schema; random unit-scale
float32 vectors, a path per row, 1 row in 1000 an error row), in parts of --part-rows rows. Each query runs as
a fresh `python -m zstag` process; its wall time and peak RSS (os.wait4's ru_maxrss) are printed. Target on
this project's 2-core machine: <= 10 s and <= 2 GB for 1 M rows and 20 labels.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = ["rock", "jazz", "pop", "classical", "electronic", "hip hop", "blues", "country", "metal", "reggae",
          "piano", "guitar", "drums", "vocals", "female vocals", "ambient", "dance", "calm", "sad", "happy"]


def write_set(folder: Path, n: int, part_rows: int) -> None:
    import pyarrow as pa
    from zstag import embedset, modelfile

    files = modelfile.read_model("default")
    dim = embedset.model_dim(files)
    schema = embedset.schema(dim, files.model_id, "float32")
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for k, start in enumerate(range(0, n, part_rows), 1):
        rows = min(part_rows, n - start)
        ids = np.arange(start, start + rows)
        failed = ids % 1000 == 999
        emb = rng.standard_normal((rows, dim), dtype=np.float32)
        columns = {
            "path": pa.array([f"/library/artist{i // 1000:04d}/album{i // 10 % 100:02d}/track{i:07d}.mp3" for i in ids]),
            "path_bytes": pa.nulls(rows, pa.string()),
            "digest": pa.array([f"{i:032x}" for i in ids]),
            "size": pa.array(np.full(rows, 5_000_000, np.int64)),
            "duration_s": pa.array(np.where(failed, np.nan, 180.0)),
            "model_id": pa.array([files.model_id] * rows), "precision": pa.array(["float32"] * rows),
            "n_segments": pa.array(np.full(rows, 60, np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim, mask=pa.array(failed)),
            "error": pa.array([f"/library/track{i:07d}.mp3: corrupt or truncated data" if f else None
                               for i, f in zip(ids, failed)], pa.string()),
        }
        table = pa.table([columns[f.name] for f in schema], schema=schema)
        embedset.write_part(table, str(folder / f"{embedset.PART_PREFIX}{k:06d}-bench000{embedset.PART_SUFFIX}"))


def timed(args: list[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MiB, exit code) of `python -m zstag ARGS` in a fresh process.
    The CPU time (user + system) says what the wall time would be on an idle machine, where the load is high."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "zstag", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--part-rows", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the set here and keep it (default: a temporary folder)")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zstag-query-scale-"))
    folder = options.keep or work / "set"
    try:
        t = time.perf_counter()
        if not folder.exists():
            write_set(folder, options.n, options.part_rows)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
        print(f"set: {options.n:,} rows in {len(list(folder.iterdir()))} parts, {size / 2**20:.0f} MiB "
              f"(written in {time.perf_counter() - t:.1f} s)")
        labels = ",".join(LABELS)
        queries = {
            f"tag --embeddings, {len(LABELS)} labels, -f parquet": ["tag", "--embeddings", str(folder), "-l", labels,
                                                                    "-f", "parquet", "-o", str(work / "scores.parquet")],
            "search --embeddings 'calm piano', -f json": ["search", "calm piano", "--embeddings", str(folder), "-f", "json"],
        }
        for name, args in queries.items():
            seconds, cpu, rss, code = timed(args)
            print(f"{name}: {seconds:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.0f} MiB "
                  f"(exit {code}: 1 = the set has error rows)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
