"""The mel front end: decoded audio → log-mel frames → model-sized segments.

Front ends (`FrontEnd` configs, one code path for all):
    PAPER    Choi et al. 2019: 22,050 Hz, n_fft 1024, hop 512, Hann, magnitude STFT, 128 Slaney mel
             bands, log10(1 + 10 x), then (x - 0.2262) / 0.2579 (MSD constants). 130 frames ~ 3 s.
    MUSICNN  Pons & Serra's musicnn extractor: 16 kHz, n_fft 512, hop 256, power STFT, 96 mel bands,
             log10(1 + 10000 x) in float32 (the original casts to float16 first, which overflows in
             numpy 2, so we don't). 187 frames ~ 3 s.
Both equal librosa.feature.melspectrogram (center=True, zero padding, periodic Hann, Slaney mel
filterbank from librosa.filters.mel) followed by the compression, to float32 rounding. The STFT is
scipy's rfft in float32, in blocks of frames whose buffers are reused; the filterbank is applied as a
few dense blocks around its non-zero band (1/8-1/6 of the full matrix's multiply-adds), and kept as
.npy in the cache folder, so the slow librosa import (~1 s, numba) is paid once per machine rather
than once per process.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from zstag.errors import AudioError
from zstag.paths import atomic_write, npy_bytes

STFT_BLOCK_FRAMES = 128  # STFT frames transformed at once: the block's buffers (≤ 1.3 MB) stay in cache
MEL_GROUP_BANDS = 16  # mel bands per dense block of the filterbank (see _mel_groups)


@dataclass(frozen=True)
class FrontEnd:
    """Everything that defines the features a model expects; stored with the model."""

    name: str  # "paper" | "musicnn"
    sample_rate: int  # Hz
    n_fft: int  # STFT window and FFT length (periodic Hann)
    hop_length: int  # samples between frames
    n_mels: int  # Slaney mel bands from 0 Hz to sample_rate / 2
    power: float  # 1.0 magnitude | 2.0 power spectrogram
    log_gain: float  # features = log10(1 + log_gain * mel)
    segment_frames: int  # frames per model input segment
    mean: float = 0.0  # normalisation after compression: (x - mean) / std
    std: float = 1.0

    @property
    def segment_seconds(self) -> float:
        return self.segment_frames * self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FrontEnd:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown front-end fields: {', '.join(sorted(unknown))}")
        return cls(**d)


PAPER = FrontEnd(
    name="paper", sample_rate=22050, n_fft=1024, hop_length=512, n_mels=128,
    power=1.0, log_gain=10.0, segment_frames=130, mean=0.2262, std=0.2579,
)
MUSICNN = FrontEnd(
    name="musicnn", sample_rate=16000, n_fft=512, hop_length=256, n_mels=96,
    power=2.0, log_gain=10000.0, segment_frames=187,
)
FRONT_ENDS = {fe.name: fe for fe in (PAPER, MUSICNN)}


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel with its defaults (fmin 0, fmax sr/2, Slaney scale and norm), float32.

    Importing librosa takes about a second (numba), so the matrix is also kept as .npy in the
    cache folder, keyed by the librosa version; later processes load it without importing librosa.
    """
    from importlib.metadata import version

    from zstag.paths import cache_dir

    cached = cache_dir() / "mel" / f"mel-{sample_rate}-{n_fft}-{n_mels}-librosa{version('librosa')}.npy"
    try:
        basis = np.load(cached, allow_pickle=False)
        if basis.shape == (n_mels, n_fft // 2 + 1) and basis.dtype == np.float32:
            return basis
    except (OSError, ValueError):
        pass
    from librosa.filters import mel

    basis = mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, dtype=np.float32)
    try:
        atomic_write(cached, npy_bytes(basis))
    except OSError:
        pass  # a read-only cache only costs speed
    return basis


@functools.lru_cache(maxsize=8)
def _mel_groups(sample_rate: int, n_fft: int, n_mels: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The filterbank as dense blocks (first band, end band, first bin, end bin, weights [bins, bands]).

    Each Slaney filter is non-zero on a few neighbouring FFT bins, so a block of MEL_GROUP_BANDS bands
    spans only the bins of those bands: the blocks hold 1/8-1/6 of the full matrix and every non-zero
    weight. The products are the same as basis @ spectrum; only the order of the sums differs.
    """
    basis = _mel_basis(sample_rate, n_fft, n_mels)
    groups = []
    for first in range(0, n_mels, MEL_GROUP_BANDS):
        end = min(first + MEL_GROUP_BANDS, n_mels)
        bins = np.flatnonzero(basis[first:end].any(axis=0))
        lo, hi = (int(bins[0]), int(bins[-1]) + 1) if bins.size else (0, 0)
        groups.append((first, end, lo, hi, np.ascontiguousarray(basis[first:end, lo:hi].T)))
    return tuple(groups)


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic Hann, as scipy.signal.get_window("hann", n_fft) used by librosa.stft.
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def mel_spectrogram(audio: np.ndarray, fe: FrontEnd) -> np.ndarray:
    """float32 [n_mels, 1 + len(audio) // hop]: librosa.feature.melspectrogram with fe's settings.

    Frames are centred (librosa's center=True with zero padding). The STFT runs in blocks of
    STFT_BLOCK_FRAMES frames through buffers allocated once per call: the windowed frames are read
    straight from the audio, and only the few frames that reach past either end are zero-padded, one
    by one, so no padded copy of the track and no large temporary is made.
    """
    audio = np.ascontiguousarray(audio, dtype=np.float32)  # frames are strided views of it
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError("empty audio (0 samples)")
    import scipy.fft  # ~5x faster than numpy's rfft on float32 frames (SIMD across frames)

    n_fft, hop, half, n, step = fe.n_fft, fe.hop_length, fe.n_fft // 2, len(audio), audio.strides[0]
    n_frames = 1 + n // hop
    block = min(STFT_BLOCK_FRAMES, n_frames)
    # Frame f covers samples [f·hop − half, f·hop − half + n_fft): those in [inner_first, inner_end)
    # lie inside the audio, the others reach into the zero padding.
    inner_first = -(-half // hop)
    inner_end = max(inner_first, (n - n_fft + half) // hop + 1)
    window, groups = _hann(n_fft), _mel_groups(fe.sample_rate, n_fft, fe.n_mels)
    mel = np.empty((fe.n_mels, n_frames), np.float32)
    frames = np.empty((block, n_fft), np.float32)
    magnitude = np.empty((block, n_fft // 2 + 1), np.float32)
    for first in range(0, n_frames, block):
        last = min(first + block, n_frames)
        inner_lo = min(max(inner_first, first), last)
        inner_hi = min(max(inner_end, inner_lo), last)
        if inner_hi > inner_lo:
            start = inner_lo * hop - half
            inner = np.lib.stride_tricks.as_strided(audio[start:], (inner_hi - inner_lo, n_fft), (hop * step, step))
            np.multiply(inner, window, out=frames[inner_lo - first : inner_hi - first])
        for f in (*range(first, inner_lo), *range(inner_hi, last)):  # the ends: zero-padded
            start, row = f * hop - half, frames[f - first]
            row.fill(0.0)
            lo, hi = max(start, 0), min(start + n_fft, n)
            row[lo - start : hi - start] = audio[lo:hi]
            row *= window
        spectrum = np.abs(scipy.fft.rfft(frames[: last - first], axis=1), out=magnitude[: last - first])
        if fe.power == 2.0:
            np.square(spectrum, out=spectrum)
        elif fe.power != 1.0:
            spectrum **= fe.power
        for band, end_band, lo_bin, hi_bin, weights in groups:
            mel[band:end_band, first:last] = (spectrum[:, lo_bin:hi_bin] @ weights).T
    return mel


def log_mel(audio: np.ndarray, fe: FrontEnd) -> np.ndarray:
    """float32 [n_mels, n_frames]: (log10(1 + log_gain * mel) - mean) / std."""
    x = mel_spectrogram(audio, fe)
    x *= np.float32(fe.log_gain)  # in place: a 10-minute track makes no temporary copies
    x += 1
    np.log10(x, out=x)
    if fe.mean != 0.0 or fe.std != 1.0:
        x -= np.float32(fe.mean)
        x /= np.float32(fe.std)
    return x


def segment(mel: np.ndarray, fe: FrontEnd) -> np.ndarray:
    """Cut [n_mels, T] features into float32 [n_seg, n_mels, segment_frames], deterministically.

    Segments are consecutive and non-overlapping from frame 0. The tail after the last whole
    segment becomes one more segment, the last `segment_frames` frames of the track (so it overlaps
    its neighbour), when it is at least half a segment long; a shorter tail is dropped. A track
    shorter than one segment is repeated (wrap-padded) to exactly one segment: a loop of real audio
    looks more like music to a CNN than a block of padding. Zero frames raise AudioError.
    """
    n_frames, size = mel.shape[1], fe.segment_frames
    if n_frames == 0:
        raise AudioError("empty features (0 frames)")
    if n_frames < size:
        return np.pad(mel, ((0, 0), (0, size - n_frames)), mode="wrap")[None].astype(np.float32, copy=False)
    starts = list(range(0, n_frames - size + 1, size))
    tail = n_frames - (starts[-1] + size)
    if 2 * tail >= size:
        starts.append(n_frames - size)
    return np.stack([mel[:, s : s + size] for s in starts]).astype(np.float32, copy=False)
