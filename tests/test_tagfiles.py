"""`zstag tag --write-tags`: labels into the files' own tags (mutagen), audio untouched, never a damaged file."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import mutagen
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from zstag import tagfiles, tagger
from zstag.cli import app
from zstag.embedcache import content_digest

LABELS = "speech,piano,jazz,rock"
FORMATS = ["mp3", "ogg", "opus", "flac", "m4a"]
HAS_FFMPEG = shutil.which("ffmpeg") is not None


@pytest.fixture(autouse=True)
def _fresh_cache(cache_dir):
    return cache_dir


@pytest.fixture()
def folder(tmp_path):
    """The music's folder (tmp_path also holds the cache)."""
    (tmp_path / "music").mkdir()
    return tmp_path / "music"


def write_track(path: Path, seed: int = 0) -> Path:
    """Two seconds of a chord with noise in the given format (m4a through ffmpeg)."""
    sr = 48000 if path.suffix in (".opus", ".m4a") else 22050
    t = np.arange(2 * sr) / sr
    x = sum(0.2 * np.sin(2 * np.pi * f * (1 + seed / 12) * t) for f in (220.0, 277.0, 330.0))
    x = (x + 0.05 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)
    if path.suffix == ".m4a":
        wav = path.with_suffix(".src.wav")
        sf.write(wav, x, sr)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
        wav.unlink()
    elif path.suffix == ".opus":
        sf.write(path, x, sr, format="OGG", subtype="OPUS")
    else:
        sf.write(path, x, sr)
    return path


def fmt_param(ext):
    marks = [pytest.mark.skipif(not HAS_FFMPEG, reason="no ffmpeg on PATH to make an m4a")] if ext == "m4a" else []
    return pytest.param(ext, marks=marks)


# --- what must not change: the audio ----------------------------------------------------------


def decoded(path: Path) -> np.ndarray:
    """The file's samples as its decoder gives them (m4a: ffmpeg, through zstag.audio)."""
    if path.suffix == ".m4a":
        from zstag.audio import load_audio

        return load_audio(path, 48000)
    return sf.read(path, dtype="float32", always_2d=True)[0]


def audio_bytes(path: Path) -> bytes:
    """The container's coded audio, without its metadata: FLAC frames, MPEG frames, Ogg packets after the
    codec headers (page numbers may move with a longer comment packet), the MP4 mdat payload."""
    data = path.read_bytes()
    if path.suffix == ".flac":
        pos = 4
        while True:
            last, size = data[pos] & 0x80, int.from_bytes(data[pos + 1:pos + 4], "big")
            pos += 4 + size
            if last:
                return data[pos:]
    if path.suffix == ".mp3":
        start = 0
        if data[:3] == b"ID3":
            size = sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
            start = 10 + size + (10 if data[5] & 0x10 else 0)
        end = len(data) - 128 if data[-128:-125] == b"TAG" else len(data)
        return data[start:end]
    if path.suffix in (".ogg", ".opus"):
        headers = 2 if path.suffix == ".opus" else 3
        return b"".join(ogg_packets(data)[headers:])
    if path.suffix == ".m4a":
        from mutagen.mp4 import Atoms

        with open(path, "rb") as handle:
            mdat = next(a for a in Atoms(handle).atoms if a.name == b"mdat")
        return data[mdat.offset + 8:mdat.offset + mdat.length]
    raise AssertionError(path)


def ogg_packets(data: bytes) -> list[bytes]:
    packets, current, pos = [], b"", 0
    while pos < len(data):
        assert data[pos:pos + 4] == b"OggS"
        nsegs = data[pos + 26]
        lacing = data[pos + 27:pos + 27 + nsegs]
        pos += 27 + nsegs
        for size in lacing:
            current += data[pos:pos + size]
            pos += size
            if size < 255:
                packets.append(current)
                current = b""
    return packets


def read_field(path: Path, name: str) -> list[str]:
    """A zstag field as another tool reads it, straight from mutagen."""
    audio = mutagen.File(path)
    if path.suffix == ".mp3":
        return list(audio.tags[f"TXXX:{name}"].text) if f"TXXX:{name}" in audio.tags else []
    if path.suffix == ".m4a":
        return [bytes(v).decode() for v in audio.tags.get(f"----:com.zstag:{name}", [])]
    return list(audio.tags.get(name, []))


def tag(*args):
    return CliRunner().invoke(app, ["tag", *map(str, args)])


# --- writing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [fmt_param(e) for e in FORMATS])
def test_labels_written_audio_unchanged_and_rerun_idempotent(ext, folder, tiny_model_dir):
    path = write_track(folder / f"song.{ext}")
    user = mutagen.File(path, easy=True)  # a tag of the user's own, which must survive
    if user.tags is None:
        user.add_tags()
    user["title"] = "My Song"
    user.save()
    os.chmod(path, 0o640)
    samples, payload = decoded(path), audio_bytes(path)

    result = tag(path, "-l", LABELS, "--top-k", "2", "-m", tiny_model_dir, "-f", "json", "--write-tags")
    assert result.exit_code == 0, result.stderr
    chosen = [t["label"] for t in json.loads(result.stdout)["files"][0]["tags"]]
    model_id = json.loads(result.stdout)["model"]
    assert read_field(path, "ZSTAG") == ["; ".join(chosen)] and len(chosen) == 2
    assert read_field(path, "ZSTAG_MODEL") == [model_id]
    assert mutagen.File(path, easy=True)["title"] == ["My Song"]
    assert np.array_equal(decoded(path), samples)
    assert audio_bytes(path) == payload
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary copy left

    before = path.read_bytes()
    again = tag(path, "-l", LABELS, "--top-k", "2", "-m", tiny_model_dir, "--write-tags")
    assert again.exit_code == 0, again.stderr
    assert path.read_bytes() == before  # nothing to change: the file is not rewritten
    assert read_field(path, "ZSTAG") == ["; ".join(chosen)]


def test_id3_fields_are_v24_and_standard_fields_append_once(folder, tiny_model_dir):
    path = write_track(folder / "song.mp3")
    args = [path, "-l", LABELS, "--single", "-m", tiny_model_dir, "--write-tags", "--tag-field", "genre"]
    assert tag(*args).exit_code == 0
    from mutagen.id3 import ID3

    best = ID3(path).getall("TCON")[0].text
    assert ID3(path).version == (2, 4, 0) and len(best) == 1
    flac = write_track(folder / "song.flac")
    audio = mutagen.File(flac)
    audio["GENRE"] = ["Rock"]
    audio.save()
    args[0] = flac
    for _ in range(2):  # the second run finds the label there and adds nothing
        result = tag(*args, "--append")
        assert result.exit_code == 0, result.stderr
        assert mutagen.File(flac)["GENRE"] == ["Rock", best[0]]
    result = tag(*args)  # replace
    assert mutagen.File(flac)["GENRE"] == [best[0]] and "ZSTAG" not in mutagen.File(flac)


def test_dry_run_prints_old_and_new_and_writes_nothing(folder, tiny_model_dir):
    paths = [write_track(folder / f"song.{ext}", seed) for seed, ext in enumerate(["mp3", "flac"])]
    audio = mutagen.File(paths[1])
    audio["ZSTAG"] = ["old label"]
    audio.save()
    before = [(p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths]
    result = tag(folder, "-l", LABELS, "--top-k", "1", "-m", tiny_model_dir, "--write-tags", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert [(p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths] == before
    assert "TXXX:ZSTAG: (none) -> " in result.stdout and "ZSTAG: old label -> " in result.stdout
    assert "tags to write: 2 file(s)" in result.stderr
    assert tag(folder, "-l", LABELS, "--dry-run").exit_code == 2  # --dry-run goes with --write-tags


def test_refused_files_get_one_line_each_and_the_run_goes_on(folder, tiny_model_dir, monkeypatch):
    good = write_track(folder / "a.flac", 0)
    locked = write_track(folder / "b.flac", 1)
    os.chmod(locked, 0o444)
    wav = folder / "c.wav"
    sf.write(wav, np.zeros(22050, np.float32) + 0.1, 22050)
    changed = write_track(folder / "d.ogg", 2)
    real_records = tagger.file_records

    def records_then_edit(*args, **kwargs):  # the file changes after it was embedded, before it is tagged
        audio = mutagen.File(changed)
        audio["TITLE"] = ["edited meanwhile"]
        audio.save()
        return real_records(*args, **kwargs)

    monkeypatch.setattr(tagger, "file_records", records_then_edit)
    locked_bytes = locked.read_bytes()
    result = tag(folder, "-l", LABELS, "--top-k", "2", "-m", tiny_model_dir, "--write-tags")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(f"{locked}: read-only file" in line for line in lines)
    assert any(f"{wav}: cannot tag WAVE files" in line for line in lines)
    assert any(f"{changed}: changed since it was embedded" in line for line in lines)
    assert read_field(good, "ZSTAG") and locked.read_bytes() == locked_bytes
    assert mutagen.File(changed)["TITLE"] == ["edited meanwhile"] and "ZSTAG" not in mutagen.File(changed)


def test_tagged_files_stay_embedded(folder, tiny_model_dir, monkeypatch, forbid_decoding):
    """The audio is the same, so the cache keeps the embeddings under the new content digest: no re-embedding,
    and the scores are those of the tagged file decoded afresh (bit-identical: same samples, same pipeline)."""
    for seed, ext in enumerate(["mp3", "flac", "opus"]):
        write_track(folder / f"s.{ext}", seed)
    first = tag(folder, "-l", LABELS, "-m", tiny_model_dir, "-f", "json", "--write-tags")
    assert first.exit_code == 0, first.stderr
    fresh = tag(folder, "-l", LABELS, "-m", tiny_model_dir, "-f", "json", "--no-cache")
    forbid_decoding(monkeypatch)
    warm = tag(folder, "-l", LABELS, "-m", tiny_model_dir, "-f", "json")
    assert warm.exit_code == 0, warm.stderr
    files = [json.loads(r.stdout)["files"] for r in (first, fresh, warm)]
    assert files[0] == files[1] == files[2]


# --- a failure or a kill mid-write ------------------------------------------------------------


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_failure_mid_write_leaves_the_original(where, folder, monkeypatch):
    path = write_track(folder / "song.ogg")
    before = path.read_bytes()

    def boom(*args):
        raise KeyboardInterrupt if where == "replace" else OSError(5, "Input/output error")

    monkeypatch.setattr(tagfiles, "_fsync", boom) if where == "fsync" else monkeypatch.setattr(os, "replace", boom)
    expected = (KeyboardInterrupt, None) if where == "replace" else (tagfiles.TagWriteError, "Input/output error")
    with pytest.raises(expected[0], match=expected[1]):
        tagfiles.write(str(path), ["jazz"], "m1", digest=content_digest(path))
    assert path.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["song.ogg"]


KILL_SCRIPT = """
import os, signal, sys
from zstag import tagfiles
def kill(*args):
    os.kill(os.getpid(), signal.SIGKILL)  # the process dies after the copy is tagged, before the rename
os.replace = kill
tagfiles.write(sys.argv[1], ["jazz"], "m1", digest=None)
"""


def test_kill_during_write_leaves_the_original(folder):
    path = write_track(folder / "song.flac")
    before = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(Path(tagfiles.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path)], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert path.read_bytes() == before
    left = [p for p in folder.iterdir() if p != path]
    assert left and all(p.name.startswith(".song.zstag-") for p in left)  # hidden: never taken for music
    assert tagger.find_audio_files([str(folder)], tagger.parse_extensions(None)).files == [str(path)]
    change, _ = tagfiles.write(str(path), ["jazz"], "m1", digest=content_digest(path))  # a later run works
    assert read_field(path, "ZSTAG") == ["jazz"]


def test_new_values_append_without_duplicates():
    assert tagfiles.new_values([], ["a", "b"], append=False) == ["a; b"]
    assert tagfiles.new_values(["Rock; Jazz"], ["jazz", "piano"], append=True) == ["Rock; Jazz", "piano"]
    assert tagfiles.new_values(["Rock", "piano"], ["Piano"], append=True) == ["Rock", "piano"]


RAW_KEYS = {  # where Picard and beets look for each standard field
    "mp3": {"genre": "TCON", "mood": "TMOO", "grouping": "TIT1", "comment": "COMM::eng"},
    "m4a": {"genre": "\xa9gen", "mood": "----:com.apple.iTunes:MOOD", "grouping": "\xa9grp", "comment": "\xa9cmt"},
    "vorbis": {"genre": "GENRE", "mood": "MOOD", "grouping": "GROUPING", "comment": "COMMENT"},
}


@pytest.mark.parametrize("ext", [fmt_param(e) for e in FORMATS])
def test_standard_fields_land_where_other_tools_read_them(ext, folder):
    path = write_track(folder / f"song.{ext}")
    payload = audio_bytes(path)
    for field, key in RAW_KEYS.get(ext, RAW_KEYS["vorbis"]).items():
        tagfiles.write(str(path), ["jazz", "piano"], "m1", digest=content_digest(path), field=field)
        raw = mutagen.File(path).tags[key]
        values = [bytes(v).decode() for v in raw] if ext == "m4a" and key.startswith("----") else \
            list(getattr(raw, "text", raw))
        assert values == ["jazz; piano"], (field, values)
        change, written = tagfiles.write(str(path), ["piano", "jazz"], "m1", digest=None, field=field, append=True)
        assert not change.changed and written is None  # both labels there already: nothing to write
    assert audio_bytes(path) == payload


def test_owner_links_and_refusals_in_a_dry_run(folder):
    path = write_track(folder / "song.flac")
    link = folder / "link.flac"
    link.symlink_to(path.name)
    if os.geteuid() == 0:  # only root can give a file away: the tagged copy must get the owner back
        os.chown(path, 4321, 4322)
    tagfiles.write(str(link), ["jazz"], "m1", digest=content_digest(path))
    assert link.is_symlink() and read_field(path, "ZSTAG") == ["jazz"]
    if os.geteuid() == 0:
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (4321, 4322)
    os.link(path, folder / "hard.flac")
    with pytest.raises(tagfiles.TagWriteError, match="has 2 hard links"):
        tagfiles.write(str(path), ["piano"], "m1", digest=None, dry_run=True)
    os.unlink(folder / "hard.flac")
    os.chmod(path, 0o444)
    with pytest.raises(tagfiles.TagWriteError, match="read-only file"):
        tagfiles.write(str(path), ["piano"], "m1", digest=None, dry_run=True)
    change, _ = tagfiles.write(str(path), ["jazz"], "m1", digest=None, dry_run=True)  # nothing to change: no refusal
    assert not change.changed


def test_no_cache_write_tags_checks_the_digest_without_the_cache(folder, tiny_model_dir, cache_dir):
    path = write_track(folder / "song.ogg")
    result = tag(path, "-l", LABELS, "--top-k", "1", "-m", tiny_model_dir, "--write-tags", "--no-cache")
    assert result.exit_code == 0, result.stderr
    assert len(read_field(path, "ZSTAG")) == 1 and not (cache_dir / "embeddings.sqlite").exists()
