"""Per-label score calibration against hub labels: measured by recipes/build_default_model.py's dev protocol;
zstag's own scores do not use it.

A few labels ("classical", "jazz") lie close to the common direction of all track embeddings and so win the
argmax for nearly every track (hubness). This standardises each label's cosine by how that label scores the
model's own training tracks:

    z(a, l) = (cos(a, l) - mu_l) / sigma_l,    mu_l = l̂ · m,    sigma_l² = l̂ᵀ C l̂

where l̂ is the label embedding scaled to unit length, and m and C are the mean vector and covariance matrix
(ddof 0) of the model's unit-length training track embeddings: mu_l and sigma_l are exactly the mean and
standard deviation of cos(x, l) over the training tracks x. Per label the map is increasing and affine, so
ranking tracks for one label (retrieval ROC-AUC) is unchanged; it changes the ranking of labels for one track.
The dev protocol measured it (models/default/EXPERIMENTS.md: "Score calibration, measured, not adopted").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from zstag.errors import ZstagError

MODES = ("z", "center")  # z: (cos - mu) / sigma; center: cos - mu only
MIN_SIGMA = 1e-6  # a label whose training cosines do not vary at all is left unscaled beyond this


class CalibrationError(ZstagError, ValueError):
    """A calibration file that cannot be used (malformed, or for another embedding size)."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Calibration:
    mean: np.ndarray  # [D] mean of the unit-length reference track embeddings
    cov: np.ndarray  # [D, D] their covariance (ddof 0)
    n_tracks: int
    mode: str = "z"

    def __post_init__(self):
        mean = np.asarray(self.mean, dtype=np.float64)
        cov = np.asarray(self.cov, dtype=np.float64)
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
            raise CalibrationError(f"mean {mean.shape} and covariance {cov.shape} do not match")
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise CalibrationError("non-finite values")
        if self.mode not in MODES:
            raise CalibrationError(f"unknown mode {self.mode!r} (choose from {', '.join(MODES)})")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def label_stats(self, label_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu [M], sigma [M]): mean and standard deviation of each label's cosine over the reference tracks."""
        labels = _unit(np.atleast_2d(label_embeddings))
        if labels.shape[1] != self.dim:
            raise CalibrationError(f"label embeddings have {labels.shape[1]} dimensions, the calibration {self.dim}")
        mu = labels @ self.mean
        var = np.einsum("md,de,me->m", labels, self.cov, labels)
        return mu, np.sqrt(np.maximum(var, MIN_SIGMA**2))

    def apply(self, cosines: np.ndarray, label_embeddings: np.ndarray) -> np.ndarray:
        """Calibrated scores [N, M] from cosines [N, M] (or [M]) and the M labels' joint-space embeddings [M, D]."""
        cosines = np.asarray(cosines, dtype=np.float64)
        mu, sigma = self.label_stats(label_embeddings)
        if cosines.shape[-1] != len(mu):
            raise CalibrationError(f"{cosines.shape[-1]} score columns for {len(mu)} labels")
        if self.mode == "center":
            return cosines - mu
        return (cosines - mu) / sigma

    def with_mode(self, mode: str) -> "Calibration":
        return Calibration(self.mean, self.cov, self.n_tracks, mode)


def fit(track_embeddings: np.ndarray, mode: str = "z") -> Calibration:
    """The calibration of a model from its reference (training) track embeddings [N, D] (any scale)."""
    tracks = _unit(np.atleast_2d(track_embeddings))
    if len(tracks) < 2:
        raise CalibrationError("at least two reference tracks are needed")
    mean = tracks.mean(axis=0)
    centred = tracks - mean
    cov = centred.T @ centred / len(tracks)
    return Calibration(mean, (cov + cov.T) / 2, len(tracks), mode)
