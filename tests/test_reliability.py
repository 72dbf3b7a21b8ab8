"""Damaged files zstag reads back (embedding-set parts, a feature cache's index and shard tables) are one line
or rebuilt, never a traceback nor trusted; outputs keep the permissions the user gave them."""

import json
import os
import stat

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from test_features import write_corpus  # tests/test_features.py
from test_tag import _fresh_cache, music  # noqa: F401 (fixtures; tests/test_tag.py)
from zstag import embedset, modelfile
from zstag.cli import app
from zstag.features import INDEX_FILE, FeatureCache, FeatureCacheError, preprocess
from zstag.audio import PAPER
from zstag.setinputs import Source


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def flip(path, start: int, n: int = 4) -> None:
    """Damage n bytes of a file in place from start, as a bad disk sector or a torn copy would."""
    data = bytearray(path.read_bytes())
    for i in range(start, start + n):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))


def column_chunk(part, name: str):
    """(first byte of the column's data page, its last byte + 1) in a one-row-group part file."""
    meta = pq.ParquetFile(part).metadata.row_group(0)
    col = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == name)
    start = col.dictionary_page_offset or col.data_page_offset
    return col.data_page_offset, start + col.total_compressed_size


def one_line_naming(result, what) -> bool:
    """The run ended by its exit code (no traceback) and one line of stderr names `what` as the error."""
    clean = result.exception is None or isinstance(result.exception, SystemExit)
    return clean and any(line.startswith("zstag: error: ") and str(what) in line for line in result.stderr.splitlines())


# --- embedding sets: a damaged part -----------------------------------------------------------------


def test_a_damaged_part_of_an_older_set_is_one_line_not_a_traceback(tiny_model_dir, music, tmp_path):
    """A part written without page checksums (by an earlier zstag) whose path column is damaged: pyarrow raises
    ArrowInvalid (a ValueError, no OSError) from its dictionary indices; both readers of a set say so in one line."""
    files = modelfile.read_model(tiny_model_dir)
    dim = embedset.model_dim(files)
    rows = [embedset.row(Source(f"/music/song{i}.wav", None, f"{i:032x}", 1000 + i),
                         np.random.default_rng(i).standard_normal(dim).astype(np.float32), None,
                         {"duration_s": 3.0, "segments": 1}) for i in range(300)]
    table = embedset.rows_table(rows, dim, files.model_id, "float32")
    out = tmp_path / "set"
    out.mkdir()
    part = out / "part-000001-0badc0de.parquet"
    pq.write_table(table, part, use_dictionary=[f.name for f in table.schema if f.name != "embedding"],
                   compression={f.name: "none" if f.name == "embedding" else "snappy" for f in table.schema})
    start, end = column_chunk(part, "path")
    flip(part, start + int(0.9 * (end - start)))
    with pytest.raises(pa.ArrowInvalid):  # what the damage is: no OSError
        pq.read_table(part, columns=["path"])

    tagged = cli("tag", "--embeddings", out, "-l", "rock", "-m", tiny_model_dir)
    assert tagged.exit_code == 1 and one_line_naming(tagged, part), (tagged.exception, tagged.stderr)
    embedded = cli("embed", music / "a.wav", "--out", out, "--model", tiny_model_dir, "--no-cache")
    assert embedded.exit_code == 1 and one_line_naming(embedded, part), (embedded.exception, embedded.stderr)
    assert sorted(out.iterdir()) == [part]  # nothing written beside the damaged part


def test_a_part_whose_embeddings_were_damaged_is_refused_not_scored(tiny_model_dir, music, tmp_path):
    """The embeddings are stored uncompressed: damaged bytes there still decode, as other numbers. A part
    carries page checksums, so the query refuses it instead of ranking tracks by damaged vectors."""
    out = tmp_path / "set"
    assert cli("embed", music, "--out", out, "--model", tiny_model_dir, "--no-cache").exit_code == 0
    (part,) = embedset.parts(out)
    before = cli("tag", "--embeddings", out, "-l", "rock,jazz", "-m", tiny_model_dir, "-f", "json")
    assert before.exit_code == 0, before.stderr
    start, end = column_chunk(part, "embedding.list.element")
    flip(part, (start + end) // 2)
    after = cli("tag", "--embeddings", out, "-l", "rock,jazz", "-m", tiny_model_dir, "-f", "json")
    assert after.exit_code == 1 and one_line_naming(after, part), (after.stdout, after.stderr)


# --- a feature cache: a damaged index or shard table ---------------------------------------------------


def test_a_damaged_feature_index_is_rebuilt_from_the_shard_tables(tmp_path):
    """index.parquet only gathers the shard tables (a cut copy of a cache, a bad sector): the cache opens from
    them, the same tracks, and the index is written again."""
    tracks = write_corpus(tmp_path / "audio", n=5, bad=False)
    preprocess(tracks, tmp_path / "cache", PAPER, shard_size=2, progress=False)
    expected = FeatureCache.open(tmp_path / "cache").tracks
    index = tmp_path / "cache" / INDEX_FILE
    good = index.read_bytes()
    index.write_bytes(good[: len(good) // 2])
    assert FeatureCache.open(tmp_path / "cache").tracks == expected
    assert pq.read_table(index).num_rows == len(expected)  # rebuilt


def test_a_damaged_shard_table_is_one_line(tmp_path):
    tracks = write_corpus(tmp_path / "audio", n=5, bad=False)
    preprocess(tracks, tmp_path / "cache", PAPER, shard_size=2, progress=False)
    (tmp_path / "cache" / INDEX_FILE).unlink()
    table = tmp_path / "cache" / "shard-00001.json"
    table.write_text(table.read_text()[:40])
    with pytest.raises(FeatureCacheError, match="shard-00001.json: unreadable"):
        FeatureCache.open(tmp_path / "cache")


# --- outputs keep their permissions -------------------------------------------------------------------


def test_an_output_keeps_its_mode_and_a_new_one_follows_the_umask(tiny_model_dir, music, tmp_path):
    """-o replaces the file through a temporary copy: the user's 0600 stays 0600 (not world-readable), and a
    new file gets the umask's permissions, as the shell's > would."""
    private = tmp_path / "private.json"
    private.write_text("{}")
    os.chmod(private, 0o600)
    result = cli("tag", music / "a.wav", "-l", "rock", "-m", tiny_model_dir, "-f", "json", "-o", private)
    assert result.exit_code == 0, result.stderr
    assert json.loads(private.read_text())["files"] and stat.S_IMODE(os.stat(private).st_mode) == 0o600
    for umask, mode in ((0o077, 0o600), (0o022, 0o644)):
        new = tmp_path / f"new-{umask:o}.json"
        old = os.umask(umask)
        try:
            result = cli("tag", music / "a.wav", "-l", "rock", "-m", tiny_model_dir, "-f", "json", "-o", new)
        finally:
            os.umask(old)
        assert result.exit_code == 0, result.stderr
        assert stat.S_IMODE(os.stat(new).st_mode) == mode


# --- training checkpoints reach the disk before latest.json names them ---------------------------------


def test_a_checkpoint_is_flushed_to_disk_before_it_is_named(tmp_path, monkeypatch):
    """latest.json is fsynced: the epoch folder it names must be too (each file, the folder, its parent), or a
    power cut can leave latest.json naming empty files, and the run cannot resume ("no usable checkpoint")."""
    import torch

    from zstag import checkpoints

    synced, real = set(), os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    where = checkpoints.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"best": 0.5})
    needed = [where, where.parent, *where.iterdir()]
    assert len(needed) == 5
    unsynced = [p.name for p in needed if (os.stat(p).st_dev, os.stat(p).st_ino) not in synced]
    assert not unsynced


# --- SIGTERM (kill, timeout, systemd) cleans up as Ctrl-C does --------------------------------------------

BLOCKING_TAGGER = """
import os, time
if os.environ.get("ZSTAG_TEST_BLOCKED"):
    import zstag.tagfiles as tagfiles
    real = tagfiles._apply
    def _apply(cls, tmp, change):  # the tagged copy exists beside the file: the run hangs there
        real(cls, tmp, change)
        open(os.environ["ZSTAG_TEST_BLOCKED"], "a").close()
        time.sleep(3600)
    tagfiles._apply = _apply
"""


def test_sigterm_during_write_tags_leaves_the_file_and_no_copy(tiny_model_dir, tmp_path):
    """`kill PID` (or `timeout`) while a file is being tagged: the original stays, the hidden tagged copy
    beside it is removed (kill -9 alone may leave it), and the process still ends by SIGTERM."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import zstag
    from test_tagfiles import write_track

    folder = tmp_path / "music"
    folder.mkdir()
    song = write_track(folder / "song.flac")
    before = song.read_bytes()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKING_TAGGER)
    flag = tmp_path / "blocked"
    env = {**os.environ, "ZSTAG_TEST_BLOCKED": str(flag), "ZSTAG_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(hook), str(Path(zstag.__file__).resolve().parents[1])])}
    child = subprocess.Popen([sys.executable, "-m", "zstag", "tag", str(song), "-l", "rock", "-m", tiny_model_dir,
                              "--write-tags", "--workers", "0"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180  # a cold import of torch on a busy machine
        while not flag.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the tag run never reached the write"
            time.sleep(0.05)
        assert any(p.name.startswith(".song.zstag-") for p in folder.iterdir())  # the copy the kill must not leave
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGTERM, child.stderr.read().decode()[-2000:]
    assert song.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["song.flac"]


# --- tag --write-tags keeps what the file system holds beside the bytes -------------------------------------


@pytest.mark.skipif(not hasattr(os, "setxattr"), reason="extended attributes through os: Linux")
def test_write_tags_keeps_the_files_extended_attributes(tmp_path):
    """File managers keep the user's own tags and ratings in extended attributes (KDE: user.xdg.tags,
    user.baloo.rating): the tagged copy renamed over the file must carry them, or they are lost."""
    from test_tagfiles import read_field, write_track
    from zstag import tagfiles
    from zstag.embedcache import content_digest

    song = write_track(tmp_path / "song.flac")
    try:
        os.setxattr(song, "user.xdg.tags", b"favourites,summer")
        os.setxattr(song, "user.baloo.rating", b"10")
    except OSError as exc:
        pytest.skip(f"this file system keeps no user extended attributes: {exc}")
    tagfiles.write(str(song), ["jazz"], "m1", digest=content_digest(song))
    assert read_field(song, "ZSTAG") == ["jazz"]
    assert {name: os.getxattr(song, name) for name in os.listxattr(song) if name.startswith("user.")} == \
        {"user.xdg.tags": b"favourites,summer", "user.baloo.rating": b"10"}


# --- search / similar over the cache never write over a track they searched ----------------------------------


def test_search_of_the_cache_never_writes_over_a_track_it_searched(music, tiny_model_dir):
    """Without a PATH, search and similar read the cache's remembered tracks: -o naming one of them (a typo,
    a shell completion) was written over the user's audio file. It is an input: refused, exit 2."""
    assert cli("tag", music, "-l", "rock", "-m", tiny_model_dir).exit_code == 0  # the cache knows the tracks now
    song = music / "a.wav"
    before = song.read_bytes()
    for args in (["search", "piano"], ["similar", music / "c.mp3"]):
        result = cli(*args, "-m", tiny_model_dir, "-o", song)
        assert result.exit_code == 2 and one_line_naming(result, song), (args, result.stderr)
        assert song.read_bytes() == before
    written = cli("search", "piano", "-m", tiny_model_dir, "-o", music / "found.txt")  # any other file is fine
    assert written.exit_code == 0 and str(song) in (music / "found.txt").read_text()


def test_embed_out_naming_a_file_is_one_line_before_any_work(music, tiny_model_dir, tmp_path, monkeypatch,
                                                             forbid_decoding):
    """--out is a set's folder: an existing file there was a FileExistsError traceback after embedding."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    forbid_decoding(monkeypatch)
    result = cli("embed", music, "--out", notes, "--model", tiny_model_dir)
    assert result.exit_code == 2 and one_line_naming(result, notes), (result.exception, result.stderr)
    assert notes.read_text() == "my notes\n"


def test_tags_mutagen_cannot_parse_are_one_line_and_the_run_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    """mutagen raises IndexError (no MutagenError) on some damaged Ogg Vorbis comment headers (found by
    fuzzing): a file damaged after it was embedded must be one line, not a traceback ending the run."""
    from test_tagfiles import read_field, write_track
    from zstag import tagfiles, tagger

    folder = tmp_path / "music"
    folder.mkdir()
    good, bad = write_track(folder / "a.ogg", 0), write_track(folder / "b.ogg", 1)
    tagfiles.write(str(bad), ["rock", "pop"], "m0", digest=None)  # the comment header as zstag leaves it
    data = bytearray(bad.read_bytes())
    last = data.index(b"ZSTAG_MODEL=m0")  # the last comment: its length now runs past the packet's end
    data[last - 4:last] = (14 + 179 * 256).to_bytes(4, "little")
    real_records = tagger.file_records

    def records_then_damage(*args, **kwargs):  # the file is damaged after it was embedded
        bad.write_bytes(bytes(data))
        return real_records(*args, **kwargs)

    monkeypatch.setattr(tagger, "file_records", records_then_damage)
    result = cli("tag", folder, "-l", "rock,jazz", "-m", tiny_model_dir, "--write-tags")
    assert result.exit_code == 1 and isinstance(result.exception, (SystemExit, type(None))), result.exception
    assert any(line.startswith(f"zstag: {bad}: ") for line in result.stderr.splitlines()), result.stderr
    assert read_field(good, "ZSTAG") and bad.read_bytes() == bytes(data)


def test_a_flac_whose_metadata_lengths_are_damaged_is_refused_not_rewritten(tmp_path):
    """A FLAC metadata block whose length runs into the audio frames (found by fuzzing): mutagen rewrites the
    block as it parsed it and the frames inside that length are gone. The tagged copy's audio stream is
    compared with the original's, so such a file is refused, one line, and left as it was."""
    from test_tagfiles import write_track
    from zstag import tagfiles

    song = write_track(tmp_path / "song.flac")
    data = bytearray(song.read_bytes())
    assert data[42] & 0x7F == 4  # the second block, VORBIS_COMMENT (after the 34-byte STREAMINFO)
    data[43:46] = (26445).to_bytes(3, "big")  # its length now reaches far into the audio frames
    song.write_bytes(bytes(data))
    with pytest.raises(tagfiles.TagWriteError, match=f"{song}: "):
        tagfiles.write(str(song), ["jazz"], "m1", digest=None)
    assert song.read_bytes() == bytes(data) and os.listdir(tmp_path) == ["song.flac"]


@pytest.mark.parametrize("suffix", [".flac", ".ogg", ".mp3"])
def test_a_tag_write_that_changed_the_audio_is_refused(tmp_path, monkeypatch, suffix):
    """Whatever the container walk accepts, the copy's coded audio after tagging must equal the original's: a tag
    writer that changed one byte of the audio (simulated here after mutagen's own save) is refused, one line,
    and the file is left as it was, with no copy beside it."""
    from test_tagfiles import write_track
    from zstag import tagfiles

    song = write_track(tmp_path / f"song{suffix}")
    before = song.read_bytes()
    real = tagfiles._apply

    def apply_then_damage(cls, tmp, change):
        real(cls, tmp, change)
        with open(tmp, "r+b") as handle:  # a byte of the last audio frame or packet, not of the tags
            handle.seek(-40, os.SEEK_END)
            byte = handle.read(1)
            handle.seek(-40, os.SEEK_END)
            handle.write(bytes([byte[0] ^ 0x01]))

    monkeypatch.setattr(tagfiles, "_apply", apply_then_damage)
    with pytest.raises(tagfiles.TagWriteError, match=f"{song}: .*audio"):
        tagfiles.write(str(song), ["jazz"], "m1", digest=None)
    assert song.read_bytes() == before and os.listdir(tmp_path) == [song.name]


# --- tag --write-tags keeps an ID3 tag's version ------------------------------------------------------------


def id3_mp3(path, version: int):
    """An mp3 whose ID3v2.<version> tag holds a title and a date as that version spells it (v2.3: TYER + TDAT,
    with a TSIZ frame, which v2.4 dropped; v2.4: TDRC)."""
    from mutagen.id3 import ID3, TDAT, TDRC, TIT2, TSIZ, TYER
    from test_tagfiles import write_track

    write_track(path)
    tags = ID3()
    tags.add(TIT2(encoding=1, text="My Song"))
    if version == 3:
        for frame, text in ((TYER, "1999"), (TDAT, "0304"), (TSIZ, "123456")):
            tags.add(frame(encoding=0, text=text))
    else:
        tags.add(TDRC(encoding=3, text="1999-04-03"))
    tags.save(path, v2_version=version)
    return path


def test_write_tags_keeps_an_id3v23_tag_v23_with_its_frames(tiny_model_dir, tmp_path):
    """Older players (Windows Explorer before 10, car stereos) read no ID3v2.4: a v2.3 tag stays v2.3, its
    date frames (TYER, TDAT) and TSIZ as they were; mood, which v2.3 has no frame for, is TXXX:MOOD (as
    Picard writes it). A v2.4 tag stays v2.4 (mood: TMOO). The coded audio is unchanged."""
    from mutagen.id3 import ID3
    from test_tagfiles import audio_bytes, decoded

    folder = tmp_path / "music"
    folder.mkdir()
    v23, v24 = id3_mp3(folder / "old.mp3", 3), id3_mp3(folder / "new.mp3", 4)
    kept = {song: (audio_bytes(song), decoded(song)) for song in (v23, v24)}
    for field in ("zstag", "mood", "genre", "grouping", "comment"):
        result = cli("tag", folder, "-l", "jazz,rock", "--top-k", "2", "-m", tiny_model_dir, "--write-tags",
                     "--tag-field", field)
        assert result.exit_code == 0, result.stderr
    old, new = ID3(v23, translate=False), ID3(v24, translate=False)
    assert old.version == (2, 3, 0) and v23.read_bytes()[3] == 3
    assert [(key, old[key].text) for key in ("TIT2", "TYER", "TDAT", "TSIZ")] == \
        [("TIT2", ["My Song"]), ("TYER", ["1999"]), ("TDAT", ["0304"]), ("TSIZ", ["123456"])]
    assert not {"TDRC", "TMOO"} & {frame.FrameID for frame in old.values()}
    labels = old["TXXX:ZSTAG"].text
    assert len(labels) == 1 and sorted(labels[0].split("; ")) == ["jazz", "rock"]
    assert [old[key].text for key in ("TXXX:MOOD", "TCON", "TIT1", "COMM::eng")] == [labels] * 4
    assert new.version == (2, 4, 0) and str(new["TDRC"].text[0]) == "1999-04-03"
    assert [new[key].text for key in ("TXXX:ZSTAG", "TMOO", "TCON")] == [labels] * 3 and "TXXX:MOOD" not in new
    for song, (payload, samples) in kept.items():
        assert audio_bytes(song) == payload and np.array_equal(decoded(song), samples)
    again = cli("tag", folder, "-l", "jazz,rock", "--top-k", "2", "-m", tiny_model_dir, "--write-tags",
                "--tag-field", "mood", "--dry-run")  # the v2.3 file's mood is found where it was written
    assert again.exit_code == 0 and "TXXX:MOOD: " in again.stdout + again.stderr and "unchanged" in again.stdout + \
        again.stderr, again.stdout


# --- the embedding cache: a damaged row ----------------------------------------------------------------------


def test_a_stored_embedding_with_a_flipped_byte_is_embedded_again_not_scored(tiny_model_dir, music, cache_dir):
    """SQLite keeps no checksums of its pages: a byte flipped inside a stored vector (a bad sector) was read
    back as a valid embedding and scored. Each row carries a checksum: the row is a miss, with one notice, the
    file is embedded again (its scores as before) and its row rewritten; search over the cache leaves it out."""
    import sqlite3

    from zstag.embedcache import CACHE_FILE, content_digest

    args = ["tag", music, "-l", "rock,jazz,piano", "-m", tiny_model_dir, "-f", "json", "--workers", "0"]
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    song = music / "c.mp3"
    path = cache_dir / CACHE_FILE
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the database file itself
        (vector,), = db.execute("SELECT vector FROM embeddings WHERE digest=?", (content_digest(song),)).fetchall()
    data = bytearray(path.read_bytes())
    at = data.find(vector[:32])
    assert at > 0 and data.count(vector[:32]) == 1
    data[at + 7] ^= 0x55  # the high byte of the second float: its exponent and sign change
    path.write_bytes(bytes(data))

    search = cli("search", "piano", "-m", tiny_model_dir, "-f", "json")  # the cache's tracks: the damaged one left out
    assert search.exit_code == 0, search.stderr
    assert str(song) not in search.stdout and str(music / "a.wav") in search.stdout, search.stdout
    assert sum("damaged" in line for line in search.stderr.splitlines()) == 1, search.stderr

    second = cli(*args)
    notices = [line for line in second.stderr.splitlines() if line.startswith("zstag: warning: embedding cache")]
    assert second.exit_code == 0 and len(notices) == 1 and "damaged" in notices[0], second.stderr
    assert "(2 from the cache)" in second.stderr
    assert json.loads(second.stdout)["files"] == json.loads(first.stdout)["files"]  # the same pipeline, re-run
    third = cli(*args)
    assert "(3 from the cache)" in third.stderr and "warning" not in third.stderr, third.stderr


def test_rows_an_older_zstag_wrote_without_a_checksum_are_still_read(tiny_model_dir, music, cache_dir):
    """Rows from before the row checksum hold the bare vector: they are read as they were then (an upgrade must
    not re-embed a whole library), scored as before, with no warning; search over the cache still finds them."""
    import sqlite3

    from zstag.embedcache import CACHE_FILE, CHECK_BYTES

    args = ["tag", music, "-l", "rock,jazz,piano", "-m", tiny_model_dir, "-f", "json", "--workers", "0"]
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:  # as an older zstag wrote them: no checksum bytes
        db.execute("UPDATE embeddings SET vector = substr(vector, 1, length(vector) - ?)", (CHECK_BYTES,))
        assert {n % 4 for (n,) in db.execute("SELECT length(vector) FROM embeddings")} == {0}
    again = cli(*args)
    assert again.exit_code == 0 and "(3 from the cache)" in again.stderr and "warning" not in again.stderr, again.stderr
    assert json.loads(again.stdout)["files"] == json.loads(first.stdout)["files"]
    search = cli("search", "piano", "-m", tiny_model_dir, "-f", "json")
    assert search.exit_code == 0 and str(music / "c.mp3") in search.stdout, search.stderr
