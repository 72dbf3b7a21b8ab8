"""zstag/calibration.py: per-label standardisation of cosine scores (measured by the dev protocol of
recipes/build_default_model.py)."""

from __future__ import annotations


import numpy as np
import pytest

from zstag import calibration
from zstag.calibration import Calibration, CalibrationError


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    hub = rng.normal(size=8)
    return rng.normal(size=(200, 8)) * 0.5 + 3 * hub  # a shared direction, as in real embeddings: hubness


def test_mu_and_sigma_are_the_label_cosine_statistics_over_the_reference(reference):
    cal = calibration.fit(reference)
    labels = np.random.default_rng(1).normal(size=(5, 8)) * 7.0  # any scale
    cos = _unit(reference) @ _unit(labels).T
    mu, sigma = cal.label_stats(labels)
    assert np.allclose(mu, cos.mean(axis=0))
    assert np.allclose(sigma, cos.std(axis=0))
    z = cal.apply(cos, labels)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-9) and np.allclose(z.std(axis=0), 1)
    assert np.allclose(cal.with_mode("center").apply(cos, labels), cos - mu)


def test_a_score_does_not_depend_on_the_other_labels_or_tracks(reference):
    cal = calibration.fit(reference)
    rng = np.random.default_rng(2)
    tracks, labels = rng.normal(size=(4, 8)), rng.normal(size=(6, 8))
    cos = _unit(tracks) @ _unit(labels).T
    full = cal.apply(cos, labels)
    assert np.array_equal(cal.apply(cos[:, [4, 1]], labels[[4, 1]]), full[:, [4, 1]])
    assert np.array_equal(cal.apply(cos[2], labels), full[2])
    assert np.array_equal(cal.apply(cos, labels), full)  # deterministic


def test_it_removes_a_hub_label_from_the_argmax():
    # e0 is the direction every track shares: it has the highest cosine with every track, yet no track is
    # unusual for it; each track is unusual for its own label e_k
    rng = np.random.default_rng(3)
    eye = np.eye(8)
    cal = calibration.fit(3 * eye[0] + rng.normal(scale=0.5, size=(500, 8)))
    labels = eye[:6]
    tracks = 3 * eye[0] + 1.5 * eye[1:6]
    cos = _unit(tracks) @ _unit(labels).T
    assert (cos.argmax(axis=1) == 0).all()
    assert (cal.apply(cos, labels).argmax(axis=1) == np.arange(1, 6)).all()


def test_mismatched_sizes_are_errors(reference):
    cal = calibration.fit(reference)
    with pytest.raises(CalibrationError, match="dimensions"):
        cal.apply(np.zeros((1, 2)), np.ones((2, 5)))
    with pytest.raises(CalibrationError, match="columns"):
        cal.apply(np.zeros((1, 3)), np.ones((2, 8)))
    with pytest.raises(CalibrationError, match="mode"):
        Calibration(cal.mean, cal.cov, 1, mode="softmax")
    with pytest.raises(CalibrationError, match="two"):
        calibration.fit(np.ones((1, 8)))


def test_a_constant_label_is_not_divided_by_zero():
    reference = np.tile([1.0, 0.0, 0.0], (10, 1))  # every track the same: sigma 0 for every label
    z = calibration.fit(reference).apply(np.array([[0.5, 1.0]]), np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert np.isfinite(z).all()
