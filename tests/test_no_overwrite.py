"""No command writes over one of its own inputs (paths.check_output), and a run that produced nothing leaves
the previous output as it was: the CLI on real files in a temporary folder, with the tiny model."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from zstag.cli import app

SR = 22050


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(*files) -> dict:
    return {f: f.read_bytes() for f in files}


def assert_refused(result, line: str) -> None:
    """Exit 2, one line on stderr, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr == f"zstag: error: {line}\n"


@pytest.fixture(autouse=True)
def _fresh_cache(cache_dir):
    return cache_dir


@pytest.fixture()
def corpus(tmp_path):
    """R/manifest.csv listing R/audio/a.wav (rock) and R/audio/b.wav (jazz): 1.5 s tones."""
    root = tmp_path / "R"
    (root / "audio").mkdir(parents=True)
    t = np.arange(int(1.5 * SR)) / SR
    for name, freq in (("a", 220.0), ("b", 330.0)):
        sf.write(root / "audio" / f"{name}.wav", (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    (root / "manifest.csv").write_text("path,labels\naudio/a.wav,rock\naudio/b.wav,jazz\n")
    return root


@pytest.fixture()
def model(tmp_path, tiny_model_dir):
    """A copy of the tiny model: a guard that failed would overwrite this one, not the session's."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


@pytest.fixture()
def features(corpus, tmp_path):
    from zstag.audio import PAPER
    from zstag.corpora import open_corpus
    from zstag.features import preprocess

    preprocess(open_corpus("csv", corpus).tracks, tmp_path / "FEAT", PAPER, progress=False,
               source={"name": "R", "kind": "csv"})
    return tmp_path / "FEAT"


# --- eval ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["audio", "manifest as root", "manifest in root", "hard link", "link", "model"])
def test_eval_out_or_plot_naming_an_input_is_refused_before_any_decoding(case, corpus, model, tmp_path, monkeypatch,
                                                                        forbid_decoding):
    audio, manifest, config = corpus / "audio" / "a.wav", corpus / "manifest.csv", model / "config.json"
    root, option, out, what, path = {
        "audio": (manifest, "--out", audio, "the corpus's audio file", audio),
        "manifest as root": (manifest, "--out", manifest, "the corpus file", manifest),
        "manifest in root": (corpus, "--out", manifest, "the corpus file", manifest),
        "hard link": (corpus, "--plot", tmp_path / "hard.png", "the corpus's audio file", audio),
        "link": (corpus, "--out", tmp_path / "link.json", "the corpus file", manifest),
        "model": (corpus, "--out", config, "the model file", config),
    }[case]
    if case == "hard link":
        os.link(audio, out)
    elif case == "link":
        out.symlink_to(manifest)
    before = snapshot(audio, manifest, config)
    forbid_decoding(monkeypatch)
    result = cli("eval", "--corpus", "csv", "--root", root, "--model", model, "--workers", 0, option, out)
    assert_refused(result, f"{out}: {option} is {what} {path} (it would be overwritten)")
    assert snapshot(audio, manifest, config) == before


def test_eval_out_and_plot_naming_one_file_is_refused(corpus, model, tmp_path):
    report = tmp_path / "r.json"
    result = cli("eval", "--corpus", "csv", "--root", corpus, "--model", model, "--out", report, "--plot",
                 tmp_path / "." / "r.json")
    assert_refused(result, f"{tmp_path / '.' / 'r.json'}: --plot is the --out file {report} (one would overwrite the other)")


def test_eval_report_beside_the_corpus_and_the_model_is_written_and_rewritten(corpus, model):
    """The guard refuses only what would replace an input: a report inside the corpus or model folder is fine."""
    for out in (corpus / "report.json", corpus / "report.json", model / "eval.json"):
        result = cli("eval", "--corpus", "csv", "--root", corpus, "--model", model, "--workers", 0, "--out", out)
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["tracks"]["evaluated"] == 2


# --- split, preprocess, train -------------------------------------------------------------------


def test_split_out_inside_the_feature_cache_or_on_the_manifest_is_refused(corpus, features):
    from zstag.features import FeatureCache

    cache_file, manifest = features / "cache.json", corpus / "manifest.csv"
    before = snapshot(cache_file, manifest)
    for out in (cache_file, features / "split.json"):  # every file there is the cache's
        result = cli("split", "--features", features, "--out", out, "--unseen", "jazz")
        assert_refused(result, f"{out}: --out lies inside the feature cache {features} (every file there is read as data)")
    result = cli("split", "--root", manifest, "--out", manifest, "--unseen", "jazz")
    assert_refused(result, f"{manifest}: --out is the corpus file {manifest} (it would be overwritten)")
    assert snapshot(cache_file, manifest) == before and not (features / "split.json").exists()
    assert len(FeatureCache.open(features)) == 2  # all features still there


def test_preprocess_out_that_is_or_holds_the_corpus_is_refused(corpus, tmp_path):
    before = sorted(p for p in tmp_path.rglob("*"))
    result = cli("preprocess", "--root", corpus, "--out", corpus, "--no-progress")
    assert_refused(result, f"{corpus}: --out is the corpus root {corpus} (the command writes its own files there)")
    result = cli("preprocess", "--root", corpus, "--out", tmp_path, "--no-progress")
    assert_refused(result, f"{tmp_path}: --out holds the corpus file {corpus / 'manifest.csv'} "
                           "(the command writes its own files there)")
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_train_out_inside_the_feature_cache_or_holding_an_input_is_refused(features, tmp_path):
    out = features / "model"
    result = cli("train", "--features", features, "--out", out, "--unseen", "jazz", "--val-fraction", "0")
    assert_refused(result, f"{out}: --out lies inside the feature cache {features} (every file there is read as data)")
    (tmp_path / "M").mkdir()
    vectors = tmp_path / "M" / "vectors.txt"
    vectors.write_text("rock " + " ".join(["0.1"] * 50) + "\n")
    result = cli("train", "--features", features, "--out", tmp_path / "M", "--vectors", vectors, "--unseen", "jazz")
    assert_refused(result, f"{tmp_path / 'M'}: --out holds the word-vector file {vectors} "
                           "(the command writes its own files there)")
    assert not out.exists() and os.listdir(tmp_path / "M") == ["vectors.txt"]


# --- tag ----------------------------------------------------------------------------------------


def test_tag_output_naming_the_labels_file_the_vectors_or_the_model_is_refused(corpus, model, tmp_path, monkeypatch,
                                                                               forbid_decoding):
    audio = corpus / "audio" / "a.wav"
    labels = tmp_path / "L.txt"
    labels.write_text("jazz\n")
    os.link(labels, tmp_path / "hard.txt")
    vectors = tmp_path / "V.txt"
    vectors.write_text("".join(f"{w} " + " ".join([str(0.1 * i)] * 50) + "\n" for i, w in enumerate(["jazz", "rock"], 1)))
    weights = model / "weights.safetensors"
    before = snapshot(labels, vectors, weights)
    forbid_decoding(monkeypatch)
    for out, what, path in ((labels, "the labels file", labels), (tmp_path / "hard.txt", "the labels file", labels),
                            (vectors, "the word-vector file", vectors), (weights, "the model file", weights)):
        result = cli("tag", audio, "--labels-file", labels, "--vectors", vectors, "--model", model, "-o", out)
        assert_refused(result, f"{out}: --output is {what} {path} (it would be overwritten)")
    assert snapshot(labels, vectors, weights) == before


def test_an_output_the_user_made_read_only_is_refused_before_any_work(corpus, model, tmp_path, monkeypatch,
                                                                       forbid_decoding):
    """`chmod a-w` on an output: the shell's > refuses to replace it, and so do tag, search and eval (--out,
    --plot), through a link too: one line naming it, exit 2, before any decoding; the file stays as it was.
    atomic_write refuses it too for a user's file (a file made read-only during the run), not for zstag's own."""
    from zstag.paths import atomic_write

    audio = corpus / "audio" / "a.wav"
    locked = tmp_path / "locked.json"
    locked.write_text("mine\n")
    os.chmod(locked, 0o444)
    link = tmp_path / "link.json"
    link.symlink_to(locked)
    forbid_decoding(monkeypatch)
    eval_args = ["eval", "--corpus", "csv", "--root", corpus, "--workers", 0]
    for args, option, out in ((["tag", audio, "-l", "jazz"], "--output", locked),
                              (["tag", audio, "-l", "jazz"], "--output", link),
                              (["search", "jazz", corpus], "--output", locked),
                              (eval_args, "--out", locked), (eval_args, "--plot", link)):
        result = cli(*args, "--model", model, option, out)
        assert_refused(result, f"{out}: {option} is read-only (chmod u+w it to let zstag replace it)")
    with pytest.raises(PermissionError, match="read-only"):
        atomic_write(link, b"new\n", follow_links=True)
    assert locked.read_text() == "mine\n" and os.stat(locked).st_mode & 0o777 == 0o444 and link.is_symlink()
    atomic_write(locked, b"zstag's own\n")  # a cache file: replaced as before
    assert locked.read_text() == "zstag's own\n"


def test_a_tag_run_that_tags_nothing_leaves_the_previous_output(model, tmp_path):
    previous = tmp_path / "k.json"
    previous.write_text("x\n")
    (tmp_path / "corrupt.mp3").write_bytes(np.random.default_rng(1).bytes(20000))
    for inputs in ([tmp_path / "nonexistent.mp3"], [tmp_path / "corrupt.mp3"], [tmp_path / "empty-folder"]):
        (tmp_path / "empty-folder").mkdir(exist_ok=True)
        result = cli("tag", *inputs, "--labels", "jazz", "--model", model, "-f", "json", "-o", previous)
        assert result.exit_code == 1, result.output
        assert f"zstag: {previous} left as it was: no file was tagged\n" in result.stderr
        assert previous.read_text() == "x\n"
    new = tmp_path / "new.json"
    result = cli("tag", tmp_path / "nonexistent.mp3", "--labels", "jazz", "--model", model, "-o", new)
    assert result.exit_code == 1 and f"zstag: {new} not written: no file was tagged\n" in result.stderr
    assert not new.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
