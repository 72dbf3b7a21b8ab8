"""Calibrated scores (zstag/scoring.py): teacher words by the taggers, other labels by the shared cosine scale,
and a calibrated model end to end."""
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


def test_rows_score_teacher_words_by_their_value_and_other_labels_by_the_shared_cosine_scale():
    rng = np.random.default_rng(0)
    d, k = 6, 4
    joint = rng.normal(size=(50, d)) + rng.normal(size=d)  # a common direction, as real embeddings have
    teacher = rng.normal(size=(50, k))
    tracks = np.concatenate([joint, teacher], axis=1)
    config = {"embed_dim": d, "scores": {"type": "calibrated", "teacher_words": list("abcd"),
                                         "joint_mean": 0.3, "joint_std": 0.2}}
    label_joint = rng.normal(size=(4, d))
    weights = np.array([[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=float)
    signs = np.array([1, 1, -1, -1])
    rows = scoring.calibrated_rows(config, label_joint, weights, signs)
    x = np.concatenate([joint / np.linalg.norm(joint, axis=1, keepdims=True), teacher, np.ones((50, 1))], axis=1)
    z = x @ rows.astype(np.float64).T
    cos = x[:, :d] @ (label_joint / np.linalg.norm(label_joint, axis=1, keepdims=True)).T
    # rows are float32: each z carries a relative error of about 2^-24 per term, over <= 8 terms of size <= ~6
    tol = 1e-5
    assert np.abs(z[:, 0] - teacher[:, 2]).max() <= tol  # a teacher word: its standardised value
    assert np.abs(z[:, 1] - (cos[:, 1] - 0.3) / 0.2).max() <= tol  # any other label: the shared affine map
    assert np.abs(z[:, 2] - (-cos[:, 2] - 0.3) / 0.2).max() <= tol  # a denial: minus the cosine of what it denies
    assert np.abs(z[:, 3] + teacher[:, 0]).max() <= tol  # ... or minus the teacher value
    # one affine map for every non-teacher label: among them the ranking is the cosine's
    two = scoring.calibrated_rows(config, label_joint[:3], np.zeros((3, k)))
    assert (np.argsort(-(x @ two.astype(np.float64).T), axis=1)[:, 0] == np.argsort(-cos[:, :3], axis=1)[:, 0]).all()
    scores = scoring.scores(config, tracks, rows)
    assert scores.dtype == np.float32 and (scores > 0).all() and (scores < 1).all()


@pytest.mark.parametrize("mean, std", [(None, 0.2), (0.3, 0.0), (0.3, float("nan")), (True, 0.2), ("0.3", 0.2)])
def test_joint_stats_refuse_unusable_values(mean, std):
    with pytest.raises(ValueError, match="joint_mean"):
        scoring.joint_stats({"scores": {"type": "calibrated", "joint_mean": mean, "joint_std": std}})


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
    # k_nearest 0: a label that is no teacher word has no teacher path at all
    only = {"scores": {**config["scores"], "k_nearest": 0}}
    assert scoring.teacher_weights(only, _Words(), ["heavy", "rock"]).tolist() == [[0, 0, 0, 0], [0, 0, 1, 0]]
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
        "scores": {"type": "calibrated", "teacher_words": words, "joint_mean": 0.1, "joint_std": 0.3},
    }
    model = ZeroShotModel(config)
    with torch.no_grad():
        model.audio_projection.mu.normal_()
        model.audio_projection.sigma.fill_(10.0)  # moderate z-scores: Φ stays off its rounded ends
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
    # every output names what the scores are: the table's footer and search's too (similar stays a cosine)
    table = CliRunner().invoke(app, args[:-2])
    assert table.exit_code == 0 and "score: calibrated" in table.stdout and "score: cosine" not in table.stdout
    found = CliRunner().invoke(app, ["search", "rock", str(path), "--model", calibrated_model_dir])
    assert found.exit_code == 0 and "score: calibrated" in found.stdout, found.output
    other = write_audio("b.wav", tone(4.0, 16000, freqs=(440.0,)), 16000)
    similar = CliRunner().invoke(app, ["similar", str(path), str(other), "--model", calibrated_model_dir])
    assert similar.exit_code == 0 and "score: cosine" in similar.stdout, similar.output


def test_a_calibrated_model_with_damaged_score_statistics_is_refused_in_one_line(calibrated_model_dir, tmp_path):
    import shutil

    from zstag.modelfile import ModelError, read_model

    folder = tmp_path / "damaged"
    shutil.copytree(calibrated_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, bad in (("joint_std", -1), ("teacher_words", "rock")):
        damaged = {**config, "scores": {**config["scores"], key: bad}}
        (folder / "config.json").write_text(json.dumps(damaged))
        with pytest.raises(ModelError, match=key) as err:
            read_model(folder)
        assert "\n" not in str(err.value)


def test_labels_shows_which_path_a_calibrated_model_scores_each_label_by(calibrated_model_dir):
    wide = {"COLUMNS": "250"}
    shown = CliRunner().invoke(app, ["labels", "singing", "lullaby", "no piano", "--model", calibrated_model_dir, "-k", "0"],
                               env=wide)
    assert shown.exit_code == 0, shown.output
    rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if line.count("│") > 2}
    assert "the taggers' \"vocals\"" in rows["singing"]  # a tag spelling takes its teacher word
    assert "joint space" in rows["lullaby"]
    assert "the taggers' \"piano\"" in rows["no piano"]  # a denial takes the path of what it denies
    assert scoring.teacher_word({"scores": {"type": "cosine"}}, "piano") is None
    # a cosine model has no such column; a model that cannot be read is a usage error
    plain = CliRunner().invoke(app, ["labels", "piano", "--model", "conse", "-k", "0"], env=wide)
    assert plain.exit_code == 0 and "scored by" not in plain.stdout
    assert CliRunner().invoke(app, ["labels", "piano", "--model", "/nonexistent/model"]).exit_code == 2


def test_a_label_takes_the_teacher_path_of_the_word_its_vector_resolves_to():
    from zstag.teacher import teacher_words
    from zstag.words import WordVectors

    words = WordVectors.load()
    config = {"scores": {"type": "calibrated", "teacher_words": teacher_words()}}
    labels = ["hiphop", "Hip Hop", "rnb", "female vocalist", "lullaby"]
    w = scoring.teacher_weights(config, words, labels)
    named = [config["scores"]["teacher_words"][row.argmax()] if row.any() else None for row in w]
    # GTZAN's "hiphop" and a typed "hip hop" are the word vector of "hip-hop" (words.phrase), so the taggers' word
    assert named == ["hip-hop", "hip-hop", "r&b", "female vocals", None]
    assert [scoring.teacher_word(config, label, words) for label in labels] == named
