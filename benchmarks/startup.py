"""Startup and front-end timings: `zstag --help`, `zstag labels jazz`, `zstag tag` on cached files,
decode + log-mel of a 30 s mp3.

    python benchmarks/startup.py [--repeats 5]

CLI figures are wall times of fresh processes (median of --repeats). `labels jazz` is timed with a
cold vocabulary cache (first run) and warm. `zstag tag` runs the shipped default model on TAG_FILES
short wav files, once cold (empty embedding cache) and then warm with new labels (every file from
the cache: no torch, nothing decoded), in the default table format. The audio figures come from a fresh process per front
end and filterbank-cache state: "import" is `import zstag.audio`, "first" the first track_segments()
call (with a cold cache it pays the lazy librosa import that makes the mel filterbank; with a warm
one the filterbank is read from the cache), "warm calls" the median of later calls. The last figure is the
peak RSS of decoding a 10-minute 44.1 kHz stereo mp3 to paper segments, against the RSS just before.
Other processes on the machine slow all of these down: run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TAG_FILES = 20
TAG_SECONDS = 5.0

AUDIO_PROBE = r"""
import json, statistics, sys, time
t = time.perf_counter(); import zstag.audio as audio; t_import = time.perf_counter() - t
fe = audio.FRONT_ENDS[sys.argv[2]]
t = time.perf_counter(); segments = audio.track_segments(sys.argv[1], fe); t_first = time.perf_counter() - t
warm = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); audio.track_segments(sys.argv[1], fe); warm.append(time.perf_counter() - t)
print(json.dumps({"import": t_import, "first": t_first, "warm": statistics.median(warm), "shape": segments.shape}))
"""

MEMORY_PROBE = r"""
import json, resource, sys
import numpy as np, soundfile, soxr, zstag.audio as audio
audio.log_mel(np.zeros(22050, np.float32), audio.PAPER)  # filterbank and imports before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
segments = audio.track_segments(sys.argv[1], audio.PAPER)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mib": before / 1024, "peak_mib": peak / 1024, "segments_mib": segments.nbytes / 2**20}))
"""


def zstag_command() -> list[str]:
    exe = shutil.which("zstag")
    return [exe] if exe else [sys.executable, "-m", "zstag"]


def wall(cmd: list[str], env: dict, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return times


def write_mp3(path: Path, seconds: float, rate: int = 44100) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", rate, 2, format="MP3") as f:
        for start in range(0, int(seconds), 10):  # in 10 s pieces: memory stays small for long files
            t = np.arange(start * rate, min(seconds, start + 10) * rate) / rate
            x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
            f.write(np.stack([x, 0.7 * x], axis=1).astype(np.float32))


def write_wavs(folder: Path, n: int, seconds: float, rate: int = 22050) -> None:
    """n mono wav files, each a different chord with a little noise."""
    import numpy as np
    import soundfile as sf

    folder.mkdir()
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        rng = np.random.default_rng(i)
        x = sum(np.sin(2 * np.pi * 110 * 2 ** ((i + k) / 12) * t) for k in (0, 4, 7)) / 4
        sf.write(str(folder / f"track_{i:02d}.wav"), (x + 0.02 * rng.standard_normal(len(t))).astype(np.float32), rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "ZSTAG_CACHE_DIR": str(tmp / "cache")}
        cmd = zstag_command()
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")

        help_times = wall(cmd + ["--help"], env, args.repeats)
        print(f"zstag --help              median {statistics.median(help_times):.3f} s  (runs: {fmt(help_times)})")
        cold = wall(cmd + ["labels", "jazz"], env, 1)
        warm = wall(cmd + ["labels", "jazz"], env, args.repeats)
        print(f"zstag labels jazz (cold)  {cold[0]:.3f} s  (vocabulary cache written)")
        print(f"zstag labels jazz (warm)  median {statistics.median(warm):.3f} s  (runs: {fmt(warm)})")

        music = tmp / "tag"
        write_wavs(music, TAG_FILES, TAG_SECONDS)
        cold = wall(cmd + ["tag", str(music), "--labels", "rock,jazz,classical"], env, 1)
        warm = wall(cmd + ["tag", str(music), "--labels", "piano,techno,hip hop,speech"], env, args.repeats)
        print(f"zstag tag, {TAG_FILES} files (cold)   {cold[0]:.3f} s  (default model, embedding cache written)")
        print(f"zstag tag, {TAG_FILES} files (warm)   median {statistics.median(warm):.3f} s  (runs: {fmt(warm)}; "
              "new labels, all from the cache)")

        mp3 = tmp / "30s.mp3"
        write_mp3(mp3, 30.0)
        for name in ("paper", "musicnn"):
            for cache in ("cold", "warm"):  # the mel filterbank: computed by librosa, then read from the cache
                out = subprocess.run([sys.executable, "-c", AUDIO_PROBE, str(mp3), name, str(args.repeats)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"30 s mp3 → {name:7s} {tuple(r['shape'])}, {cache} filterbank cache: import zstag.audio "
                      f"{r['import']:.3f} s, first call {r['first']:.3f} s, warm calls {r['warm']:.3f} s")

        long_mp3 = tmp / "10min.mp3"
        write_mp3(long_mp3, 600.0)
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(long_mp3)],
                             env=env, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"10 min stereo mp3 → paper segments: peak RSS {r['peak_mib']:.0f} MiB, {r['before_mib']:.0f} MiB before "
              f"(+{r['peak_mib'] - r['before_mib']:.0f} MiB; the segments are {r['segments_mib']:.0f} MiB, "
              f"the decoded 44.1 kHz stereo float32 would be {600 * 44100 * 2 * 4 / 2**20:.0f} MiB)")


def fmt(times: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    main()
