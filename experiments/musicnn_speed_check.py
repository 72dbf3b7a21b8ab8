"""Cheaper musicnn for the default model (#20): batch-norm folding, int8, TorchScript / torch.compile.

    python experiments/musicnn_speed_check.py [--repeats 9] [--compile]

For each variant of the default model's MSD musicnn backbone: the CPU time of embedding one 30 s track (10
patches, one torch thread, as each of tag's inference threads runs; random log-mel patches; medians over
--repeats, variants interleaved round by round so that load on a shared machine hits them alike), and the
largest change of any score (cosine with each of the model's training labels) against float32 eager, over
real clips (../shared/data/cc-examples and gcompris: 5 patches of each, as --sample-seconds 15 picks them).

Variants:
- profile: where eager float32 spends its time (torch.profiler, by op);
- no-bn: every batch norm replaced by the identity: not the same model, the ceiling of what folding
  them could save;
- fold: the exactly foldable batch norms folded (input_bn into the front-end convs, padded with the value
  the batch norm maps to 0; pool_bn into the dense layer). musicnn's other batch norms follow a ReLU, so
  no conv before them can absorb them; the next conv could only with edge corrections (its zero padding);
- int8-linear: torch.ao.quantization.quantize_dynamic on the Linear layers (backbone dense and logits,
  the projection);
- int8-front: int8-linear plus the five front-end conv GEMMs (~95% of the multiply-adds) as fbgemm
  dynamic int8 products (weights per channel, activations per tensor, quantised per call); static/FX
  quantisation cannot see these GEMMs (the port runs them as im2col + torch.mm, ~2x faster than conv2d);
- jit: torch.jit.trace of the backbone; compile (--compile): torch.compile of it (inductor, C++).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zstag import audio, modelfile, windows  # noqa: E402
from zstag.backbones import musicnn  # noqa: E402
from zstag.model import load_model  # noqa: E402
from zstag.words import load_words  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CLIP_SECONDS = 15.0  # 5 patches spread over each clip
PATCHES = 10  # a 30 s track


def clips() -> list[Path]:
    found = sorted((SHARED / "cc-examples" / "audio").glob("*.ogg")) + sorted((SHARED / "gcompris" / "audio").rglob("*.ogg"))
    if not found:
        raise SystemExit(f"no clips under {SHARED}")
    return found


def backbone(model) -> musicnn.MusiCNN:
    return model.segment_encoder._backbones[0]


# --- variants ------------------------------------------------------------------------------------


def without_batch_norms(model):
    """Every batch norm of the backbone → identity (the ceiling of folding; different numbers)."""
    net = backbone(model)
    for block in [*net.timbral, *net.temporal]:  # its batch norm also orders the max: no sign trick without it
        block.forward = types.MethodType(lambda self, x: F.relu(musicnn._conv_max_over_mel(
            F.pad(x[:, 0], (0, 0, *self.pad)), self.conv.weight) + self.conv.bias[:, None]), block)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not hasattr(module, "pad"):
                setattr(module, name, nn.Identity())
    return model


def _affine(bn) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode batch norm as y = a·x + b (float64)."""
    a = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return a, bn.bias.double() - a * bn.running_mean.double()


def fold_batch_norms(model):
    """input_bn into the front-end convs, pool_bn into dense: the same function up to float32 rounding."""
    net = backbone(model)
    a, b = (t.item() for t in _affine(net.input_bn))
    pad_value = -b / a  # the input value input_bn maps to 0: padding with it = padding the normalised map with 0
    for block in [*net.timbral, *net.temporal]:
        weight = block.conv.weight.double()
        block.conv.bias.copy_(block.conv.bias.double() + b * weight.sum(dim=(1, 2, 3)))
        block.conv.weight.copy_(a * weight)
        block.forward = types.MethodType(_front_forward(pad_value), block)
    net.input_bn = nn.Identity()
    pa, pb = _affine(net.pool_bn)
    dense = net.dense.weight.double()
    net.dense.bias.copy_(net.dense.bias.double() + dense @ pb)
    net.dense.weight.copy_(dense * pa[None])
    net.pool_bn = nn.Identity()
    return model


def _front_forward(pad_value: float, gemm=None):
    """FrontEndBlock.forward with a padding value and, optionally, another GEMM for the conv."""
    def forward(self, x):
        sign = torch.where(self.bn.weight < 0, -1.0, 1.0).to(x.dtype)
        padded = F.pad(x[:, 0], (0, 0, *self.pad), value=pad_value)
        weight = self.conv.weight * sign[:, None, None, None]
        z = musicnn._conv_max_over_mel(padded, weight) if gemm is None else gemm(self, padded, weight)
        return self.bn(F.relu(sign[:, None] * (z + (self.conv.bias * sign)[:, None])))
    return forward


def int8_linear(model):
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def _int8_conv_max_over_mel(block, x, weight, reduce_range):
    """_conv_max_over_mel with the GEMM as fbgemm's dynamic int8 linear (packed once per block)."""
    filters, _, kt, km = weight.shape
    batch, _, mels = x.shape
    frames, positions = x.shape[1] - kt + 1, mels - km + 1
    if km > kt:
        windows = x.unfold(1, kt, 1).unfold(2, km, 1).transpose(1, 2)
        rows = weight.reshape(filters, kt * km)
    else:
        windows = x.transpose(1, 2).unfold(1, km, 1).unfold(2, kt, 1)
        rows = weight.transpose(2, 3).reshape(filters, kt * km)
    if not hasattr(block, "_packed"):
        scales = rows.abs().amax(dim=1).double().clamp_min(1e-12) / 127
        q = torch.quantize_per_channel(rows.contiguous(), scales, torch.zeros(filters, dtype=torch.long), 0, torch.qint8)
        block._packed = torch.ops.quantized.linear_prepack(q, None)
    out = x.new_empty(batch, frames, filters)
    for i in range(batch):
        columns = windows[i].reshape(positions * frames, kt * km)
        products = torch.ops.quantized.linear_dynamic(columns, block._packed, reduce_range)
        torch.amax(products.view(positions, frames, filters), dim=0, out=out[i])
    return out.transpose(1, 2)


def int8_front(model, reduce_range=True, linear=True):
    net = backbone(model)
    for block in [*net.timbral, *net.temporal]:
        gemm = lambda blk, x, w: _int8_conv_max_over_mel(blk, x, w, reduce_range)  # noqa: E731
        block.forward = types.MethodType(_front_forward(0.0, gemm), block)
    return int8_linear(model) if linear else model


class _PerShape(nn.Module):
    """The backbone traced (or compiled) once per input shape: a trace unrolls the per-patch loop of
    _conv_max_over_mel, so it holds for one batch size only."""

    def __init__(self, net, compile_it: bool):
        super().__init__()
        self.net, self.compile_it, self.built = net, compile_it, {}

    def forward(self, x):
        key = tuple(x.shape)
        if key not in self.built:
            if self.compile_it:
                self.built[key] = torch.compile(self.net, dynamic=False)
            else:
                self.built[key] = torch.jit.freeze(torch.jit.trace(self.net, x, strict=False).eval())
        return self.built[key](x)


def traced(model, compile_it=False):
    fast = _PerShape(backbone(model), compile_it)
    with torch.no_grad():
        fast(torch.zeros(PATCHES, musicnn.N_MELS, musicnn.PATCH_FRAMES))  # build now, not in the timings
    model.segment_encoder._backbones[0] = fast
    return model


def float64_scores(model, tracks, label_emb) -> np.ndarray:
    """The float32 model's function computed in float64: the yardstick of float32 rounding."""
    wide = copy.deepcopy(model).double()
    with torch.no_grad():
        emb = [wide.audio_projection(wide.segment_features(torch.from_numpy(t).double()).mean(0, keepdim=True))[0]
               for t in tracks]
    return modelfile.cosine_scores(torch.stack(emb).numpy(), label_emb.astype(np.float64))


# --- measurements -----------------------------------------------------------------------------------


def scores(model, tracks, label_emb) -> np.ndarray:
    with torch.no_grad():
        emb = np.stack([model.embed_track(segments) for segments in tracks])
    return modelfile.cosine_scores(emb, label_emb)


def cpu_ms(model, patches) -> float:
    cpu = time.process_time()
    with torch.no_grad():
        model.embed_track(patches)
    return 1000 * (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow to build)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = load_model("default").eval()

    patches = np.random.default_rng(0).uniform(0, 3, (PATCHES, musicnn.N_MELS, musicnn.PATCH_FRAMES)).astype(np.float32)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            base.embed_track(patches)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("eager float32, share of CPU time by op: " + ", ".join(
        f"{e.key} {100 * e.self_cpu_time_total / total:.1f}%"
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]))

    files = modelfile.read_model("default")
    labels = modelfile.train_labels(files.config)
    label_emb = modelfile.label_embeddings(files, load_words(files), labels)
    paths = clips()
    tracks = [windows.analyse_sampled(p, audio.MUSICNN, CLIP_SECONDS)[0] for p in paths]
    print(f"{len(paths)} clips ({sum(len(t) for t in tracks)} patches), {len(labels)} labels; torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, quantized engine {torch.backends.quantized.engine}")

    variants = {
        "float32 eager": base,
        "no-bn (ceiling, not exact)": without_batch_norms(copy.deepcopy(base)),
        "fold (exact BN folds)": fold_batch_norms(copy.deepcopy(base)),
        "int8-linear (dynamic)": int8_linear(copy.deepcopy(base)),
        "int8-front (fbgemm, reduce_range)": int8_front(copy.deepcopy(base), True),
        "int8-front (fbgemm, full range)": int8_front(copy.deepcopy(base), False),
        "int8 front convs only (reduce_range)": int8_front(copy.deepcopy(base), True, linear=False),
        "jit trace + freeze": traced(copy.deepcopy(base)),
    }
    if args.compile:
        start = time.perf_counter()
        variants["torch.compile"] = traced(copy.deepcopy(base), compile_it=True)
        print(f"torch.compile build: {time.perf_counter() - start:.0f} s")

    reference = scores(base, tracks, label_emb)
    exact = float64_scores(base, tracks, label_emb)
    print(f"float32 eager against the same model in float64: max |Δscore| {np.abs(reference - exact).max():.2e}; "
          f"exact BN folds against float64: {np.abs(scores(variants['fold (exact BN folds)'], tracks, label_emb) - exact).max():.2e}")
    changes = {name: float(np.abs(scores(m, tracks, label_emb) - reference).max()) for name, m in variants.items()}
    times = {name: [] for name in variants}
    for name, m in variants.items():  # warm-up
        cpu_ms(m, patches)
    for _ in range(args.repeats):
        for name, m in variants.items():
            times[name].append(cpu_ms(m, patches))
    eager = statistics.median(times["float32 eager"])
    print(f"{'variant':36s} {'CPU ms / 30 s track':>20s} {'speed-up':>9s} {'max |Δscore|':>13s}")
    for name in variants:
        t = statistics.median(times[name])
        print(f"{name:36s} {t:20.1f} {eager / t:8.2f}x {changes[name]:13.2e}   runs: "
              + " ".join(f"{x:.0f}" for x in times[name]))


if __name__ == "__main__":
    main()
