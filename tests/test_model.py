"""The paper's model: parameter count, shapes, loss, track embedding, save/load."""

import json

import numpy as np
import pytest
import torch

from zstag.audio import PAPER
from zstag.model import CNN1D, ModelError, ZeroShotModel, cnn1d_config, load_model, save_model, triplet_hinge_loss


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    return ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d", train_labels=["rock", "jazz"], **kw))


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_cnn1d_has_the_papers_parameter_count():
    assert n_params(CNN1D(128)) == 242_788
    model = make_model()
    assert n_params(model.segment_encoder) == 242_788
    assert n_params(model.label_projection) == 50 * 100 + 100  # one linear layer word_dim → 100


@pytest.mark.parametrize("frames", [130, 187, 40])
def test_segment_and_label_embeddings_have_the_joint_dimension(frames):
    model = make_model()
    assert model.embed_segments(torch.randn(3, 128, frames)).shape == (3, 100)
    assert model.embed_labels(torch.randn(5, 50)).shape == (5, 100)


def test_hinge_loss_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # cos 0.7071, 1
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # cos 0, 0
    expected = (max(0.0, 0.4 - 0.70710678 + 0.0) + max(0.0, 0.4 - 1.0 + 0.0)) / 2
    assert float(triplet_hinge_loss(a, pos, neg)) == pytest.approx(expected, abs=1e-6)
    assert float(triplet_hinge_loss(a, pos, neg, margin=1.0)) == pytest.approx((1 - 0.70710678) / 2, abs=1e-6)


def test_hinge_loss_averages_over_k_negatives():
    a = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])  # cos 1, -1, 0
    expected = (max(0, 0.4 - 1 + 1) + max(0, 0.4 - 1 - 1) + max(0, 0.4 - 1 + 0)) / 3
    assert float(triplet_hinge_loss(a, pos, negs)) == pytest.approx(expected)


def test_track_embedding_is_the_mean_of_segment_embeddings():
    model = make_model().eval()
    segments = np.random.default_rng(0).standard_normal((70, 128, 130)).astype(np.float32)  # > one batch
    with torch.no_grad():
        expected = model.embed_segments(torch.from_numpy(segments)).mean(dim=0).numpy()
    # Other batch sizes, other float32 orders: 5 conv layers of <= 512-term products, each off by ~lambda
    # sqrt(512) u = 8e-6 (lambda = 6, probabilistic bound) of its terms' scale: 4e-5 of it, < rtol where the
    # terms add up; atol for entries where they cancel, 4e-5 x the outputs' scale (rms ~3 here) < 2e-4.
    np.testing.assert_allclose(model.embed_track(segments), expected, rtol=1e-4, atol=2e-4)


def test_save_and_load_round_trip(tmp_path):
    model = make_model(seed=3).eval()
    model.config["split_sha256"] = "ab" * 32
    model_id = save_model(model, tmp_path / "m", extra_files={"corpus_stats.json": {"n_tracks": 2}})
    loaded = load_model(tmp_path / "m")
    assert loaded.model_id == model_id
    assert loaded.train_labels == ["rock", "jazz"]
    assert loaded.front_end == PAPER
    assert json.loads((tmp_path / "m" / "corpus_stats.json").read_text()) == {"n_tracks": 2}
    x = torch.randn(2, 128, 130)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_segments(x), model.embed_segments(x))
    assert save_model(loaded, tmp_path / "again") == model_id  # same config and weights → same id


def test_load_model_rejects_weights_of_another_architecture(tmp_path):
    save_model(make_model(), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["embed_dim"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match"):
        load_model(tmp_path / "m")
