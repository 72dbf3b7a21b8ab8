"""Which parts of a track are analysed with --sample-seconds: a few windows spread evenly over it instead
of the whole track (training's random crops are sampling.py's, not these).

    segments, stats = analyse_sampled("a.flac", MUSICNN, sample_seconds=15)   # 5 segments of ~3 s

The model's cost grows with the number of segments it sees, so analysing N seconds of a longer track
costs ~N / duration of the whole-track run. The windows are model segments (fe.segment_frames frames):
k = floor(N / segment length), at least one, each centred at one of k evenly spaced points of the span
analysed (the whole file, or --offset / --max-seconds' part of it): centre i at (i + ½) · span / k. The
positions depend only on the span's length, so the same bytes always give the same segments. A span no
longer than N (or than one segment) is analysed whole, as without sampling. Each window is decoded on
its own with MARGIN_FRAMES of audio either side, so its frames see real audio (not the STFT's zero
padding nor the resampler's first samples); they differ from the whole track's frames at the same place
only by the decoder's and resampler's restart (≤ ~0.03 in log-mel on the project's ogg clips).

Where libsndfile reads the file and the header gives its length, only the windows are decoded
(seeking: ~k · 3 s of audio instead of the whole file); otherwise (ffmpeg's formats, an unknown length)
the span is decoded and analysed whole, and the windows' frames taken from its features.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from zstag import audio
from zstag.acoustics import analyse_file, file_stats
from zstag.errors import ContentError, UsageError
from zstag.frontend import FrontEnd, log_mel, segment

MARGIN_FRAMES = 8  # hops of context decoded either side of a window (≥ n_fft / 2 / hop for both front ends)


class SampleSecondsError(UsageError, ValueError):
    """A --sample-seconds that is not a finite number of seconds > 0 (a ValueError too, as a bad span is)."""


def check_sample_seconds(value: float | None) -> None:
    """SampleSecondsError unless value is None (whole tracks) or a finite number of seconds > 0."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise SampleSecondsError(f"need a finite number of seconds > 0 (got {value})")


def window_count(sample_seconds: float, fe: FrontEnd) -> int:
    """How many model segments N seconds buys: whole segments, never more than N, at least one."""
    # The small slack: N = 3 · segment length typed in decimal still buys three segments.
    return max(1, math.floor(sample_seconds / fe.segment_seconds + 1e-9))


def window_starts(span_frames: int, sample_seconds: float, fe: FrontEnd) -> list[int] | None:
    """The windows' first frames (hops of fe from the span's start), or None: analyse the span whole (no
    longer than N, or than the windows themselves)."""
    k, size = window_count(sample_seconds, fe), fe.segment_frames
    if span_frames * fe.hop_length <= sample_seconds * fe.sample_rate or span_frames <= k * size:
        return None
    # Centres at (i + ½)·span/k: windows never overlap (span/k > size) and lie inside the span.
    return [(2 * i + 1) * span_frames // (2 * k) - size // 2 for i in range(k)]


def analyse_sampled(path, fe: FrontEnd, sample_seconds: float, offset: float = 0.0,
                    duration: float | None = None) -> tuple[np.ndarray, dict]:
    """(segments float32 [k, n_mels, segment_frames], acoustics.file_stats) of the sampled windows, or of the
    whole span when it is no longer than sample_seconds. Raises AudioError / ContentError (errors.py) as
    analyse_file does; SampleSecondsError for a bad sample_seconds. Statistics: of the windows' audio where only they were decoded, else of the span."""
    check_sample_seconds(sample_seconds)
    audio.check_span(offset, duration)
    probe = _probe(path)
    if probe is not None:
        rate, frames = probe
        start = round(offset * rate)
        span = min(frames - start, frames if duration is None else round(duration * rate))
        starts = window_starts(span * fe.sample_rate // (rate * fe.hop_length), sample_seconds, fe)
        if span > 0 and starts is not None:  # else: whole, or past the end (analyse_file says so)
            return _from_windows(path, fe, [_decode_window(path, fe, offset, s) for s in starts], rate, frames / rate)
    mel, stats = analyse_file(path, fe, offset=offset, duration=duration)
    starts = window_starts(mel.shape[1] - 1, sample_seconds, fe)  # frames = 1 + samples // hop
    if starts is None:
        return segment(mel, fe), stats
    return np.stack([mel[:, s: s + fe.segment_frames] for s in starts]), stats


def _probe(path) -> tuple[int, int] | None:
    """(native rate, frames the header declares) where libsndfile reads the file, seeks in it and knows its
    length; None otherwise (ffmpeg's formats, streams of unknown length, unreadable or not audio: the
    whole-span decode handles, or reports, those)."""
    import soundfile as sf

    if str(path).lower().endswith(tuple(audio.FFMPEG_EXTENSIONS)):
        return None
    try:
        with open(path, "rb") as handle, sf.SoundFile(handle.fileno(), closefd=False) as f:
            if not f.seekable():
                return None
            # The declared length, not the frames present: a WAV cut short fails as it does whole.
            frames = audio._declared_frames(Path(path), f.format, f.frames)
            return (f.samplerate, frames) if frames > 0 else None
    except (OSError, RuntimeError, sf.LibsndfileError):
        return None


def _decode_window(path, fe: FrontEnd, offset: float, start: int) -> tuple[int, np.ndarray]:
    """(margin frames before the window, samples) of the window starting `start` frames into the span."""
    before = min(MARGIN_FRAMES, start)
    first = (start - before) * fe.hop_length
    length = (before + fe.segment_frames + MARGIN_FRAMES) * fe.hop_length
    samples = audio.decode_audio(path, fe.sample_rate, offset + first / fe.sample_rate,
                                 length / fe.sample_rate).samples
    return before, samples


def _from_windows(path, fe: FrontEnd, windows, native_rate, seconds) -> tuple[np.ndarray, dict]:
    """Each window's segment, and statistics of the windows' audio (without the margins)."""
    size = fe.segment_frames * fe.hop_length
    heard = np.concatenate([samples[before * fe.hop_length: before * fe.hop_length + size]
                            for before, samples in windows])
    audio.check_content(path, heard, fe.sample_rate, span=True)
    segments = np.empty((len(windows), fe.n_mels, fe.segment_frames), np.float32)
    for i, (before, samples) in enumerate(windows):
        mel = log_mel(samples, fe)
        if not np.isfinite(mel).all():
            raise ContentError(f"{path}: NaN or infinite samples in the audio")
        first = min(before, max(0, mel.shape[1] - fe.segment_frames))  # a window cut short by the file's end
        segments[i] = segment(mel[:, first:first + fe.segment_frames], fe)[0]
    return segments, file_stats(heard, fe.sample_rate, native_rate, seconds)
