"""zstag.audio: decoding, resampling, log-mel front ends, segmentation, errors (synthetic audio only)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from zstag.audio import (
    ContentError,
    MUSICNN,
    PAPER,
    AudioError,
    FrontEnd,
    decode_audio,
    load_audio,
    log_mel,
    mel_spectrogram,
    segment,
    track_segments,
)

FRONT_ENDS = [PAPER, MUSICNN]


def one_line_error(excinfo, path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --- front end config ---------------------------------------------------------------------------


def test_front_end_constants():
    assert (PAPER.sample_rate, PAPER.n_fft, PAPER.hop_length, PAPER.n_mels, PAPER.power) == (22050, 1024, 512, 128, 1.0)
    assert (PAPER.log_gain, PAPER.mean, PAPER.std, PAPER.segment_frames) == (10.0, 0.2262, 0.2579, 130)
    assert (MUSICNN.sample_rate, MUSICNN.n_fft, MUSICNN.hop_length, MUSICNN.n_mels, MUSICNN.power) == (16000, 512, 256, 96, 2.0)
    assert (MUSICNN.log_gain, MUSICNN.mean, MUSICNN.std, MUSICNN.segment_frames) == (10000.0, 0.0, 1.0, 187)


@pytest.mark.parametrize("fe", FRONT_ENDS, ids=lambda fe: fe.name)
def test_front_end_dict_round_trip(fe):
    import json

    assert FrontEnd.from_dict(json.loads(json.dumps(fe.to_dict()))) == fe
    with pytest.raises(ValueError, match="bogus"):
        FrontEnd.from_dict({**fe.to_dict(), "bogus": 1})


# --- features -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fe", FRONT_ENDS, ids=lambda fe: fe.name)
def test_log_mel_matches_librosa(fe, tone):
    import librosa

    audio = tone(4.3, fe.sample_rate, freqs=(220.0, 1500.0), noise=0.05)
    mel = librosa.feature.melspectrogram(
        y=audio, sr=fe.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length, n_mels=fe.n_mels, power=fe.power)
    expected = (np.log10(1 + fe.log_gain * mel) - fe.mean) / fe.std
    ours = log_mel(audio, fe)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape == (fe.n_mels, 1 + len(audio) // fe.hop_length)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def _reference_mel(audio: np.ndarray, fe: FrontEnd) -> np.ndarray:
    """The textbook formula in float64: the full filterbank times |rfft(centred Hann frames)| ** power."""
    from zstag.audio import _hann, _mel_basis

    padded = np.pad(audio.astype(np.float64), fe.n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, fe.n_fft)[:: fe.hop_length]
    spectrum = np.abs(np.fft.rfft(frames * _hann(fe.n_fft).astype(np.float64), axis=1)) ** fe.power
    return _mel_basis(fe.sample_rate, fe.n_fft, fe.n_mels).astype(np.float64) @ spectrum.T


@pytest.mark.parametrize("fe", FRONT_ENDS, ids=lambda fe: fe.name)
def test_blocked_mel_equals_the_full_formula(fe):
    """Blocks of STFT_BLOCK_FRAMES frames, zero-padded ends and the banded filterbank change nothing
    beyond float32 rounding: lengths around block boundaries, shorter than a frame, one sample."""
    from zstag.audio import STFT_BLOCK_FRAMES

    block = STFT_BLOCK_FRAMES * fe.hop_length
    rng = np.random.default_rng(1)
    for n in (1, fe.n_fft // 3, fe.n_fft + 1, block - 1, block, block + fe.hop_length // 2, 2 * block + 7):
        audio = (0.3 * rng.standard_normal(n)).astype(np.float32)
        ours, expected = mel_spectrogram(audio, fe), _reference_mel(audio, fe)
        assert ours.dtype == np.float32 and ours.shape == expected.shape == (fe.n_mels, 1 + n // fe.hop_length)
        # rtol: a mel band sums <= n_fft / 2 + 1 = 513 positive terms, lambda sqrt(n) u = 6 * 22.6 * 2^-24 < 1e-5
        # (probabilistic bound, no cancellation); atol: the FFT's error is normwise, ~log2(n_fft) u of a
        # frame's norm (< 1e-6 of the loudest band), so quiet bands get it as an absolute error.
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6 * expected.max())
    every_other = (0.3 * rng.standard_normal(2 * block)).astype(np.float32)[::2]  # a strided view
    np.testing.assert_array_equal(mel_spectrogram(every_other, fe), mel_spectrogram(every_other.copy(), fe))


@pytest.mark.parametrize("fe", FRONT_ENDS, ids=lambda fe: fe.name)
def test_mel_groups_hold_every_filter_weight(fe):
    from zstag.audio import _mel_basis, _mel_groups

    basis = _mel_basis(fe.sample_rate, fe.n_fft, fe.n_mels)
    rebuilt = np.zeros_like(basis)
    for first, end, lo, hi, weights in _mel_groups(fe.sample_rate, fe.n_fft, fe.n_mels):
        rebuilt[first:end, lo:hi] = weights.T
    np.testing.assert_array_equal(rebuilt, basis)
    covered = sum((end - first) * (hi - lo) for first, end, lo, hi, _ in _mel_groups(fe.sample_rate, fe.n_fft, fe.n_mels))
    assert covered < basis.size / 4  # the point of the groups: a fraction of the dense product


@pytest.mark.parametrize("fe", FRONT_ENDS, ids=lambda fe: fe.name)
@pytest.mark.parametrize("freq", [500.0, 1000.0, 4000.0])
def test_sine_lands_in_its_mel_band(fe, freq, tone):
    import librosa

    centres = librosa.mel_frequencies(fe.n_mels + 2, fmax=fe.sample_rate / 2)[1:-1]  # Slaney triangle peaks
    energy = log_mel(tone(2.0, fe.sample_rate, freqs=(freq,)), fe)[:, 5:-5].mean(axis=1)
    loudest = int(np.argmax(energy))
    assert abs(loudest - int(np.argmin(np.abs(centres - freq)))) <= 1
    assert energy[loudest] > energy.mean() + 3 * energy.std()


def test_log_mel_of_empty_audio_raises():
    with pytest.raises(AudioError, match="0 samples"):
        log_mel(np.zeros(0, np.float32), PAPER)


# --- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fe", FRONT_ENDS, ids=lambda fe: fe.name)
def test_formats_give_the_same_features(fe, tone, write_audio):
    left = tone(5.0, 44100, freqs=(330.0, 2500.0), noise=0.02)
    stereo = np.stack([left, 0.5 * left], axis=1)
    reference = log_mel(load_audio(write_audio("a.wav", stereo, 44100), fe.sample_rate), fe)
    lossless = log_mel(load_audio(write_audio("a.flac", stereo, 44100), fe.sample_rate), fe)
    np.testing.assert_allclose(lossless, reference, atol=0.05)
    for name in ["a.ogg", "a.mp3"]:
        features = log_mel(load_audio(write_audio(name, stereo, 44100), fe.sample_rate), fe)
        assert features.shape == reference.shape, name
        # lossy codecs: close on average (log10(1 + 10000 x) magnifies the codec's noise floor)
        assert np.abs(features - reference).mean() < 0.15 * reference.std(), name


def test_downmix_averages_channels(tone, write_audio):
    left = tone(1.0, 22050)
    path = write_audio("lr.wav", np.stack([left, np.zeros_like(left)], axis=1), 22050, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 22050), 0.5 * left, atol=1e-7)


@pytest.mark.parametrize("rate", [44100, 48000, 16000])
def test_resampling(rate, tone, write_audio):
    import soxr

    source = tone(3.0, rate, freqs=(1000.0,))
    audio = load_audio(write_audio(f"r{rate}.wav", source, rate, subtype="FLOAT"), 22050)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 3 * 22050) <= 1
    np.testing.assert_allclose(audio, soxr.resample(source, rate, 22050, "HQ"), atol=1e-5)
    middle = audio[2000:-2000]
    spectrum = np.abs(np.fft.rfft(middle))
    assert abs(np.argmax(spectrum) * 22050 / len(middle) - 1000.0) < 2.0
    assert abs(np.sqrt(np.mean(middle**2)) - 0.3 / np.sqrt(2)) < 0.003


@pytest.mark.parametrize("name", ["span.wav", "span.mp3"])
def test_offset_and_duration_read_that_span(name, tone, write_audio):
    path = write_audio(name, tone(12.0, 22050, freqs=(300.0,), noise=0.1), 22050)
    full = load_audio(path, 22050)
    span = load_audio(path, 22050, offset=4.5, duration=2.0)
    start = round(4.5 * 22050)
    assert len(span) == 2 * 22050
    # mp3 frames after a seek need the bit reservoir: without the pre-roll the start would differ
    np.testing.assert_allclose(span, full[start : start + len(span)], atol=1e-6)
    tail = load_audio(path, 22050, offset=11.0, duration=5.0)
    assert abs(len(tail) - 22050) < 2300  # mp3 may add up to a frame of padding


def test_decode_reports_the_native_format(tone, write_audio, tmp_path):
    import soundfile as sf

    for name, rate in (("n.wav", 48000), ("n.mp3", 44100), ("n.flac", 22050)):
        path = write_audio(name, tone(2.5, rate, noise=0.01), rate)
        decoded = decode_audio(path, 16000, offset=0.5, duration=1.0)
        info = sf.info(str(path))
        assert (decoded.native_rate, decoded.native_seconds) == (info.samplerate, info.duration), name
        np.testing.assert_array_equal(decoded.samples, load_audio(path, 16000, offset=0.5, duration=1.0))
    if shutil.which("ffmpeg") is not None:  # ffmpeg's files: the header is not read here
        import subprocess

        m4a = tmp_path / "n.m4a"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(tmp_path / "n.wav"), "-c:a", "aac",
                        str(m4a)], check=True)
        decoded = decode_audio(m4a, 16000)
        assert decoded.native_rate is None and decoded.native_seconds is None and decoded.samples.size > 0


def test_offset_past_the_end(tone, write_audio):
    path = write_audio("short.wav", tone(1.0, 22050), 22050)
    with pytest.raises(AudioError, match="past the end") as excinfo:
        load_audio(path, 22050, offset=5.0)
    one_line_error(excinfo, path)


def test_offset_past_the_end_of_a_very_short_file_names_its_length(tone, write_audio):
    path = write_audio("blip.wav", tone(0.05, 22050), 22050)
    with pytest.raises(AudioError, match=r"past the end \(0\.05 s\)"):
        load_audio(path, 22050, offset=1.0)


def test_nan_samples_are_named_as_the_cause(tone, tmp_path):
    import soundfile as sf

    from zstag.acoustics import analyse_file

    x = tone(4.0, 22050)
    x[1000:1100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x.astype(np.float32), 22050, subtype="FLOAT")
    with pytest.raises(ContentError, match="NaN or infinite samples") as excinfo:
        analyse_file(path, PAPER)
    one_line_error(excinfo, path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_ffmpeg_cause_is_its_complaint_not_its_advice(tmp_path):
    """An mp4 with video and no audio: ffmpeg says the map matches no streams, then how to ignore that."""
    import subprocess

    path = tmp_path / "video.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=32x32:d=1",
                    "-c:v", "mpeg4", str(path)], check=True)
    with pytest.raises(ContentError) as excinfo:
        load_audio(path, 22050)
    message = one_line_error(excinfo, path)
    assert "matches no streams" in message and "To ignore this" not in message, message


def test_track_segments(tone, write_audio):
    path = write_audio("t.ogg", tone(7.0, 44100, noise=0.05), 44100)
    segments = track_segments(path, PAPER)
    assert segments.shape == (2, 128, 130) and segments.dtype == np.float32
    assert track_segments(path, MUSICNN, offset=1.0, duration=3.5).shape == (1, 96, 187)


# --- segmentation -------------------------------------------------------------------------------

SEGMENT_COUNTS = {  # seconds: (paper, musicnn); frames = 1 + samples // hop
    0.5: (1, 1),  # shorter than a segment: one wrap-padded segment
    3.0: (1, 1),  # paper 130 frames exactly; musicnn 188 frames, 1-frame tail dropped
    30.0: (10, 10),  # paper 1292 = 9 * 130 + 122 (tail kept); musicnn 1876 = 10 * 187 + 6 (dropped)
    600.0: (199, 201),  # paper 25840 = 198 * 130 + 100 (kept); musicnn 37501 = 200 * 187 + 101 (kept)
}


@pytest.mark.parametrize("seconds", SEGMENT_COUNTS)
@pytest.mark.parametrize("fe", FRONT_ENDS, ids=lambda fe: fe.name)
def test_segment_counts(seconds, fe, tone):
    mel = log_mel(tone(seconds, fe.sample_rate, noise=0.01), fe)
    segments = segment(mel, fe)
    expected = SEGMENT_COUNTS[seconds][FRONT_ENDS.index(fe)]
    assert segments.shape == (expected, fe.n_mels, fe.segment_frames)
    assert segments.dtype == np.float32


def test_segment_layout():
    fe, size = PAPER, PAPER.segment_frames
    mel = np.arange(128 * 300, dtype=np.float32).reshape(128, 300)  # 2 * 130 + 40: tail < half, dropped
    segments = segment(mel, fe)
    assert len(segments) == 2
    np.testing.assert_array_equal(segments[1], mel[:, size : 2 * size])
    mel = np.arange(128 * 330, dtype=np.float32).reshape(128, 330)  # 2 * 130 + 70: tail kept, end-aligned
    segments = segment(mel, fe)
    assert len(segments) == 3
    np.testing.assert_array_equal(segments[2], mel[:, -size:])
    short = np.arange(128 * 50, dtype=np.float32).reshape(128, 50)  # wrap-padded to one segment
    (padded,) = segment(short, fe)
    np.testing.assert_array_equal(padded[:, :50], short)
    np.testing.assert_array_equal(padded[:, 50:100], short)
    np.testing.assert_array_equal(padded[:, 100:], short[:, :30])
    with pytest.raises(AudioError):
        segment(np.zeros((128, 0), np.float32), fe)


# --- bad files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="no such file") as excinfo:
        load_audio(path, 22050)
    one_line_error(excinfo, path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty file") as excinfo:
        load_audio(path, 22050)
    one_line_error(excinfo, path)


def test_wav_without_samples(write_audio):
    path = write_audio("silent.wav", np.zeros((0, 1), np.float32), 22050)
    with pytest.raises(AudioError, match="no audio samples") as excinfo:
        track_segments(path, PAPER)
    one_line_error(excinfo, path)


def dbfs(level: float) -> float:
    return 10.0 ** (level / 20.0)


@pytest.mark.parametrize("name, samples, subtype, cause", [
    ("one-sample.wav", np.full(1, 0.5, np.float32), "PCM_16", "too short: 0.045 ms (need 250 ms)"),
    ("blip.wav", np.full(2205, 0.5, np.float32), "PCM_16", "too short: 100 ms (need 250 ms)"),
    ("zeros.wav", np.zeros(60 * 22050, np.float32), "PCM_16", "silent (all samples zero; under -84.3 dBFS)"),
    # RMS -120 dBFS: its peak (~-104 dBFS) is far under 2 steps of 16 bits; float, since 16 bits would round it to 0
    ("hiss.wav", dbfs(-120) * np.random.default_rng(0).standard_normal(60 * 22050).astype(np.float32), "FLOAT",
     "silent (peak -10"),
])
def test_silent_or_too_short_audio_is_a_content_error(write_audio, name, samples, subtype, cause):
    from zstag.acoustics import analyse_file

    path = write_audio(name, samples, 22050, subtype=subtype)
    with pytest.raises(ContentError) as excinfo:
        analyse_file(path, PAPER)  # what tag, eval and preprocess decode with
    assert one_line_error(excinfo, path).startswith(f"{path}: {cause}")
    assert len(load_audio(path, 22050)) == len(samples)  # the decoder itself reads any audio: tools read windows


def test_quiet_or_partly_silent_audio_is_audio(tone, write_audio):
    from zstag.acoustics import analyse_file

    quiet = tone(2.0, 22050, amplitude=dbfs(-50))  # quiet but real: 103 steps of 16 bits
    assert analyse_file(write_audio("quiet.wav", quiet, 22050), MUSICNN)[1]["duration_s"] == 2.0
    gap = np.concatenate([np.zeros(10 * 22050, np.float32), tone(1.0, 22050)])  # 10 s of silence, then a tone
    path = write_audio("gap.wav", gap, 22050)
    assert analyse_file(path, PAPER)[1]["duration_s"] == 11.0
    # only the span decoded counts: its silent part alone is silent, its tail alone too short
    with pytest.raises(ContentError, match=r"^\S+: silent in the span selected \(all samples zero"):
        analyse_file(path, PAPER, offset=1.0, duration=5.0)
    with pytest.raises(ContentError, match=r"too short: 100 ms in the span selected"):
        analyse_file(path, PAPER, offset=10.9)


@pytest.mark.parametrize("with_ffmpeg", [False, True])
def test_text_file_named_mp3(with_ffmpeg, tmp_path, monkeypatch):
    if with_ffmpeg and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    if not with_ffmpeg:
        monkeypatch.setattr("zstag.audio.shutil.which", lambda name: None)
    path = tmp_path / "notes.mp3"
    path.write_text("these are not the droids you are looking for\n" * 20)
    with pytest.raises(AudioError, match="cannot decode") as excinfo:
        load_audio(path, 22050)
    one_line_error(excinfo, path)


def test_truncated_mp3(tone, write_audio):
    path = write_audio("cut.mp3", tone(20.0, 44100, noise=0.1), 44100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated") as excinfo:
        load_audio(path, 22050)
    one_line_error(excinfo, path)


def test_truncated_flac(tone, write_audio):
    path = write_audio("cut.flac", tone(10.0, 44100, noise=0.1), 44100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, 22050)
    one_line_error(excinfo, path)


@pytest.mark.parametrize("name, subtype, channels", [("cut.wav", "PCM_16", 1), ("cut.wav", "FLOAT", 2),
                                                      ("cut.aiff", "PCM_24", 2)])
def test_truncated_wav_and_aiff(tone, write_audio, name, subtype, channels):
    """libsndfile reads what is left of a WAV/AIFF cut short; the header's data size says it was cut."""
    x = tone(6.0, 22050, noise=0.1)
    path = write_audio(name, np.stack([x] * channels, axis=1) if channels > 1 else x, 22050, subtype=subtype)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ContentError, match=r"truncated or corrupt: decoded 3\.0 s of the 6\.0 s its header declares") as excinfo:
        load_audio(path, 22050)
    one_line_error(excinfo, path)
    assert len(load_audio(path, 22050, duration=2.0)) == 2 * 22050  # a span within what is left still reads


def test_wav_chunks_after_the_data_and_streamed_lengths_are_not_truncation(tone, write_audio):
    x = tone(2.0, 22050)
    path = write_audio("list.wav", x, 22050, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data += b"LIST" + (10).to_bytes(4, "little") + b"INFOISFT\x00\x00"  # a chunk after the audio
    data[4:8] = (len(data) - 8).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert len(load_audio(path, 22050)) == len(x)
    for placeholder in (0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000):  # ffmpeg, arecord and sox writing to a pipe
        streamed = bytearray(path.read_bytes()[: 44 + 2 * len(x)])
        streamed[40:44] = placeholder.to_bytes(4, "little")  # a "data" size its writer never came back to fix
        path.write_bytes(bytes(streamed))
        assert len(load_audio(path, 22050)) == len(x)


def test_m4a_without_ffmpeg_says_ffmpeg_is_needed(tmp_path, monkeypatch):
    monkeypatch.setattr("zstag.audio.shutil.which", lambda name: None)
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    with pytest.raises(AudioError, match="ffmpeg") as excinfo:
        load_audio(path, 22050)
    one_line_error(excinfo, path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_m4a_through_ffmpeg_matches_wav(tone, write_audio, tmp_path):
    import subprocess

    left = tone(4.0, 44100, freqs=(330.0, 2500.0), noise=0.02)
    wav = write_audio("a.wav", np.stack([left, 0.5 * left], axis=1), 44100)
    m4a = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "192k", str(m4a)],
                   check=True)
    reference = load_audio(wav, 22050)
    audio = load_audio(m4a, 22050)
    assert abs(len(audio) - len(reference)) < 2048  # AAC pads its last frame
    n = len(reference)
    assert abs(np.dot(audio[:n], reference) / np.dot(reference, reference) - 1) < 0.02  # same downmix gain
    a, b = log_mel(audio[:n], PAPER), log_mel(reference, PAPER)
    assert np.abs(a - b).mean() < 0.15 * b.std()
    span = load_audio(m4a, 22050, offset=1.0, duration=2.0)
    assert abs(len(span) - 2 * 22050) <= 1


def test_mel_filterbank_cache(tmp_path, monkeypatch):
    from librosa.filters import mel

    from zstag import audio

    monkeypatch.setenv("ZSTAG_CACHE_DIR", str(tmp_path))
    expected = mel(sr=16000, n_fft=512, n_mels=96, dtype=np.float32)
    audio._mel_basis.cache_clear()
    np.testing.assert_array_equal(audio._mel_basis(16000, 512, 96), expected)
    (cached,) = (tmp_path / "mel").glob("mel-16000-512-96-librosa*.npy")
    audio._mel_basis.cache_clear()
    np.testing.assert_array_equal(audio._mel_basis(16000, 512, 96), expected)  # read back from the file
    cached.write_bytes(b"garbage")  # a damaged cache file is recomputed, not trusted
    audio._mel_basis.cache_clear()
    np.testing.assert_array_equal(audio._mel_basis(16000, 512, 96), expected)
    audio._mel_basis.cache_clear()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_m4a_at_a_path_longer_than_libsndfile_takes_goes_through_ffmpeg(tone, write_audio, long_folder, tmp_path):
    """soundfile gets the file as a descriptor and ffmpeg its absolute path (fine up to the system's
    limit): both decode a file 1,100+ characters down, alike."""
    import subprocess

    folder = long_folder(tmp_path, 1100)
    wav = write_audio("a.wav", tone(2.0, 22050), 22050).rename(folder / "a.wav")
    m4a = folder / "a.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    reference = load_audio(wav, 22050)
    audio = load_audio(m4a, 22050)
    assert len(reference) == 2 * 22050 and abs(len(audio) - len(reference)) < 2048  # AAC pads its last frame
