"""Acoustic mood descriptors of the reference library's music (issue #22): weak targets for a valence–arousal
read-out, computed with librosa on the same ~3 s windows the backbone features were cached for.

Per track (mean over its cached windows' offsets, MUSICNN segment length):
- ``mode``: Krumhansl–Kessler key-profile correlation of the track's mean chroma, best major key minus best
  minor key (> 0: major; a valence cue);
- ``rms_db``: mean RMS level in dB; ``onset``: mean onset strength (note density, an arousal cue);
  ``centroid``: mean spectral centroid in Hz (brightness).

The reference library (the recipe's training music) is the fitting target of experiments/mood_check.py's ridge
read-outs; ``--mood-sets`` describes the rendered mood sets instead, only to show how each descriptor itself
separates their quadrants (a diagnostic: circular, as their quadrants are built from mode, tempo and loudness).
Writes runs/default-model/mood-descriptors.json (feature file name → descriptors), reused on reruns.

    python experiments/mood_descriptors.py [--mood-sets]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "default-model" / "mood-descriptors.json"
RATE = 22050
# Krumhansl & Kessler (1982) probe-tone profiles, C major / C minor
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def mode_score(chroma: np.ndarray) -> float:
    """Best major-key correlation minus best minor-key correlation of a 12-bin chroma vector."""
    def best(profile):
        return max(np.corrcoef(chroma, np.roll(profile, k))[0, 1] for k in range(12))

    return float(best(KK_MAJOR) - best(KK_MINOR))


def describe(path: str, offsets: np.ndarray, seconds: float) -> dict:
    import librosa

    from zstag import audio

    # each cached window read on its own (soundfile seeks): decoding whole long tracks took ~4 s a song
    pieces = [audio.load_audio(path, RATE, offset=float(start), duration=seconds) for start in offsets]
    chroma, rms, onset, centroid = [], [], [], []
    for x in pieces:
        if len(x) < RATE // 2:
            continue
        chroma.append(librosa.feature.chroma_stft(y=x, sr=RATE, n_fft=4096, hop_length=1024).mean(axis=1))
        rms.append(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9))
        onset.append(float(librosa.onset.onset_strength(y=x, sr=RATE).mean()))
        centroid.append(float(librosa.feature.spectral_centroid(y=x, sr=RATE).mean()))
    return {"mode": mode_score(np.mean(chroma, axis=0)), "rms_db": float(np.mean(rms)), "onset": float(np.mean(onset)),
            "centroid": float(np.mean(centroid))}


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "experiments")]
    import build_default_model as B
    from zstag.audio import MUSICNN
    from zstag.paths import atomic_write

    done = json.loads(OUT.read_text()) if OUT.exists() else {}
    music = {k: v for k, v in B.find_sets().items() if k not in B.NOT_ADOPTED_SETS + B.SYNTHETIC_SETS and k not in B.NON_MUSIC_SETS
             and k not in B.TEST_SETS}
    started = time.time()
    sets = {n: B.extract_set(n, B.read_manifest(m), log=lambda *a: None) for n, m in music.items()}
    if "--mood-sets" in sys.argv:  # the rendered dev sets too: descriptors as a diagnostic, never a fitting target
        import mood_extract

        from zstag.paths import cache_dir

        B.FEATURES = mood_extract.MOOD_FEATURES
        sets = {n: B.extract_set(n, B.read_manifest(cache_dir() / "sets" / n / "manifest.csv"), log=lambda *a: None)
                for n in ("moods-rendered", "moods-rendered-tune")}
    for name, rows in sets.items():
        for row in rows:
            key = Path(row["features"]).name
            if key in done:
                continue
            with np.load(row["features"]) as data:
                offsets = data["offsets"]
            try:
                done[key] = describe(row["path"], offsets, MUSICNN.segment_seconds)
            except Exception as exc:  # one bad file never stops the run
                print(f"{row['path']}: {' '.join(str(exc).split())}", file=sys.stderr)
        atomic_write(OUT, json.dumps(done, indent=1).encode())
        print(f"{name}: {len(rows)} tracks, {len(done)} described ({time.time() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
