"""Scores of (track, label) pairs, in numpy: the cosine, or the calibrated teacher + projection score.

Most models score by the cosine of the track and label embeddings. A model whose config has
``"scores": {"type": "calibrated", ...}`` (the default model) scores by two paths, each standardised against a
reference library of music (the recipe's training tracks), then combined:

- **P**, the joint space: the cosine of the trained projections, as a z-score over the reference tracks;
- **T**, the teachers: the musicnn taggers name ~80 label words themselves (zstag/teacher.py). The track side
  of the embedding holds each teacher word's value standardised over the reference library (the raw taggers
  favour "rock" or "piano" for most music); a label reaches those words through its word vector: a label that
  *is* a teacher word (or one of its tag spellings: "singing" → vocals) takes that word, any other label the
  ``k_nearest`` teacher words nearest its word vector, weighted by cosine.

The score is the z-score of P/σ_P + T/σ_T against the reference library (the exact mean and standard deviation,
from the reference's mean and covariance of [unit joint embedding, teacher values]), mapped through the normal
CDF: a value in (0, 1), about the share of reference music that scores lower, comparable across labels, so one
``--threshold`` means the same for every label. Both sides fold into one linear form: a track is
``[unit(p), t, 1]`` and a label row ``[u / s, -u·m / s]``, so the score is one dot product per pair.
"""

from __future__ import annotations

import numpy as np

CALIBRATED = "calibrated"
MEAN_KEY = "calibration.mean"  # [D + K]: reference mean of [unit joint embedding, teacher values]
COV_KEY = "calibration.cov"  # [D + K, D + K]: their covariance (ddof 0)
MIN_VAR = 1e-12


CALIBRATED_NOTE = ("score: calibrated, 0..1: about the share of the reference music that scores lower for the label "
                   "(the same scale for every label; not a probability)")


def note(config: dict, cosine_note: str) -> str:
    """What a score means, for json output."""
    return CALIBRATED_NOTE if is_calibrated(config) else cosine_note


def is_calibrated(config: dict) -> bool:
    scores = config.get("scores")
    return isinstance(scores, dict) and scores.get("type") == CALIBRATED


def joint_dim(config: dict) -> int:
    return int(config.get("embed_dim", 100))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Φ(z) in numpy (Abramowitz & Stegun 7.1.26 for erfc, |error| < 1.5e-7): no scipy on the warm path."""
    x = np.abs(np.asarray(z, dtype=np.float64)) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half_tail = 0.5 * poly * np.exp(-x * x)
    return np.where(np.asarray(z) >= 0, 1.0 - half_tail, half_tail)


def teacher_spellings(config: dict) -> dict[str, str]:
    """Normalised tag spelling or word → teacher word, from the config's own tag lists."""
    from zstag.teacher import TAG_WORDS
    from zstag.words import normalise_label

    words = set(config["scores"]["teacher_words"])
    table = {w: w for w in words}
    for mapping in TAG_WORDS.values():
        for tag, word in mapping.items():
            if word in words:
                table.setdefault(normalise_label(tag), word)
    return table


def teacher_weights(config: dict, words, labels: list[str]) -> np.ndarray:
    """[M, K]: each label's weights over the teacher words (rows sum to 1)."""
    from zstag.words import normalise_label

    spec = config["scores"]
    teacher = list(spec["teacher_words"])
    k = int(spec.get("k_nearest", 3))
    table = teacher_spellings(config)
    index = {w: j for j, w in enumerate(teacher)}
    sims = _unit(np.asarray(words.vectors(labels), np.float64)) @ _unit(np.asarray(words.vectors(teacher), np.float64)).T
    out = np.zeros((len(labels), len(teacher)))
    for m, label in enumerate(labels):
        exact = table.get(normalise_label(label))
        if exact is not None:
            out[m, index[exact]] = 1.0
            continue
        top = np.argsort(-sims[m], kind="stable")[:k]
        w = np.clip(sims[m, top], 0.0, None)
        out[m, top] = w / w.sum() if w.sum() > 0 else 1.0 / len(top)
    return out


def calibrated_rows(config: dict, tensors: dict[str, np.ndarray], joint: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[M, D + K + 1] float32 label rows from the labels' joint embeddings [M, D] and teacher weights [M, K]."""
    mean = np.asarray(tensors[MEAN_KEY], np.float64)
    cov = np.asarray(tensors[COV_KEY], np.float64)
    d = joint_dim(config)
    p_part = np.concatenate([_unit(np.asarray(joint, np.float64)), np.zeros_like(weights)], axis=1)
    t_part = np.concatenate([np.zeros((len(weights), d)), weights], axis=1)

    def scaled(u):
        var = np.einsum("md,de,me->m", u, cov, u)
        return u / np.sqrt(np.maximum(var, MIN_VAR))[:, None]

    u = scaled(p_part) + scaled(t_part)
    s = np.sqrt(np.maximum(np.einsum("md,de,me->m", u, cov, u), MIN_VAR))
    rows = np.concatenate([u, -(u @ mean)[:, None]], axis=1) / s[:, None]
    return rows.astype(np.float32)


def scores(config: dict, track_emb: np.ndarray, label_emb: np.ndarray) -> np.ndarray:
    """float32 [N, M]: the model's scores of N track embeddings against M label embeddings (label_embeddings')."""
    if not is_calibrated(config):
        from zstag.modelfile import cosine_scores

        return cosine_scores(track_emb, label_emb)
    d = joint_dim(config)
    tracks = np.asarray(track_emb, np.float64)
    x = np.concatenate([_unit(tracks[:, :d]), tracks[:, d:], np.ones((len(tracks), 1))], axis=1)
    return normal_cdf(x @ np.asarray(label_emb, np.float64).T).astype(np.float32)


def similarity(config: dict, track_emb: np.ndarray, query_emb: np.ndarray) -> np.ndarray:
    """float32 [N, M]: track-to-track similarity (``zstag similar``): the cosine of the joint-space parts."""
    from zstag.modelfile import cosine_scores

    d = joint_dim(config) if is_calibrated(config) else None
    return cosine_scores(np.asarray(track_emb)[:, :d], np.asarray(query_emb)[:, :d])
