"""`zstag embed` (embedding sets, embedset.py) and the queries over them (setquery.py), through the CLI, on
synthetic audio written to tmp folders (bad files included) and the tests' tiny model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import zstag
from test_kill import BLOCKING_DECODER  # tests/test_kill.py
from test_scoring import calibrated_model_dir  # noqa: F401 (fixture; tests/test_scoring.py)
from test_tag import LABELS, _fresh_cache, cli_subprocess, music, write_bad_files, write_music  # noqa: F401 (fixtures)
from zstag import embedset
from zstag.cli import app
from zstag.embedcache import content_digest

# The set stores the float32 embedding that `tag` computes (the same deterministic pipeline), and both score
# it with scoring.scores in float64: a different BLAS blocking of the [N, D] x [D, M] product moves a
# cosine by at most D * 2**-53 relative (~1e-14), which can flip the float32 rounding by one ulp (<= 6e-8 for
# |cosine| <= 1) and so the 6-decimal rounding of the output by one unit: 1e-6, plus slack for the decimal print.
# A calibrated score is Φ of such a product (Φ' <= 0.4, so it moves less), in 0..1: the same bound holds.
SCORE_TOLERANCE = 1e-6 + 1e-12


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def rows(folder) -> list[dict]:
    table = pq.read_table(embedset.parts(folder)) if embedset.parts(folder) else None
    return [] if table is None else table.to_pylist()


def by_path(folder) -> dict:
    found = {}
    for r in rows(folder):
        name = r["path"] if r["path_bytes"] is None else zstag.paths.name_from_bytes(r["path_bytes"])
        assert name not in found, f"two rows for {name}"
        found[name] = r
    return found


# --- zstag embed ----------------------------------------------------------------------------------


def test_embed_writes_a_row_per_file_and_error_rows_for_bad_ones(music, tiny_model_dir, tmp_path):
    bad = write_bad_files(music)
    odd = os.fsdecode(b"odd-\xff.wav")  # a name that is not UTF-8
    write_music(os.path.join(os.fsencode(music), b"odd-\xff.wav"), seed=2)
    out = tmp_path / "set"
    result = cli("embed", music, "--out", out, "--model", tiny_model_dir, "--workers", "1")
    assert result.exit_code == 1, result.stderr  # some files failed
    got = by_path(out)
    good = [music / "a.wav", music / "c.mp3", music / "sub" / "b.flac", Path(os.path.join(str(music), odd))]
    assert sorted(got) == sorted([str(p) for p in good] + [str(music / name) for name in bad])
    reference = {e.path: e for e in zstag.embed(good, tiny_model_dir, use_cache=False, workers=0)}
    model_id = zstag.modelfile.read_model(tiny_model_dir).model_id
    for path, r in got.items():
        assert r["digest"] == content_digest(path) and r["size"] == os.path.getsize(path)
        assert r["model_id"] == model_id and r["precision"] == "float32"
        if os.path.basename(path) in bad:
            assert r["embedding"] is None and r["error"].startswith(f"{path}: ") and r["n_segments"] is None
            assert r["error"] + "\n" in result.stderr.replace("zstag: ", "")
        else:
            assert r["error"] is None and r["n_segments"] == 1 and r["duration_s"] == pytest.approx(3.0, abs=0.01)
            assert np.array_equal(np.asarray(r["embedding"], np.float32), reference[path].embedding)  # same pipeline
    odd_row = got[str(good[-1])]
    assert odd_row["path_bytes"].endswith("/odd-%FF.wav") and odd_row["path"].endswith("/odd-\ufffd.wav")
    assert all(p.name.startswith("part-") for p in out.iterdir())  # no temporary file left
    assert "embedded 4 of 8 files (4 failed: error rows)" in result.stderr


def test_a_rerun_skips_what_is_there_copies_same_content_and_replaces_changed_files(music, tiny_model_dir, tmp_path,
                                                                                    monkeypatch, forbid_decoding):
    out = tmp_path / "set"
    first = cli("embed", music, "--out", out, "--model", tiny_model_dir, "--no-cache")
    assert first.exit_code == 0, first.stderr
    before = sorted(out.iterdir())
    again = cli("embed", music, "--out", out, "--model", tiny_model_dir, "--no-cache")
    assert again.exit_code == 0 and sorted(out.iterdir()) == before  # nothing to write: no new part
    assert "embedded 0 of 0 files; 3 already there" in again.stderr

    shutil.copy(music / "a.wav", music / "copy.wav")  # same content under a new name: its row is copied
    with monkeypatch.context() as m:
        forbid_decoding(m)
        copied = cli("embed", music, "--out", out, "--model", tiny_model_dir, "--no-cache")
    assert copied.exit_code == 0 and "3 already there, 1 copied" in copied.stderr
    got = by_path(out)
    assert got[str(music / "copy.wav")]["embedding"] == got[str(music / "a.wav")]["embedding"]

    write_music(music / "c.mp3", seed=3)  # changed: embedded again, its old row dropped
    changed = cli("embed", music, "--out", out, "--model", tiny_model_dir, "--no-cache")
    assert changed.exit_code == 0 and "embedded 1 of 1 files; 3 already there" in changed.stderr
    got = by_path(out)  # one row per path
    assert len(got) == 4 and got[str(music / "c.mp3")]["digest"] == content_digest(music / "c.mp3")


def test_a_run_killed_mid_way_leaves_whole_parts_and_its_rerun_finishes_without_duplicates(tmp_path, tiny_model_dir):
    """kill -9 while the third part's first file decodes (it hangs: no race): two whole parts stay; the rerun
    embeds only the last two files, leaves those parts as they were, and every file has one row."""
    music = tmp_path / "music"
    music.mkdir()
    for i in range(6):
        write_music(music / f"{i}.wav", seconds=2.0, seed=i)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKING_DECODER)
    flag, out = tmp_path / "blocked", tmp_path / "set"
    args = [sys.executable, "-m", "zstag", "embed", str(music), "--out", str(out), "--model", tiny_model_dir,
            "--part-files", "2", "--workers", "0", "--no-cache"]
    env = {**os.environ, "ZSTAG_TEST_BLOCK": "4.wav", "ZSTAG_TEST_BLOCKED": str(flag),
           "PYTHONPATH": os.pathsep.join([str(hook), str(Path(zstag.__file__).resolve().parents[1])])}
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180  # a cold torch import on a busy 2-core machine
        while not flag.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never reached the hanging file"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    parts = embedset.parts(out)
    assert len(parts) == 2 and sorted(os.listdir(out)) == [p.name for p in parts]  # nothing half-written
    stamps = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in parts}
    assert sorted(by_path(out)) == [str(music / f"{i}.wav") for i in range(4)]  # each part whole and readable

    env.pop("ZSTAG_TEST_BLOCK")
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "embedded 2 of 2 files; 4 already there" in rerun.stderr  # the finished parts are not redone
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in parts} == stamps
    assert sorted(by_path(out)) == [str(music / f"{i}.wav") for i in range(6)]  # by_path: no duplicates


def test_inputs_from_a_list_file_and_a_file_uri(music, tiny_model_dir, tmp_path):
    listing = tmp_path / "paths.txt"
    listing.write_bytes(f"{music / 'a.wav'}\n\n{tmp_path / 'gone.wav'}\r\n".encode())
    out = tmp_path / "set"
    result = cli("embed", "--from-list", listing, f"file://{music / 'sub'}", "--out", out, "--model", tiny_model_dir)
    assert result.exit_code == 1 and f"{tmp_path / 'gone.wav'}: no such file or folder" in result.stderr
    got = by_path(out)  # the gone file has no row: it is tried again next time
    assert sorted(got) == sorted([f"file://{music / 'sub' / 'b.flac'}", str(music / "a.wav")])
    uri_row = got[f"file://{music / 'sub' / 'b.flac'}"]
    assert uri_row["digest"] == content_digest(music / "sub" / "b.flac") and uri_row["error"] is None
    local = by_path_embed(music / "sub" / "b.flac", tiny_model_dir, tmp_path / "local")
    assert uri_row["embedding"] == local["embedding"]  # fetched through pyarrow.fs: the same numbers


def by_path_embed(path, model, out):
    assert cli("embed", path, "--out", out, "--model", model).exit_code == 0
    return by_path(out)[str(path)]


def test_embed_refuses_an_out_holding_an_input_or_a_set_of_another_model(music, tiny_model_dir, tmp_path):
    result = cli("embed", music / "a.wav", "--out", music, "--model", tiny_model_dir)
    assert result.exit_code == 2 and "--out holds the input file" in result.stderr
    assert not any(p.name.startswith("part-") for p in music.iterdir())
    out = tmp_path / "set"
    assert cli("embed", music / "a.wav", "--out", out, "--model", tiny_model_dir).exit_code == 0
    before = sorted(out.iterdir())
    result = cli("embed", music / "c.mp3", "--out", out)  # the default model
    assert result.exit_code == 2 and "one model per set" in result.stderr and sorted(out.iterdir()) == before
    assert cli("embed", music, "--out", out, "--engine", "spark").exit_code == 2


# --- queries over a set ------------------------------------------------------------------------------


def scores_of(json_text: str) -> dict:
    return {f["path"]: {t["label"]: t["score"] for t in f["tags"]} for f in json.loads(json_text)["files"]}


def test_tag_embeddings_scores_as_tag_on_the_audio_without_torch(music, tiny_model_dir, tmp_path):
    write_bad_files(music)
    out = tmp_path / "set"
    assert cli("embed", music, "--out", out, "--model", tiny_model_dir, "--no-cache").exit_code == 1
    labels = ",".join(LABELS + ["no vocals"])
    audio = cli("tag", music.resolve(), "-l", labels, "-m", tiny_model_dir, "-f", "json", "--no-cache")
    proc, heavy = cli_subprocess(tmp_path, "tag", "--embeddings", out, "-l", labels, "-m", tiny_model_dir, "-f", "json")
    assert proc.returncode == audio.exit_code == 1  # the bad files: one line each, as tag says them
    assert heavy == ["pyarrow"]  # no torch, no decoder: only the Parquet reader
    assert sorted(proc.stderr.splitlines()[:-1]) == sorted(audio.stderr.splitlines()[:-1])
    assert "tagged 3 of 7 files (from the embedding set" in proc.stderr
    expected, got = scores_of(audio.stdout), scores_of(proc.stdout)
    assert sorted(got) == sorted(expected)
    for path, scores in expected.items():
        for label, score in scores.items():
            assert abs(got[path][label] - score) <= SCORE_TOLERANCE

    table = cli("tag", "--embeddings", out, "-l", labels, "-m", tiny_model_dir, "-f", "parquet", "-o", tmp_path / "s.parquet")
    assert table.exit_code == 1
    written = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [r["path"] for r in written] == list(got) and list(written[0]) == ["path", "path_bytes", *labels.split(",")]
    for r in written:
        for label in labels.split(","):
            assert abs(round(r[label], 6) - got[r["path"]][label]) <= SCORE_TOLERANCE  # float32 column, rounded

    single = cli("tag", "--embeddings", out, "-l", labels, "-m", tiny_model_dir, "--single", "-f", "jsonl")
    single_pq = cli("tag", "--embeddings", out, "-l", labels, "-m", tiny_model_dir, "--single", "-f", "parquet",
                    "-o", tmp_path / "single.parquet")
    assert single.exit_code == single_pq.exit_code == 1
    as_json = [json.loads(line) for line in single.stdout.splitlines()]
    assert pq.read_table(tmp_path / "single.parquet").drop(["path_bytes"]).to_pylist() == as_json


def test_set_queries_check_the_model_and_their_options(music, tiny_model_dir, tmp_path):
    out = tmp_path / "set"
    assert cli("embed", music, "--out", out, "--model", tiny_model_dir).exit_code == 0
    result = cli("tag", "--embeddings", out, "-l", "rock")  # the default model: not the set's
    assert result.exit_code == 2 and "embedded by model" in result.stderr and len(result.stderr.splitlines()) == 1
    result = cli("tag", "--embeddings", out, "-l", "rock", "-m", tiny_model_dir, "-f", "parquet")
    assert result.exit_code == 2 and "needs --output" in result.stderr
    result = cli("tag", music, "--embeddings", out, "-l", "rock", "-m", tiny_model_dir)
    assert result.exit_code == 2 and "no PATH" in result.stderr
    result = cli("tag", "--embeddings", out, "-l", "rock", "-m", tiny_model_dir, "-o", out / "x.csv", "-f", "csv")
    assert result.exit_code == 2 and "lies inside the embedding set" in result.stderr
    assert cli("tag", "--embeddings", tmp_path / "none", "-l", "rock", "-m", tiny_model_dir).exit_code == 2


def test_search_embeddings_ranks_as_search_on_the_audio(music, tiny_model_dir, tmp_path):
    out = tmp_path / "set"
    assert cli("embed", music, "--out", out, "--model", tiny_model_dir, "--no-cache").exit_code == 0
    audio = cli("search", "piano", music.resolve(), "-m", tiny_model_dir, "-f", "json", "--no-cache")
    proc, heavy = cli_subprocess(tmp_path, "search", "piano", "--embeddings", out, "-m", tiny_model_dir, "-f", "json")
    assert proc.returncode == audio.exit_code == 0 and heavy == ["pyarrow"]
    expected, got = json.loads(audio.stdout)["tracks"], json.loads(proc.stdout)["tracks"]
    assert [t["path"] for t in got] == [t["path"] for t in expected]
    for a, b in zip(got, expected):
        assert abs(a["score"] - b["score"]) <= SCORE_TOLERANCE and a["duration_s"] == b["duration_s"]
    top = cli("search", "piano", "--embeddings", out, "-m", tiny_model_dir, "-n", "2", "-f", "parquet",
              "-o", tmp_path / "top.parquet")
    assert top.exit_code == 0
    assert [r["path"] for r in pq.read_table(tmp_path / "top.parquet").to_pylist()] == [t["path"] for t in got[:2]]


def test_a_calibrated_models_rows_score_as_tag_and_search_on_the_audio(music, calibrated_model_dir, tmp_path):
    """A calibrated model's track embedding is [joint D | teacher K] (scoring.py): the set stores it whole, and
    the set queries score it through scoring.scores, as tag and search do on the audio."""
    from zstag import modelfile, scoring

    files = modelfile.read_model(calibrated_model_dir)
    out = tmp_path / "set"
    assert cli("embed", music, "--out", out, "--model", calibrated_model_dir, "--no-cache").exit_code == 0
    dim = scoring.joint_dim(files.config) + len(files.config["scores"]["teacher_words"])
    assert embedset.set_model(out) == (files.model_id, "float32", dim)
    labels = "rock,piano,no vocals,lullaby"
    audio = cli("tag", music.resolve(), "-l", labels, "-m", calibrated_model_dir, "-f", "json")  # fills the cache
    from_set = cli("tag", "--embeddings", out, "-l", labels, "-m", calibrated_model_dir, "-f", "json")
    assert audio.exit_code == from_set.exit_code == 0, from_set.output
    assert "calibrated" in json.loads(from_set.stdout)["score"]
    expected, got = scores_of(audio.stdout), scores_of(from_set.stdout)
    assert sorted(got) == sorted(expected)
    for path, scores in expected.items():
        assert all(0 <= v <= 1 for v in scores.values())
        for label, score in scores.items():
            assert abs(got[path][label] - score) <= SCORE_TOLERANCE
    searched = cli("search", "calm piano", music.resolve(), "-m", calibrated_model_dir, "-f", "json")  # cached
    searched_set = cli("search", "calm piano", "--embeddings", out, "-m", calibrated_model_dir, "-f", "json")
    assert searched.exit_code == searched_set.exit_code == 0, searched_set.output
    expected, got = json.loads(searched.stdout)["tracks"], json.loads(searched_set.stdout)["tracks"]
    assert [t["path"] for t in got] == [t["path"] for t in expected]
    assert all(abs(a["score"] - b["score"]) <= SCORE_TOLERANCE for a, b in zip(got, expected))


def test_embed_local_tag_and_set_queries_never_import_ray(music, tiny_model_dir, tmp_path):
    """Ray is imported by --engine ray alone (rayengine.py); the probe lists every module a command imported."""
    out = tmp_path / "set"
    runs = [("embed", music, "--out", out, "--model", tiny_model_dir, "--engine", "local"),
            ("tag", music, "-l", "rock", "--model", tiny_model_dir),
            ("tag", "--embeddings", out, "-l", "rock", "--model", tiny_model_dir)]
    for args in runs:
        proc, _ = cli_subprocess(tmp_path, *args)
        assert proc.returncode == 0, proc.stderr
        imported = json.loads((tmp_path / "modules.json").read_text())  # written by test_tag's probe
        assert "zstag" in imported and "ray" not in imported
