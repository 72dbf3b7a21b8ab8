"""Per-file acoustic statistics, for eval's transfer report (how far a corpus is from the training one).

Computed in the decode worker from the audio it already holds and the rate and length the decoder read
from the header, so they cost one cheap FFT pass and no second decode or open of the file.
``corpus_summary`` is what training saves as ``corpus_stats.json`` beside a model.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

STAT_FIELDS = ("native_sample_rate", "duration_s", "loudness_dbfs", "spectral_centroid_hz")
SILENCE_DBFS = -120.0  # loudness reported for digital silence (JSON has no -inf)
CENTROID_FRAME = 2048  # samples per FFT frame for the centroid; Hann-windowed
CENTROID_MAX_FRAMES = 32  # frames spread evenly over the track: enough for a mean spectrum, ~0.5 ms


def loudness_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale square wave is 0 dBFS)."""
    if audio.size == 0:
        return SILENCE_DBFS
    rms = math.sqrt(max(0.0, float(np.dot(audio, audio))) / audio.size)  # BLAS dot: 10x faster than square+mean
    return max(SILENCE_DBFS, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DBFS


def spectral_centroid_hz(audio: np.ndarray, sample_rate: int) -> float | None:
    """Centroid of the track's mean magnitude spectrum (None for silence or audio under one frame).

    The mean is over at most CENTROID_MAX_FRAMES non-overlapping frames spread evenly over the track.
    """
    n_frames = len(audio) // CENTROID_FRAME
    if n_frames == 0:
        return None
    import scipy.fft  # float32 throughout, ~3x faster than numpy's rfft; the decoder has it loaded already

    picked = np.unique(np.linspace(0, n_frames - 1, min(n_frames, CENTROID_MAX_FRAMES)).astype(np.int64))
    frames = audio[: n_frames * CENTROID_FRAME].reshape(n_frames, CENTROID_FRAME)[picked]
    total = np.abs(scipy.fft.rfft(frames * _centroid_window(), axis=-1)).sum(axis=0, dtype=np.float64)
    weight = total.sum()
    if weight <= 0:
        return None
    freqs = np.fft.rfftfreq(CENTROID_FRAME, 1.0 / sample_rate)
    return float((freqs * total).sum() / weight)


@functools.lru_cache(maxsize=1)
def _centroid_window() -> np.ndarray:
    return np.hanning(CENTROID_FRAME).astype(np.float32)


def file_stats(audio: np.ndarray, sample_rate: int, native_sample_rate: int | None, duration_s: float) -> dict:
    """Statistics of one decoded file: native sample rate, duration, loudness, spectral centroid.

    ``audio`` is the mono float signal the model saw (at ``sample_rate``); ``duration_s`` is the file's
    duration (the whole file, not just the analysed window).
    """
    return {
        "native_sample_rate": int(native_sample_rate) if native_sample_rate else None,
        "duration_s": round(float(duration_s), 3),
        "loudness_dbfs": round(loudness_dbfs(audio), 2),
        "spectral_centroid_hz": _rounded(spectral_centroid_hz(audio, sample_rate), 1),
    }


def summarise(stats: list[dict]) -> dict:
    """Median and interquartile range (q25, q75) of each field over the files that have it."""
    summary = {}
    for field in STAT_FIELDS:
        values = np.array([s[field] for s in stats if s and s.get(field) is not None], dtype=np.float64)
        if values.size == 0:
            summary[field] = {"n": 0, "median": None, "q25": None, "q75": None}
            continue
        q25, median, q75 = np.percentile(values, [25, 50, 75])
        summary[field] = {"n": int(values.size), "median": float(median), "q25": float(q25), "q75": float(q75)}
    return summary


def corpus_summary(name: str, results: list) -> dict:
    """{corpus, n_tracks, acoustics, mean_embedding} over the successful results of ``embed_files``."""
    good = [r for r in results if r.embedding is not None]
    mean = np.mean(np.stack([r.embedding for r in good]), axis=0, dtype=np.float64) if good else None
    return {
        "corpus": name,
        "n_tracks": len(good),
        "acoustics": summarise([r.stats for r in good if r.stats]),
        "mean_embedding": [round(float(x), 6) for x in mean] if mean is not None else [],
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def analyse_file(path, front_end, offset: float = 0.0, duration: float | None = None) -> tuple[np.ndarray, dict]:
    """Decode one file → (log-mel [n_mels, n_frames], file_stats) from one decode; raises AudioError, and
    ContentError for audio too short or silent to tag (audio.check_content).

    The worker step shared by ``zstag tag``/``eval`` (workers.py) and ``zstag preprocess`` (features.py).
    """
    from zstag import audio

    decoded = audio.decode_audio(path, front_end.sample_rate, offset=offset, duration=duration)
    samples = decoded.samples
    audio.check_content(path, samples, front_end.sample_rate, span=bool(offset) or duration is not None)
    mel = audio.log_mel(samples, front_end)
    if mel.shape[1] == 0 or not np.isfinite(mel).all():
        cause = "NaN or infinite samples in the audio" if not np.isfinite(samples).all() else "no usable log-mel frames"
        raise audio.ContentError(f"{path}: {cause}")
    # The header's rate and length where soundfile decoded it; for ffmpeg's files, the span decoded.
    seconds = decoded.native_seconds
    if seconds is None:
        seconds = offset + len(samples) / front_end.sample_rate
    return mel, file_stats(samples, front_end.sample_rate, decoded.native_rate, seconds)


def error_line(path, exc: BaseException) -> str:
    """One line naming the file and the cause, whatever the decoder raised."""
    return failure_line(path, error_cause(path, exc))


def error_cause(path, exc: BaseException) -> str:
    """The cause of a decode failure, on one line, without the file's name."""
    from zstag.audio import AudioError

    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, AudioError):
        # "PATH: cause", with PATH as given or as pathlib writes it ("./a.wav" → "a.wav"), or just the cause
        # (feature errors do not know the path): the name is dropped, failure_line puts it back once.
        message = str(exc)
        named = next((p for p in (f"{path}: ", f"{Path(path)}: ") if message.startswith(p)), "")
        cause = message[len(named):]
    else:
        cause = f"{type(exc).__name__}: {exc}"
    return " ".join(cause.split()) or "unknown error"


def failure_line(path, cause: str) -> str:
    """"PATH: cause" on one line: the name exactly as given (spaces kept), line breaks in it escaped."""
    name = str(path).replace("\n", "\\n").replace("\r", "\\r")
    return f"{name}: {cause}"
