"""`zstag search` and `zstag similar` end to end through the CLI, and their m3u8 playlists."""

import csv
import io
import json
import os
import shutil
from pathlib import Path

import mutagen
import pytest
from typer.testing import CliRunner

from test_tagfiles import _fresh_cache, write_track  # noqa: F401  (_fresh_cache: autouse fixture)
from zstag.cli import app

CC_EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cc-examples"
LABELS = "speech,piano,jazz,rock"


@pytest.fixture()
def music(tmp_path):
    folder = tmp_path / "music"
    (folder / "sub").mkdir(parents=True)
    for seed, name in enumerate(["a.flac", "b.ogg", "sub/c.mp3", "d.flac"]):
        write_track(folder / name, seed * 3)
    return folder


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def tag_scores(music, model_dir) -> dict[str, dict[str, float]]:
    result = cli("tag", music, "-l", LABELS, "-m", model_dir, "-f", "json")
    assert result.exit_code == 0, result.stderr
    return {f["path"]: {t["label"]: t["score"] for t in f["tags"]} for f in json.loads(result.stdout)["files"]}


def search_json(*args) -> dict:
    result = cli(*args, "-f", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_search_ranks_by_the_same_cosines_tag_reports(music, tiny_model_dir):
    out = search_json("search", "piano", music, "-m", tiny_model_dir)
    scores = tag_scores(music, tiny_model_dir)
    tracks = out["tracks"]
    assert out["query"] == {"labels": ["piano"]} and len(tracks) == 4
    assert [t["rank"] for t in tracks] == [1, 2, 3, 4]
    assert [t["score"] for t in tracks] == sorted((s["piano"] for s in scores.values()), reverse=True)
    assert all(t["score"] == scores[t["path"]]["piano"] for t in tracks)
    assert all(t["duration_s"] == pytest.approx(2.0, abs=0.05) for t in tracks)  # m4a/mp3 decoders pad a little
    assert len(search_json("search", "piano", music, "-m", tiny_model_dir, "--limit", "2")["tracks"]) == 2


def test_several_labels_score_the_mean_of_their_cosines(music, tiny_model_dir):
    out = search_json("search", "--labels", "piano,jazz", music, "-m", tiny_model_dir)
    scores = tag_scores(music, tiny_model_dir)
    for t in out["tracks"]:
        # both sides are rounded to 6 decimals: the mean of rounded scores is within 1e-6 of the rounded mean
        assert t["score"] == pytest.approx((scores[t["path"]]["piano"] + scores[t["path"]]["jazz"]) / 2, abs=1.1e-6)


def test_without_a_path_the_cache_is_searched_as_it_stands(music, tiny_model_dir):
    assert cli("tag", music, "-l", "rock", "-m", tiny_model_dir).exit_code == 0
    out = search_json("search", "rock", "-m", tiny_model_dir)
    assert sorted(t["path"] for t in out["tracks"]) == sorted(str(p) for p in music.rglob("*.*"))
    (music / "a.flac").unlink()  # gone: left out
    audio = mutagen.File(music / "b.ogg")  # changed since it was embedded: left out until embedded again
    audio["TITLE"] = ["new"]
    audio.save()
    out = search_json("search", "rock", "-m", tiny_model_dir)
    assert sorted(Path(t["path"]).name for t in out["tracks"]) == ["c.mp3", "d.flac"]
    other = search_json("search", "rock", "-m", tiny_model_dir, "--no-progress")
    assert other == out


def test_tagged_files_are_still_found_without_embedding_again(music, tiny_model_dir, monkeypatch, forbid_decoding):
    assert cli("tag", music, "-l", LABELS, "--top-k", "1", "-m", tiny_model_dir, "--write-tags").exit_code == 0
    forbid_decoding(monkeypatch)
    out = search_json("search", "speech", music, "-m", tiny_model_dir)
    assert len(out["tracks"]) == 4 and len(search_json("search", "speech", "-m", tiny_model_dir)["tracks"]) == 4


def test_similar_finds_a_copy_first_and_leaves_the_query_out(music, tiny_model_dir):
    shutil.copy(music / "sub" / "c.mp3", music / "copy-of-c.mp3")
    out = search_json("similar", music / "sub" / "c.mp3", music, "-m", tiny_model_dir)
    assert out["query"] == {"similar_to": str(music / "sub" / "c.mp3")}
    paths = [t["path"] for t in out["tracks"]]
    assert str(music / "sub" / "c.mp3") not in paths and len(paths) == 4
    assert paths[0] == str(music / "copy-of-c.mp3") and out["tracks"][0]["score"] == pytest.approx(1.0, abs=1e-6)
    cached = search_json("similar", music / "sub" / "c.mp3", "-m", tiny_model_dir)  # the cache's tracks
    assert [t["path"] for t in cached["tracks"]] == paths


def test_csv_jsonl_and_table(music, tiny_model_dir):
    as_json = search_json("search", "jazz", music, "-m", tiny_model_dir)["tracks"]
    jsonl = cli("search", "jazz", music, "-m", tiny_model_dir, "-f", "jsonl").stdout
    assert [json.loads(line) for line in jsonl.splitlines()] == as_json
    rows = list(csv.DictReader(io.StringIO(cli("search", "jazz", music, "-m", tiny_model_dir, "-f", "csv").stdout)))
    assert [(r["path"], float(r["score"])) for r in rows] == [(t["path"], t["score"]) for t in as_json]
    table = cli("search", "jazz", music, "-m", tiny_model_dir).stdout
    assert "query: jazz" in table and f"{as_json[0]['score']:.3f}" in table


def test_m3u8_playlist_beside_the_music_has_relative_paths(music, tiny_model_dir, tmp_path):
    audio = mutagen.File(music / "a.flac")
    audio["ARTIST"], audio["TITLE"] = ["The Band"], ["First Song"]
    audio.save()
    playlist = music / "jazz.m3u8"
    result = cli("search", "jazz", music, "-m", tiny_model_dir, "-f", "m3u8", "-o", playlist)
    assert result.exit_code == 0, result.stderr
    order = [t["path"] for t in search_json("search", "jazz", music, "-m", tiny_model_dir)["tracks"]]
    lines = playlist.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#EXTM3U" and len(lines) == 1 + 2 * 4
    assert lines[2::2] == [os.path.relpath(p, music) for p in order]  # sub/c.mp3 included
    titles = dict(zip(lines[2::2], lines[1::2]))
    assert titles["a.flac"] == "#EXTINF:2,The Band - First Song" and titles["sub/c.mp3"] == "#EXTINF:2,c"
    elsewhere = tmp_path / "lists" / "jazz.m3u8"
    elsewhere.parent.mkdir()
    assert cli("search", "jazz", music, "-m", tiny_model_dir, "-f", "m3u8", "-o", elsewhere).exit_code == 0
    assert elsewhere.read_text(encoding="utf-8").splitlines()[2::2] == order  # absolute paths


@pytest.mark.parametrize("args, message", [
    (["search", "speech", "--no-cache"], "--no-cache needs the files or folders"),
    (["search", "qwxzv", "MUSIC"], "qwxzv"),
    (["search", "speech", "MUSIC", "-f", "xml"], "unknown format"),
    (["search", "speech", "MUSIC", "-o", "MUSIC/a.flac"], "is the input file"),
    (["search"], "give a QUERY"),
    (["similar", "MUSIC/nothing.mp3", "MUSIC"], "no such file"),
])
def test_usage_errors_are_one_line_and_exit_2(args, message, music, tiny_model_dir):
    before = (music / "a.flac").read_bytes()
    result = cli(*[a.replace("MUSIC", str(music)) for a in args], "-m", tiny_model_dir)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert (music / "a.flac").read_bytes() == before


@pytest.mark.skipif(not (CC_EXAMPLES / "manifest.csv").is_file(), reason=f"{CC_EXAMPLES} is absent (team data)")
def test_default_model_finds_the_speech_recordings_first(tmp_path):
    """Real recordings: 3 of read speech, 3 of music (the shorter excerpts: the default model is slow on CPU)."""
    speech = ["198-209-0000.ogg", "3436-172162-0000.ogg", "5703-47212-0000.ogg"]
    music = ["sorohanro_-_solo-trumpet-06.ogg", "admiralbob77_-_Choice_-_Drum-bass.ogg",
             "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).ogg"]
    paths = [str(CC_EXAMPLES / "audio" / name) for name in speech + music]
    out = search_json("search", "speech", *paths, "--workers", "1", "--device", "cpu")
    assert {Path(t["path"]).name for t in out["tracks"][:3]} == set(speech), out["tracks"]


def test_a_name_that_is_not_utf8_is_tagged_listed_and_playable(tmp_path, tiny_model_dir):
    folder = tmp_path / "latin1"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.flac")  # Latin-1 bytes: a lone surrogate in Python
    os.rename(write_track(folder / "plain.flac"), folder / name)  # soundfile takes no such name
    tagged = cli("tag", folder, "-l", LABELS, "--top-k", "1", "-m", tiny_model_dir, "--write-tags")
    assert tagged.exit_code == 0, tagged.stderr
    assert len(mutagen.File(folder / name)["ZSTAG"]) == 1
    out = search_json("search", "jazz", folder, "-m", tiny_model_dir)
    assert out["tracks"][0]["path_bytes"].endswith("caf%E9.flac")  # json stays valid UTF-8, the bytes kept
    playlist = folder / "list.m3u8"
    assert cli("search", "jazz", folder, "-m", tiny_model_dir, "-f", "m3u8", "-o", playlist).exit_code == 0
    assert playlist.read_bytes().splitlines()[2] == b"caf\xe9.flac"  # the player opens the very file
