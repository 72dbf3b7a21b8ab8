"""`zstag preprocess`: the sharded feature cache, resuming after kill -9, --shard K/N, bad files."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from zstag.audio import PAPER, load_audio, log_mel
from zstag.corpora import Track
from zstag.features import (CACHE_FILE, FAILURES_FILE, INDEX_FILE, FeatureCache, FeatureCacheError, cache_corpus,
                            parse_shard, preprocess)
from zstag.paths import npy_bytes

SR = 22050


def write_corpus(folder: Path, n: int = 9, seconds: float = 2.0, bad: bool = True) -> list[Track]:
    """n short tone files (+ a corrupt and an empty file) as Tracks with labels and artists."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    tracks = []
    for i in range(n):
        t = np.arange(int(seconds * SR * (1 + 0.25 * (i % 3)))) / SR
        path = folder / f"{i:02d}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (220 + 60 * i) * t)).astype(np.float32), SR)
        tracks.append(Track(f"{i:02d}", path, (("rock", "jazz", "pop")[i % 3],), f"artist {i % 4}"))
    if bad:
        (folder / "corrupt.wav").write_bytes(b"RIFF not really a wave file" * 20)
        (folder / "empty.wav").write_bytes(b"")
        tracks.insert(3, Track("corrupt", folder / "corrupt.wav", ("rock",), None))
        tracks.append(Track("empty", folder / "empty.wav", ("jazz",), None))
    return tracks


def cache_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def tracks(tmp_path):
    return write_corpus(tmp_path / "audio")


def test_cache_holds_the_log_mel_frames_of_each_track(tmp_path, tracks):
    report = preprocess(tracks, tmp_path / "cache", PAPER, shard_size=4, progress=False)
    assert report.complete and report.n_shards == 3 and report.shards_done == 3
    cache = FeatureCache.open(tmp_path / "cache")
    assert [e.id for e in cache.tracks] == [t.id for t in tracks if t.id not in ("corrupt", "empty")]
    assert cache.front_end == PAPER
    for track in tracks[:3]:
        expected = log_mel(load_audio(track.path, PAPER.sample_rate), PAPER)
        entry = cache.by_id[track.id]
        assert entry.labels == track.labels and entry.artist == track.artist
        assert entry.n_frames == expected.shape[1]
        np.testing.assert_allclose(cache.mel(track.id), expected, rtol=1e-3, atol=2e-3)  # float16
        assert entry.stats["native_sample_rate"] == SR
    frames = cache.frames(tracks[0].id)
    assert frames.dtype == np.float16 and not frames.flags.writeable  # a view of the read-only memory map


def test_crop_is_a_window_and_short_tracks_are_zero_padded(tmp_path, tracks):
    preprocess(tracks, tmp_path / "cache", PAPER, progress=False)
    cache = FeatureCache.open(tmp_path / "cache")
    mel = cache.mel("00")  # 2 s ≈ 87 frames: shorter than a 130-frame segment
    crop = cache.crop("00", 10, 130)
    assert crop.shape == (128, 130) and crop.dtype == np.float32
    np.testing.assert_array_equal(crop[:, : mel.shape[1]], mel)
    assert not crop[:, mel.shape[1] :].any()
    long = cache.mel("02")  # 3 s ≈ 130 frames
    np.testing.assert_array_equal(cache.crop("02", 5, 100), long[:, 5:105])


def test_bad_files_are_reported_and_skipped(tmp_path, tracks):
    report = preprocess(tracks, tmp_path / "cache", PAPER, shard_size=4, progress=False)
    failed = {f["id"]: f["error"] for f in report.failures}
    assert set(failed) == {"corrupt", "empty"}
    assert str(tracks[3].path) in failed["corrupt"] and "\n" not in failed["corrupt"]
    assert "empty" in failed["empty"]
    with open(tmp_path / "cache" / FAILURES_FILE) as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == {"corrupt", "empty"}
    assert len(FeatureCache.open(tmp_path / "cache")) == 9


def test_reader_keeps_a_bounded_number_of_shards_open(tmp_path, tracks, monkeypatch):
    import zstag.features

    preprocess(tracks, tmp_path / "cache", PAPER, shard_size=2, progress=False)
    full = FeatureCache.open(tmp_path / "cache")
    everything = {e.id: full.mel(e.id) for e in full.tracks}
    monkeypatch.setattr(zstag.features, "MAX_OPEN_SHARDS", 2)
    cache = FeatureCache.open(tmp_path / "cache")
    for track_id in list(everything) * 2:
        np.testing.assert_array_equal(cache.mel(track_id), everything[track_id])
        assert len(cache._shards) <= 2


def test_index_and_shard_tables_agree(tmp_path, tracks):
    preprocess(tracks, tmp_path / "cache", PAPER, shard_size=4, progress=False)
    from_index = FeatureCache.open(tmp_path / "cache").tracks
    (tmp_path / "cache" / INDEX_FILE).unlink()
    assert FeatureCache.open(tmp_path / "cache").tracks == from_index


def test_shards_are_disjoint_and_together_make_the_whole_cache(tmp_path, tracks):
    preprocess(tracks, tmp_path / "whole", PAPER, shard_size=2, progress=False)
    merged = tmp_path / "merged"
    merged.mkdir()
    seen: set[str] = set()
    for k in (1, 2, 3):
        part = tmp_path / f"part{k}"
        report = preprocess(tracks, part, PAPER, shard=(k, 3), shard_size=2, progress=False)
        assert not report.complete
        with pytest.raises(FeatureCacheError, match="shards missing"):
            FeatureCache.open(part)
        shards = {p.name for p in part.glob("shard-*")}
        assert shards and not shards & seen
        seen |= shards
        for name in shards | {CACHE_FILE}:
            (merged / name).write_bytes((part / name).read_bytes())
    whole = cache_files(tmp_path / "whole")
    assert seen == {name for name in whole if name.startswith("shard-")}
    report = preprocess(tracks, merged, PAPER, shard_size=2, progress=False)  # nothing to do: writes the index
    assert report.complete and report.shards_done == 0
    assert cache_files(merged) == whole


def test_a_cache_made_for_other_features_is_not_reused(tmp_path, tracks):
    preprocess(tracks[:3], tmp_path / "cache", PAPER, progress=False)
    other = PAPER.__class__(**{**PAPER.to_dict(), "n_mels": 96})
    with pytest.raises(FeatureCacheError, match="front end"):
        preprocess(tracks[:3], tmp_path / "cache", other, progress=False)
    with pytest.raises(FeatureCacheError, match="plan"):
        preprocess(tracks[:4], tmp_path / "cache", PAPER, progress=False)


def test_worker_processes_give_the_same_cache(tmp_path, tracks):
    preprocess(tracks, tmp_path / "one", PAPER, shard_size=4, progress=False)
    preprocess(tracks, tmp_path / "two", PAPER, shard_size=4, workers=2, progress=False)
    assert cache_files(tmp_path / "one") == cache_files(tmp_path / "two")


# The child runs preprocess in a real process and blocks inside track BLOCK_ID, so the test can
# SIGKILL it at a known point: the shards before that track are written, the one holding it is not.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import zstag.features as features
    from zstag.audio import PAPER
    from zstag.corpora import Track

    spec = json.loads(Path(sys.argv[1]).read_text())
    tracks = [Track(t["id"], Path(t["path"]), tuple(t["labels"]), t["artist"]) for t in spec["tracks"]]
    compute = features._compute_task

    def slow(task):
        if task[0] == spec["block_path"]:
            Path(spec["ready"]).write_text("blocked")
            time.sleep(600)
        return compute(task)

    features._compute_task = slow
    features.preprocess(tracks, spec["out"], PAPER, shard_size=spec["shard_size"], progress=False,
                        part_seconds=spec.get("part_seconds", features.SHARD_SECONDS))
    """
)


def kill_inside(tmp_path, tracks, out: Path, block: int, **options) -> None:
    """Run preprocess on tracks into out in a child process and SIGKILL it inside track number block."""
    ready = tmp_path / "ready"
    spec = {
        "tracks": [{"id": t.id, "path": str(t.path), "labels": list(t.labels), "artist": t.artist} for t in tracks],
        "out": str(out), "block_path": str(tracks[block].path), "ready": str(ready), **options,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "child.py").write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "spec.json")])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, "the child exited before reaching the blocking track"
            assert time.monotonic() < deadline, "the child never reached the blocking track"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def test_resume_after_kill_9_gives_the_same_cache(tmp_path, tracks):
    preprocess(tracks, tmp_path / "whole", PAPER, shard_size=2, progress=False)
    out = tmp_path / "killed"
    kill_inside(tmp_path, tracks, out, 6, shard_size=2)
    done = sorted(p.name for p in out.glob("shard-*.json"))
    assert done == ["shard-00000.json", "shard-00001.json", "shard-00002.json"]  # tracks 0-5; 6 is in shard 3
    # What a kill during a write would leave: a temp file, and frames whose table never got written.
    (out / ".shard-00003.npy.abc123.tmp").write_bytes(b"half a shard")
    (out / "shard-00004.npy").write_bytes((tmp_path / "whole" / "shard-00001.npy").read_bytes())
    os.utime(out / "shard-00000.json", (0, 0))  # a skipped shard is not rewritten
    report = preprocess(tracks, out, PAPER, shard_size=2, progress=False)
    assert report.shards_skipped == 3 and report.shards_done == 3 and report.complete
    assert not list(out.glob(".*.tmp"))
    assert (out / "shard-00000.json").stat().st_mtime == 0
    assert cache_files(out) == cache_files(tmp_path / "whole")


def recording_computed(monkeypatch, stop_at: str | None = None) -> list[str]:
    """From now on, the paths preprocess computes (in this process) are appended to the list returned;
    the one named stop_at raises KeyboardInterrupt (Ctrl-C) instead."""
    import zstag.features as features

    computed = []

    def compute(task):
        if task[0] == stop_at:
            raise KeyboardInterrupt
        computed.append(task[0])
        return features.compute_frames(*task)

    monkeypatch.setattr(features, "_compute_task", compute)
    return computed


def stopped_inside(tmp_path, tracks, monkeypatch, index: int, **options) -> Path:
    """tmp_path/whole: the whole cache; tmp_path/stopped: a run interrupted (Ctrl-C) inside track index."""
    preprocess(tracks, tmp_path / "whole", PAPER, progress=False)
    recording_computed(monkeypatch, stop_at=str(tracks[index].path))
    with pytest.raises(KeyboardInterrupt):
        preprocess(tracks, tmp_path / "stopped", PAPER, progress=False, **options)
    return tmp_path / "stopped"


def rerun_computes_only(tmp_path, tracks, monkeypatch, out: Path, first: int):
    """Rerun preprocess into out: it computes tracks[first:] only, and the cache is the whole one."""
    computed = recording_computed(monkeypatch)
    report = preprocess(tracks, out, PAPER, progress=False)
    assert computed == [str(t.path) for t in tracks[first:]]
    assert report.tracks_resumed == first and report.complete
    assert cache_files(out) == cache_files(tmp_path / "whole")  # the parts are gone; the index is the same
    return report


def test_a_shard_open_too_long_is_kept_in_parts_that_a_rerun_goes_on_from(tmp_path, tracks, monkeypatch):
    """One shard (the default size holds all 11 tracks) and a time limit of 0 s: each track is written out
    as a part at once. A run killed inside track 6 keeps tracks 0-5; the rerun computes only the rest."""
    preprocess(tracks, tmp_path / "whole", PAPER, progress=False)
    out = tmp_path / "killed"
    kill_inside(tmp_path, tracks, out, 6, shard_size=256, part_seconds=0)
    assert not (out / "shard-00000.json").exists()
    parts = sorted(p.name for p in out.glob("shard-00000.part-*.json"))
    assert parts == [f"shard-00000.part-{i:05d}.json" for i in range(6)]  # the corrupt file's failure too
    report = rerun_computes_only(tmp_path, tracks, monkeypatch, out, 6)
    assert report.tracks_done == 5 and report.shards_done == 1
    frames = out / "shard-00000.npy"  # joined from parts and memory, as np.save writes the whole array
    assert frames.read_bytes() == npy_bytes(np.load(frames))
    (out / "shard-00000.part-00000.json").write_text("{}")  # as a kill just after the shard was written leaves
    assert preprocess(tracks, out, PAPER, progress=False).tracks_done == 0
    assert cache_files(out) == cache_files(tmp_path / "whole")


def test_a_shard_is_also_kept_in_parts_by_size_and_a_cut_part_is_computed_again(tmp_path, tracks, monkeypatch):
    out = stopped_inside(tmp_path, tracks, monkeypatch, 7, part_seconds=1e9, part_bytes=1)  # a track fills a part
    # Tracks 0-6 in 6 parts: the corrupt file (3) has no frames, so it waits for track 4 in part 3.
    tables = [json.loads(p.read_text()) for p in sorted(out.glob("shard-00000.part-*.json"))]
    assert [(t["first"], t["count"]) for t in tables] == [(0, 1), (1, 1), (2, 1), (3, 2), (5, 1), (6, 1)]
    assert [f["id"] for f in tables[3]["failures"]] == ["corrupt"]
    cut = out / "shard-00000.part-00004.npy"  # track 5's part, as a full disk could leave it
    cut.write_bytes(cut.read_bytes()[:200])
    rerun_computes_only(tmp_path, tracks, monkeypatch, out, 5)  # parts 0-3 kept; 4 is cut, so 5 and 6 go too


def test_ctrl_c_writes_the_tracks_done_so_far_as_a_part(tmp_path, tracks, monkeypatch):
    out = stopped_inside(tmp_path, tracks, monkeypatch, 7, part_seconds=1e9)  # no part written before
    (part,) = out.glob("shard-00000.part-*.json")
    assert json.loads(part.read_text())["count"] == 7
    rerun_computes_only(tmp_path, tracks, monkeypatch, out, 7)


def test_a_missing_or_cut_shard_file_is_one_line_when_the_cache_opens(tmp_path, tracks):
    preprocess(tracks, tmp_path / "cache", PAPER, shard_size=2, progress=False)
    npy = tmp_path / "cache" / "shard-00001.npy"
    whole = npy.read_bytes()
    npy.unlink()
    with pytest.raises(FeatureCacheError, match=r"shard-00001\.npy: missing; rerun `zstag preprocess`$"):
        FeatureCache.open(tmp_path / "cache")
    npy.write_bytes(whole[:1000])
    with pytest.raises(FeatureCacheError, match=rf"shard-00001\.npy: truncated: 1000 of {len(whole)} bytes; rerun"):
        FeatureCache.open(tmp_path / "cache")
    (tmp_path / "cache" / INDEX_FILE).unlink()  # read from the shard tables: checked the same
    with pytest.raises(FeatureCacheError, match="truncated: 1000 of"):
        FeatureCache.open(tmp_path / "cache", allow_incomplete=True)
    npy.write_bytes(whole[:40])  # cut inside the header
    with pytest.raises(FeatureCacheError, match=r"shard-00001\.npy: truncated or not a \.npy file \(40 bytes\)"):
        FeatureCache.open(tmp_path / "cache")
    npy.unlink()  # a split needs only the track tables: the frames are not checked for it
    assert len(cache_corpus(tmp_path / "cache").tracks) == 9
    report = preprocess(tracks, tmp_path / "cache", PAPER, shard_size=2, progress=False)  # what the error says to do
    assert report.shards_done == 1 and npy.read_bytes() == whole
    assert len(FeatureCache.open(tmp_path / "cache")) == 9


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("0/3", "4/3", "x", "1/2/3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_cli_preprocess_from_a_csv_manifest(tmp_path):
    from typer.testing import CliRunner

    from zstag.cli import app

    tracks = write_corpus(tmp_path / "data" / "audio", n=4)
    with open(tmp_path / "data" / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "artist"])
        for t in tracks:
            writer.writerow([f"audio/{t.path.name}", ";".join(t.labels), t.artist or ""])
    args = ["preprocess", "--corpus", "csv", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "cache"),
            "--shard-size", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 tracks decoded, 2 failed" in result.output and "cache complete" in result.output
    cache = FeatureCache.open(tmp_path / "cache")
    assert sorted(e.id for e in cache.tracks) == [f"audio/{i:02d}.wav" for i in range(4)]
    assert json.loads((tmp_path / "cache" / CACHE_FILE).read_text())["source"]["kind"] == "csv"
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 tracks decoded" in again.output and "already done" in again.output


def test_a_track_id_and_path_that_are_not_utf8_are_written_as_valid_utf8_and_read_back(tmp_path, tracks):
    """A folder corpus's id is the file's relative path: os.fsdecode's lone surrogates made index.parquet
    (and failures.csv) raise UnicodeEncodeError. Every file is now valid UTF-8 with U+FFFD in "id"/"path"
    and the bytes percent-encoded in "id_bytes"/"path_bytes", and the cache gives the very same ids back,
    from the index and from the shard tables alike; an index without the id_bytes column still reads."""
    import pyarrow.parquet as pq

    def renamed(track, raw: bytes) -> Track:  # the file under a Latin-1 name, its id that name
        path = os.fsdecode(os.fsencode(track.path.parent) + b"/" + raw)
        os.rename(track.path, path)
        return Track(os.fsdecode(raw), Path(path), track.labels, track.artist)

    odd = [renamed(tracks[0], b"caf\xe9.wav"), renamed(tracks[3], b"d\xe9mo.wav")]  # tracks[3]: the corrupt one
    tracks = [odd[0], *tracks[1:3], odd[1], *tracks[4:]]
    out = tmp_path / "cache"
    report = preprocess(tracks, out, PAPER, shard_size=4, progress=False)
    assert report.complete and [f["id"] for f in report.failures] == ["d\ufffdmo.wav", "empty"]
    for path in out.iterdir():
        if path.suffix in (".json", ".csv"):
            text = path.read_bytes().decode("utf-8")  # strict
            if path.suffix == ".json":
                json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")  # no escaped lone surrogate
    rows = list(csv.DictReader(open(out / FAILURES_FILE, encoding="utf-8")))
    assert (rows[0]["id"], rows[0]["id_bytes"]) == ("d\ufffdmo.wav", "d%E9mo.wav")
    assert os.fsencode(tmp_path) in rows[0]["path_bytes"].encode() and rows[1]["path_bytes"] == ""
    expected = [t.id for t in tracks if t.id not in (odd[1].id, "empty")]
    from_index = FeatureCache.open(out).tracks
    assert [e.id for e in from_index] == expected
    assert np.array_equal(FeatureCache.open(out).mel(odd[0].id), log_mel(load_audio(odd[0].path, SR), PAPER).astype(
        np.float16).astype(np.float32))
    table = pq.read_table(out / INDEX_FILE)
    assert table.column("id_bytes").to_pylist()[0] == "caf%E9.wav"
    (out / INDEX_FILE).unlink()
    assert FeatureCache.open(out).tracks == from_index  # from the shard tables
    assert [t.id for t in cache_corpus(out).tracks] == sorted(expected)
    pq.write_table(table.drop_columns(["id_bytes"]), out / INDEX_FILE)  # as written before the column came
    assert [e.id for e in FeatureCache.open(out).tracks] == ["caf\ufffd.wav", *expected[1:]]
