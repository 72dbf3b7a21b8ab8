"""--sample-seconds (zstag/windows.py): windows spread over a track, through tag, search, similar and the API."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

import zstag
from zstag import embedcache, windows, workers
from zstag.audio import PAPER
from zstag.cli import app
from zstag.errors import UsageError

from test_tag import write_music

LABELS = "rock,jazz,piano"


@pytest.fixture(autouse=True)
def _fresh_cache(cache_dir):
    return cache_dir


@pytest.fixture()
def long_track(tmp_path):
    """30 s of 'music' at the tiny model's rate (22,050 Hz, no resampling): 10 whole-track segments."""
    return write_music(tmp_path / "long.flac", seconds=30.0, seed=2)


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def tag_scores(path, model_dir, *extra) -> tuple[dict[str, float], str]:
    result = cli("tag", path, "-l", LABELS, "-m", model_dir, "-f", "json", *extra)
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)["files"]
    return {t["label"]: t["score"] for t in record["tags"]}, result.stderr


def test_windows_are_whole_segments_evenly_spread_inside_the_span():
    size = PAPER.segment_frames
    starts = windows.window_starts(1000, 10.0, PAPER)  # 10 s buys 3 segments of ~3.02 s
    assert len(starts) == windows.window_count(10.0, PAPER) == 3
    centres = [s + size // 2 for s in starts]
    assert centres == [1000 // 6, 3 * 1000 // 6, 5 * 1000 // 6]  # (i + ½) · span / k
    assert starts[0] >= 0 and starts[-1] + size <= 1000
    assert all(b - a >= size for a, b in zip(starts, starts[1:]))  # never overlapping
    assert windows.window_count(0.5, PAPER) == 1  # less than a segment: one segment
    assert windows.window_count(3 * PAPER.segment_seconds, PAPER) == 3  # exactly three in decimal
    # A span no longer than N (or than its windows) is analysed whole.
    n_frames = math.floor(10.0 * PAPER.sample_rate / PAPER.hop_length)
    assert windows.window_starts(n_frames, 10.0, PAPER) is None
    assert windows.window_starts(size, 0.5, PAPER) is None


def test_seeking_to_the_windows_gives_the_whole_tracks_frames(long_track, monkeypatch):
    """Decoded window by window (seeking), the segments are the whole track's frames at the same places;
    decoded whole (the path for ffmpeg's formats), they are those frames exactly."""
    fe = PAPER
    mel, _ = windows.analyse_file(long_track, fe)
    starts = windows.window_starts(mel.shape[1] - 1, 10.0, fe)
    expected = np.stack([mel[:, s:s + fe.segment_frames] for s in starts])
    sought, stats = windows.analyse_sampled(long_track, fe, 10.0)
    assert sought.shape == (3, fe.n_mels, fe.segment_frames) and stats["duration_s"] == pytest.approx(30.0)
    # Same samples (a 22,050 Hz file, no resampler); only the mel GEMM may sum in another order: each mel value's
    # relative error ≤ n·u with n = n_fft/2 + 1 terms, u = 2^-24; log10(1 + g·x) turns that into ≤ n·u / ln 10
    # absolute, then / std. Twice that for the two sides.
    bound = 2 * (fe.n_fft // 2 + 1) * 2.0 ** -24 / (math.log(10) * fe.std)
    np.testing.assert_allclose(sought, expected, rtol=0, atol=bound)
    monkeypatch.setattr(windows, "_probe", lambda path: None)  # as for a file only ffmpeg reads
    cut, _ = windows.analyse_sampled(long_track, fe, 10.0)
    np.testing.assert_array_equal(cut, expected)


def test_sampling_reduces_the_segments_the_model_sees(long_track, tiny_model_dir, monkeypatch):
    from zstag.model import ZeroShotModel

    seen = []
    real = ZeroShotModel.embed_track

    def counting(self, segments):
        seen.append(len(segments))
        return real(self, segments)

    monkeypatch.setattr(ZeroShotModel, "embed_track", counting)
    (whole,) = zstag.embed(long_track, tiny_model_dir, use_cache=False, workers=1)
    (part,) = zstag.embed(long_track, tiny_model_dir, use_cache=False, workers=1, sample_seconds=10)
    assert seen == [10, 3]
    assert whole.error is None and part.error is None and not np.array_equal(whole.embedding, part.embedding)


def test_sampled_scores_are_deterministic_and_cached_apart(long_track, tiny_model_dir, cache_dir):
    whole, _ = tag_scores(long_track, tiny_model_dir)
    part, said = tag_scores(long_track, tiny_model_dir, "--sample-seconds", "10")
    assert "(0 from the cache)" in said  # not the whole track's row
    assert part != whole
    again, said = tag_scores(long_track, tiny_model_dir, "--sample-seconds", "10", "--no-cache")
    assert again == part  # recomputed: the same windows, the same numbers
    assert tag_scores(long_track, tiny_model_dir, "--sample-seconds", "10")[1].count("(1 from the cache)") == 1
    other, said = tag_scores(long_track, tiny_model_dir, "--sample-seconds", "20")
    assert "(0 from the cache)" in said and other != part  # each N has its own rows
    assert tag_scores(long_track, tiny_model_dir) == (whole, "zstag: tagged 1 of 1 files (1 from the cache)\n")
    with sqlite3.connect(cache_dir / embedcache.CACHE_FILE) as db:
        ids = sorted(row[0] for row in db.execute("SELECT model_id FROM embeddings"))
    model_id = zstag.load_model(tiny_model_dir).model_id
    assert ids == sorted([model_id, embedcache.cache_id(model_id, sample_seconds=10),
                          embedcache.cache_id(model_id, sample_seconds=20.0)])


def test_a_file_no_longer_than_n_is_analysed_whole(tmp_path, tiny_model_dir):
    short = write_music(tmp_path / "short.wav", seconds=8.0, seed=4)
    tiny = write_music(tmp_path / "tiny.wav", seconds=1.0, seed=6)  # under one segment: wrap-padded, as whole
    for path in (short, tiny):
        whole, _ = tag_scores(path, tiny_model_dir)
        part, said = tag_scores(path, tiny_model_dir, "--sample-seconds", "9")
        assert part == whole and "(0 from the cache)" in said  # same numbers, its own cache row
    segments, _ = workers.decode_file(str(short), PAPER.to_dict(), sample_seconds=1.0)
    assert len(segments) == 1  # longer than N = 1 s: one segment's window
    # Sampling within --offset / --max-seconds: a 6 s span of the 8 s file, N = 6: whole span.
    span, _ = workers.decode_file(str(short), PAPER.to_dict(), 1.0, 6.0, sample_seconds=6.0)
    whole_span, _ = workers.decode_file(str(short), PAPER.to_dict(), 1.0, 6.0)
    np.testing.assert_array_equal(span, whole_span)


def test_bad_files_fail_as_they_do_whole(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notaudio.flac").write_text("notes, not audio\n" * 100)
    quiet = tmp_path / "quiet.wav"
    import soundfile as sf

    sf.write(quiet, np.zeros(20 * 22050, np.float32), 22050)
    for name in ("empty.wav", "notaudio.flac", "quiet.wav"):
        path = str(tmp_path / name)
        outcome = workers.decode_file(path, PAPER.to_dict(), sample_seconds=6.0)
        assert isinstance(outcome, workers.ContentFailure) and outcome.startswith(f"{path}: "), outcome
    past = workers.decode_file(str(quiet), PAPER.to_dict(), 60.0, None, sample_seconds=6.0)
    assert "past the end" in past


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_a_bad_sample_length_is_a_one_line_usage_error(value, tmp_path, tiny_model_dir):
    write_music(tmp_path / "a.wav")
    for args in (["tag", tmp_path, "-l", "rock"], ["search", "rock", tmp_path], ["similar", tmp_path / "a.wav"]):
        result = cli(*args, "-m", tiny_model_dir, "--sample-seconds", value)
        assert result.exit_code == 2 and result.stdout == "", (args, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line == f"zstag: error: --sample-seconds: need a finite number of seconds > 0 (got {float(value)})"
    with pytest.raises(ValueError, match="seconds > 0") as raised:  # the API: as a bad span, a ValueError
        zstag.tag(tmp_path, "rock", tiny_model_dir, sample_seconds=float(value))
    assert isinstance(raised.value, UsageError)


def test_search_and_similar_never_mix_sampled_and_whole_embeddings(tmp_path, tiny_model_dir):
    folder = tmp_path / "music"
    folder.mkdir()
    for seed in range(3):
        write_music(folder / f"{seed}.flac", seconds=16.0, seed=seed)
    sampled = ["--sample-seconds", "6", "-f", "json", "-m", tiny_model_dir]
    first = cli("search", "rock", folder, *sampled)
    assert first.exit_code == 0, first.stderr
    part = {t["path"]: t["score"] for t in json.loads(first.stdout)["tracks"]}
    whole = cli("search", "rock", folder, "-f", "json", "-m", tiny_model_dir)
    assert {t["path"]: t["score"] for t in json.loads(whole.stdout)["tracks"]} != part
    # Without a PATH: the cache's rows of the same kind only.
    cached = cli("search", "rock", *sampled)
    assert cached.exit_code == 0 and {t["path"]: t["score"] for t in json.loads(cached.stdout)["tracks"]} == part
    like = cli("similar", folder / "0.flac", *sampled)
    assert like.exit_code == 0, like.stderr
    assert sorted(t["path"] for t in json.loads(like.stdout)["tracks"]) == sorted(p for p in part if "0.flac" not in p)
    nothing = cli("search", "rock", "--sample-seconds", "9", "-m", tiny_model_dir)
    assert nothing.exit_code == 1 and "no tracks to search" in nothing.stderr


def test_the_cache_id_keeps_bf16_and_sampling_apart():
    ids = {embedcache.cache_id("m", bf16, n) for bf16 in (False, True) for n in (None, 10, 10.5, 20)}
    assert len(ids) == 8 and embedcache.cache_id("m") == "m"
    assert embedcache.cache_id("m", sample_seconds=10) == embedcache.cache_id("m", sample_seconds=10.0)
