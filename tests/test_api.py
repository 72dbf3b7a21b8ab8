"""The Python API (zstag.tag, zstag.embed, zstag.load_model): the CLI's numbers, records for bad files,
exceptions for bad options, and an `import zstag` that loads nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import zstag
from zstag.cli import app
from zstag.embedcache import CACHE_FILE
from zstag.errors import ZstagWarning
from zstag.words import UnknownLabelError

from test_tag import write_music

LABELS = ["rock", "jazz", "drum and bass"]


@pytest.fixture(autouse=True)
def _fresh_cache(cache_dir):
    return cache_dir


@pytest.fixture()
def folder(tmp_path):
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    write_music(music / "a.wav", seed=0)
    write_music(music / "sub" / "b.flac", seed=5)
    (music / "broken.mp3").write_bytes(b"not an mp3 at all" * 100)
    return music


def test_tag_gives_the_cli_scores_and_a_record_per_bad_input(folder, tiny_model_dir, tmp_path):
    missing = tmp_path / "nowhere.wav"
    records = zstag.tag([folder, missing], LABELS, model=tiny_model_dir, device="cpu", workers=0)
    by_path = {r.path: r for r in records}
    assert set(by_path) == {str(folder / "a.wav"), str(folder / "sub" / "b.flac"), str(folder / "broken.mp3"),
                            str(missing)}
    assert by_path[str(missing)].error == f"{missing}: no such file or folder"
    assert by_path[str(folder / "broken.mp3")].error.startswith(str(folder / "broken.mp3"))
    assert by_path[str(folder / "broken.mp3")].scores == {}

    done = CliRunner().invoke(app, ["tag", str(folder), "--labels", ",".join(LABELS), "--model", tiny_model_dir,
                                    "-f", "json", "--device", "cpu", "--workers", "0"])
    assert done.exit_code == 1  # the broken file
    cli = {f["path"]: {t["label"]: t["score"] for t in f["tags"]} for f in json.loads(done.stdout)["files"]}
    assert len(cli) == 2
    for path, scores in cli.items():
        api = by_path[path].scores
        assert list(api) == LABELS  # the labels' own order
        for label, score in scores.items():
            assert abs(api[label] - score) <= 5e-7  # the CLI writes 6 decimals; the same float32 underneath
        assert [label for label, _ in by_path[path].best()] == [t for t in sorted(scores, key=lambda x: -scores[x])]


def test_embed_and_load_model_agree_with_tag(folder, tiny_model_dir):
    embedded = {e.path: e for e in zstag.embed(folder, model=tiny_model_dir, device="cpu", workers=0)}
    good = embedded[str(folder / "a.wav")]
    assert good.error is None and good.embedding.shape == (zstag.load_model(tiny_model_dir).config["embed_dim"],)
    assert embedded[str(folder / "broken.mp3")].embedding is None
    model = zstag.load_model(tiny_model_dir)
    from zstag.modelfile import label_embeddings, read_model
    from zstag.words import load_words

    files = read_model(tiny_model_dir)
    label_emb = label_embeddings(files, load_words(files), LABELS)
    cosine = label_emb @ good.embedding / (np.linalg.norm(label_emb, axis=1) * np.linalg.norm(good.embedding))
    tagged = zstag.tag(folder / "a.wav", LABELS, model=tiny_model_dir, device="cpu", workers=0)[0]
    # The same cosine of unit-scale 100-d float32 vectors summed in another order: each differs from the exact
    # value by at most n·ε32 ≈ 100 × 1.19e-7 ≈ 1.2e-5 (the worst-case bound of a float32 dot product).
    assert np.allclose([tagged.scores[label] for label in LABELS], cosine, rtol=0, atol=2 * 100 * 1.19e-7)
    assert model.model_id == files.model_id


def test_unknown_label_raises_before_any_decoding(folder, tiny_model_dir, forbid_decoding, monkeypatch):
    forbid_decoding(monkeypatch)
    with pytest.raises(UnknownLabelError, match="qwzxv"):
        zstag.tag(folder, ["jazz", "qwzxv"], model=tiny_model_dir, device="cpu")


def test_a_notice_is_a_warning_and_nothing_is_printed(folder, tiny_model_dir, cache_dir, capfd):
    # An embedding cache that cannot be opened: the CLI's "zstag: warning: ..." line is a ZstagWarning here.
    (cache_dir / CACHE_FILE).mkdir(parents=True)
    with pytest.warns(ZstagWarning, match="embedding cache .* unusable"):
        records = zstag.embed(folder, tiny_model_dir, device="cpu", workers=0)
    assert sum(r.embedding is not None for r in records) == 2 and capfd.readouterr().err == ""


def test_import_zstag_loads_neither_numpy_nor_torch():
    code = "import sys, zstag; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules)); zstag.tag"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
