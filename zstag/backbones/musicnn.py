"""musicnn (Pons & Serra, 2019) in torch: the pre-trained MSD and MTT auto-taggers, eval mode only.

A faithful port of musicnn/models.py ``build_musicnn`` (PyPI musicnn==0.1.0, ISC licence); its TF1
checkpoints are converted to models/musicnn/<name>.safetensors by recipes/convert_musicnn.py, and
tests/test_musicnn.py checks this module against outputs of the original TensorFlow graph.

Input: log-mel patches [B, 96, T] (mel bands first, as zstag.audio.log_mel returns them), computed
with the musicnn front end (16 kHz, n_fft 512, hop 256, 96 mels, power, log10(1 + 10000·x)); the
models were trained on T = 187 (3 s) but, being fully convolutional with global pooling, take any T.

Shape notes (the TF graph works on NHWC maps of [B, T, 96, 1]; here time is the conv "height"):
- front end: 2 timbral convs (7 × 38 and 7 × 67 over time × mel, 204 filters, time padded 3 + 3) and
  3 temporal convs (128/64/32 × 1, 51 filters, TF "same" padding: the extra zero goes at the end),
  each conv → ReLU → batch norm → max over mel, concatenated to 561 channels;
- mid end: 3 conv layers of 64 filters over 7 frames (each ReLU → batch norm), the last two residual;
  front- and mid-end maps concatenated to 753 channels;
- back end: max and mean over time, interleaved [max₀, mean₀, max₁, …] (TF's flatten of [753, 2]),
  batch norm, dense 200 + ReLU + batch norm (the "penultimate" features), dense 50 → sigmoid.
Batch norms use TF's epsilon 0.001.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from zstag import paths
from zstag.errors import ZstagError

MODEL_NAMES = ("MSD_musicnn", "MTT_musicnn")
N_MELS = 96
PATCH_FRAMES = 187  # 3 s at 16 kHz / hop 256: what the models were trained on
TIMBRAL_FILTERS = 204  # int(1.6 · 128)
TEMPORAL_FILTERS = 51  # int(1.6 · 32)
TIMBRAL_WIDTHS = (0.4, 0.7)  # fractions of the mel axis: 38 and 67 bands
TEMPORAL_LENGTHS = (128, 64, 32)
MIDEND_FILTERS = 64
BACKEND_UNITS = 200
N_TAGS = 50
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization default
METADATA_KEY = "musicnn"  # the safetensors metadata entry holding JSON {name, tags, source, license}
PAD = 3  # (7 - 1) / 2 frames of zeros each side of the 7-frame convs, as models.py does by hand


class MusicnnError(ZstagError):
    """Missing or broken musicnn weights (one-line message)."""


def models_dir() -> Path:
    """models/musicnn: where recipes/convert_musicnn.py puts the weights."""
    return paths.models_dir() / "musicnn"


class FrontEndBlock(nn.Module):
    """conv → ReLU → batch norm → max over the mel axis; [B, 1, T, M] → [B, filters, T]."""

    def __init__(self, filters: int, kernel: tuple[int, int], pad: tuple[int, int]):
        super().__init__()
        self.pad = pad  # zeros before / after in time
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = nn.BatchNorm1d(filters, eps=BN_EPS)  # applied after the max, see forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU and an eval-mode batch norm are monotone per channel (decreasing where gamma < 0), so
        # max_mel BN(relu(z)) = BN(relu(s · max_mel(s · z))) with s = sign(gamma): the same numbers,
        # but ReLU and batch norm run on [B, C, T] instead of the 59× larger [B, C, T, M] map.
        sign = torch.where(self.bn.weight < 0, -1.0, 1.0).to(x.dtype)
        z = _conv_max_over_mel(F.pad(x[:, 0], (0, 0, *self.pad)), self.conv.weight * sign[:, None, None, None])
        return self.bn(F.relu(sign[:, None] * (z + (self.conv.bias * sign)[:, None])))


def _conv_max_over_mel(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """max over mel positions of conv2d(x, weight) without bias: x [B, T + kt - 1, M] (time padded),
    weight [C, 1, kt, km] → [B, C, T].

    One matrix product per patch over its unfolded windows (im2col): with a single input channel,
    mkldnn's direct convolution runs at ~1/2 of the CPU's peak for the timbral kernels and ~1/5 for the
    temporal ones, a GEMM at nearly all of it, so musicnn takes half the time. Windows are copied with
    their longer kernel axis contiguous (time-major input for the wide timbral kernels, mel-major for
    the temporal ones); rows go mel position first, so the max is a reduction over the outer axis. The
    bias is the caller's to add after the max: adding a constant commutes with max, in float rounding too.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):  # out= records no gradients
        return F.conv2d(x[:, None], weight).amax(dim=-1)
    filters, _, kt, km = weight.shape
    batch, _, mels = x.shape
    frames, positions = x.shape[1] - kt + 1, mels - km + 1
    if km > kt:  # [B, M', T, kt, km]
        windows = x.unfold(1, kt, 1).unfold(2, km, 1).transpose(1, 2)
        matrix = weight.reshape(filters, kt * km).t()
    else:  # [B, M', T, km, kt]
        windows = x.transpose(1, 2).unfold(1, km, 1).unfold(2, kt, 1)
        matrix = weight.transpose(2, 3).reshape(filters, kt * km).t()
    columns = x.new_empty(windows.shape[1:])  # reused for every patch: one allocation, no page faults
    products = x.new_empty(positions * frames, filters)
    out = x.new_empty(batch, frames, filters)
    for i in range(batch):
        columns.copy_(windows[i])
        torch.mm(columns.view(positions * frames, kt * km), matrix, out=products)
        torch.amax(products.view(positions, frames, filters), dim=0, out=out[i])
    return out.transpose(1, 2)


class MidEndBlock(nn.Module):
    """7-frame conv over all channels → ReLU → batch norm; [B, C, T] → [B, 64, T]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, MIDEND_FILTERS, 2 * PAD + 1, padding=PAD)
        self.bn = nn.BatchNorm1d(MIDEND_FILTERS, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and not torch.is_grad_enabled():
            # cuDNN's deterministic algorithms run this conv as tiled FFTs, ~100× slower than a GEMM;
            # cuBLAS GEMMs are deterministic as they are.
            return self.bn(F.relu(_conv1d_as_gemm(x, self.conv.weight, self.conv.bias, PAD)))
        return self.bn(F.relu(self.conv(x)))


def _conv1d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pad: int) -> torch.Tensor:
    """conv1d with stride 1 and `pad` zeros on each side as one matrix product over unfolded windows:
    x [B, C, T], weight [F, C, k] → [B, F, T + 2·pad − k + 1]."""
    filters, channels, k = weight.shape
    windows = F.pad(x, (pad, pad)).unfold(2, k, 1)  # [B, C, T', k]
    columns = windows.permute(0, 2, 1, 3).reshape(-1, channels * k)  # [B·T', C·k], rows as weight's
    out = torch.addmm(bias, columns, weight.reshape(filters, channels * k).t())  # [B·T', F]
    return out.view(x.shape[0], -1, filters).transpose(1, 2)


def tf_same_padding(kernel: int) -> tuple[int, int]:
    """TF "same" padding for stride 1: kernel − 1 zeros, the odd one at the end."""
    return (kernel - 1) // 2, kernel // 2


class MusiCNN(nn.Module):
    """musicnn in eval mode. forward([B, 96, T]) → dict of tensors (see forward)."""

    def __init__(self, tags: list[str] | None = None, name: str = "musicnn"):
        super().__init__()
        self.name = name
        self.tags = list(tags) if tags is not None else [f"tag{i}" for i in range(N_TAGS)]
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral = nn.ModuleList(
            FrontEndBlock(TIMBRAL_FILTERS, (2 * PAD + 1, int(w * N_MELS)), (PAD, PAD)) for w in TIMBRAL_WIDTHS
        )
        self.temporal = nn.ModuleList(
            FrontEndBlock(TEMPORAL_FILTERS, (k, 1), tf_same_padding(k)) for k in TEMPORAL_LENGTHS
        )
        front_channels = len(TIMBRAL_WIDTHS) * TIMBRAL_FILTERS + len(TEMPORAL_LENGTHS) * TEMPORAL_FILTERS  # 561
        self.midend = nn.ModuleList(MidEndBlock(c) for c in (front_channels, MIDEND_FILTERS, MIDEND_FILTERS))
        self.feature_channels = front_channels + 3 * MIDEND_FILTERS  # 753
        self.pool_bn = nn.BatchNorm1d(2 * self.feature_channels, eps=BN_EPS)
        self.dense = nn.Linear(2 * self.feature_channels, BACKEND_UNITS)
        self.dense_bn = nn.BatchNorm1d(BACKEND_UNITS, eps=BN_EPS)
        self.logits = nn.Linear(BACKEND_UNITS, len(self.tags))
        self.eval()

    def train(self, mode: bool = True) -> "MusiCNN":
        # A port of the frozen, pre-trained net: batch norms always use the checkpoint's statistics
        # (FrontEndBlock's max-first shortcut is only exact then), even inside a model set to train.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: [B, 96, T] log-mel patches. Returns, per patch:

        taggram [B, 50] (sigmoid), logits [B, 50], penultimate [B, 200], max_pool and mean_pool
        [B, 753] (temporal max / mean of the front- and mid-end maps, musicnn's "max_pool"/"mean_pool").
        """
        if x.dim() != 3 or x.shape[1] != N_MELS:
            raise ValueError(f"musicnn expects [batch, {N_MELS}, frames] log-mel patches, got {list(x.shape)}")
        x = self.input_bn(x.transpose(1, 2).unsqueeze(1))  # [B, 1, T, 96], as TF's [B, T, 96, 1]
        front = torch.cat([block(x) for block in self.timbral] + [block(x) for block in self.temporal], dim=1)
        cnn1 = self.midend[0](front)
        cnn2 = self.midend[1](cnn1) + cnn1
        cnn3 = self.midend[2](cnn2) + cnn2
        features = torch.cat([front, cnn1, cnn2, cnn3], dim=1)  # [B, 753, T]
        max_pool, mean_pool = features.amax(dim=-1), features.mean(dim=-1)
        pooled = torch.stack([max_pool, mean_pool], dim=-1).flatten(1)  # TF order: max/mean interleaved
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        logits = self.logits(penultimate)
        return {
            "taggram": torch.sigmoid(logits),
            "logits": logits,
            "penultimate": penultimate,
            "max_pool": max_pool,
            "mean_pool": mean_pool,
        }


def weights_path(name: str) -> Path:
    return models_dir() / f"{name}.safetensors"


def _read_weights(name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    from safetensors import SafetensorError, safe_open

    if name not in MODEL_NAMES:
        raise MusicnnError(f"{name}: unknown musicnn model (choose from {', '.join(MODEL_NAMES)})")
    path = weights_path(name)
    try:
        with safe_open(str(path), framework="pt") as weights:
            tags = json.loads((weights.metadata() or {})[METADATA_KEY])["tags"]
            state = {key: weights.get_tensor(key) for key in weights.keys()}
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise MusicnnError(f"{path}: cannot read musicnn weights ({exc!r}); see models/musicnn/README.md") from None
    return state, tags


@lru_cache(maxsize=None)
def load_musicnn(name: str = "MSD_musicnn") -> MusiCNN:
    """The pre-trained backbone (cached, shared: do not modify or train it), in eval mode."""
    state, tags = _read_weights(name)
    model = MusiCNN(tags, name)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise MusicnnError(f"{weights_path(name)}: weights do not fit musicnn (missing {missing}, extra {extra})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise MusicnnError(f"{weights_path(name)}: {str(exc).splitlines()[-1].strip()}") from None
    return model.requires_grad_(False).eval()


def musicnn_tags(name: str = "MSD_musicnn") -> list[str]:
    """The 50 tag names of a backbone, in output order."""
    return list(load_musicnn(name).tags)
