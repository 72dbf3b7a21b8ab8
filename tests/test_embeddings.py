"""Track embeddings (zstag.embeddings), their cache (zstag.embedcache), the decoder processes (zstag.workers)
and acoustic statistics (zstag.acoustics)."""

import glob
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import crashing_decoder  # tests/crashing_decoder.py
from zstag import acoustics, audio, embedcache, embeddings, workers
from zstag.audio import PAPER
from zstag.cli import app
from zstag.embedcache import CACHE_FILE, EmbeddingCache, content_digest
from zstag.embeddings import embed_files
from zstag.errors import ZstagWarning
from zstag.model import ZeroShotModel, cnn1d_config, load_model, save_model
from zstag.workers import CRASH_MESSAGE, NO_DECODERS, decode_files

SR = 22050


def write_tone(path, seconds=3.0, freq=440.0, amplitude=0.5, sr=SR, noise=0.01):
    t = np.arange(int(seconds * sr)) / sr
    noise = noise * np.random.default_rng(int(freq)).standard_normal(len(t))
    sf.write(path, (amplitude * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32), sr)
    return str(path)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture()
def tracks(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    return [write_tone(folder / f"t{i}.wav", seconds=2.0 + 2 * i, freq=300.0 * (i + 1)) for i in range(3)]


def tag_cli(model_dir, paths, *options):
    """`zstag tag PATHS` with the model in model_dir, run in this process: its notices are on result.stderr."""
    return CliRunner().invoke(app, ["tag", *map(str, paths), "--labels", "rock,jazz", "--model", str(model_dir),
                                    "--format", "json", *options])


def direct_embedding(model, path, offset=0.0, duration=None):
    """model.embed_track over every segment of the file, with the thread settings embed_files uses."""
    with embeddings.inference_threads():
        return model.embed_track(audio.track_segments(path, model.front_end, offset, duration))


def test_content_digest_follows_content_not_path(tmp_path):
    a = write_tone(tmp_path / "a.wav")
    b = tmp_path / "b.wav"
    shutil.copy(a, b)
    assert content_digest(a) == content_digest(b)
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle of the file
    b.write_bytes(bytes(data))
    assert content_digest(a) != content_digest(b)


def test_embedding_is_the_whole_track_in_input_order(model, tracks, cache_dir):
    threads = torch.get_num_threads()
    results = embed_files(model, tracks, workers=2, progress=False)
    assert torch.get_num_threads() == threads  # restored
    assert [r.path for r in results] == tracks
    for r in results:
        assert r.ok and r.error is None and not r.cached
        assert r.embedding.dtype == np.float32 and r.embedding.shape == (100,)
        np.testing.assert_array_equal(r.embedding, direct_embedding(model, r.path))
    assert not np.allclose(results[0].embedding, results[1].embedding)
    # the worker pool and in-process decoding give the same numbers
    direct = embed_files(model, tracks, workers=0, use_cache=False, progress=False)
    for a, b in zip(results, direct):
        np.testing.assert_array_equal(a.embedding, b.embedding)


def _build_after_first_decode(monkeypatch, build):
    """A ModelBuild-style build that cannot finish before embed_files has received a decoded track, and
    the list of how many tracks it received while building (one entry per embed_files call)."""
    import threading

    released, received = threading.Event(), []
    real = embeddings._decoded_while_building

    def spy(model_build, decoded):
        def tap():
            for item in decoded:
                released.set()
                yield item
        early = real(model_build, tap())
        received.append(len(early))
        return early

    monkeypatch.setattr(embeddings, "_decoded_while_building", spy)
    return lambda: released.wait(60) and build(), received


@pytest.mark.parametrize("workers", [2, 0])
def test_decoding_starts_while_the_model_builds(model, tiny_model_dir, tracks, cache_dir, monkeypatch, workers):
    """A ModelBuild gives the numbers of the built model; with workers the first tracks decode before
    the model exists (no decode workers: the model comes first, as decoding would wait for it)."""
    expected = embed_files(model, tracks, workers=workers, use_cache=False, progress=False)
    build, received = _build_after_first_decode(monkeypatch, lambda: load_model(tiny_model_dir))
    if workers == 0:
        build = lambda: load_model(tiny_model_dir)  # noqa: E731  (waiting for a decode would deadlock)
    pending = embeddings.ModelBuild(build, model.model_id, model.front_end)
    results = embed_files(pending, tracks, workers=workers, progress=False)
    assert received == ([] if workers == 0 else [received[0]]) and (workers == 0 or received[0] >= 1)
    for a, b in zip(expected, results):
        assert b.ok and not b.cached
        np.testing.assert_array_equal(a.embedding, b.embedding)
    assert EmbeddingCache(cache_dir / CACHE_FILE).count(model.model_id) == len(tracks)


def test_a_failed_model_build_stores_nothing(model, tracks, cache_dir, monkeypatch, tmp_path):
    """Tracks decoded while the model was building are dropped when the build fails: no cache rows,
    not even for content that cannot decode; the build's own error comes out."""
    from zstag.modelfile import ModelError

    (tmp_path / "empty.wav").write_bytes(b"")

    def broken():
        raise ModelError("models/x: weights and config do not match")

    build, received = _build_after_first_decode(monkeypatch, broken)
    pending = embeddings.ModelBuild(build, model.model_id, model.front_end)
    with pytest.raises(ModelError, match="do not match"):
        embed_files(pending, [str(tmp_path / "empty.wav"), *tracks], workers=2, progress=False)
    assert received and received[0] >= 1
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        assert [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("embeddings", "decode_failures")] == [0, 0]


@pytest.fixture(scope="module")
def musicnn_model(tmp_path_factory):
    from zstag.audio import MUSICNN

    config = {
        "name": "musicnn-test", "front_end": MUSICNN.to_dict(), "embed_dim": 100, "word_dim": 50,
        "words": "glove-6B-50d", "audio_projection": {"type": "linear"}, "label_projection": {"type": "linear"},
        "audio_encoder": {
            "type": "musicnn", "backbones": ["MSD_musicnn"], "outputs": ["penultimate"], "feature_dim": 200
        },
    }
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("musicnn")
    save_model(ZeroShotModel(config), folder)
    return load_model(folder)


def test_musicnn_model_embeds_whole_tracks(musicnn_model, tmp_path, cache_dir):
    path = write_tone(tmp_path / "tone.wav", seconds=7.0)  # three 3 s patches
    threads = torch.get_num_threads()
    (result,) = embed_files(musicnn_model, [path], workers=1, progress=False)
    assert torch.get_num_threads() == threads  # restored
    assert result.ok and result.embedding.shape == (100,)
    np.testing.assert_array_equal(result.embedding, direct_embedding(musicnn_model, path))


def test_heavy_models_embed_several_tracks_at_once_with_the_same_numbers(musicnn_model, tmp_path, monkeypatch):
    """musicnn tracks go to a pool of inference threads: results equal one track at a time on this
    thread, in input order, whatever --workers says; a track that fails to embed fails alone."""
    monkeypatch.setattr(embeddings, "default_workers", lambda: 3)  # 3 inference threads, even on 1 core
    paths = [write_tone(tmp_path / f"m{i}.wav", seconds=1.0 + 2.5 * i, freq=200.0 * (i + 1)) for i in range(5)]
    direct = [direct_embedding(musicnn_model, p) for p in paths]
    for workers in (0, 2):
        results = embed_files(musicnn_model, paths, workers=workers, use_cache=False, progress=False)
        assert [r.path for r in results] == paths
        for r, expected in zip(results, direct):
            np.testing.assert_array_equal(r.embedding, expected)

    segment_sum = musicnn_model.segment_sum

    def flaky(segments):
        if len(segments) == 3:  # the 8.5 s track
            raise RuntimeError("boom")
        return segment_sum(segments)

    monkeypatch.setattr(musicnn_model, "segment_sum", flaky)
    results = embed_files(musicnn_model, paths, workers=2, use_cache=False, progress=False)
    assert [r.ok for r in results] == [True, True, True, False, True]
    assert results[3].error == f"{paths[3]}: cannot embed: RuntimeError: boom"
    np.testing.assert_array_equal(results[4].embedding, direct[4])


def test_a_long_track_uses_every_inference_thread_with_the_same_numbers(musicnn_model, tmp_path, monkeypatch):
    """A track longer than one forward pass (TRACK_BATCH segments) is split across the inference
    threads; its passes are added in order, so the embedding equals one thread's, bit for bit."""
    import threading

    from zstag.model import TRACK_BATCH

    monkeypatch.setattr(embeddings, "default_workers", lambda: 2)
    path = write_tone(tmp_path / "long.wav", seconds=3.0 * (2 * TRACK_BATCH + 2), freq=330.0)  # 3 passes
    expected = direct_embedding(musicnn_model, path)
    segment_sum, passes = musicnn_model.segment_sum, []

    def recording(segments):
        passes.append((len(segments), threading.current_thread().name))
        return segment_sum(segments)

    monkeypatch.setattr(musicnn_model, "segment_sum", recording)
    (result,) = embed_files(musicnn_model, [path], workers=2, use_cache=False, progress=False)
    np.testing.assert_array_equal(result.embedding, expected)
    assert sorted(n for n, _ in passes)[-2:] == [TRACK_BATCH, TRACK_BATCH] and len(passes) == 3
    assert len({name for _, name in passes}) == 2 and all(n.startswith("zstag-embed") for _, n in passes)


def test_tracks_waiting_for_heavy_inference_stay_bounded(monkeypatch):
    """Decoding outruns musicnn: submit blocks until tracks, not just forward passes, are done, so at
    most threads × (1 + QUEUED_PER_THREAD) decoded tracks are held, however many passes each has."""
    from zstag.model import TRACK_BATCH

    class Slow:  # the model surface _Inference uses, 5 ms per forward pass
        config = {"audio_encoder": {"type": "musicnn"}}
        device = torch.device("cpu")
        mean_of_sums = staticmethod(ZeroShotModel.mean_of_sums)

        def to(self, device):
            return self

        def segment_sum(self, chunk):
            time.sleep(0.005)
            return torch.ones(4, dtype=torch.float64) * len(chunk)

        def embed_sums(self, sums, n_segments):
            return self.mean_of_sums(sums, n_segments)

    monkeypatch.setattr(embeddings, "default_workers", lambda: 2)
    held, done = 0, []
    with embeddings._Inference(Slow(), torch.device("cpu"), 2) as inference:
        for i in range(12):  # tracks of 4 passes each
            done += inference.submit(i, f"t{i}", np.zeros((4 * TRACK_BATCH, 1, 1), np.float32), {})
            held = max(held, len(inference.tracks))
        done += list(inference.drain())
    assert held <= 2 * (1 + embeddings.QUEUED_PER_THREAD)
    assert sorted(i for i, _, _ in done) == list(range(12)) and all(np.all(e == 1) for _, e, _ in done)

    class Odd(Slow):  # a pass that returns nothing usable: its track fails alone, nothing waits for it
        def segment_sum(self, chunk):
            return None if len(chunk) == 3 else super().segment_sum(chunk)

    with embeddings._Inference(Odd(), torch.device("cpu"), 2) as inference:
        done = inference.submit(0, "odd", np.zeros((TRACK_BATCH + 3, 1, 1), np.float32), {})
        done += list(inference.drain())
    assert len(done) == 1 and done[0][1].startswith("odd: cannot embed: ")


def test_a_resolved_device_is_not_resolved_again(model, tracks, monkeypatch):
    """embed_files resolves --device once (a second pick_device of cuda:0 fails under torchrun)."""
    from zstag import devices

    calls, real = [], devices.pick_device
    monkeypatch.setattr(devices, "pick_device", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert all(r.ok for r in embed_files(model, tracks, workers=2, use_cache=False, progress=False))
    assert calls == [("cpu",)]


def test_heavy_model_inference_threads_follow_workers(musicnn_model, tmp_path, monkeypatch):
    """--workers N: at most N musicnn inference threads (one for 0 or 1), never more than the cores."""
    import threading
    import time

    monkeypatch.setattr(embeddings, "default_workers", lambda: 3)
    paths = [write_tone(tmp_path / f"t{i}.wav", seconds=1.0, freq=300.0 + 50 * i) for i in range(6)]
    segment_sum, threads = musicnn_model.segment_sum, set()

    def recording(segments):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)  # long enough for every pool thread to take a track
        return segment_sum(segments)

    monkeypatch.setattr(musicnn_model, "segment_sum", recording)
    for workers, most in ((0, 1), (1, 1), (2, 2), (8, 3)):
        threads.clear()
        results = embed_files(musicnn_model, paths, workers=workers, use_cache=False, progress=False)
        assert all(r.ok for r in results)
        assert 1 <= len(threads) <= most, (workers, threads)
    assert len(threads) >= 2  # with 8 workers on "3 cores", tracks did run side by side


def test_a_fifo_or_device_is_reported_not_hashed(model, tracks, cache_dir, tmp_path):
    """With the cache on, a FIFO among the inputs (or a link to /dev/zero) used to be hashed, which blocks
    (or never ends): it is reported by the decoder like any non-regular file, the others are embedded."""
    import threading

    fifo = tmp_path / "audio" / "pipe.wav"
    os.mkfifo(fifo)
    link = tmp_path / "audio" / "link.wav"
    link.symlink_to(fifo)

    fired = []

    def unblock():  # if a regression reads the FIFO, end the read (EOF) so the test fails instead of hanging
        fired.append(True)
        for _ in range(2):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    watchdog = threading.Timer(20.0, unblock)
    watchdog.start()
    try:
        results = embed_files(model, [str(fifo), str(link), *tracks], workers=2, progress=False)
    finally:
        watchdog.cancel()
    assert not fired  # nothing was blocked on the FIFO
    assert [r.ok for r in results] == [False, False, True, True, True]
    assert all("not a regular file" in r.error for r in results[:2]), [r.error for r in results[:2]]


@pytest.mark.parametrize("damage", ["garbage", "schema", "tables"])
def test_a_damaged_cache_is_moved_aside_with_one_warning(tiny_model_dir, tracks, cache_dir, damage):
    """A cache file SQLite calls corrupt or not a database: one warning for the run (not one per file), the
    file renamed to *.damaged, and the next run starts and fills a new cache."""
    assert tag_cli(tiny_model_dir, tracks, "--workers", "0").exit_code == 0
    path = cache_dir / CACHE_FILE
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    if damage == "garbage":  # found when the cache is opened
        data[:] = b"not a database at all " * 64
    else:  # the header survives; the schema page ("schema", found on opening) or only the tables' pages
        keep = 100 if damage == "schema" else 4096  # ("tables", found by the first lookup, mid-run)
        assert len(data) > keep
        data[keep:] = bytes(len(data) - keep)
    path.write_bytes(bytes(data))
    first = tag_cli(tiny_model_dir, tracks, "--workers", "0")
    warnings = [line for line in first.stderr.splitlines() if "embedding cache" in line]
    assert first.exit_code == 0 and len(json.loads(first.stdout)["files"]) == len(tracks), first.stderr
    assert len(warnings) == 1 and warnings[0].startswith("zstag: warning: embedding cache") and "damaged" in warnings[0]
    assert (cache_dir / (CACHE_FILE + embedcache.DAMAGED_SUFFIX)).exists()
    second = tag_cli(tiny_model_dir, tracks, "--workers", "0")
    again = tag_cli(tiny_model_dir, tracks, "--workers", "0")
    assert "tagged 3 of 3 files (3 from the cache)" in again.stderr
    assert "embedding cache" not in second.stderr + again.stderr


def test_the_library_gives_its_notices_to_the_callback_and_prints_nothing(model, tracks, cache_dir, capfd):
    """A damaged cache moved aside, an unusable one: notices to embed_files' notice callback, nothing on
    stderr; without a callback, a ZstagWarning (the Python API's way)."""
    cache_dir.mkdir()
    path = cache_dir / CACHE_FILE
    path.write_bytes(b"not a database at all " * 64)
    notes = []
    results = embed_files(model, tracks, workers=0, progress=False, notice=notes.append)
    assert all(r.ok for r in results) and len(notes) == 1 and "is damaged" in notes[0], notes
    assert (cache_dir / (CACHE_FILE + embedcache.DAMAGED_SUFFIX)).exists()
    for part in cache_dir.glob(CACHE_FILE + "*"):
        part.unlink()
    path.mkdir()  # a folder where the database should be: unusable, not damaged
    notes.clear()
    results = embed_files(model, tracks, workers=0, progress=False, notice=notes.append)
    assert all(r.ok and not r.cached for r in results) and len(notes) == 1 and "unusable" in notes[0], notes
    assert capfd.readouterr().err == ""
    with pytest.warns(ZstagWarning, match="embedding cache .* unusable"):
        embed_files(model, tracks[:1], workers=0, progress=False)


class _BrokenPool:
    """A process pool whose workers cannot start: every task fails with BrokenProcessPool."""

    def submit(self, *args, **kwargs):
        future = Future()
        future.set_exception(BrokenProcessPool("a worker could not start"))
        return future

    def shutdown(self, **kwargs):
        pass


def test_decoders_that_cannot_start_decode_here_with_one_notice(tracks, tiny_model_dir, monkeypatch, capfd):
    """Worker processes that cannot start (a __main__ that cannot be re-imported): every file decoded in this
    process, one notice to the callback (nothing on stderr); the CLI prints it as a warning."""
    monkeypatch.setattr(workers, "decoder_pool", lambda n: _BrokenPool())
    notes = []
    outcomes = dict(decode_files(list(enumerate(tracks)), PAPER.to_dict(), 0.0, None, workers=2, notice=notes.append))
    assert sorted(outcomes) == [0, 1, 2] and all(not isinstance(o, str) for o in outcomes.values())
    assert notes == [NO_DECODERS] and capfd.readouterr().err == ""
    result = tag_cli(tiny_model_dir, tracks, "--workers", "2", "--no-cache")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["files"]) == len(tracks), result.stderr
    assert f"zstag: warning: {NO_DECODERS}" in result.stderr.splitlines()


def test_a_damaged_cache_already_replaced_by_another_process_is_left_alone(model, tracks, cache_dir):
    """Two runs had the damaged cache open; the first moved it aside and a new cache started. The second,
    finding the damage later, must not move the new, healthy cache (its path no longer holds its file)."""
    embed_files(model, tracks, workers=0, progress=False)
    notes = []
    old = EmbeddingCache(cache_dir / CACHE_FILE, notes.append)  # the second run's connection, opened before the move
    assert embedcache._move_aside(old.path)
    embed_files(model, tracks[:1], workers=0, progress=False)  # a new cache, in use
    fresh = (cache_dir / CACHE_FILE).read_bytes()
    embedcache._warn_cache(sqlite3.DatabaseError("database disk image is malformed"), old)  # no code: not damage
    assert not old.set_aside
    damage = sqlite3.DatabaseError("database disk image is malformed")
    damage.sqlite_errorcode = embedcache.SQLITE_CORRUPT
    embedcache._warn_cache(damage, old)
    assert old.set_aside and len(notes) == 2 and "not moved" in notes[1], notes
    assert (cache_dir / CACHE_FILE).read_bytes() == fresh
    assert EmbeddingCache(cache_dir / CACHE_FILE).count() == 1


def test_stats_describe_the_file(model, tmp_path, cache_dir):
    path = write_tone(tmp_path / "tone.wav", seconds=4.0, freq=1000.0, amplitude=0.5, sr=44100, noise=0.0)
    (result,) = embed_files(model, [path], workers=0, progress=False)
    stats = result.stats
    assert stats["native_sample_rate"] == 44100
    assert stats["duration_s"] == pytest.approx(4.0, abs=0.01)
    assert stats["loudness_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.2)  # sine RMS
    assert stats["spectral_centroid_hz"] == pytest.approx(1000.0, rel=0.1)


def test_cache_hit_with_no_decoding(model, tracks, cache_dir, monkeypatch, forbid_decoding):
    first = embed_files(model, tracks, workers=2, progress=False)
    assert (cache_dir / CACHE_FILE).is_file()
    forbid_decoding(monkeypatch)
    second = embed_files(model, tracks, workers=2, progress=False)
    assert all(r.cached for r in second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.embedding, b.embedding)
        assert a.stats == b.stats


def test_cache_keys_on_content(model, tracks, cache_dir, monkeypatch, tmp_path, forbid_decoding):
    first = embed_files(model, tracks, workers=0, progress=False)
    copy = tmp_path / "copy.wav"
    shutil.copy(tracks[0], copy)
    os.utime(tracks[1], ns=(1_000_000_000, 1_000_000_000))  # touched: same content, new mtime
    with monkeypatch.context() as m:
        forbid_decoding(m)
        again = embed_files(model, [str(copy), tracks[1]], workers=0, progress=False)
    assert all(r.cached for r in again)
    np.testing.assert_array_equal(again[0].embedding, first[0].embedding)

    write_tone(tracks[2], seconds=3.0, freq=2000.0)  # rewritten in place: new content
    changed = embed_files(model, tracks, workers=0, progress=False)
    assert [r.cached for r in changed] == [True, True, False]
    assert not np.allclose(changed[2].embedding, first[2].embedding)


def test_cache_keys_on_span_and_model(model, tracks, cache_dir, tmp_path):
    embed_files(model, tracks[2:], workers=0, progress=False)
    (short,) = embed_files(model, tracks[2:], workers=0, max_seconds=2.0, progress=False)
    assert not short.cached
    np.testing.assert_array_equal(short.embedding, direct_embedding(model, tracks[2], 0.0, 2.0))
    (shifted,) = embed_files(model, tracks[2:], workers=0, offset=1.0, progress=False)
    assert not shifted.cached
    torch.manual_seed(1)
    save_model(ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d")), tmp_path / "other")
    (other,) = embed_files(load_model(tmp_path / "other"), tracks[2:], workers=0, progress=False)
    assert not other.cached


def test_no_cache_neither_reads_nor_writes(model, tracks, cache_dir):
    results = embed_files(model, tracks, workers=0, use_cache=False, progress=False)
    assert all(r.ok and not r.cached for r in results)
    assert not (cache_dir / CACHE_FILE).exists()


def test_bad_files_fail_alone(model, tracks, cache_dir, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    missing = str(tmp_path / "missing.wav")
    paths = [tracks[0], str(empty), str(corrupt), missing, tracks[1]]
    for workers in (0, 2):
        results = embed_files(model, paths, workers=workers, use_cache=False, progress=False)
        assert [r.ok for r in results] == [True, False, False, False, True]
        for r in results[1:4]:
            assert r.embedding is None and r.path in r.error and "\n" not in r.error


def test_only_failures_of_the_files_bytes_are_cached(model, tracks, cache_dir, tmp_path, monkeypatch):
    """Content that cannot give audio is remembered (the same line, nothing decoded), also when only
    libsndfile could try it (no ffmpeg: test_tag checks that a new ffmpeg retries); a failure that may
    not happen again is not: out of memory, unreadable, cannot embed, a file touched while decoded."""
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "touched.wav", np.zeros(0, np.float32), SR)  # no samples (other bytes than empty.wav)
    (tmp_path / "notaudio.flac").write_text("these are my notes, not audio\n" * 50)
    paths = [str(tmp_path / name) for name in ("empty.wav", "touched.wav", "notaudio.flac")] + tracks
    real = workers.analyse_file

    def flaky(path, *args, **kwargs):
        if path == tracks[0]:
            raise MemoryError
        if path == tracks[1]:  # as for a file whose permissions change after it was hashed
            raise PermissionError(13, "Permission denied", path)
        if path.endswith("touched.wav"):
            os.utime(path, ns=(1, 1))  # a new stamp: it may have changed since it was hashed
        return real(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(workers, "analyse_file", flaky)
        m.setattr(model, "embed_track", lambda segments: 1 / 0)
        first = embed_files(model, paths, workers=0, progress=False)
    assert not any(r.ok or r.cached for r in first)
    assert "out of memory" in first[3].error and "Permission denied" in first[4].error
    assert "cannot embed" in first[5].error
    second = embed_files(model, paths, workers=0, progress=False)
    assert [r.cached for r in second] == [True, False, True, False, False, False]
    assert second[0].error == first[0].error and second[0].embedding is None
    assert second[2].error == first[2].error and "unrecognised audio format" in second[2].error
    assert all(r.ok for r in second[3:])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_file_is_not_cached(model, tracks, cache_dir):
    os.chmod(tracks[0], 0)
    try:
        assert not embed_files(model, tracks[:1], workers=0, progress=False)[0].ok
    finally:
        os.chmod(tracks[0], 0o644)
    again = embed_files(model, tracks[:1], workers=0, progress=False)[0]
    assert again.ok and not again.cached


def test_an_old_cache_file_gains_the_failures_table(model, tracks, cache_dir, tmp_path):
    cache_dir.mkdir()
    old = sqlite3.connect(cache_dir / CACHE_FILE)
    before = embedcache.SCHEMA.split("CREATE TABLE IF NOT EXISTS decode_failures")
    assert len(before) == 2
    old.executescript(before[0])  # the schema before failures were kept
    old.close()
    (tmp_path / "empty.wav").write_bytes(b"")
    paths = [tracks[0], str(tmp_path / "empty.wav")]
    first = embed_files(model, paths, workers=0, progress=False)
    second = embed_files(model, paths, workers=0, progress=False)
    assert [r.cached for r in second] == [True, True] and [r.error for r in second] == [r.error for r in first]


def test_a_cached_failure_keeps_the_name_as_given_and_goes_with_the_decoders(model, cache_dir, tmp_path, monkeypatch):
    """The cause is stored without the name: spaces in a name survive, a copy is named by its own name;
    with other decoders (soundfile upgraded, ffmpeg installed or changed) the file is tried again."""
    bad = tmp_path / "two  spaces\nand a line.wav"
    bad.write_bytes(b"")
    copy = tmp_path / "copy.wav"
    copy.write_bytes(b"")
    first = embed_files(model, [str(bad)], workers=0, progress=False)[0]
    assert first.error == f"{tmp_path}/two  spaces\\nand a line.wav: empty file (0 bytes)"
    again, copied = embed_files(model, [str(bad), str(copy)], workers=0, progress=False)
    assert again.cached and again.error == first.error
    assert copied.cached and copied.error == f"{copy}: empty file (0 bytes)"
    monkeypatch.setattr(embedcache, "decoder_stamp", lambda: "soundfile 99; ffmpeg none")
    retried = embed_files(model, [str(bad)], workers=0, progress=False)[0]
    assert not retried.cached and retried.error == first.error


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (m4a)")
def test_ffmpegs_message_is_cached_without_any_name(model, cache_dir, tmp_path):
    """ffmpeg starts its complaint with the file's name: cut off even when it is not UTF-8 or holds a line
    break, so the cached cause names no file and a renamed copy is reported under its own name."""
    names = [os.fsdecode(b"bad\xff name.m4a"), "new\nline.m4a"]
    for name in names:
        (tmp_path / name).write_bytes(b"this is not an m4a file at all" * 20)
    paths = [str(tmp_path / name) for name in names]
    cold = embed_files(model, paths, workers=0, progress=False)
    warm = embed_files(model, paths, workers=0, progress=False)
    assert all(r.cached for r in warm) and [r.error for r in warm] == [r.error for r in cold]
    for r in cold:
        cause = r.error.split(": ", 1)[1]
        assert "bad" not in cause and "line.m4a" not in cause and "cannot decode: ffmpeg: " in cause
    copy = tmp_path / "renamed.m4a"
    copy.write_bytes((tmp_path / names[0]).read_bytes())
    (again,) = embed_files(model, [str(copy)], workers=0, progress=False)
    assert again.cached and again.error == f"{copy}: {cold[0].error.split(': ', 1)[1]}"


def test_error_line_names_the_file_once_as_given():
    assert acoustics.error_line("./a.wav", audio.AudioError("a.wav: empty file")) == "./a.wav: empty file"
    assert acoustics.error_line("a.wav", audio.AudioError("a.wav: empty file")) == "a.wav: empty file"
    assert acoustics.error_line("./a.wav", audio.AudioError("empty features")) == "./a.wav: empty features"


def test_corrupt_cache_file_is_skipped_with_a_warning(tiny_model_dir, tracks, cache_dir):
    cache_dir.mkdir()
    (cache_dir / CACHE_FILE).write_bytes(b"this is not a database" * 100)
    result = tag_cli(tiny_model_dir, tracks[:1], "--workers", "0")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["files"]) == 1, result.stderr
    assert "zstag: warning: embedding cache" in result.stderr


def test_a_dying_worker_fails_only_its_file(tracks, tmp_path):
    crash = write_tone(tmp_path / "crash.wav")
    jobs = list(enumerate([tracks[0], crash, tracks[1], tracks[2]]))
    outcomes = dict(decode_files(jobs, PAPER.to_dict(), 0.0, None, workers=2, decode=crashing_decoder.decode))
    assert sorted(outcomes) == [0, 1, 2, 3]
    assert outcomes[1] == f"{crash}: {CRASH_MESSAGE}"
    for i in (0, 2, 3):
        segments, stats = outcomes[i]
        assert segments.ndim == 3 and stats["native_sample_rate"] == SR


WORKER_ENV_PROBE = """
import os
from zstag.workers import decoder_pool, start_decoders
start_decoders()
start_decoders()  # harmless twice
pool = decoder_pool(1)
print(pool.submit(os.getenv, "OPENBLAS_NUM_THREADS").result(), os.getenv("OPENBLAS_NUM_THREADS"))
pool.shutdown()
"""


def test_workers_start_with_one_blas_thread_and_this_process_keeps_its_environment():
    """OpenBLAS reads its thread count when it loads: the fork server must start with 1, while this
    process's environment stays as it was (unset here, "3" in the second run)."""
    for value in (None, "3"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if value is not None:
            env["OPENBLAS_NUM_THREADS"] = value
        done = subprocess.run([sys.executable, "-c", WORKER_ENV_PROBE], env=env, capture_output=True, text=True,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1", str(value)]


KILLED_RUN = """
import sys, time
from zstag.embeddings import embed_files
from zstag.model import load_model
model = load_model(sys.argv[1])
embed_track = model.embed_track
model.embed_track = lambda segments: (time.sleep(0.3), embed_track(segments))[1]  # rows arrive slowly
embed_files(model, sys.argv[2:], workers=1, progress=False)
"""


def descendants(pid):
    """PIDs below pid (Linux /proc), [] elsewhere."""
    found, todo = [], [pid]
    while todo:
        for task in glob.glob(f"/proc/{todo.pop()}/task/*/children"):
            try:
                kids = [int(k) for k in open(task).read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except OSError:
        return False


def test_a_killed_run_leaves_the_cache_usable(model, tmp_path, cache_dir):
    paths = [write_tone(tmp_path / f"t{i}.wav", seconds=3.0, freq=200.0 + 50 * i) for i in range(8)]
    env = {**os.environ, "ZSTAG_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(model.folder), *paths], env=env)
    db = cache_dir / CACHE_FILE
    deadline = time.monotonic() + 60
    rows = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                rows = sqlite3.connect(db).execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            except sqlite3.Error:
                rows = 0
            if rows:
                break
        time.sleep(0.01)
    helpers = descendants(proc.pid)  # the fork server and the decode worker
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows >= 1, "the run stored nothing before it was killed"
    if sys.platform.startswith("linux"):  # orphaned workers notice the main process is gone and exit
        assert helpers, "no worker processes found"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in helpers):
            time.sleep(0.1)
        assert not any(alive(pid) for pid in helpers)

    cache = EmbeddingCache(db)
    assert cache.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = cache.count(model.model_id)
    cache.close()
    assert 1 <= stored < len(paths)
    results = embed_files(model, paths, workers=0, progress=False)
    assert all(r.ok for r in results)
    assert sum(r.cached for r in results) == stored
    for r in results:
        np.testing.assert_array_equal(r.embedding, direct_embedding(model, r.path))


def test_acoustics_summaries():
    stats = [{"native_sample_rate": 44100, "duration_s": d, "loudness_dbfs": -20.0 + d, "spectral_centroid_hz": None}
             for d in (10.0, 20.0, 30.0, 40.0, 50.0)]
    summary = acoustics.summarise(stats)
    assert summary["duration_s"] == {"n": 5, "median": 30.0, "q25": 20.0, "q75": 40.0}
    assert summary["spectral_centroid_hz"]["n"] == 0 and summary["spectral_centroid_hz"]["median"] is None
    silent = acoustics.file_stats(np.zeros(SR, np.float32), SR, SR, 1.0)
    assert silent["loudness_dbfs"] == acoustics.SILENCE_DBFS and silent["spectral_centroid_hz"] is None

    results = [embeddings.TrackResult("a", np.array([1.0, 0.0], np.float32), None, stats[0]),
               embeddings.TrackResult("b", None, "b: broken"),
               embeddings.TrackResult("c", np.array([0.0, 1.0], np.float32), None, stats[1])]
    corpus = acoustics.corpus_summary("mine", results)
    assert corpus["corpus"] == "mine" and corpus["n_tracks"] == 2
    assert corpus["mean_embedding"] == [0.5, 0.5]
    assert corpus["acoustics"]["duration_s"]["median"] == 15.0


def test_a_file_name_that_is_not_utf8_is_looked_up_not_a_crash(tmp_path, tracks):
    """SQLite takes no lone surrogates as text: such a name (os.fsdecode of non-UTF-8 bytes) is keyed by
    its bytes, so the cache serves it like any file instead of killing the run."""
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/odd-\xff.wav")
    shutil.copy(tracks[0], odd)
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    try:
        assert embeddings.cached_results("m", [odd, tracks[0]], workers=1, cache=cache) == [None, None]
        cache.put("m", content_digest(tracks[0]), 0.0, None, np.ones(4, np.float32), None)
        results = embeddings.cached_results("m", [odd, tracks[0]], workers=1, cache=cache)
        assert [r.path for r in results] == [odd, tracks[0]] and all(r.cached for r in results)
        assert cache.db.execute("SELECT COUNT(*) FROM digests").fetchone()[0] == 2  # remembered, both
    finally:
        cache.close()
