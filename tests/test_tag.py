"""`zstag tag` end to end through the CLI (typer's runner, in process), on synthetic audio."""

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from zstag import cli, embedcache, embeddings, modelfile, tagger
from zstag.cli import app

SR = 22050
LABELS = ["rock", "jazz", "drum and bass"]


def write_music(path, seconds=3.0, seed=0, sr=SR):
    """A chord with harmonics, a beat of noise bursts and a little noise: a few seconds of 'music'."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    root = 110.0 * 2 ** (seed / 12)
    x = sum(np.sin(2 * np.pi * root * r * h * t) / h for r in (1, 1.26, 1.5) for h in (1, 2, 3))
    x += 2.0 * rng.standard_normal(len(t)) * np.exp(-((t * 2.0) % 1.0) * 20)  # a hit every half second
    x = 0.8 * x / np.abs(x).max()
    sf.write(path, x.astype(np.float32), sr)
    return path


def write_bad_files(folder):
    """One file of each kind whose bytes cannot give audio; returns their names."""
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.mp3").write_bytes(np.random.default_rng(1).bytes(20000))
    (folder / "notaudio.flac").write_text("these are my notes, not audio\n" * 50)
    sf.write(folder / "nosamples.wav", np.zeros(0, np.float32), SR)  # a header, no samples
    return ["empty.wav", "corrupt.mp3", "notaudio.flac", "nosamples.wav"]


@pytest.fixture()
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(autouse=True)
def _fresh_cache(cache_dir):
    return cache_dir


@pytest.fixture()
def music(tmp_path):
    folder = tmp_path / "music"
    (folder / "sub").mkdir(parents=True)
    write_music(folder / "a.wav", seed=0)
    write_music(folder / "sub" / "b.flac", seed=5)
    write_music(folder / "c.mp3", seed=9)
    return folder


def run(*args):
    return CliRunner().invoke(app, ["tag", *map(str, args)])


def tag_json(music, model_dir, *extra):
    result = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# --- output formats ---------------------------------------------------------------------------


def test_json(music, model_dir):
    out = tag_json(music, model_dir)
    assert out["labels"] == LABELS and out["mode"] == "multi" and "cosine" in out["score"]
    assert sorted(os.path.basename(f["path"]) for f in out["files"]) == ["a.wav", "b.flac", "c.mp3"]
    for f in out["files"]:
        scores = [t["score"] for t in f["tags"]]
        assert sorted(t["label"] for t in f["tags"]) == sorted(LABELS)
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)


def test_jsonl_csv_and_table_carry_the_same_scores(music, model_dir):
    reference = {f["path"]: {t["label"]: t["score"] for t in f["tags"]} for f in tag_json(music, model_dir)["files"]}

    result = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "jsonl")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["path"]: {t["label"]: t["score"] for t in r["tags"]} for r in lines} == reference

    result = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["path", "rank", "label", "score"] and len(rows) == 3 * len(LABELS)
    for row in rows:
        assert float(row["score"]) == reference[row["path"]][row["label"]]

    result = run(music, "--labels", ",".join(LABELS), "--model", model_dir)
    assert result.exit_code == 0
    table = result.stdout.replace("\u00a0", " ")  # no-break spaces keep "label score" pairs together
    assert f"files in {music}\n" in table
    for path, scores in reference.items():
        assert f" {os.path.relpath(path, music)} " in table
        best = max(scores, key=scores.get)
        assert f"{best} {scores[best]:.3f}" in table
    assert "cosine similarity" in table


def test_output_file_is_written_whole(music, model_dir, tmp_path):
    target = tmp_path / "out" / "tags.csv"
    target.parent.mkdir()
    result = run(music, "--labels", "rock", "--model", model_dir, "--format", "csv", "--output", target)
    assert result.exit_code == 0 and result.stdout == ""
    assert target.read_text().startswith("path,rank,label,score\n")
    assert os.listdir(target.parent) == ["tags.csv"]  # no temporary file left behind
    result = run(music, "--labels", "rock", "--model", model_dir, "--output", tmp_path / "nowhere" / "x.csv")
    assert result.exit_code == 2 and "existing folder" in result.stderr


def test_output_replaces_the_old_file_and_never_writes_into_it(music, model_dir, tmp_path):
    """--output is written whole and swapped in (a new inode): a reader that opened the old file reads
    all of the old file, another name of it keeps it, the name gets all of the new one."""
    target, twin = tmp_path / "tags.csv", tmp_path / "twin.csv"
    target.write_text("PREVIOUS RUN\n" * 1000)
    os.link(target, twin)
    inode = os.stat(target).st_ino
    with open(target) as reader:  # opened before the run, read after it
        result = run(music, "--labels", "rock", "--model", model_dir, "--format", "csv", "-o", target)
        assert result.exit_code == 0, result.stderr
        assert reader.read() == "PREVIOUS RUN\n" * 1000
    assert os.stat(target).st_ino != inode
    assert twin.read_text() == "PREVIOUS RUN\n" * 1000
    text = target.read_text()
    assert text.startswith("path,rank,label,score\n") and text.count("\n") == 1 + 3 and "PREVIOUS" not in text


def test_output_to_dev_stdout_appended_to_a_log_keeps_the_log(music, model_dir, tmp_path):
    """`zstag tag ... -o /dev/stdout >> log`: the output goes to the end of the log, which is neither
    truncated nor replaced by a new file."""
    import subprocess
    import sys

    run(music, "--labels", "rock", "--model", model_dir)  # fills the cache: the run below needs no torch
    log = tmp_path / "log"
    log.write_text("earlier lines\n")
    inode = os.stat(log).st_ino
    with open(log, "a") as sink:
        proc = subprocess.run([sys.executable, "-m", "zstag", "tag", str(music), "--labels", "rock", "--model",
                               model_dir, "-f", "jsonl", "-o", "/dev/stdout"], stdout=sink, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier lines" and len(lines) == 1 + 3 and os.stat(log).st_ino == inode
    assert all(json.loads(line)["tags"][0]["label"] == "rock" for line in lines[1:])


@pytest.mark.parametrize("how", ["named", "in a folder", "a link", "a hard link"])
def test_output_naming_an_input_is_a_usage_error_before_any_decoding(how, music, model_dir, tmp_path, monkeypatch,
                                                                      forbid_decoding):
    audio = music / "a.wav"
    before = audio.read_bytes()
    output = {"named": audio, "in a folder": music / "sub" / ".." / "a.wav", "a link": tmp_path / "link.wav",
              "a hard link": tmp_path / "hard.wav"}[how]
    if how == "a link":
        output.symlink_to(audio)
    elif how == "a hard link":
        os.link(audio, output)
    forbid_decoding(monkeypatch)
    result = run(audio if how == "named" else music, "--labels", "rock", "--model", model_dir, "-f", "json",
                 "-o", output)
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line == f"zstag: error: {output}: --output is the input file {audio} (it would be overwritten)"
    assert audio.read_bytes() == before


def test_output_through_a_link_replaces_the_target_not_the_link(music, model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "tags.csv"
    target.write_text("old")
    link = tmp_path / "tags.csv"
    link.symlink_to(target)
    result = run(music, "--labels", "rock", "--model", model_dir, "--format", "csv", "-o", link)
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("path,rank,label,score\n")


@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_stdout_that_cannot_be_written_is_one_line(stdout, music, model_dir, tmp_path):
    """Started with descriptor 1 closed, or on a full disk (/dev/full): one error line, exit 1, no traceback
    (not at exit either, when the interpreter flushes stdout)."""
    import subprocess
    import sys

    run(music, "--labels", "rock", "--model", model_dir)  # a warm run: no torch, the interpreter's own exit
    with open(os.devnull if stdout == "closed" else "/dev/full", "wb") as sink:
        proc = subprocess.run(
            [sys.executable, "-m", "zstag", "tag", music, "--labels", "rock", "--model", model_dir, "-f", "jsonl"],
            stdout=sink, stderr=subprocess.PIPE, text=True, check=False, timeout=300,
            preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None,
        )
    cause = "it is closed" if stdout == "closed" else "No space left on device"
    assert proc.returncode == 1 and proc.stderr == f"zstag: error: cannot write to stdout: {cause}\n", proc.stderr


def test_single_top_k_and_threshold(music, model_dir):
    multi = {f["path"]: {t["label"]: t["score"] for t in f["tags"]} for f in tag_json(music, model_dir)["files"]}
    single = tag_json(music, model_dir, "--single")
    assert single["mode"] == "single"
    for f in single["files"]:
        scores = multi[f["path"]]
        assert f["label"] == max(scores, key=scores.get) and f["score"] == scores[f["label"]]
        odds = {label: np.exp((scores[label] - f["score"]) / 0.1) for label in LABELS}  # softmax at temperature 0.1
        assert f["confidence"] == pytest.approx(1 / sum(odds.values()), abs=1e-5)

    top = tag_json(music, model_dir, "--top-k", "2")
    assert all(len(f["tags"]) == 2 for f in top["files"])
    cut = sorted(s for scores in multi.values() for s in scores.values())[4]  # keeps some, drops some
    kept = tag_json(music, model_dir, "--threshold", str(cut))
    assert sum(len(f["tags"]) for f in kept["files"]) == sum(s >= cut for v in multi.values() for s in v.values())
    assert all(t["score"] >= cut for f in kept["files"] for t in f["tags"])
    unlabelled = tag_json(music, model_dir, "--single", "--threshold", "1")  # above any cosine these tracks get
    assert all(f["label"] is None for f in unlabelled["files"])
    assert f"softmax(cosine / {tagger.SOFTMAX_TEMPERATURE})" in " ".join(cli.TAG_HELP.split())  # help tells the truth
    assert run(music, "--labels", "rock,jazz", "--model", model_dir, "--single", "--top-k", "1").exit_code == 2
    assert run(music, "--labels", "rock", "--model", model_dir, "--format", "xml").exit_code == 2


def test_softmax_divides_by_its_temperature():
    """Worked by hand: cosines 0.3 and 0.2 at temperature 0.1 are odds e : 1, so e / (1 + e) ~ 0.731."""
    assert tagger.SOFTMAX_TEMPERATURE == 0.1
    assert tagger.softmax(np.array([0.3, 0.2])) == pytest.approx([np.e / (1 + np.e), 1 / (1 + np.e)], abs=1e-12)
    assert tagger.softmax(np.array([[0.3, 0.2, 0.2]]), temperature=1.0)[0, 0] == pytest.approx(np.exp(0.1) / (np.exp(0.1) + 2))


# --- inputs -----------------------------------------------------------------------------------


def test_bad_files_are_reported_one_line_each_and_the_rest_tagged(music, model_dir):
    bad = write_bad_files(music)
    write_music(music / "short.wav", seconds=0.5, seed=3)  # under one segment: looped to one, still tagged
    (music / "readme.txt").write_text("not picked up: not an audio extension")
    result = run(music, "--labels", "rock,jazz", "--model", model_dir, "--format", "jsonl")
    assert result.exit_code == 1
    tagged = sorted(os.path.basename(json.loads(line)["path"]) for line in result.stdout.splitlines())
    assert tagged == ["a.wav", "b.flac", "c.mp3", "short.wav"]
    lines = result.stderr.strip().splitlines()
    for name in bad:
        assert len([line for line in lines if name in line]) == 1
    assert len(lines) == 5 and "4 failed" in lines[-1]  # four errors and the summary, nothing else
    assert "readme.txt" not in result.stderr


def test_inputs_mix_files_and_folders_once_each(music, model_dir, tmp_path):
    os.symlink(music, music / "sub" / "loop")  # a link back up: followed once, no infinite walk
    os.symlink(music / "a.wav", tmp_path / "link.wav")
    os.symlink(tmp_path / "gone.wav", music / "broken.wav")  # a dangling link inside the folder
    result = run(music, music / "a.wav", tmp_path / "link.wav", tmp_path / "missing.wav", "--labels", "rock",
                 "--model", model_dir, "--format", "jsonl")
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert sorted(os.path.basename(p) for p in paths) == ["a.wav", "b.flac", "c.mp3"]
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()[:-1]
    assert len(errors) == 2 and "broken.wav" in errors[0] and "missing.wav" in errors[1]
    assert "2 failed" in result.stderr and "2 duplicate" in result.stderr

    result = run(music, "--extensions", "FLAC,.mp3", "--labels", "rock", "--model", model_dir, "--format", "jsonl")
    names = sorted(os.path.basename(json.loads(line)["path"]) for line in result.stdout.splitlines())
    assert names == ["b.flac", "c.mp3"]


def test_labels_file_and_labels_combine(music, model_dir, tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# genres to try\njazz\n\ndrum and bass   # with spaces\nRock\n")
    result = run(music / "a.wav", "--labels", 'rock, "hip hop"', "--labels-file", labels_file, "--model", model_dir,
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["labels"] == ["rock", "hip hop", "jazz", "drum and bass"]  # Rock = rock
    result = run(music, "--labels-file", tmp_path / "nope.txt", "--model", model_dir)
    assert result.exit_code == 2 and "nope.txt" in result.stderr


def test_unknown_label_stops_before_any_decoding(music, model_dir, cache_dir, monkeypatch, forbid_decoding):
    def fail(*args, **kwargs):
        raise AssertionError("audio was decoded")

    monkeypatch.setattr(embeddings, "embed_files", fail)
    forbid_decoding(monkeypatch)  # the call every decode goes through (decode_file runs in other processes)
    result = run(music, "--labels", "rock,qwzxv jazz", "--model", model_dir)
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "qwzxv" in line and "no word vector" in line
    assert not (cache_dir / embedcache.CACHE_FILE).exists()
    assert run(music, "--model", model_dir).exit_code == 2  # no labels at all


def test_vectors_option(music, model_dir, tmp_path):
    rng = np.random.default_rng(0)
    glove = tmp_path / "tiny.txt"
    rows = [f"{word} {' '.join(f'{x:.4f}' for x in rng.standard_normal(50))}\n" for word in ("rock", "jazz")]
    glove.write_text("".join(rows))
    result = run(music / "a.wav", "--labels", "rock,jazz", "--model", model_dir, "--vectors", glove, "--format", "json")
    assert result.exit_code == 0, result.stderr
    default = tag_json(music / "a.wav", model_dir)["files"][0]["tags"]
    assert json.loads(result.stdout)["files"][0]["tags"] != [t for t in default if t["label"] in ("rock", "jazz")]
    result = run(music / "a.wav", "--labels", "techno", "--model", model_dir, "--vectors", glove)
    assert result.exit_code == 2 and "techno" in result.stderr and "tiny.txt" in result.stderr

    small = tmp_path / "small.txt"
    small.write_text("rock 0.1 0.2 0.3\njazz 0.3 0.2 0.1\n")
    result = run(music / "a.wav", "--labels", "rock", "--model", model_dir, "--vectors", small)
    assert result.exit_code == 2 and "3-d" in result.stderr and "50-d" in result.stderr


# --- determinism and the cache ----------------------------------------------------------------


def test_two_runs_give_identical_scores(music, model_dir):
    first = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "json", "--no-cache")
    second = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "json", "--no-cache",
                 "--workers", "0")
    cached = [run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "json") for _ in range(2)]
    assert first.exit_code == 0 and first.stdout == second.stdout == cached[0].stdout == cached[1].stdout


def test_retag_with_new_labels_reads_the_cache(music, model_dir, monkeypatch, forbid_decoding):
    first = tag_json(music, model_dir)
    with monkeypatch.context() as m:
        forbid_decoding(m)
        result = run(music, "--labels", "piano,techno", "--model", model_dir, "--format", "json")
        assert result.exit_code == 0 and "3 from the cache" in result.stderr
        again = tag_json(music, model_dir)
    assert again == first

    write_music(music / "a.wav", seed=11)  # the file changes: it is decoded again, the others are not
    result = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "json")
    assert "2 from the cache" in result.stderr
    changed = {f["path"]: f["tags"] for f in json.loads(result.stdout)["files"]}
    before = {f["path"]: f["tags"] for f in first["files"]}
    assert changed[str(music / "a.wav")] != before[str(music / "a.wav")]
    assert changed[str(music / "c.mp3")] == before[str(music / "c.mp3")]


def test_no_cache_option(music, model_dir, cache_dir):
    assert run(music, "--labels", "rock", "--model", model_dir, "--no-cache").exit_code == 0
    assert not (cache_dir / embedcache.CACHE_FILE).exists()


def test_offset_and_max_seconds_change_what_is_scored(music, model_dir):
    whole = tag_json(music / "a.wav", model_dir)["files"][0]["tags"]
    part = tag_json(music / "a.wav", model_dir, "--offset", "1", "--max-seconds", "1.5")["files"][0]["tags"]
    assert whole != part
    result = run(music / "a.wav", "--labels", "rock", "--model", model_dir, "--offset", "60")
    assert result.exit_code == 1 and "past the end" in result.stderr


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_damaged_audio_weights_are_a_usage_error(music, model_dir, tmp_path, cache_dir, device):
    """The label branch reads fine, the audio branch does not: found while the first files decode (the
    torch model is built then), one line, exit 2, nothing written."""
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = load_file(broken / "weights.safetensors")
    del weights[next(k for k in weights if k.startswith("segment_encoder."))]
    save_file(weights, broken / "weights.safetensors")
    out = tmp_path / "out.json"
    result = run(music, "--labels", "rock", "--model", broken, "--device", device, "-o", out)
    assert result.exit_code == 2 and not out.exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"zstag: error: {broken}: weights and config do not match"), line
    with sqlite3.connect(cache_dir / "embeddings.sqlite") as db:
        assert [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("embeddings", "decode_failures")] == [0, 0]


# --- the warm path: cached files need no torch ------------------------------------------------

HEAVY_MODULES = ("torch", "librosa", "scipy", "soundfile", "soxr", "pyarrow", "sklearn")
# Runs the CLI, then writes the top-level modules it had imported (at exit, whatever the exit code), and
# the code given to os._exit if the CLI ended that way (cli._exit_now) into the same file + ".exit".
MODULES_PROBE = r"""
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["ZSTAG_TEST_MODULES"], "w").write(json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
def _exit(code, _real=os._exit):
    open(os.environ["ZSTAG_TEST_MODULES"] + ".exit", "w").write(str(code))
    _real(code)
os._exit = _exit
sys.argv = ["zstag", *sys.argv[1:]]
from zstag.cli import main
main()
"""


def cli_subprocess(tmp_path, *args):
    """(CompletedProcess, the heavy modules it imported) of `zstag ARGS` in a fresh Python."""
    import subprocess
    import sys

    modules = tmp_path / "modules.json"
    quick_exit = tmp_path / "modules.json.exit"
    modules.unlink(missing_ok=True)
    quick_exit.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", MODULES_PROBE, *map(str, args)], capture_output=True, text=True,
                          check=False, env={**os.environ, "ZSTAG_TEST_MODULES": str(modules)}, timeout=300)
    proc.quick_exit = int(quick_exit.read_text()) if quick_exit.exists() else None
    return proc, sorted(set(HEAVY_MODULES) & set(json.loads(modules.read_text())))


@pytest.mark.parametrize("workers", ["0", "1"])
def test_decoder_notes_never_reach_stderr(model_dir, tmp_path, workers):
    """An mp3 with garbage in the middle makes libmpg123 print resync notes to fd 2; with or without
    decode workers, stderr holds only zstag's own lines."""
    x = 0.3 * np.sin(np.arange(5 * 44100) / 20)
    sf.write(tmp_path / "ok.mp3", x.astype(np.float32), 44100)
    data = bytearray((tmp_path / "ok.mp3").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (tmp_path / "garbled.mp3").write_bytes(bytes(data))
    proc, _ = cli_subprocess(tmp_path, "tag", tmp_path / "garbled.mp3", "--labels", "rock", "--model", model_dir,
                             "--no-cache", "-f", "csv", "--workers", workers)
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("zstag: ") for line in lines), lines
    assert len(lines) == 2 and "garbled.mp3: corrupt or truncated data" in lines[0] and proc.returncode == 1


def test_warm_retag_imports_no_torch_and_matches_the_cold_run(music, model_dir, tmp_path):
    args = ["tag", music, "--model", model_dir, "--format", "json", "--workers", "0"]
    cold, cold_modules = cli_subprocess(tmp_path, *args, "--labels", ",".join(LABELS))
    assert cold.returncode == 0, cold.stderr
    assert "torch" in cold_modules and "(0 from the cache)" in cold.stderr  # the probe sees what is imported

    warm, warm_modules = cli_subprocess(tmp_path, *args, "--labels", ",".join(LABELS))
    assert warm.returncode == 0, warm.stderr
    assert warm_modules == [] and warm.stderr.strip().splitlines()[-1] == "zstag: tagged 3 of 3 files (3 from the cache)"
    assert warm.stdout == cold.stdout  # byte-identical scores, cold and warm

    no_cache, _ = cli_subprocess(tmp_path, *args, "--labels", ",".join(LABELS), "--no-cache")
    assert no_cache.returncode == 0 and no_cache.stdout == cold.stdout and "(0 from the cache)" in no_cache.stderr

    for fmt in ("table", "csv"):  # new labels, the default table too
        retag, modules = cli_subprocess(tmp_path, "tag", music, "--model", model_dir, "-f", fmt, "--labels", "piano,techno")
        assert retag.returncode == 0 and modules == [] and "3 from the cache" in retag.stderr and "piano" in retag.stdout


def test_a_cold_run_with_stdout_closed_still_writes_its_output(music, model_dir, tmp_path):
    """Started with fd 1 closed (sys.stdout is None), the quick exit after torch (cli._exit_now) still
    ends with the run's code, and -o is written."""
    import subprocess
    import sys

    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "zstag", "tag", music, "--labels", "rock", "--model", model_dir, "-f", "jsonl", "-o", out],
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1), timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 3 and "tagged 3 of 3 files (0 from the cache)" in proc.stderr


def test_warm_retag_with_bad_files_imports_no_torch_and_reports_them_alike(music, model_dir, tmp_path):
    bad = write_bad_files(music)
    write_music(music / "short.wav", seconds=0.5, seed=3)
    # --workers 1: decoders run in a worker, whose stderr (libmpg123's notes on the corrupt mp3) is muted
    args = ["tag", music, "--model", model_dir, "--format", "json", "--workers", "1", "--labels", ",".join(LABELS)]
    cold, cold_modules = cli_subprocess(tmp_path, *args)
    warm, warm_modules = cli_subprocess(tmp_path, *args)
    assert cold.returncode == warm.returncode == 1 and "torch" in cold_modules and warm_modules == []
    # With torch loaded, the CLI skips the interpreter's teardown (cli._exit_now): same code, output, stderr.
    assert cold.quick_exit == 1 and warm.quick_exit is None
    assert warm.stdout == cold.stdout and len(json.loads(warm.stdout)["files"]) == 4
    cold_lines, warm_lines = cold.stderr.splitlines(), warm.stderr.splitlines()
    assert warm_lines[:-1] == cold_lines[:-1] and len(warm_lines) == len(bad) + 1  # the same line per bad file
    assert cold_lines[-1] == "zstag: tagged 4 of 8 files (0 from the cache); 4 failed"
    assert warm_lines[-1] == "zstag: tagged 4 of 8 files (4 from the cache); 4 failed"


def test_a_bad_file_that_is_fixed_is_tagged(music, model_dir, monkeypatch, forbid_decoding):
    write_bad_files(music)
    first = run(music, "--labels", "rock", "--model", model_dir, "--format", "jsonl")
    with monkeypatch.context() as m:
        forbid_decoding(m)  # its failure is remembered: nothing is decoded
        again = run(music, "--labels", "rock", "--model", model_dir, "--format", "jsonl")
    assert again.exit_code == first.exit_code == 1 and again.stdout == first.stdout
    assert again.stderr.splitlines()[:-1] == first.stderr.splitlines()[:-1]

    write_music(music / "corrupt.mp3", seed=4)  # new content: decoded and tagged
    fixed = run(music, "--labels", "rock", "--model", model_dir, "--format", "jsonl")
    assert fixed.exit_code == 1 and "corrupt.mp3" not in fixed.stderr
    assert str(music / "corrupt.mp3") in [json.loads(line)["path"] for line in fixed.stdout.splitlines()]
    assert "tagged 4 of 7 files (3 from the cache); 3 failed" in fixed.stderr


def test_silent_or_too_short_audio_is_reported_not_tagged_and_remembered(model_dir, tmp_path, monkeypatch,
                                                                        forbid_decoding):
    """Nothing to hear gets no confident tags: one line each, exit 1; the verdict is cached like a corrupt
    file's. Quiet but real music is still tagged."""
    folder = tmp_path / "quiet"
    folder.mkdir()
    sf.write(folder / "one-sample.wav", np.full(1, 0.5, np.float32), SR)
    sf.write(folder / "zeros.wav", np.zeros(60 * SR, np.float32), SR)
    hiss = 1e-6 * np.random.default_rng(0).standard_normal(60 * SR)  # RMS -120 dBFS (float: 16 bits round it to 0)
    sf.write(folder / "hiss.wav", hiss.astype(np.float32), SR, subtype="FLOAT")
    causes = {"one-sample.wav": "too short: 0.045 ms (need 250 ms)", "zeros.wav": "silent (all samples zero",
              "hiss.wav": "silent (peak -10"}  # the tiny model (paper front end) decodes at 22050 Hz: 1 sample
    args = [folder, "--labels", "speech,rock", "--model", model_dir, "--format", "jsonl", "--workers", "0"]
    first = run(*args)
    assert first.exit_code == 1 and first.stdout == ""
    lines = first.stderr.splitlines()
    assert lines[-1] == "zstag: tagged 0 of 3 files (0 from the cache); 3 failed" and len(lines) == 4
    for name, cause in causes.items():
        [line] = [line for line in lines if name in line]
        assert line.startswith(f"zstag: {folder / name}: {cause}"), line
    with monkeypatch.context() as m:
        forbid_decoding(m)  # each verdict comes from the cache
        again = run(*args)
    assert again.exit_code == 1 and again.stderr == first.stderr

    scale = 10 ** (-50 / 20) / 0.8  # write_music peaks at 0.8: this one at -50 dBFS
    write_music(folder / "soft.wav", seed=2)
    data, rate = sf.read(folder / "soft.wav", dtype="float32")
    sf.write(folder / "soft.wav", data * scale, rate)
    soft = run(*args)
    assert soft.exit_code == 1 and [json.loads(line)["path"] for line in soft.stdout.splitlines()] == [
        str(folder / "soft.wav")]


def test_without_ffmpeg_a_corrupt_file_is_remembered_until_ffmpeg_comes(music, model_dir, monkeypatch, forbid_decoding):
    """libsndfile's verdict on bytes it cannot parse is cached when no ffmpeg could try them (it was
    tried again on every run); the decoder stamp names the missing ffmpeg, so installing one retries."""
    write_bad_files(music)
    which = shutil.which
    with monkeypatch.context() as m:
        m.setattr(shutil, "which", lambda name, *a, **k: None if name == "ffmpeg" else which(name, *a, **k))
        embedcache.decoder_stamp.cache_clear()
        args = [music, "--labels", "rock", "--model", model_dir, "--format", "jsonl", "--workers", "0"]
        first = run(*args)
        assert first.exit_code == 1 and "corrupt.mp3: cannot decode: unrecognised audio format" in first.stderr
        assert "(ffmpeg:" not in first.stderr and "no ffmpeg" in embedcache.decoder_stamp()
        forbid_decoding(m)  # nothing is decoded again: each failure comes from the cache
        again = run(*args)
    assert again.exit_code == 1 and again.stdout == first.stdout and again.stderr == first.stderr.replace(
        "(0 from the cache)", "(3 from the cache)")
    embedcache.decoder_stamp.cache_clear()
    if which("ffmpeg") is not None:  # with ffmpeg on PATH the stamp differs, and ffmpeg tries the file
        retried = run(*args)
        assert "corrupt.mp3: cannot decode: unrecognised audio format or corrupt data (ffmpeg:" in retried.stderr


def test_warm_retag_does_not_build_the_torch_model(music, model_dir, monkeypatch):
    from zstag import model as model_module

    first = tag_json(music, model_dir)
    loads = []
    real = model_module.load_model
    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert tag_json(music, model_dir) == first and loads == []

    write_music(music / "new.wav", seed=7)  # one file not in the cache: the model is built, nothing is dropped
    result = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "json")
    assert result.exit_code == 0 and loads == [1] and "tagged 4 of 4 files (3 from the cache)" in result.stderr
    files = {f["path"]: f["tags"] for f in json.loads(result.stdout)["files"]}
    assert len(files) == 4 and all(files[f["path"]] == f["tags"] for f in first["files"])

    (music / "new.wav").write_bytes(b"")  # changed into a broken file: reported, not dropped, not served stale
    result = run(music, "--labels", ",".join(LABELS), "--model", model_dir, "--format", "json")
    assert result.exit_code == 1 and "new.wav" in result.stderr and "3 of 4 files (3 from the cache); 1 failed" in result.stderr


def test_model_trained_with_random_vectors_can_tag(music, tmp_path):
    import torch

    from zstag.audio import PAPER
    from zstag.model import ZeroShotModel, cnn1d_config, save_model
    from zstag.train import label_vectors

    torch.manual_seed(0)
    folder = tmp_path / "random-model"
    save_model(ZeroShotModel(cnn1d_config(PAPER, word_dim=8, words="random:8:2")), folder)
    labels = ["rock", "qwzxv jazz"]  # no vocabulary: no label is unknown
    result = run(music / "a.wav", "--labels", ",".join(labels), "--model", folder, "--format", "json")
    assert result.exit_code == 0, result.stderr

    from zstag.modelfile import read_model
    from zstag.words import load_words

    files = read_model(folder)
    expected = files.embed_label_vectors(label_vectors(labels, "random:8:2")[0])
    np.testing.assert_array_equal(modelfile.label_embeddings(files, load_words(files), labels), expected)


def test_a_negated_label_scores_the_opposite(music, model_dir):
    # "no vocals" is not a label the model trained on: its score is minus that of "vocals", for every file;
    # the mean of the vectors of "no" and "vocals" would sit near "vocals" itself.
    result = run(music, "--labels", "vocals,no vocals,without piano,piano,no-brainer", "--model", model_dir,
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    for f in json.loads(result.stdout)["files"]:
        score = {t["label"]: t["score"] for t in f["tags"]}
        assert score["no vocals"] == -score["vocals"] != 0 and score["without piano"] == -score["piano"]
        assert score["no-brainer"] != -score["vocals"]  # one GloVe token: no negation
    from zstag.modelfile import read_model
    from zstag.words import load_words

    files = read_model(model_dir)
    words = load_words(files)
    naive = files.embed_label_vectors(words.vectors(["no vocals"]))
    assert not np.allclose(modelfile.label_embeddings(files, words, ["no vocals"]), naive)


def test_a_double_negation_undoes_itself(model_dir):
    # What a label denies is scored by the same rule: "not not sad" is "sad", not minus the mean of "not" and
    # "sad"; "not no vocals" is "vocals", unless the model trained on "no vocals" (then minus that label).
    import dataclasses

    from zstag.modelfile import read_model
    from zstag.words import load_words

    files = read_model(model_dir)
    words = load_words(files)
    emb = modelfile.label_embeddings(files, words, ["not not sad", "sad", "not no vocals", "vocals", "no vocals"])
    np.testing.assert_array_equal(emb[0], emb[1])
    np.testing.assert_array_equal(emb[2], emb[3])
    trained = dataclasses.replace(files, config={**files.config, "train_labels": ["No Vocals"]})
    emb = modelfile.label_embeddings(trained, words, ["not no vocals", "no vocals"])
    np.testing.assert_array_equal(emb[0], -emb[1])
    np.testing.assert_array_equal(emb[1], files.embed_label_vectors(words.vectors(["no vocals"]))[0])
    long = modelfile.label_embeddings(files, words, ["not " * 500 + "sad"])  # a bounded number of passes
    assert np.isfinite(long).all()
    twice = modelfile.label_embeddings(files, words, ["no vocals", "sad", "no vocals"])  # each row negated
    np.testing.assert_array_equal(twice[2], twice[0])
    np.testing.assert_array_equal(twice[0], -files.embed_label_vectors(words.vectors(["vocals"]))[0])


def test_a_model_whose_train_labels_are_null_negates(model_dir):
    # A config.json edited by hand to "train_labels": null knows no training label (was a TypeError).
    import dataclasses

    from zstag.modelfile import read_model
    from zstag.words import load_words

    files = read_model(model_dir)
    words = load_words(files)
    unknown = dataclasses.replace(files, config={**files.config, "train_labels": None})
    np.testing.assert_array_equal(modelfile.label_embeddings(unknown, words, ["no vocals"]),
                                  modelfile.label_embeddings(files, words, ["no vocals"]))


def test_train_labels_that_are_not_strings_are_no_training_labels(music, model_dir, tmp_path):
    # A config.json edited by hand ("train_labels": [1, null, "Drums"], or a string): its strings count, the rest
    # is ignored (the note about "drum" raised a TypeError on every run; "no vocals" did before it).
    import dataclasses

    from zstag.labels import training_spellings
    from zstag.modelfile import read_model, train_labels
    from zstag.words import load_words

    model_dir = shutil.copytree(model_dir, tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    config["train_labels"] = [1, None, "Drums", ["x"]]
    (model_dir / "config.json").write_text(json.dumps(config))
    result = run(music, "--labels", "drum,no vocals,jazz", "--model", model_dir, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert '"drum" is not among the model\'s training labels, "Drums" is' in result.stderr
    files = read_model(model_dir)
    words = load_words(files)
    plain = dataclasses.replace(files, config={**files.config, "train_labels": []})
    np.testing.assert_array_equal(modelfile.label_embeddings(files, words, ["no vocals"]),
                                  modelfile.label_embeddings(plain, words, ["no vocals"]))
    text = dataclasses.replace(files, config={**files.config, "train_labels": "drums"})  # not a list: none
    assert training_spellings(train_labels(text.config), ["drum", "drums"]) == {}


def test_a_label_in_another_number_than_a_training_label_gets_a_hint(music, tmp_path):
    # The hint names the training label; the scores stay those of the label as typed (no substitution).
    import torch

    from zstag.audio import PAPER
    from zstag.model import ZeroShotModel, cnn1d_config, save_model

    torch.manual_seed(0)
    folder = tmp_path / "m"
    save_model(ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d",
                                          train_labels=["drums", "vocals", "female vocals", "jazz"])), folder)
    labels = "drum,vocal,Vocals,female vocal,jazz,piano,without drum"
    result = run(music / "a.wav", "--labels", labels, "--model", folder, "--format", "json")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("zstag: note:")]
    tail = "(a label the model never trained on scores less reliably)"
    assert notes == [
        f'zstag: note: "drum" is not among the model\'s training labels, "drums" is: use "drums" if that is what '
        f'you mean by "drum" {tail}',
        f'zstag: note: "female vocal" is not among the model\'s training labels, "female vocals" is: use "female '
        f'vocals" if that is what you mean by "female vocal" {tail}',
        f'zstag: note: "drum" is not among the model\'s training labels, "drums" is: use "without drums" if that is '
        f'what you mean by "without drum" {tail}',  # the word a negation denies
    ]  # not "vocal": "Vocals" is among the labels already
    from zstag.labels import inflections, training_spellings
    from zstag.modelfile import read_model, train_labels
    from zstag.words import load_words

    files = read_model(folder)
    words = load_words(files)
    score = {t["label"]: t["score"] for t in json.loads(result.stdout)["files"][0]["tags"]}
    trained = run(music / "a.wav", "--labels", "drums,female vocals", "--model", folder, "--format", "json")
    trained_score = {t["label"]: t["score"] for t in json.loads(trained.stdout)["files"][0]["tags"]}
    assert score["drum"] != trained_score["drums"] and score["female vocal"] != trained_score["female vocals"]
    np.testing.assert_array_equal(modelfile.label_embeddings(files, words, ["drum"]),
                                  files.embed_label_vectors(words.vectors(["drum"])))
    assert training_spellings(train_labels(files.config), ["blue", "jazzes", "piano", "drums", "no drums", "no vocal", "no vocals"]) == {
        "jazzes": ("jazzes", "jazz", "jazz")}  # "no vocal" beside "no vocals": both given already
    assert {"melodies", "boxes", "strings"} <= set(inflections("melody") + inflections("box") + inflections("string"))
    assert "melody" in inflections("melodies") and "female vocals" in inflections("female vocal")


def test_the_hint_for_a_long_label_costs_no_more_than_the_label():
    # Its inflections are one string of the label's length per word: a 20,000-word label took 4 GB and 20 s.
    import tracemalloc

    from zstag.labels import training_spellings

    tracemalloc.start()
    assert training_spellings(["drums", "female vocals"], ["jazz " * 3000 + "drum", "no " + "jazz " * 3000, "drum", "female vocal"]) == {
        "drum": ("drum", "drums", "drums"), "female vocal": ("female vocal", "female vocals", "female vocals")}
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # 3,001 words: ~100 MB before


def test_a_label_that_is_likely_a_typo_gets_a_note(music, model_dir):
    """"jaz" has a GloVe vector (rank 79726; nearest words "4-wheel", "az-zahir"): scored, but noted."""
    result = run(music, "--labels", "jaz,rock", "--model", model_dir, "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == ('zstag: note: "jaz" is a rare word (rank 79726); did you mean "jazz" '
                                             '(rank 3282)?')
    assert len(result.stdout.splitlines()) == 3


def test_parse_labels_errors_are_usage_errors():
    with pytest.raises(tagger.TagUsageError, match="no labels"):
        tagger.parse_labels([" "])


def test_a_file_name_that_is_not_utf8_is_tagged_and_written_as_valid_utf8(tmp_path, model_dir):
    """os.fsdecode gives such a name lone surrogates: it is decoded and cached, and every format is valid
    UTF-8, on stdout and in --output, cold and warm: json/jsonl/csv carry the name with U+FFFD in "path"
    and its very bytes, percent-encoded, in "path_bytes"; the table shows the byte as \\xNN."""
    from urllib.parse import unquote_to_bytes

    name = os.fsencode(str(tmp_path)) + b"/caf\xe9.wav"  # Latin-1 "café"
    os.rename(write_music(tmp_path / "plain.wav", seed=3), name)
    shown = f"{tmp_path}/caf\ufffd.wav"
    for _ in ("cold", "warm"):
        result = run(os.fsdecode(name), "--labels", "rock", "--model", model_dir, "--format", "jsonl")
        assert result.exit_code == 0, result.stderr
        record = json.loads(result.stdout_bytes.decode("utf-8"))  # strict: invalid UTF-8 raises
        assert list(record) == ["path", "path_bytes", "tags"] and record["path"] == shown
        assert unquote_to_bytes(record["path_bytes"]) == name
    out = tmp_path / "out.json"
    result = run(os.fsdecode(name), "--labels", "rock", "--model", model_dir, "--format", "json", "-o", out)
    assert result.exit_code == 0 and "(1 from the cache)" in result.stderr
    checked = subprocess.run([sys.executable, "-m", "json.tool", out], capture_output=True, check=False)
    assert checked.returncode == 0, checked.stderr
    (record,) = json.loads(out.read_bytes().decode("utf-8"))["files"]
    assert record["path"] == shown and unquote_to_bytes(record["path_bytes"]) == name
    result = run(os.fsdecode(name), tmp_path / "plain2.wav", "--labels", "rock", "--model", model_dir, "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout_bytes.decode("utf-8"))))
    assert [(r["path"], unquote_to_bytes(r["path_bytes"])) for r in rows] == [(shown, name)]
    result = run(os.fsdecode(name), "--labels", "rock", "--model", model_dir)
    assert "caf\\xe9.wav" in result.stdout_bytes.decode("utf-8")


def test_a_line_break_or_markup_in_a_name_never_splits_a_row(tmp_path, model_dir):
    """json, jsonl and csv keep the name as it is (escaped or quoted by the format, read back whole); the
    table shows a control character as its escape and a "[...]" as text, not rich markup."""
    folder = tmp_path / "music"
    folder.mkdir()
    names = ["two\nlines.wav", "[bold]x tab\there.wav"]
    for seed, name in enumerate(names):
        write_music(folder / name, seed=seed)
    result = run(folder, "--labels", "rock,jazz", "--model", model_dir, "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.path.basename(json.loads(line)["path"]) for line in result.stdout.splitlines()) == sorted(names)
    result = run(folder, "--labels", "rock,jazz", "--model", model_dir, "-f", "csv")
    assert {os.path.basename(r["path"]) for r in csv.DictReader(io.StringIO(result.stdout))} == set(names)
    for mode in ([], ["--single"]):
        result = run(folder, "--labels", "rock,jazz", "--model", model_dir, *mode)
        assert result.exit_code == 0, result.stderr
        rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
        assert len(rows) == 2, result.stdout
        assert "two\\nlines.wav" in rows[1] and "[bold]x tab\\there.wav" in rows[0]


def test_a_folder_tree_deeper_than_the_recursion_limit_is_walked(music, model_dir, deep_folder):
    """1,100 nested folders beside the files (os.walk raised RecursionError: nothing was tagged)."""
    deepest = deep_folder(music / "sub", sys.getrecursionlimit() + 100)
    result = run(music, "--labels", "rock", "--model", model_dir, "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert paths == [str(music / "a.wav"), str(music / "c.mp3"), str(music / "sub" / "b.flac")]
    # The walk reaches the bottom (an empty file there: found, then a failure, not decoded here).
    (Path(deepest) / "deep.wav").write_bytes(b"")
    found = tagger.find_audio_files([str(music)], tagger.parse_extensions(None))
    assert found.files == [*paths, os.path.join(deepest, "deep.wav")] and not found.problems


def test_a_file_whose_path_is_longer_than_libsndfile_takes_is_tagged(tmp_path, model_dir, long_folder):
    """libsndfile refuses a name over ~1,000 bytes ("Supplied filename too long"): a wav 1,100+ characters
    down was a failure (or left to ffmpeg). audio.py opens it and hands over the descriptor; a bad file
    beside it is still one line naming its whole path."""
    folder = long_folder(tmp_path / "music", 1100)
    wav = write_music(tmp_path / "deep.wav", seed=2).rename(folder / "deep.wav")  # libsndfile cannot write it there
    (folder / "bad.wav").write_bytes(b"RIFF but no wave at all" * 20)
    result = run(tmp_path / "music", "--labels", "rock,jazz", "--model", model_dir, "-f", "jsonl")
    assert result.exit_code == 1
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["path"] == str(wav) and len(record["path"]) > 1100 and len(record["tags"]) == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"zstag: {folder / 'bad.wav'}: cannot decode"), lines


@pytest.mark.parametrize("option", [["--offset", "nan"], ["--offset", "inf"], ["--max-seconds", "nan"]])
def test_non_finite_offset_or_length_is_a_usage_error(option, tmp_path):
    from zstag.cli_run import run_tag as run
    from zstag.tagger import TagUsageError

    with pytest.raises(TagUsageError, match="finite"):
        run([str(tmp_path)], labels=["jazz"], offset=float(option[1]) if option[0] == "--offset" else 0.0,
            max_seconds=float(option[1]) if option[0] == "--max-seconds" else None)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "5", "-1.5", "1.000001"])
def test_a_threshold_outside_the_cosine_range_is_a_usage_error(value, music, model_dir):
    for mode in ([], ["--single"]):  # 5 was taken, and kept no label at all
        result = run(music, "--labels", "rock,jazz", "--model", model_dir, "--threshold", value, *mode)
        assert result.exit_code == 2 and result.stdout == ""
        (line,) = result.stderr.strip().splitlines()
        assert line == f"zstag: error: --threshold {float(value)}: need a number in -1..1 (cosine scores lie in -1..1, calibrated ones in 0..1)"
