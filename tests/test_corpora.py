"""Corpus readers on fixtures built in the real layouts (audio files are tiny or empty: readers never decode)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from zstag.corpora import CorpusError, Track, detect_kind, open_corpus

SHARED_DANCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dance"


def touch(path: Path, wav: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if wav:
        sf.write(path, np.zeros(800, dtype=np.float32), 8000)
    else:
        path.write_bytes(b"")
    return path


# --- GTZAN -------------------------------------------------------------------------------------


@pytest.mark.parametrize("parent", ["genres", "genres_original", "Data/genres_original", "."])
def test_gtzan_layouts(tmp_path, parent):
    base = tmp_path / parent
    for genre in ("blues", "hiphop"):
        for i in range(3):
            touch(base / genre / f"{genre}.{i:05d}.wav", wav=(i == 0))
    touch(base / "blues" / "notes.txt")
    touch(base / "blues" / "rock.00001.wav")          # wrong genre prefix: not a GTZAN clip of blues
    corpus = open_corpus("gtzan", tmp_path)
    assert corpus.name == "gtzan" and corpus.single_label
    assert corpus.labels == ["blues", "hiphop"]
    assert [t.id for t in corpus.tracks][:3] == ["blues.00000", "blues.00001", "blues.00002"]
    assert len(corpus) == 6
    assert corpus.track("hiphop.00002") == Track("hiphop.00002", base / "hiphop" / "hiphop.00002.wav", ("hiphop",))
    assert detect_kind(tmp_path) == "gtzan"


def test_gtzan_au_files(tmp_path):
    touch(tmp_path / "genres" / "jazz" / "jazz.00054.au")
    corpus = open_corpus("gtzan", tmp_path)
    assert [(t.id, t.labels) for t in corpus.tracks] == [("jazz.00054", ("jazz",))]


def test_gtzan_wrong_root(tmp_path):
    touch(tmp_path / "jazz" / "song.wav")
    with pytest.raises(CorpusError, match=r"not a GTZAN root: expected genres/<genre>/<genre>\.NNNNN\.wav") as e:
        open_corpus("gtzan", tmp_path)
    assert "\n" not in str(e.value)


# --- folder per label ------------------------------------------------------------------------------


def test_folder(tmp_path):
    touch(tmp_path / "east coast swing" / "a.wav", wav=True)
    touch(tmp_path / "east coast swing" / "live" / "b.MP3")
    touch(tmp_path / "tango" / "c.ogg")
    touch(tmp_path / "tango" / "cover.jpg")
    touch(tmp_path / "tango" / ".hidden.wav")
    touch(tmp_path / ".cache" / "d.wav")
    touch(tmp_path / "empty" / "readme.txt")
    corpus = open_corpus("folder", tmp_path)
    assert corpus.kind == "folder" and corpus.single_label
    assert corpus.labels == ["east coast swing", "tango"]
    assert {t.id: t.labels for t in corpus.tracks} == {
        "east coast swing/a.wav": ("east coast swing",),
        "east coast swing/live/b.MP3": ("east coast swing",),
        "tango/c.ogg": ("tango",),
    }
    assert all(t.path.is_file() for t in corpus.tracks)


def test_folder_file_linked_under_two_labels_is_one_track(tmp_path):
    touch(tmp_path / "jazz" / "a.wav")
    touch(tmp_path / "jazz" / "b.wav")
    (tmp_path / "rock").mkdir()
    (tmp_path / "rock" / "a.wav").symlink_to(tmp_path / "jazz" / "a.wav")
    (tmp_path / "rock" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    corpus = open_corpus("folder", tmp_path)
    assert [t.id for t in corpus.tracks] == ["jazz/a.wav", "jazz/b.wav"] and corpus.labels == ["jazz"]
    assert corpus.skipped == [f"{tmp_path}: track rock/a.wav: listed twice (the same file as track jazz/a.wav), "
                              "first one kept"]
    assert corpus.missing == ["rock/gone.wav"]


def test_folders_deeper_than_the_recursion_limit_are_read(tmp_path, deep_folder):
    """folder per label and MSD walk their trees without recursion (os.walk: RecursionError)."""
    import sys

    touch(tmp_path / "jazz" / "a.wav")
    deepest = Path(deep_folder(tmp_path / "jazz", sys.getrecursionlimit() + 100))
    touch(deepest / "TRAAAAW128F429D538.mp3")
    corpus = open_corpus("folder", tmp_path)
    assert [t.path for t in corpus.tracks] == [tmp_path / "jazz" / "a.wav", deepest / "TRAAAAW128F429D538.mp3"]
    from zstag.corpora.msd import scan

    assert scan(tmp_path).audio == {"TRAAAAW128F429D538": str(deepest / "TRAAAAW128F429D538.mp3")}


def test_folder_without_audio(tmp_path):
    touch(tmp_path / "a" / "x.txt")
    with pytest.raises(CorpusError, match="not a folder-per-label root"):
        open_corpus("folder", tmp_path)


# --- CSV manifest -------------------------------------------------------------------------------


def write_manifest(folder: Path) -> Path:
    touch(folder / "audio" / "a.ogg")
    touch(folder / "audio" / "b.ogg")
    touch(folder / "audio" / "c.wav")
    text = (
        "path,labels,artist,title,duration_s\n"
        "audio/a.ogg,salsa,\"Enrique Iglesias, Romeo Santos\",Loco,90.0\n"
        "audio/b.ogg, waltz ; two step ;waltz,Blake Shelton,Home,90.0\n"
        "audio/c.wav,,Nobody,Untagged,1\n"
        "audio/gone.ogg,tango,Someone,Gone,90.0\n"
        ",tango,Someone,No path,90.0\n"
    )
    path = folder / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_manifest(tmp_path):
    path = write_manifest(tmp_path / "dance")
    for root in (tmp_path / "dance", path):
        corpus = open_corpus("csv", root)
        assert corpus.name == "dance" and corpus.kind == "csv"
        assert [t.id for t in corpus.tracks] == ["audio/a.ogg", "audio/b.ogg"]
        a, b = corpus.tracks
        assert a.artist == "Enrique Iglesias, Romeo Santos" and a.labels == ("salsa",)
        assert b.labels == ("waltz", "two step") and b.path == tmp_path / "dance" / "audio" / "b.ogg"
        assert corpus.labels == ["salsa", "two step", "waltz"]
        assert not corpus.single_label
        assert corpus.missing == ["audio/gone.ogg"]
        assert [s.split("manifest.csv")[1] for s in corpus.skipped] == [":4: no labels", ":6: empty path"]
        assert corpus.sources == [path]  # what no output may replace
    kept = open_corpus("csv", path, keep_untagged=True)
    assert kept.track("audio/c.wav").labels == () and len(kept.skipped) == 1
    assert detect_kind(tmp_path / "dance") == "csv" and detect_kind(path) == "csv"


def test_csv_options_and_errors(tmp_path):
    path = write_manifest(tmp_path / "d")
    assert open_corpus("csv", path, vocabulary=["waltz"]).labels == ["waltz"]
    assert open_corpus("csv", path, top_n=1).labels == ["salsa"]   # 3 labels tie at one track: name decides
    with pytest.raises(CorpusError, match="labels not in this corpus: polka"):
        open_corpus("csv", path, vocabulary=["waltz", "polka"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,tags\nx.wav,a\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.csv: not a CSV manifest: missing column path, labels"):
        open_corpus("csv", bad)
    with pytest.raises(CorpusError, match="not a CSV corpus root: expected manifest.csv"):
        open_corpus("csv", tmp_path)
    gone = tmp_path / "gone.csv"
    gone.write_text("path,labels\nnothing.wav,a\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"no usable csv tracks found \(1 listed tracks have no audio file\)"):
        open_corpus("csv", gone)
    with pytest.raises(CorpusError, match="unknown corpus kind 'mp3'"):
        open_corpus("mp3", tmp_path)


def test_csv_rows_left_out_are_reported_in_file_order(tmp_path):
    for name in ("a/1.wav", "a/2.wav", "b/3.wav", "b/4.wav"):
        touch(tmp_path / name)
    (tmp_path / "manifest.csv").write_text(
        "path,labels\n"
        "a/1.wav,jazz\n"
        "a/1.wav,rock\n"          # 3: the same id again
        "zz/missing.wav,jazz\n"   # 4: no such file
        "a/2.wav,\n"              # 5: an empty labels cell
        "b/3.wav,rock,guitar\n"   # 6: an extra, unquoted field: not truncated to "rock"
        "b/4.wav\n"               # 7: no labels field
        "b,rock\n",               # 8: a folder, not a file
        encoding="utf-8")
    corpus = open_corpus("csv", tmp_path)
    assert [t.id for t in corpus.tracks] == ["a/1.wav"] and corpus.track("a/1.wav").labels == ("jazz",)
    assert corpus.missing == ["b", "zz/missing.wav"]
    assert [s.split("manifest.csv:")[1] for s in corpus.skipped] == [
        "3: track a/1.wav: listed twice, first one kept",
        "5: no labels",
        "6: 3 fields, expected 2 (labels are separated by ';'; quote a field holding a comma)",
        "7: no labels field",
    ]
    line = corpus.left_out()
    assert "\n" not in line and line.startswith(f"{tmp_path}: 2 listed tracks have no audio file, 4 entries skipped")
    assert line.endswith("manifest.csv:3: track a/1.wav: listed twice, first one kept)")
    assert open_corpus("csv", tmp_path / "manifest.csv", keep_untagged=True).track("a/2.wav").labels == ()


def test_csv_empty_trailing_fields_are_no_extra_data(tmp_path):
    """A spreadsheet's trailing commas (`x.wav,rock;pop,,`) are not the "more fields than the header" error."""
    touch(tmp_path / "x.wav")
    touch(tmp_path / "y.wav")
    (tmp_path / "manifest.csv").write_text("path,labels\nx.wav,rock;pop,,\ny.wav,jazz, \n", encoding="utf-8")
    corpus = open_corpus("csv", tmp_path)
    assert corpus.skipped == [] and corpus.track("x.wav").labels == ("rock", "pop")
    assert corpus.track("y.wav").labels == ("jazz",)


def test_csv_same_file_under_two_spellings_is_one_track(tmp_path):
    touch(tmp_path / "m" / "jazz" / "x.wav")
    touch(tmp_path / "m" / "jazz" / "y.wav")
    (tmp_path / "m" / "link.wav").symlink_to("jazz/y.wav")
    absolute = tmp_path / "m" / "jazz" / "x.wav"
    (tmp_path / "m" / "manifest.csv").write_text(
        f"path,labels\njazz/x.wav,jazz\n./jazz/x.wav,rock\n{absolute},pop\njazz/../jazz/x.wav,jazz\n"
        "jazz/y.wav,jazz\nlink.wav,jazz\n", encoding="utf-8")
    corpus = open_corpus("csv", tmp_path / "m")
    assert [(t.id, t.labels) for t in corpus.tracks] == [("jazz/x.wav", ("jazz",)), ("jazz/y.wav", ("jazz",))]
    assert corpus.labels == ["jazz"]   # the conflicting labels of the copies are not the corpus's
    assert [s.split("manifest.csv:")[1] for s in corpus.skipped] == [
        "3: track ./jazz/x.wav: listed twice (the same file as track jazz/x.wav), first one kept",
        f"4: track {absolute}: listed twice (the same file as track jazz/x.wav), first one kept",
        "5: track jazz/../jazz/x.wav: listed twice (the same file as track jazz/x.wav), first one kept",
        "7: track link.wav: listed twice (the same file as track jazz/y.wav), first one kept",
    ]


def test_csv_unterminated_quote_is_one_line_naming_its_line(tmp_path):
    touch(tmp_path / "a" / "1.wav")
    touch(tmp_path / "b" / "3.wav")
    path = tmp_path / "manifest.csv"
    path.write_text('path,labels\n\na/1.wav,"jazz\nb/3.wav,rock\n', encoding="utf-8")
    with pytest.raises(CorpusError) as e:
        open_corpus("csv", tmp_path)
    assert str(e.value) == f"{path}:3: unterminated quote? a quoted field runs on to line 4"
    path.write_text('path,labels\r\na/1.wav,"jazz\r\nb/3.wav,rock\r\nb/3.wav,"x"\r\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"manifest\.csv:2: unterminated quote\? a quoted field runs on to line 4$"):
        open_corpus("csv", tmp_path)
    path.write_text('path,labels\r\n\r\n"a/1.wav","jazz;rock"\r\n', encoding="utf-8")  # CRLF and quotes: fine
    assert open_corpus("csv", tmp_path).track("a/1.wav").labels == ("jazz", "rock")


@pytest.mark.skipif(not (SHARED_DANCE / "manifest.csv").is_file(), reason="needs ../shared/data/dance")
def test_shared_dance_manifest():
    corpus = open_corpus("csv", SHARED_DANCE)
    assert (len(corpus.tracks), len(corpus.labels)) == (138, 23)
    assert corpus.missing == [] and corpus.skipped == []
    assert "west coast swing" in corpus.labels and corpus.has_artists


# --- MagnaTagATune ---------------------------------------------------------------------------------

MTAT_TAGS = ["no voice", "singer", "guitar", "classical", "slow"]
MTAT_ROWS = [  # clip_id, tags set, mp3_path
    ("2", {"classical", "slow"}, "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3"),
    ("6", {"classical", "guitar"}, "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-88-117.mp3"),
    ("10", {"singer"}, "0/jeff_wahl-guitarscapes-01-spanish_dance-0-29.mp3"),
    ("11", set(), "0/jeff_wahl-guitarscapes-01-spanish_dance-30-59.mp3"),
    ("12", {"classical"}, "c/some_artist-album-02-title-0-29.mp3"),      # its mp3 is missing
]


def quoted(fields) -> str:
    return "\t".join(f'"{f}"' for f in fields) + "\n"


def write_mtat(root: Path, audio_sub: str = ".", clip_info: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = [quoted(["clip_id", *MTAT_TAGS, "mp3_path"])]
    for clip_id, tags, rel in MTAT_ROWS:
        lines.append(quoted([clip_id, *("1" if t in tags else "0" for t in MTAT_TAGS), rel]))
    lines.append(quoted(["13", "1", "0"]))   # truncated row
    (root / "annotations_final.csv").write_text("".join(lines), encoding="utf-8")
    for clip_id, _, rel in MTAT_ROWS[:4]:
        touch(root / audio_sub / rel)
    if clip_info:
        info = [quoted(["clip_id", "track_number", "title", "artist", "album", "url", "segmentStart",
                        "segmentEnd", "original_url", "mp3_path"])]
        for clip_id, _, rel in MTAT_ROWS:
            artist = "American Bach Soloists" if rel.startswith("f/") else "Jeff Wahl"
            info.append(quoted([clip_id, "1", "Aria", artist, "Album", "http://x", "30", "59", "http://y", rel]))
        (root / "clip_info_final.csv").write_text("".join(info), encoding="utf-8")


def test_mtat(tmp_path):
    write_mtat(tmp_path)
    corpus = open_corpus("mtat", tmp_path)
    assert corpus.name == "mtat" and not corpus.single_label
    assert [t.id for t in corpus.tracks] == ["10", "2", "6"]          # "11" has no tag, "12" no mp3
    assert corpus.track("6").labels == ("guitar", "classical")
    assert corpus.track("2").artist == "American Bach Soloists" and corpus.track("10").artist == "Jeff Wahl"
    assert corpus.track("10").path == tmp_path / MTAT_ROWS[2][2]
    assert corpus.labels == ["classical", "guitar", "singer", "slow"]
    assert corpus.missing == ["12"]
    assert any("3 fields, expected 7" in s for s in corpus.skipped)
    assert detect_kind(tmp_path) == "mtat"
    assert corpus.sources == [tmp_path / "annotations_final.csv", tmp_path / "clip_info_final.csv"]  # no output's


def test_mtat_options(tmp_path):
    write_mtat(tmp_path, audio_sub="mp3", clip_info=False)
    top = open_corpus("mtat", tmp_path, top_n=2)
    # frequencies over all annotated clips (clip 12 counts although its mp3 is missing): classical 3, then
    # guitar / singer / slow tie at 1 and the name decides
    assert top.labels == ["classical", "guitar"]
    assert [t.id for t in top.tracks] == ["2", "6"]
    assert all(t.artist is None for t in top.tracks)
    kept = open_corpus("mtat", tmp_path / "annotations_final.csv", keep_untagged=True)
    assert kept.track("11").labels == () and kept.track("11").path.parent.parent.name == "mp3"


def test_mtat_errors(tmp_path):
    with pytest.raises(CorpusError, match="not an MTAT root: expected annotations_final.csv"):
        open_corpus("mtat", tmp_path)
    write_mtat(tmp_path / "noaudio")
    for p in (tmp_path / "noaudio").iterdir():
        if p.is_dir():
            for f in p.iterdir():
                f.unlink()
    with pytest.raises(CorpusError, match="no usable mtat tracks found"):
        open_corpus("mtat", tmp_path / "noaudio")


# --- Million Song Dataset --------------------------------------------------------------------------

MSD = {  # track id: ([(tag, val)], artist)
    "TRAAAAW128F429D538": ([("rock", 100.0), ("80s", 40.0), ("Hip-Hop", 10.0)], "Casual"),
    "TRAAABD128F429CF47": ([("rock", 100.0), ("pop", 60.0)], "The Box Tops"),
    "TRAAADZ128F9348C2E": ([("pop", 100.0), ("80s", 50.0)], "Sonora Santanera"),
    "TRAAAEF128F4273421": ([("jazz", 100.0)], "Adam Ant"),                  # no audio
    "TRAAAFD128F92F423A": ([("80s", 0.0)], "Gob"),                           # only a zero-weight tag
}


def write_tags_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE tids (tid TEXT)")
    con.execute("CREATE TABLE tags (tag TEXT)")
    con.execute("CREATE TABLE tid_tag (tid INT, tag INT, val FLOAT)")
    # rows inserted in reverse so ROWIDs differ from any natural order: the reader must join on ROWID
    tids = list(reversed(MSD))
    tags = sorted({tag for tag_vals, _ in MSD.values() for tag, _ in tag_vals}, reverse=True)
    con.executemany("INSERT INTO tids VALUES (?)", [(t,) for t in tids])
    con.executemany("INSERT INTO tags VALUES (?)", [(t,) for t in tags])
    for tid, (tag_vals, _) in MSD.items():
        for tag, val in tag_vals:
            con.execute("INSERT INTO tid_tag VALUES (?, ?, ?)", (tids.index(tid) + 1, tags.index(tag) + 1, val))
    con.commit()
    con.close()


def write_msd_audio(folder: Path) -> None:
    for i, tid in enumerate(list(MSD)[:3] + list(MSD)[4:]):
        touch(folder / tid[2] / tid[3] / tid[4] / f"{tid}.{'mp3' if i % 2 else 'clip.mp3'}")
    touch(folder / "other" / "TRAAAAW128F429D538.txt")    # not audio
    touch(folder / "other" / "TRZZZ.mp3")                 # not a track id


def test_msd_sqlite(tmp_path):
    write_tags_db(tmp_path / "lastfm_tags.db")
    write_msd_audio(tmp_path / "audio")
    lines = [f"{tid}<SEP>SO{i:016d}<SEP>{artist}<SEP>Title {i}\n" for i, (tid, (_, artist)) in enumerate(MSD.items())]
    (tmp_path / "unique_tracks.txt").write_text("".join(lines), encoding="utf-8")
    corpus = open_corpus("msd", tmp_path)
    assert corpus.name == "msd" and not corpus.single_label
    assert [t.id for t in corpus.tracks] == ["TRAAAAW128F429D538", "TRAAABD128F429CF47",
                                            "TRAAADZ128F9348C2E", "TRAAAFD128F92F423A"]
    first = corpus.track("TRAAAAW128F429D538")
    assert set(first.labels) == {"rock", "80s", "Hip-Hop"} and first.artist == "Casual"
    assert first.path.name == "TRAAAAW128F429D538.clip.mp3" and first.path.is_file()
    assert corpus.missing == ["TRAAAEF128F4273421"]
    assert corpus.labels == ["80s", "Hip-Hop", "pop", "rock"]
    assert corpus.sources == [tmp_path / "lastfm_tags.db", tmp_path / "unique_tracks.txt"]  # what no output may replace

    strict = open_corpus("msd", tmp_path, min_val=50)
    assert set(strict.track("TRAAADZ128F9348C2E").labels) == {"pop", "80s"}
    assert set(strict.track("TRAAAAW128F429D538").labels) == {"rock"}
    assert "TRAAAFD128F92F423A" not in {t.id for t in strict.tracks}

    top = open_corpus("msd", tmp_path / "lastfm_tags.db", audio=tmp_path / "audio", top_n=2)
    assert top.labels == ["80s", "pop"]   # 80s on 3 tracks, then pop / rock tie at 2 and the name decides
    assert top.track("TRAAAAW128F429D538").artist == "Casual"
    voc = open_corpus("msd", tmp_path, vocabulary=["pop", "Hip-Hop"])
    assert {t.id: set(t.labels) for t in voc.tracks} == {
        "TRAAAAW128F429D538": {"Hip-Hop"}, "TRAAABD128F429CF47": {"pop"}, "TRAAADZ128F9348C2E": {"pop"}}
    assert detect_kind(tmp_path) == "msd"


def write_json_tree(folder: Path, tids) -> None:
    for tid in tids:
        tag_vals, artist = MSD[tid]
        path = folder / tid[2] / tid[3] / tid[4] / f"{tid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"track_id": tid, "artist": artist, "title": "t", "timestamp": "x",
                                    "similars": [], "tags": [[t, f"{v:g}"] for t, v in tag_vals]}))


def test_msd_json_tree(tmp_path):
    write_json_tree(tmp_path / "lastfm_train", list(MSD)[:3])
    write_json_tree(tmp_path / "lastfm_test", list(MSD)[3:])
    broken = tmp_path / "lastfm_test" / "B" / "B" / "B" / "TRBBBBB128F0000000.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    write_msd_audio(tmp_path / "mp3s")
    corpus = open_corpus("msd", tmp_path, audio=tmp_path / "mp3s", min_val=40)
    assert {t.id: (set(t.labels), t.artist) for t in corpus.tracks} == {
        "TRAAAAW128F429D538": ({"rock", "80s"}, "Casual"),
        "TRAAABD128F429CF47": ({"rock", "pop"}, "The Box Tops"),
        "TRAAADZ128F9348C2E": ({"pop", "80s"}, "Sonora Santanera"),
    }
    assert corpus.missing == ["TRAAAEF128F4273421"]
    assert any("TRBBBBB128F0000000.json: unreadable" in s for s in corpus.skipped)
    assert open_corpus("msd", tmp_path, audio=tmp_path / "mp3s", top_n=1).labels == ["80s"]


def test_msd_errors(tmp_path):
    write_msd_audio(tmp_path)
    with pytest.raises(CorpusError, match="not an MSD root: expected lastfm_tags.db or Last.fm JSON files"):
        open_corpus("msd", tmp_path)
    db = tmp_path / "x" / "lastfm_tags.db"
    write_msd_audio(db.parent)
    sqlite3.connect(db).execute("CREATE TABLE other (x)").connection.close()
    with pytest.raises(CorpusError, match="not a Last.fm tags database: expected tables tids, tags, tid_tag"):
        open_corpus("msd", db)
    (tmp_path / "y").mkdir()
    write_tags_db(tmp_path / "y" / "lastfm_tags.db")
    with pytest.raises(CorpusError, match="no MSD audio found"):
        open_corpus("msd", tmp_path / "y")


def test_msd_artist_sources(tmp_path):
    write_tags_db(tmp_path / "lastfm_tags.db")
    write_msd_audio(tmp_path / "audio")
    # no unique_tracks.txt: the JSON files give the artists (tags still come from the database)
    write_json_tree(tmp_path / "lastfm_train", ["TRAAAAW128F429D538"])
    corpus = open_corpus("msd", tmp_path)
    assert corpus.track("TRAAAAW128F429D538").artist == "Casual"
    assert corpus.track("TRAAABD128F429CF47").artist is None
    # track_metadata.db (table songs) takes precedence over the JSON files
    con = sqlite3.connect(tmp_path / "track_metadata.db")
    con.execute("CREATE TABLE songs (track_id TEXT, title TEXT, song_id TEXT, artist_name TEXT)")
    con.executemany("INSERT INTO songs VALUES (?, 't', 's', ?)", [(t, f"{a} (db)") for t, (_, a) in MSD.items()])
    con.commit()
    con.close()
    corpus = open_corpus("msd", tmp_path)
    assert {t.artist for t in corpus.tracks} == {"Casual (db)", "The Box Tops (db)", "Sonora Santanera (db)", "Gob (db)"}
