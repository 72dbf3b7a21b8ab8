"""Calibrated scores (zstag/scoring.py): the teacher path, the joint z-score, and a calibrated model end to end."""
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from zstag import scoring
from zstag.cli import app


def test_normal_cdf_matches_erf():
    z = np.linspace(-8, 8, 2001)
    exact = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in z])
    # A&S 7.1.26 bounds erfc's absolute error by 1.5e-7; Φ = erfc / 2 halves it
    assert np.abs(scoring.normal_cdf(z) - exact).max() <= 0.75e-7 + 1e-15


def _reference(rng, n=400, d=6, k=4):
    joint = rng.normal(size=(n, d)) + rng.normal(size=d)  # a common direction, as real embeddings have
    teacher = rng.normal(size=(n, k)) @ rng.normal(size=(k, k))
    x = np.concatenate([joint / np.linalg.norm(joint, axis=1, keepdims=True), teacher], axis=1)
    mean = x.mean(axis=0)
    cov = (x - mean).T @ (x - mean) / n
    return np.concatenate([joint, teacher], axis=1), {scoring.MEAN_KEY: mean, scoring.COV_KEY: cov}


def test_rows_give_exact_z_scores_over_the_reference():
    rng = np.random.default_rng(0)
    tracks, tensors = _reference(rng)
    config = {"embed_dim": 6, "scores": {"type": "calibrated", "teacher_words": list("abcd")}}
    label_joint = rng.normal(size=(3, 6))
    weights = np.array([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.2, 0.3, 0.1, 0.4]])
    rows = scoring.calibrated_rows(config, tensors, label_joint, weights)
    d = 6
    x = np.concatenate([tracks[:, :d] / np.linalg.norm(tracks[:, :d], axis=1, keepdims=True), tracks[:, d:],
                        np.ones((len(tracks), 1))], axis=1)
    z = x @ rows.astype(np.float64).T
    # over the reference itself every label's z-score has mean 0 and standard deviation 1; rows are float32,
    # so each z carries a relative error of about 2^-24 per term summed over ~11 terms of size |z| <= ~4
    assert np.abs(z.mean(axis=0)).max() <= 1e-5
    assert np.abs(z.std(axis=0) - 1).max() <= 1e-5
    # and it is the equal-weight sum of the two paths' own z-scores, standardised again
    p = (x[:, :d] @ (label_joint / np.linalg.norm(label_joint, axis=1, keepdims=True)).T)
    t = x[:, d:-1] @ weights.T
    zp = (p - p.mean(0)) / p.std(0)
    zt = (t - t.mean(0)) / t.std(0)
    both = zp + zt
    assert np.abs(z - both / both.std(0)).max() <= 1e-4
    scores = scoring.scores(config, tracks, rows)
    assert scores.dtype == np.float32 and (scores > 0).all() and (scores < 1).all()


class _Words:
    """Word vectors for a few words: teacher weights only need .vectors."""

    table = {"rock": [1, 0, 0], "metal": [0.9, 0.3, 0], "piano": [0, 1, 0], "vocals": [0, 0, 1],
             "heavy": [0.95, 0.1, 0.0], "keys": [0.1, 0.9, 0.2]}

    def vectors(self, labels):
        return np.array([self.table[label] for label in labels], dtype=np.float64)


def test_teacher_weights_take_a_teacher_word_or_tag_spelling_whole_and_else_the_nearest():
    config = {"scores": {"type": "calibrated", "teacher_words": ["metal", "piano", "rock", "vocals"], "k_nearest": 2}}
    w = scoring.teacher_weights(config, _Words(), ["metal", "vocals", "heavy"])
    assert w[0].tolist() == [1, 0, 0, 0]
    assert w[1].tolist() == [0, 0, 0, 1]
    # "heavy" is no teacher word: its two nearest (rock, metal) by cosine, weights ∝ cosine, summing to 1
    assert w[2, 1] == 0 and w[2, 3] == 0 and w[2, 0] > 0 and w[2, 2] > 0 and abs(w[2].sum() - 1) < 1e-12
    # a tag spelling ("singing" is one of MTT's tags for vocals) counts as the word itself
    assert scoring.teacher_spellings(config)["singing"] == "vocals"


@pytest.fixture(scope="module")
def calibrated_model_dir(tmp_path_factory):
    """A calibrated model over the real musicnn backbones with a random projection and reference statistics."""
    import torch

    from zstag.audio import MUSICNN
    from zstag.backbones.musicnn import musicnn_tags
    from zstag.model import ZeroShotModel, save_model
    from zstag.teacher import tag_words, teacher_words

    torch.manual_seed(0)
    backbones = ["MSD_musicnn", "MTT_musicnn"]
    words = teacher_words()
    config = {
        "name": "calibrated-test", "front_end": MUSICNN.to_dict(), "embed_dim": 8, "word_dim": 50, "words": "glove-6B-50d",
        "audio_encoder": {"type": "musicnn", "backbones": backbones, "outputs": ["penultimate", "logits"], "feature_dim": 500},
        "audio_projection": {"type": "teacher", "joint": "linear", "joint_columns": [0, 200],
                             "tag_columns": {"MSD_musicnn": [200, 250], "MTT_musicnn": [450, 500]},
                             "tag_words": {b: tag_words(b, musicnn_tags(b)) for b in backbones}},
        "label_projection": {"type": "linear"},
        "scores": {"type": "calibrated", "teacher_words": words, "k_nearest": 3},
    }
    model = ZeroShotModel(config)
    dim = 8 + len(words)
    a = torch.randn(dim, dim, dtype=torch.float64)
    with torch.no_grad():
        model.audio_projection.mu.normal_()
        model.audio_projection.sigma.fill_(10.0)  # moderate z-scores: Φ stays off its rounded ends
        model.calibration.mean.copy_(torch.randn(dim, dtype=torch.float64))
        model.calibration.cov.copy_(a @ a.T / dim + torch.eye(dim, dtype=torch.float64) * 0.1)
    folder = tmp_path_factory.mktemp("calibrated")
    save_model(model, folder)
    return str(folder)


def test_word_values_are_the_max_over_a_words_tags_then_the_mean_over_backbones(calibrated_model_dir):
    import torch

    from zstag.model import load_model

    model = load_model(calibrated_model_dir)
    head = model.audio_projection
    feats = torch.randn(3, 500)
    values = head.word_values(feats)
    cfg = model.config["audio_projection"]
    words = model.config["scores"]["teacher_words"]
    for j in (words.index("vocals"), words.index("rock"), words.index("sad")):
        per = [feats[:, a:b][:, [t for t, w in enumerate(cfg["tag_words"][name]) if w == words[j]]].amax(dim=1)
               for name, (a, b) in cfg["tag_columns"].items() if words[j] in cfg["tag_words"][name]]
        assert torch.equal(values[:, j], sum(per) / len(per))


def test_a_calibrated_model_tags_from_the_cli_cold_and_warm_alike(calibrated_model_dir, write_audio, tone, cache_dir):
    path = write_audio("a.wav", tone(4.0, 16000, freqs=(220.0, 330.0)), 16000)
    args = ["tag", str(path), "--labels", "rock,piano,no vocals,vocals,lullaby", "--model", calibrated_model_dir, "-f", "json"]
    cold = CliRunner().invoke(app, args)
    assert cold.exit_code == 0, cold.output
    warm = CliRunner().invoke(app, args)
    assert warm.exit_code == 0
    assert cold.stdout == warm.stdout
    data = json.loads(cold.stdout)
    flat = {t["label"]: t["score"] for t in data["files"][0]["tags"]}
    assert "calibrated" in data["score"]
    assert all(0 <= v <= 1 for v in flat.values())
    # a denial is minus the z-score of what it denies: Φ(-z) = 1 - Φ(z), to the 4 printed digits
    assert abs(flat["no vocals"] + flat["vocals"] - 1) <= 1e-4 + 1e-12
