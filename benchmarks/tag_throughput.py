"""Throughput and memory of `zstag tag`, against the floor of decoding + resampling the same files.

    python benchmarks/tag_throughput.py                 # 200 synthetic 30 s mp3 files in a temp folder
    python benchmarks/tag_throughput.py --n 50 --folder ~/bench --model default
    python benchmarks/tag_throughput.py --n 60 --model default --device cuda   # the model on a GPU
    python benchmarks/tag_throughput.py --n 20 --model default --bf16          # bfloat16 products on a CPU

Prints, in one run:
- CPU time per file on one thread, stage by stage (decode + resample, log-mel, statistics and segments
  in a decode worker; hashing and embedding in this process): what tag adds to the floor, robust to
  other load on the machine, and from it the CPU bound of a cold run on all cores;
- floor: decode + resample of the files alone (the same process pool and worker count as tag);
- cold tag (fresh embedding cache) and warm re-tag with new labels, in-process (imports and Python
  start-up excluded, model and word-vector loading included) and as the CLI end to end;
- their ratios, files/s, and peak memory of the whole process tree (main + fork server + workers);
- peak memory of tagging one 10-minute file with the CLI.
Targets on 2 cores: cold ≤ 1.3× floor; warm ≥ 20× faster than cold; ≤ 1 GB on the 10-minute file.
The floor and the in-process cold tag are each timed ROUNDS times, alternately (each cold round with a
fresh cache), and the quickest of each is reported: other work on a shared machine only ever adds time.

The files are music-like synthetic signals (chords with harmonics, bass, kick/snare/hi-hat, noise),
44.1 kHz stereo mp3 written by soundfile, each with its own seed, tempo and key. The default model is
a randomly initialised paper CNN1D (speed does not depend on training); pass --model for another.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100
LABELS_COLD = ["rock", "jazz", "classical", "drum and bass", "ambient"]
LABELS_WARM = ["techno", "blues", "piano", "hip hop", "reggae", "metal"]
SAMPLE_EVERY_S = 0.05  # memory sampler period
ROUNDS = 3  # floor and cold-tag timings, alternately; the minimum of each counts
CPU_REPEATS = 3  # per-stage CPU timings: the minimum over repeats counts
CPU_FILES = 20  # files for the per-stage CPU timings


# --- synthetic music ------------------------------------------------------------------------------


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _place(out: np.ndarray, sound: np.ndarray, starts: np.ndarray) -> None:
    for s in starts:
        end = min(len(out), s + len(sound))
        if end > s:
            out[s:end] += sound[: end - s]


def synth_music(seconds: float, seed: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [n, 2]: a loop of chords, bass line and drums at a random tempo and key, plus noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    beat = int(sr * 60 / rng.uniform(80, 160))
    root = int(rng.integers(45, 57))
    quality = (0, 4, 7) if rng.random() < 0.5 else (0, 3, 7)
    progression = rng.choice([0, 2, 3, 5, 7, 8, 10], size=4)
    t_beat = np.arange(beat) / sr
    mix = np.zeros(n, np.float32)

    bar = 4 * beat
    for i, start in enumerate(range(0, n, bar)):
        length = min(bar, n - start)
        t = np.arange(length) / sr
        env = np.minimum(1.0, t / 0.05) * np.exp(-t * rng.uniform(0.3, 1.5))
        chord_root = root + int(progression[i % 4])
        pad = np.zeros(length)
        for interval in quality:
            f = _midi_hz(chord_root + 12 + interval)
            for h in range(1, 5):
                pad += np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6.28)) / (h * 3)
        bass = np.sin(2 * np.pi * _midi_hz(chord_root - 12) * t) * np.exp(-(t % (beat / sr)) * 6)
        mix[start : start + length] += (0.25 * env * pad + 0.3 * bass).astype(np.float32)

    kick = np.sin(2 * np.pi * (50 + 70 * np.exp(-t_beat * 30)) * t_beat) * np.exp(-t_beat * 12)
    noise = rng.standard_normal(beat)
    snare = noise * np.exp(-t_beat * 25) * 0.4
    hat = np.diff(noise, prepend=0.0)[: beat // 2] * np.exp(-t_beat[: beat // 2] * 80) * 0.15
    beats = np.arange(0, n, beat)
    _place(mix, (0.8 * kick).astype(np.float32), beats)
    _place(mix, snare.astype(np.float32), beats[1::2])
    _place(mix, hat.astype(np.float32), np.arange(0, n, beat // 2))
    mix += 0.01 * rng.standard_normal(n).astype(np.float32)

    mix /= np.abs(mix).max() / 0.8
    pan = rng.uniform(0.85, 1.0)
    return np.stack([mix, pan * mix + 0.02 * rng.standard_normal(n).astype(np.float32)], axis=1)


def write_mp3(path: Path, seconds: float, seed: int, piece_s: float = 30.0) -> None:
    """Write in pieces of `piece_s` seconds, so a 10-minute file never sits in memory whole."""
    import soundfile as sf

    tmp = path.with_name(f".{path.name}.tmp")
    with sf.SoundFile(tmp, "w", SAMPLE_RATE, 2, format="MP3") as f:
        done = 0.0
        while done < seconds:
            piece = min(piece_s, seconds - done)
            f.write(synth_music(piece, seed * 1000 + int(done)))
            done += piece
    os.replace(tmp, path)


def _write_job(job) -> None:
    write_mp3(*job)


def make_folder(folder: Path, n: int, seconds: float, workers: int) -> list[Path]:
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"track_{i:04d}.mp3" for i in range(n)]
    jobs = [(p, seconds, i) for i, p in enumerate(files) if not p.exists()]
    if jobs:
        print(f"writing {len(jobs)} synthetic {seconds:g} s mp3 files to {folder} ...", flush=True)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_job, jobs))
    return files


# --- memory ---------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeMemory:
    """Samples the process tree under `pid` (cheaply: /proc/PID/status every 50 ms).

    rss: the peak of the summed current RSS (shared pages of forked workers counted in each, so an
    upper bound); hwm_sum: the sum of each process's own peak RSS (VmHWM, the kernel's high-water
    mark, so short spikes between samples are not missed; also an upper bound); largest: the
    biggest single-process peak.
    """

    def __init__(self, pid: int):
        self.pid, self.rss, self.hwm = pid, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            pids = _tree(self.pid)
            self.rss = max(self.rss, sum(_kib(p, "VmRSS:") for p in pids))
            for p in pids:
                self.hwm[p] = max(self.hwm.get(p, 0), _kib(p, "VmHWM:"))
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def text(self) -> str:
        hwm = self.hwm.values()
        return (f"peak tree RSS {self.rss / 1024:.0f} MiB; sum of per-process peaks {sum(hwm) / 1024:.0f} MiB "
                f"over {len(self.hwm)} processes, largest {max(hwm, default=0) / 1024:.0f} MiB")


# --- measurements ---------------------------------------------------------------------------------


def _decode_only(path: str, sample_rate: int) -> int:
    from zstag import audio

    return len(audio.load_audio(path, sample_rate))


def floor_seconds(files: list[Path], workers: int, sample_rate: int) -> float:
    """Decode + resample every file to the model's rate in the same kind of pool tag uses (its start-up
    included); the workers send back only a length, no audio."""
    from zstag.workers import decoder_pool

    start = time.perf_counter()
    pool = decoder_pool(workers)
    try:
        list(pool.map(_decode_only, [str(f) for f in files], [sample_rate] * len(files), chunksize=1))
    finally:
        pool.shutdown()
    return time.perf_counter() - start


def _timed(stages: dict, name: str, function, inputs: list) -> list:
    """Record CPU ms per input of function (the minimum over CPU_REPEATS passes); return its outputs."""
    best, outputs = float("inf"), []
    for _ in range(CPU_REPEATS):
        start = time.process_time()
        outputs = [function(x) for x in inputs]
        best = min(best, time.process_time() - start)
    stages[name] = 1000 * best / len(inputs)
    return outputs


def _decode_stages(paths: list[str], fe_dict: dict) -> tuple[dict, list]:
    """In a decode worker (the pool tag uses: the same memory and thread settings): CPU ms per file of
    each stage of decode_file, and the segments for timing the embedding."""
    from zstag import acoustics, audio, workers

    fe, stages = audio.FrontEnd.from_dict(fe_dict), {}
    workers.decode_file(paths[0], fe_dict)  # warm-up: the mel filterbank, first-call costs
    decoded = _timed(stages, "decode + resample", lambda f: audio.decode_audio(f, fe.sample_rate), paths)
    mels = _timed(stages, "log-mel", lambda d: audio.log_mel(d.samples, fe), decoded)
    _timed(stages, "statistics",
           lambda d: acoustics.file_stats(d.samples, fe.sample_rate, d.native_rate, d.native_seconds or 0.0), decoded)
    segments = _timed(stages, "segments", lambda m: audio.segment(m, fe), mels)
    return stages, segments


def stage_cpu_ms(files: list[Path], model: str, device: str, bf16: bool = False) -> tuple[dict[str, float], int]:
    """CPU ms per file on one thread, per stage of what tag does to a file: the decode side in a decode
    worker, hashing and embedding in this process, as tag runs them. "decode + resample" is the floor's
    work, the rest is what tag adds (not counted: moving segments between processes, scheduling). On a
    GPU, "embed" is this thread's CPU time for a track, waiting for the GPU included."""
    from zstag.devices import cpu_bfloat16, deterministic_cuda, pick_device
    from zstag.embedcache import content_digest
    from zstag.embeddings import inference_threads
    from zstag.model import load_model
    from zstag.workers import decoder_pool

    net = load_model(model).to(pick_device(device))
    pool = decoder_pool(1)
    try:
        stages, segments = pool.submit(_decode_stages, [str(f) for f in files], net.front_end.to_dict()).result()
    finally:
        pool.shutdown()
    with inference_threads(), deterministic_cuda(), cpu_bfloat16() if bf16 else contextlib.nullcontext():
        net.embed_track(segments[0])
        _timed(stages, "hash", content_digest, files)
        _timed(stages, "embed", net.embed_track, segments)
    return stages, net.front_end.sample_rate


def cpu_text(stages: dict[str, float]) -> str:
    floor = stages["decode + resample"]
    added = {k: v for k, v in stages.items() if k != "decode + resample"}
    total = floor + sum(added.values())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in added.items())
    return (f"CPU ms per file, one thread: decode + resample {floor:.1f}; tag adds {parts}; "
            f"all tag work {total:.1f} ms ({total / floor:.2f}× the floor's)")


def tag_in_process(folder: Path, model: str, labels: list[str], workers: int, out: Path, device: str,
                   bf16: bool = False) -> float:
    from zstag.cli_run import run_tag

    start = time.perf_counter()
    code = run_tag([str(folder)], labels=[",".join(labels)], model=model, fmt="jsonl", output=str(out),
                    workers=workers, progress=False, device=device, bf16=bf16)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"tag exited with {code}")
    return elapsed


def tag_cli(inputs: list[str], model: str, labels: list[str], workers: int, cache: Path, out: Path, device: str,
            bf16: bool = False):
    """(seconds, TreeMemory) of `zstag tag` as a subprocess."""
    cmd = [sys.executable, "-m", "zstag", "tag", *inputs, "--labels", ",".join(labels), "--model", model,
           "--format", "jsonl", "--output", str(out), "--workers", str(workers), "--device", device]
    cmd += ["--bf16"] if bf16 else []
    env = {**os.environ, "ZSTAG_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    with TreeMemory(proc.pid) as memory:
        _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"zstag tag exited with {proc.returncode}: {err.strip()}")
    return elapsed, memory


def _import_seconds(modules: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True)
    return time.perf_counter() - start


def seed_cache(scratch: Path, model: str, device: str, bf16: bool = False) -> Path:
    """A cache folder holding what any machine has after its first run (the vocabulary list, the mel
    filterbank) but no track embeddings: "cold" below means a cold embedding cache, not a new machine."""
    from zstag.cli_run import run_tag

    seed = scratch / "cache-seed"
    os.environ["ZSTAG_CACHE_DIR"] = str(seed)
    write_mp3(scratch / "warm-up.mp3", 3.0, seed=12345)
    run_tag([str(scratch / "warm-up.mp3")], labels=["rock"], model=model, fmt="jsonl",
            output=str(scratch / "warm-up.jsonl"), workers=0, progress=False, device=device, bf16=bf16)
    (seed / "embeddings.sqlite").unlink()
    return seed


def fresh_cache(seed: Path, folder: Path) -> Path:
    shutil.copytree(seed, folder, ignore=shutil.ignore_patterns("embeddings.sqlite*"))
    return folder


def tiny_model(folder: Path) -> str:
    import torch

    from zstag.audio import PAPER
    from zstag.model import ZeroShotModel, cnn1d_config, save_model

    torch.manual_seed(0)
    save_model(ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d")), folder)
    return str(folder)


def main() -> None:
    from zstag.workers import default_workers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of 30 s files (default 200)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--folder", type=Path, help="audio files to use (an empty folder gets --n synthetic ones)")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="length of the long file (0: skip)")
    parser.add_argument("--model", help="model folder or name (default: a random paper CNN1D)")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--device", default="cpu", help="where the model runs, as `zstag tag --device` (default cpu)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 products on the CPU, as `zstag tag --bf16`")
    args = parser.parse_args()

    from zstag.tagger import find_audio_files, parse_extensions

    folder = args.folder or Path(tempfile.gettempdir()) / f"zstag-bench-{args.n}x{args.seconds:g}s"
    files = [Path(f) for f in find_audio_files([str(folder)], parse_extensions(None)).files] if folder.is_dir() else []
    if not files:  # an empty or new folder: fill it with synthetic music (kept for the next run)
        files = make_folder(folder, args.n, args.seconds, args.workers)
    scratch = Path(tempfile.mkdtemp(prefix="zstag-bench-"))
    try:
        run_benchmark(args, folder, files, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_benchmark(args, folder: Path, files: list[Path], scratch: Path) -> None:
    from zstag.workers import default_workers

    model = args.model or tiny_model(scratch / "model")
    for f in files:  # the page cache: every measurement reads from memory, not disk
        f.read_bytes()
    import soundfile as sf

    audio_s = sum(sf.info(str(f)).duration for f in files)
    print(f"{len(files)} files ({audio_s / 60:.1f} min of audio) in {folder}; "
          f"workers {args.workers}; cores {default_workers()}; model {args.model or 'random paper CNN1D'}; "
          f"device {args.device}{' (--bf16)' if args.bf16 else ''}")

    import torch  # noqa: F401  (imported before timing, as the CLI imports it before tagging)

    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          "(other work on the machine skews wall times)")
    seed = seed_cache(scratch, model, args.device, args.bf16)  # and ZSTAG_CACHE_DIR points at it from here on
    stages, rate = stage_cpu_ms(files[:CPU_FILES], model, args.device, args.bf16)
    print(cpu_text(stages))
    tag_cpu = sum(stages.values())

    floor_seconds(files[:2], args.workers, rate)  # start the fork server once, outside every timing
    floors, colds, main_cpu = [], [], []
    for k in range(ROUNDS):
        floors.append(floor_seconds(files, args.workers, rate))
        os.environ["ZSTAG_CACHE_DIR"] = str(fresh_cache(seed, scratch / f"cache-in-process-{k}"))
        cpu = time.process_time()
        colds.append(tag_in_process(folder, model, LABELS_COLD, args.workers, scratch / "cold.jsonl", args.device,
                                    args.bf16))
        main_cpu.append(time.process_time() - cpu)
    floor, cold = min(floors), min(colds)
    warm = tag_in_process(folder, model, LABELS_WARM, args.workers, scratch / "warm.jsonl", args.device, args.bf16)
    cores = default_workers()
    bound = len(files) * tag_cpu / 1000 / cores
    floor_bound = len(files) * stages["decode + resample"] / 1000 / min(cores, max(args.workers, 1))
    print(f"floor: decode + resample only       {floor:7.2f} s  {len(files) / floor:6.1f} files/s  "
          f"(CPU bound {floor_bound:.2f} s; runs: {' '.join(f'{x:.2f}' for x in floors)})")
    print(f"cold tag (in-process, fresh cache)  {cold:7.2f} s  {len(files) / cold:6.1f} files/s  "
          f"{cold / floor:.2f}× the floor (target ≤ 1.3; runs: {' '.join(f'{x:.2f}' for x in colds)})")
    print(f"  CPU bound: {len(files)} files × {tag_cpu:.1f} ms / {cores} cores = {bound:.2f} s, "
          f"{bound / floor:.2f}× the floor (start-up, model and word vectors excluded)")
    in_run = 1000 * min(main_cpu) / len(files)
    print(f"  this process's CPU in the cold runs (all its threads): {in_run:.1f} ms per file, against "
          f"{stages['hash'] + stages['embed']:.1f} ms of hash + embed above (the rest: start-up, receiving segments, "
          "cache writes, and embedding with cold caches between decodes)")
    print(f"warm re-tag, new labels (in-process) {warm:6.3f} s  {len(files) / warm:6.0f} files/s  "
          f"cold/warm {cold / warm:.0f}× (target ≥ 20)")
    print(f"  main process peak RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    cache = fresh_cache(seed, scratch / "cache-cli")
    cold_cli, cold_mem = tag_cli([str(folder)], model, LABELS_COLD, args.workers, cache, scratch / "c.jsonl", args.device,
                                 args.bf16)
    warm_cli, warm_mem = tag_cli([str(folder)], model, LABELS_WARM, args.workers, cache, scratch / "w.jsonl", args.device,
                                 args.bf16)
    print(f"cold tag (CLI end to end)           {cold_cli:7.2f} s  {len(files) / cold_cli:6.1f} files/s  "
          f"{cold_cli / floor:.2f}× the floor; {cold_mem.text()}")
    print(f"warm re-tag (CLI end to end)        {warm_cli:7.2f} s  cold/warm {cold_cli / warm_cli:.1f}×; "
          f"{warm_mem.text()}")
    print(f"  (Python start-up + imports: {_import_seconds('torch, zstag.tagger, zstag.embeddings'):.2f} s with torch, "
          f"as a cold run needs; {_import_seconds('zstag.tagger, zstag.embeddings'):.2f} s without)")

    if args.long_minutes > 0:
        long_file = scratch / "long.mp3"
        write_mp3(long_file, args.long_minutes * 60, seed=999)
        seconds, memory = tag_cli([str(long_file)], model, LABELS_COLD, args.workers,
                                  fresh_cache(seed, scratch / "cache-long"), scratch / "long.jsonl", args.device, args.bf16)
        print(f"{args.long_minutes:g}-minute file (CLI, cold)        {seconds:7.2f} s  {memory.text()} (target ≤ 1 GB)")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
