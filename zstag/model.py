"""The joint audio–word embedding of Choi et al. (ISMIR 2019), and its variants.

A model maps audio segments and label word vectors into one space and scores a (track, label) pair
by cosine similarity. Three audio branches share that interface (``config["audio_encoder"]["type"]``):

- ``cnn1d``: the paper's 1-D CNN over time with mel bands as channels, trained from scratch;
- ``musicnn``: frozen musicnn backbones (MSD / MTT) whose per-patch features are averaged over the
  track, then a small trained projection;
- ``conse``: training-free ConSE (Norouzi et al. 2014): the track is the probability-weighted average of
  the word vectors of its top teacher tags, compared to the label's word vector directly.

A track embedding is always ``project(mean over all segments of segment_features(segment))``; for
``cnn1d`` the projection is the identity, so it is the mean of the segment embeddings, as in the paper.
"""

from __future__ import annotations

import copy
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from zstag import modelfile
from zstag.audio import FrontEnd
from zstag.modelfile import CONFIG_FILE, WEIGHTS_FILE, ModelError, ModelFiles
from zstag.paths import atomic_write

MARGIN = 0.4  # the paper's hinge margin
EMBED_DIM = 100  # the paper's joint-space size
CNN1D_CHANNELS = 128
TRACK_BATCH = 16  # segments per forward pass over a track: bounds memory (musicnn maps are large)

# "same" padding with the paper's even kernels costs one padded copy per conv; a known, harmless cost.
warnings.filterwarnings("ignore", message="Using padding='same' with even kernel lengths", category=UserWarning)


class CNN1D(nn.Module):
    """The paper's audio branch: 4 conv/pool blocks, a linear 1×1 conv, global average pooling.

    Convolutions pad "same" so a 130-frame segment survives the 4·4·4·2 = 128× pooling.
    With 128 mels and 100-d output it has 242,788 parameters.
    """

    def __init__(self, n_mels: int, embed_dim: int = EMBED_DIM, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels = n_mels
        for kernel, pool in ((4, 4), (4, 4), (4, 4), (2, 2)):
            layers.append(nn.Conv1d(channels, CNN1D_CHANNELS, kernel, padding="same"))
            if batch_norm:
                layers.append(nn.BatchNorm1d(CNN1D_CHANNELS))
            layers += [nn.ReLU(), nn.MaxPool1d(pool, ceil_mode=True)]
            channels = CNN1D_CHANNELS
        layers.append(nn.Conv1d(channels, embed_dim, 1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")  # He-uniform, as the paper
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, n_mels, T] → [B, embed_dim]
        return self.layers(x).mean(dim=-1)


class MusicnnFeatures(nn.Module):
    """Frozen musicnn backbones; per patch, the chosen outputs of each backbone concatenated."""

    def __init__(self, backbones: list[str], outputs: list[str]):
        super().__init__()
        from zstag.backbones.musicnn import load_musicnn

        self.backbone_names = list(backbones)
        self.outputs = list(outputs)
        # Kept out of the state dict: the weights ship once in models/musicnn/, not in every model. Copies
        # of the cached backbones (3 MB each): .to(device) on this model must not move other models' ones.
        self._backbones = [copy.deepcopy(load_musicnn(name)).eval() for name in backbones]
        for net in self._backbones:
            net.requires_grad_(False)

    def _apply(self, fn, *args, **kwargs):
        # .to(device) and friends reach modules kept out of the state dict only through here.
        for net in self._backbones:
            net._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for net in self._backbones:
            out = net(x)
            parts += [out[name] for name in self.outputs]
        return torch.cat(parts, dim=-1)


class ConseHead(nn.Module):
    """ConSE: the probability-weighted mean of the word vectors of the top-T teacher tags."""

    def __init__(self, n_tags: int, word_dim: int, top_t: int = 10):
        super().__init__()
        self.top_t = top_t
        self.register_buffer("tag_vectors", torch.zeros(n_tags, word_dim))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        top = probs.topk(min(self.top_t, probs.shape[-1]), dim=-1)
        weights = top.values / top.values.sum(dim=-1, keepdim=True).clamp_min(1e-8)
        return (weights.unsqueeze(-1) * self.tag_vectors[top.indices]).sum(dim=-2)


class TeacherHead(nn.Module):
    """The audio projection of a calibrated model (zstag/scoring.py): pooled backbone features →
    [joint embedding (D) | teacher words' values standardised over the reference library (K)].

    config (``audio_projection``): ``joint_columns`` [start, stop] of the features the trained map reads,
    ``tag_columns`` {backbone: [start, stop]} of each tagger's logits, ``tag_words`` {backbone: [word per tag]};
    a word's value is the max logit over its tags, then the mean over the backbones that have it.
    """

    def __init__(self, config: dict, teacher_words: list[str], out_dim: int):
        super().__init__()
        start, stop = (int(x) for x in config["joint_columns"])
        self.joint_columns = (start, stop)
        self.joint = build_head({"type": config.get("joint", "linear")}, stop - start, out_dim)
        index = {w: j for j, w in enumerate(teacher_words)}
        self.blocks = []
        counts = torch.zeros(len(teacher_words))
        for name, (a, b) in sorted(config["tag_columns"].items()):
            tags = config["tag_words"][name]
            if len(tags) != int(b) - int(a):
                raise ModelError(f"{name}: {len(tags)} tag words for {int(b) - int(a)} columns")
            # one-hot [n_tags, K]: the max over a word's tags is taken as a masked max below
            member = torch.zeros(len(tags), len(teacher_words), dtype=torch.bool)
            for t, word in enumerate(tags):
                member[t, index[word]] = True
            counts += member.any(dim=0).float()
            self.blocks.append((int(a), int(b), member))
        if (counts == 0).any():
            raise ModelError("a teacher word has no tag")
        self.register_buffer("counts", counts)
        self.register_buffer("mu", torch.zeros(len(teacher_words)))
        self.register_buffer("sigma", torch.ones(len(teacher_words)))

    def word_values(self, features: torch.Tensor) -> torch.Tensor:
        """[N, F] → [N, K] raw teacher-word values (before standardisation)."""
        total = torch.zeros(features.shape[0], len(self.mu), dtype=features.dtype, device=features.device)
        for a, b, member in self.blocks:
            member = member.to(features.device)
            logits = features[:, a:b].unsqueeze(-1).expand(-1, -1, member.shape[1])
            best = logits.masked_fill(~member, float("-inf")).amax(dim=1)
            total = total + torch.where(member.any(dim=0), best, torch.zeros_like(best))
        return total / self.counts

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        a, b = self.joint_columns
        teacher = (self.word_values(features) - self.mu) / self.sigma
        return torch.cat([self.joint(features[:, a:b]), teacher], dim=-1)


def build_head(config: dict, in_dim: int, out_dim: int) -> nn.Module:
    kind = config.get("type", "linear")
    if kind == "identity":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = int(config.get("hidden", 256))
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(float(config.get("dropout", 0.0))), nn.Linear(hidden, out_dim)
        )
    raise ModelError(f"unknown projection type {kind!r}")


class ZeroShotModel(nn.Module):
    """Audio and label branches into one joint space; cosine scores. Built from a JSON config.

    config keys: ``front_end`` (FrontEnd.to_dict()), ``embed_dim``, ``word_dim``, ``words`` (word-vector
    source), ``audio_encoder`` ({type: cnn1d|musicnn|conse, ...}), ``audio_projection`` and
    ``label_projection`` ({type: identity|linear|mlp}), and bookkeeping that travels with the model:
    ``train_labels`` (the training label vocabulary), ``split_sha256``, ``name``.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.front_end = FrontEnd.from_dict(config["front_end"])
        self.model_id = config.get("model_id", "untrained")
        embed_dim = int(config.get("embed_dim", EMBED_DIM))
        word_dim = int(config["word_dim"])
        audio = config["audio_encoder"]
        kind = audio["type"]
        if kind == "cnn1d":
            self.segment_encoder: nn.Module = CNN1D(
                self.front_end.n_mels, embed_dim, batch_norm=bool(audio.get("batch_norm", False))
            )
            self.audio_projection: nn.Module = nn.Identity()
        elif kind == "musicnn":
            self.segment_encoder = MusicnnFeatures(audio["backbones"], audio.get("outputs", ["penultimate"]))
            proj = config.get("audio_projection", {"type": "linear"})
            if proj.get("type") == "teacher":
                teacher = list(config["scores"]["teacher_words"])
                self.audio_projection = TeacherHead(proj, teacher, embed_dim)
            else:
                self.audio_projection = build_head(proj, int(audio["feature_dim"]), embed_dim)
        elif kind == "conse":
            self.segment_encoder = MusicnnFeatures(audio["backbones"], ["taggram"])
            self.audio_projection = ConseHead(int(audio["feature_dim"]), word_dim, int(audio.get("top_t", 10)))
        else:
            raise ModelError(f"unknown audio encoder type {kind!r}")
        self.label_projection = build_head(modelfile.label_projection_config(config), word_dim, embed_dim)

    @property
    def train_labels(self) -> list[str]:
        return modelfile.train_labels(self.config)

    def segment_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T] log-mel segments → [B, F] features before the audio projection."""
        return self.segment_encoder(x)

    def embed_segments(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T] → [B, D] joint-space embeddings (not normalised)."""
        return self.audio_projection(self.segment_features(x))

    def embed_labels(self, vectors: torch.Tensor) -> torch.Tensor:
        """[n, word_dim] word vectors → [n, D] joint-space embeddings (not normalised)."""
        return self.label_projection(vectors)

    @property
    def device(self) -> torch.device:
        """Where the weights are: inputs go there, outputs come back to the CPU as numpy."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):  # ConSE has buffers only
            return tensor.device
        return torch.device("cpu")

    @torch.no_grad()
    def segment_sum(self, segments: np.ndarray) -> torch.Tensor:
        """float64 [F] on the CPU: the sum of the features of up to TRACK_BATCH segments, one forward pass.
        A track's chunks (track_chunks) may run on different threads: mean_of_sums combines them."""
        batch = torch.from_numpy(np.ascontiguousarray(segments, dtype=np.float32))
        return self.segment_features(batch.to(self.device)).double().sum(dim=0).cpu()

    @staticmethod
    def mean_of_sums(sums: list[torch.Tensor], n_segments: int) -> np.ndarray:
        """[F] float32: the mean over a track's segments from its chunks' segment_sum, added in chunk
        order (so the same numbers, whichever threads computed them)."""
        if not sums:
            raise ValueError("a track needs at least one segment")
        total = sums[0]
        for part in sums[1:]:
            total = total + part
        return (total / n_segments).float().numpy()

    @torch.no_grad()
    def embed_track(self, segments: np.ndarray) -> np.ndarray:
        """[n_seg, n_mels, T] → [D]: the whole track in the joint space (deterministic, no crop)."""
        return self.embed_sums([self.segment_sum(chunk) for chunk in track_chunks(segments)], len(segments))

    def embed_sums(self, sums: list[torch.Tensor], n_segments: int) -> np.ndarray:
        """[D]: a track in the joint space from its forward passes' segment_sum (computed on any threads)."""
        return self.project_features(self.mean_of_sums(sums, n_segments)[None])[0]

    @torch.no_grad()
    def project_features(self, features: np.ndarray) -> np.ndarray:
        """[N, F] pooled track features → [N, D] joint-space track embeddings."""
        features = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.device)
        return self.audio_projection(features).cpu().numpy()

    def embed_label_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """[n, word_dim] word vectors → float32 [n, D], in numpy (``modelfile.project_labels``): the same
        numbers whether or not torch is loaded (``zstag tag`` on cached tracks never loads it)."""
        weights = {modelfile.LABEL_PREFIX + name: value.detach().cpu().numpy()
                   for name, value in self.label_projection.state_dict().items()}
        return modelfile.project_labels(self.config, weights, vectors)

    def scores(self, track_emb: np.ndarray, label_emb: np.ndarray) -> np.ndarray:
        """[N, M] scores of track and label embeddings (label_embeddings'): cosine, or calibrated (scoring.py)."""
        from zstag.scoring import scores

        return scores(self.config, track_emb, label_emb)


def track_chunks(segments: np.ndarray) -> list[np.ndarray]:
    """A track's segments in forward passes of TRACK_BATCH (the last one shorter)."""
    return [segments[start : start + TRACK_BATCH] for start in range(0, len(segments), TRACK_BATCH)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def triplet_hinge_loss(
    audio: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, margin: float = MARGIN
) -> torch.Tensor:
    """Mean of max(0, margin − s(a, t⁺) + s(a, t⁻)) over the batch and its k negatives.

    audio, positive: [B, D]; negatives: [B, k, D] (or [B, D] for k = 1); s is cosine similarity.
    """
    if negatives.dim() == 2:
        negatives = negatives.unsqueeze(1)
    pos = cosine(audio, positive).unsqueeze(1)  # [B, 1]
    neg = cosine(audio.unsqueeze(1), negatives)  # [B, k]
    return F.relu(margin - pos + neg).mean()


def _trainable_state(model: ZeroShotModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(model: ZeroShotModel, folder: str | Path, extra_files: dict[str, dict] | None = None) -> str:
    """Write ``config.json`` + ``weights.safetensors`` (+ extra JSON files) into folder; returns the model id.

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written model.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.config.items() if k != "model_id"}
    config_bytes = json.dumps(config, indent=2, sort_keys=True).encode()
    weights_bytes = save(_trainable_state(model))
    for name, payload in (extra_files or {}).items():
        atomic_write(folder / name, json.dumps(payload, indent=2, sort_keys=True).encode())
    atomic_write(folder / WEIGHTS_FILE, weights_bytes)
    atomic_write(folder / CONFIG_FILE, config_bytes)
    model.model_id = model.config["model_id"] = modelfile.model_id(config_bytes, weights_bytes)
    return model.model_id


def load_model(path_or_name: str | Path | None = None, files: ModelFiles | None = None) -> ZeroShotModel:
    """Load a model folder without executing code (JSON + safetensors). Eval mode.

    files: the folder already read by ``modelfile.read_model`` (its bytes are not read again).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    files = files or modelfile.read_model(path_or_name)
    try:
        model = ZeroShotModel(dict(files.config))
        model.load_state_dict(load(files.weights_bytes), strict=True)
    except (ModelError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        raise modelfile.damaged(files.folder, exc) from None
    model.model_id = model.config["model_id"] = files.model_id
    model.folder = files.folder
    return model.eval()


def read_model_file(model: ZeroShotModel, name: str) -> dict | None:
    """An extra JSON file saved beside the model (e.g. training-corpus statistics), or None."""
    folder = getattr(model, "folder", None)
    if folder is None or not (Path(folder) / name).is_file():
        return None
    return json.loads((Path(folder) / name).read_text())


def cnn1d_config(
    front_end: FrontEnd,
    word_dim: int,
    words: str,
    embed_dim: int = EMBED_DIM,
    batch_norm: bool = False,
    train_labels: list[str] | tuple[str, ...] = (),
) -> dict:
    """The config of the paper's model (CNN1D audio branch, linear label branch)."""
    return {
        "name": "cnn1d",
        "front_end": front_end.to_dict(),
        "embed_dim": embed_dim,
        "word_dim": word_dim,
        "words": words,
        "audio_encoder": {"type": "cnn1d", "batch_norm": batch_norm},
        "audio_projection": {"type": "identity"},
        "label_projection": {"type": "linear"},
        "train_labels": list(train_labels),
    }
