"""A model folder without torch: its config, its id, and the label branch in numpy.

A model folder holds ``config.json`` and ``weights.safetensors`` (see ``zstag.model.save_model``).
Everything `zstag tag` needs before it touches audio lives here and imports no torch: reading the
folder, the model id (the embedding-cache key), the label branch (word vectors → joint space) and the
cosine scores. A re-tag whose tracks are all in the embedding cache therefore never imports torch;
``zstag.model.load_model`` builds the torch model (audio branch) from the same bytes only when a file
must be embedded. The label branch is always computed here, also by ``ZeroShotModel``, so that cold and
warm runs give bit-identical scores: in float64, rounded to float32 once at the end.

Label branches (``config["label_projection"]["type"]``, weight names as in the torch modules):
``identity``; ``linear``: ``label_projection.weight`` [D, W], ``.bias`` [D]; ``mlp``: Linear–ReLU–Dropout
(a no-op at inference)–Linear, ``label_projection.0.*`` and ``label_projection.3.*``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from zstag.errors import UsageError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
DEFAULT_MODEL = "default"
LABEL_PREFIX = "label_projection."
MLP_LAYERS = ("0", "3")  # nn.Sequential(Linear, ReLU, Dropout, Linear): the two Linear layers


class ModelError(UsageError):
    """A model folder that is missing, incomplete or inconsistent (one-line message)."""


def model_id(config_bytes: bytes, weights_bytes: bytes) -> str:
    """The model's id: sha256 of the config and weights files' bytes (first 16 hex digits)."""
    return hashlib.sha256(config_bytes + b"\0" + weights_bytes).hexdigest()[:16]


def resolve_model_path(path_or_name: str | Path | None = None) -> Path:
    """A folder path, or the name of a folder in the project's ``models/`` (default: ``default``)."""
    from zstag.paths import models_dir

    name = path_or_name or DEFAULT_MODEL
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return candidate
    shipped = models_dir() / str(name)
    if shipped.is_dir():
        return shipped
    raise ModelError(f"{name}: no such model folder (expected {CONFIG_FILE} + {WEIGHTS_FILE})")


def label_projection_config(config: dict) -> dict:
    """The label branch of a config; ConSE compares word vectors directly (identity), the rest default to linear."""
    kind = config["audio_encoder"]["type"]
    label = config.get("label_projection", {"type": "identity" if kind == "conse" else "linear"})
    if not isinstance(label, dict):
        raise TypeError("label_projection is not a JSON object")
    return label


def label_layers(config: dict) -> list[str]:
    """The weight-name prefixes of the label branch's Linear layers, in order (none for identity)."""
    kind = label_projection_config(config).get("type", "linear")
    if kind == "identity":
        return []
    if kind == "linear":
        return [LABEL_PREFIX]
    if kind == "mlp":
        return [f"{LABEL_PREFIX}{layer}." for layer in MLP_LAYERS]
    raise ModelError(f"unknown projection type {kind!r}")


def project_labels(config: dict, weights: dict[str, np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """[n, word_dim] word vectors → [n, D] float32 joint-space label embeddings (not normalised)."""
    x = np.asarray(vectors, dtype=np.float64)
    for k, prefix in enumerate(label_layers(config)):
        if k:
            x = np.maximum(x, 0.0)  # the ReLU between the layers (the Dropout after it is a no-op here)
        w = np.asarray(weights[prefix + "weight"], dtype=np.float64)
        x = x @ w.T + np.asarray(weights[prefix + "bias"], dtype=np.float64)
    return x.astype(np.float32)


def label_embeddings(model, words, labels: list[str]) -> np.ndarray:
    """[M, D] float32 joint-space embeddings of labels for a model (a ModelFiles or a ZeroShotModel: the same
    numpy label branch); UnknownLabelError (one line) for labels without vectors.

    A label that denies something ("no vocals", "without drums": WordVectors.negated) and is not one of the
    model's training labels is embedded as the opposite of what it denies: its cosine with a track is minus
    that of "vocals". The mean of the word vectors of "no" and "vocals" lies near "vocals" itself and ranked
    the instrumental songs last (MODEL_CARD.md: held-out ROC-AUC 0.24-0.34 for MTAT's "no vocals", 0.77-0.80
    negated). What is denied is scored by the same rule, so "not not sad" is "sad".
    """
    emb = model.embed_label_vectors(words.vectors(labels))  # unknown labels stop here
    found = scored_as(model, words, labels)
    for j, label in enumerate(labels):  # every row: a label may be given twice
        if label in found:
            sign, what = found[label]
            emb[j] = sign * model.embed_label_vectors(words.vectors([what]))[0]
    from zstag import scoring

    if not scoring.is_calibrated(model.config):
        return emb
    # calibrated rows from what each label stands for; a denial is minus the standard score of what it denies
    signs = np.array([found.get(label, (1, label))[0] for label in labels], dtype=np.float64)
    what = [found.get(label, (1, label))[1] for label in labels]
    weights = scoring.teacher_weights(model.config, words, what)
    return scoring.calibrated_rows(model.config, signs[:, None] * emb, weights, signs)


def train_labels(config: dict) -> list[str]:
    """The config's training labels: the strings of its "train_labels" list. A config.json edited by hand (null,
    a string, numbers in the list) must not stop a run: what is not a label is none."""
    labels = config.get("train_labels")
    return [label for label in labels if isinstance(label, str)] if isinstance(labels, list) else []


def scored_as(model, words, labels: list[str]) -> dict[str, tuple[int, str]]:
    """label → (sign, what) for each label that label_embeddings scores as sign × another label ("no vocals"
    → (-1, "vocals")); labels scored as themselves are left out."""
    from zstag.labels import undenied
    from zstag.words import vocabulary_keys

    denying = [label for label in labels if words.negated(label) is not None]
    if not denying:
        return {}
    keys = set(vocabulary_keys(train_labels(model.config), words).values())

    def trained(label: str) -> bool:  # scored as trained, not undone: "no vocals" as a training label
        return vocabulary_keys([label], words)[label] in keys

    found = {label: undenied(label, words.negated, trained) for label in denying}
    return {label: (sign, what) for label, (sign, what) in found.items() if what != label}


def cosine_scores(track_emb: np.ndarray, label_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity, [N, D] × [M, D] → float32 [N, M] in [-1, 1]."""
    a = np.asarray(track_emb, dtype=np.float64)
    b = np.asarray(label_emb, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a @ b.T).astype(np.float32)


@dataclass
class ModelFiles:
    """A model folder as read from disk: config, raw bytes, id, and the label branch's weights."""

    folder: Path
    config: dict
    weights_bytes: bytes = field(repr=False)
    model_id: str
    label_weights: dict[str, np.ndarray] = field(repr=False)

    def embed_label_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """[n, word_dim] → float32 [n, D], exactly as ``ZeroShotModel.embed_label_vectors``."""
        return project_labels(self.config, self.label_weights, vectors)


def read_model(path_or_name: str | Path | None = None) -> ModelFiles:
    """Read a model folder (JSON + safetensors, no code executed, no torch); ModelError if it is unusable.

    Only the label branch is checked here; the audio branch is checked when torch builds it.
    """
    folder = resolve_model_path(path_or_name)
    try:
        config_bytes = (folder / CONFIG_FILE).read_bytes()
        weights_bytes = (folder / WEIGHTS_FILE).read_bytes()
        config = json.loads(config_bytes)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot read model: {exc}") from None
    try:
        if not isinstance(config, dict):
            raise TypeError(f"{CONFIG_FILE} is not a JSON object")
        label_weights = _label_weights(config, weights_bytes)
        _check_scores(config)
    except (ModelError, KeyError, TypeError, ValueError) as exc:
        raise damaged(folder, exc) from None
    return ModelFiles(folder, config, weights_bytes, model_id(config_bytes, weights_bytes), label_weights)


def damaged(folder: Path, exc: Exception) -> ModelError:
    """The one-line error for a model folder whose config and weights do not make a model."""
    if isinstance(exc, ModelError):
        return ModelError(f"{folder}: {exc}")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelError(f"{folder}: weights and config do not match (or are damaged): {first}")


def _check_scores(config: dict) -> None:
    """A calibrated model's score statistics and teacher words (zstag/scoring.py) are usable: ValueError if not."""
    from zstag import scoring

    if scoring.is_calibrated(config):
        scoring.joint_stats(config)
        words = config["scores"].get("teacher_words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"scores.teacher_words must be a list of words (got {words!r:.60})")


def _label_weights(config: dict, weights_bytes: bytes) -> dict[str, np.ndarray]:
    """The label branch's tensors, with their shapes checked against the config."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    layers = label_layers(config)
    try:
        tensors = load(weights_bytes)
    except SafetensorError as exc:
        raise ValueError(str(exc)) from None
    weights, dim = {}, int(config["word_dim"])
    for prefix in layers:
        w, b = tensors.get(prefix + "weight"), tensors.get(prefix + "bias")
        if w is None or b is None:
            raise ValueError(f"no {prefix}weight / {prefix}bias")
        if w.ndim != 2 or w.shape[1] != dim or b.shape != (w.shape[0],):
            raise ValueError(f"{prefix}weight {list(w.shape)} and bias {list(b.shape)} do not take {dim}-d inputs")
        weights[prefix + "weight"], weights[prefix + "bias"], dim = w, b, w.shape[0]
    if layers and dim != int(config.get("embed_dim", dim)):
        raise ValueError(f"the label branch gives {dim}-d embeddings, the config says {config['embed_dim']}")
    return weights
