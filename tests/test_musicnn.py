"""The torch port of musicnn against the original TensorFlow graph, and the TF checkpoint reader.

tests/data/musicnn_reference* come from recipes/make_musicnn_reference.py (TensorFlow 2.15.1 running the
wheel's own models.py on the wheel's checkpoints); see that script's header.
"""

import copy
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from zstag.backbones import convert_musicnn as convert
from zstag.backbones import musicnn
from zstag.backbones.musicnn import N_MELS, MusicnnError, MusiCNN, load_musicnn, musicnn_tags

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "musicnn_reference.npz"
FIXTURE = DATA / "musicnn_reference_ckpt"
ATOL = 1e-4  # only for the symmetric-padding check: a wrong port is off by far more than rounding
U32 = 2.0**-24  # float32 unit roundoff
LAMBDA = 6.0  # standard deviations allowed: P(|N(0, 1)| > 6) ~ 2e-9 per element, ~1e-4 over the ~1e4 compared
BN = torch.nn.modules.batchnorm._BatchNorm




@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def run(net: MusiCNN, tf_batch: np.ndarray) -> dict[str, np.ndarray]:
    """TF layout [B, T, 96] → port layout [B, 96, T]."""
    with torch.no_grad():
        out = net(torch.from_numpy(tf_batch).transpose(1, 2))
    return {k: v.numpy() for k, v in out.items()}


def _bn_fold(bn) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval batch norm as y = x * scale + offset (how TF runs it)."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return scale, bn.bias - bn.running_mean * scale


def rounding_sd(net: MusiCNN, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per output element, the standard deviation of the rounding error of any float32 evaluation of
    `net` on x (TF's kernels or torch's, any CPU: they differ only in the order of each sum).

    Error model (Higham & Mary, "A new approach to probabilistic rounding error analysis", 2019): a
    float32 sum of n products whose |terms| add up to S is off by at most ~ sqrt(n) * u * S (u = 2^-24)
    with overwhelming probability, errors behaving as independent, zero-mean. So each layer's own
    rounding gets a standard deviation sqrt(n) * u * S with S computed from this input's actual
    tensors (conv / linear of |x| and |W|, n = C_in * kernel: up to 561 * 7 = 3927 in the mid end);
    a batch norm, run as x * scale + offset, u * (2 |x * scale| + |offset| + its parts); the mean over
    T frames, sqrt(T) * u * mean|f|. These variances are carried to the outputs to first order: a copy
    of the net with W -> W^2 and batch norms -> scale^2 run on variances, each layer adding its own,
    ReLU passing only units active in the real run. The max over mel / time then takes the largest
    variance (not the argmax's) and a mean over time keeps the mean variance (errors fully correlated
    along time, as the batch norms' rounded constants are): both only overestimate.
    """
    local, active, maps = {}, {}, []
    fronts = [*net.timbral, *net.temporal]
    after_relu = {b.bn for b in fronts} | {b.bn for b in net.midend} | {net.dense_bn}

    def record(mod, inp):
        a = inp[0].abs()
        if isinstance(mod, musicnn.FrontEndBlock):  # conv without bias, max over mel, + bias (before ReLU)
            s = musicnn._conv_max_over_mel(F.pad(a[:, 0], (0, 0, *mod.pad)), mod.conv.weight.abs())
            s = s + mod.conv.bias.abs()[:, None]
            local[mod.bn] = (U32 * mod.conv.weight[0].numel() ** 0.5 * s) ** 2
        elif isinstance(mod, torch.nn.Linear):
            s = F.linear(a, mod.weight.abs(), mod.bias.abs())
            local[mod] = (U32 * mod.in_features**0.5 * s) ** 2
        elif isinstance(mod, torch.nn.Conv1d):
            s = F.conv1d(a, mod.weight.abs(), mod.bias.abs(), padding=mod.padding)
            local[mod] = (U32 * mod.weight[0].numel() ** 0.5 * s) ** 2
        else:
            scale, offset = _bn_fold(mod)
            shape = [1, -1] + [1] * (a.dim() - 2)
            parts = (mod.running_mean * scale).abs() + mod.bias.abs() + offset.abs()
            own = (U32 * (2 * a * scale.abs().view(shape) + parts.view(shape))) ** 2
            if mod in after_relu:
                active[mod] = (inp[0] > 0).to(a.dtype)
            local[mod] = own + local.get(mod, 0) * active.get(mod, 1)  # a front block's conv comes in here

    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, BN, musicnn.FrontEndBlock))]
    hooks = [m.register_forward_pre_hook(record) for m in layers]
    hooks += [b.register_forward_hook(lambda m, i, out: maps.append(out)) for b in [*fronts, *net.midend]]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for hook in hooks:
            hook.remove()
    m1, m2, m3 = maps[5:]  # the feature map is [front, cnn1, cnn2 = m2 + cnn1, cnn3 = m3 + cnn2]
    features = torch.cat([*maps[:5], m1, m1 + m2, m1 + m2 + m3], dim=1)

    var_net = copy.deepcopy(net)
    with torch.no_grad():
        for m in var_net.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
                m.weight.square_(), m.bias.zero_()
            elif isinstance(m, BN):
                m.weight.copy_(_bn_fold(m)[0].square()), m.bias.zero_(), m.running_mean.zero_()
                m.running_var.fill_(1 - m.eps)
    for copied, real in zip(var_net.modules(), net.modules()):
        if real in active:
            copied.register_forward_pre_hook(lambda m, inp, real=real: (inp[0] * active[real],))
        if real in local:
            copied.register_forward_hook(lambda m, inp, out, real=real: out + local[real])
    with torch.no_grad():
        var = var_net(torch.zeros_like(x))
        var["mean_pool"] += (U32 * x.shape[-1] ** 0.5 * features.abs().mean(dim=-1)) ** 2
    return {key: value.sqrt().numpy() for key, value in var.items() if key != "taggram"}  # taggram: the caller's


@pytest.mark.parametrize("name", musicnn.MODEL_NAMES)
@pytest.mark.parametrize("key", ["input", "input_short"])
def test_port_matches_tensorflow(reference, name, key):
    """Every output within the float32 rounding of two evaluations (TF's, ours) of the same net.

    Each evaluation's error has a standard deviation of at most rounding_sd's (see there), so the
    difference of two has at most sqrt(2) of it, plus one ulp for rounding each result to float32.
    """
    net, x = load_musicnn(name), torch.from_numpy(reference[key]).transpose(1, 2)
    out, sd = run(net, reference[key]), rounding_sd(net, x)
    sd["taggram"] = out["taggram"] * (1 - out["taggram"]) * sd["logits"]  # the sigmoid's slope p (1 - p)
    for output in ("taggram", "logits", "penultimate", "max_pool", "mean_pool"):
        expected = reference[f"{name}.{key}.{output}"]
        assert out[output].shape == expected.shape
        bound = LAMBDA * np.sqrt(2) * sd[output] + np.spacing(np.abs(expected))
        excess = np.abs(out[output] - expected) / bound
        assert excess.max() <= 1, f"{output}: {np.unravel_index(excess.argmax(), excess.shape)} off by {excess.max():.2f} bounds"


def test_reference_inputs_catch_symmetric_same_padding(reference):
    """TF puts the odd "same" zero at the end; a symmetric-padding port must fail the comparison."""
    net = MusiCNN(load_musicnn("MSD_musicnn").tags)
    net.load_state_dict(load_musicnn("MSD_musicnn").state_dict())
    for block, kernel in zip(net.temporal, musicnn.TEMPORAL_LENGTHS):
        block.pad = (kernel // 2, (kernel - 1) // 2)
    out = run(net, reference["input"])
    assert np.abs(out["penultimate"] - reference["MSD_musicnn.input.penultimate"]).max() > 100 * ATOL


def test_outputs_shapes_and_batch_independence():
    net = load_musicnn("MTT_musicnn")
    x = torch.rand(3, 96, 187, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        batch, single = net(x), net(x[1:2])
    assert batch["taggram"].shape == (3, 50) and batch["penultimate"].shape == (3, 200)
    assert batch["max_pool"].shape == batch["mean_pool"].shape == (3, 753)
    assert ((batch["taggram"] > 0) & (batch["taggram"] < 1)).all()
    # a batch of 3 and of 1 may add in other orders (GEMM blocking): two float32 evaluations, as against TF
    p = single["taggram"].numpy()
    bound = LAMBDA * np.sqrt(2) * p * (1 - p) * rounding_sd(net, x[1:2])["logits"] + np.spacing(p)
    assert (np.abs(batch["taggram"][1:2].numpy() - p) <= bound).all()


def reordering_bound(terms: torch.Tensor, n: int) -> torch.Tensor:
    """What two float32 sums of the same n products, added in other orders, may differ by: LAMBDA standard
    deviations of sqrt(n) u S each (terms: S, the sum of |products| per output; see rounding_sd), plus the
    results' rounding (the max over mel picks one of them)."""
    return LAMBDA * np.sqrt(2) * n**0.5 * U32 * terms + 2 * U32 * terms


@pytest.mark.parametrize("kernel", [(7, 38), (7, 67), (128, 1), (32, 1), (3, 3)])
def test_front_end_product_equals_the_convolution(kernel):
    """The im2col product (either window layout) gives conv2d's max over mel, to float32 rounding."""
    generator = torch.Generator().manual_seed(sum(kernel))
    kt, km = kernel
    x = torch.randn(3, 40 + kt - 1, N_MELS, generator=generator)  # time already padded
    weight = torch.randn(5, 1, kt, km, generator=generator)
    expected = F.conv2d(x[:, None], weight).amax(dim=-1)  # [3, 5, 40]
    with torch.no_grad():
        ours = musicnn._conv_max_over_mel(x, weight)
    assert ours.shape == expected.shape == (3, 5, 40)
    terms = F.conv2d(x[:, None].abs(), weight.abs()).amax(dim=-1)  # the largest over the mel positions
    assert (ours - expected).abs().le(reordering_bound(terms, kt * km)).all()
    weight.requires_grad_(True)  # with autograd on, it takes the differentiable path
    ours = musicnn._conv_max_over_mel(x, weight)
    ours.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("channels, k, pad", [(561, 7, 3), (64, 7, 3), (4, 3, 0)])
def test_mid_end_product_equals_the_convolution(channels, k, pad):
    """The GEMM form of the mid-end conv (used on a GPU) gives conv1d's numbers, to float32 rounding."""
    generator = torch.Generator().manual_seed(channels + k)
    x = torch.randn(3, channels, 50, generator=generator)
    weight, bias = torch.randn(6, channels, k, generator=generator), torch.randn(6, generator=generator)
    expected = F.conv1d(x, weight, bias, padding=pad)
    ours = musicnn._conv1d_as_gemm(x, weight, bias, pad)
    assert ours.shape == expected.shape == (3, 6, 50 + 2 * pad - k + 1)
    terms = F.conv1d(x.abs(), weight.abs(), bias.abs(), padding=pad)
    assert (ours - expected).abs().le(reordering_bound(terms, channels * k + 1)).all()


def test_tags_and_cache():
    msd, mtt = musicnn_tags("MSD_musicnn"), musicnn_tags("MTT_musicnn")
    assert len(msd) == len(mtt) == 50
    assert msd[:3] == ["rock", "pop", "alternative"] and msd[-1] == "happy"
    assert mtt[:3] == ["guitar", "classical", "slow"] and mtt[-1] == "choral"
    net = load_musicnn("MSD_musicnn")
    assert net is load_musicnn("MSD_musicnn")
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training and not any(m.training for m in net.modules())


def test_bad_input_and_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="96"):
        load_musicnn("MSD_musicnn")(torch.zeros(1, 187, 96))
    with pytest.raises(MusicnnError, match="unknown musicnn model"):
        load_musicnn("MSD_vgg")
    monkeypatch.setattr(musicnn, "models_dir", lambda: tmp_path)
    (tmp_path / "MTT_musicnn.safetensors").write_bytes(b"not safetensors")
    musicnn.load_musicnn.cache_clear()
    try:
        for name in musicnn.MODEL_NAMES:  # missing file, broken file
            with pytest.raises(MusicnnError) as err:
                load_musicnn(name)
            assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    finally:
        musicnn.load_musicnn.cache_clear()


def test_shipped_weights_metadata():
    from safetensors import safe_open

    for name in musicnn.MODEL_NAMES:
        with safe_open(str(musicnn.weights_path(name)), framework="pt") as f:
            meta = json.loads(f.metadata()[musicnn.METADATA_KEY])
            assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
        assert meta["name"] == name and convert.WHEEL_SHA256 in meta["source"]
        assert len(meta["tags"]) == 50
    notice = (ROOT / "models" / "musicnn" / "LICENSE").read_text()
    assert "Universitat Pompeu Fabra" in notice and "Permission to use, copy, modify" in notice


# --- the checkpoint reader ------------------------------------------------------------------------


def _fixture_bytes():
    return Path(f"{FIXTURE}.index").read_bytes(), Path(f"{FIXTURE}.data-00000-of-00001").read_bytes()


def test_reader_matches_tensorflow_on_fixture(reference):
    index, data = _fixture_bytes()
    tensors = convert.read_checkpoint(index, data)
    expected = {k[len("ckpt.") :]: v for k, v in reference.items() if k.startswith("ckpt.")}
    assert set(tensors) == set(expected) and len(expected) == 9
    for key, value in expected.items():
        assert tensors[key].dtype == value.dtype and tensors[key].shape == value.shape, key
        assert tensors[key].tobytes() == value.tobytes(), key


def test_reader_detects_corruption():
    index, data = _fixture_bytes()
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(convert.CheckpointError, match="checksum"):
        convert.read_checkpoint(index, bytes(corrupt))
    with pytest.raises(convert.CheckpointError, match="magic"):
        convert.read_checkpoint(index[:-1] + b"\0", data)
    with pytest.raises(convert.CheckpointError):
        convert.read_checkpoint(index[:20], data)
    with pytest.raises(convert.CheckpointError, match="size"):
        convert.read_checkpoint(index, data[:-8])


def test_crc32c_check_value():
    assert convert.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_model_variable_filter():
    assert convert.is_model_variable("conv2d/kernel")
    assert not convert.is_model_variable("conv2d/kernel/Adam_1")
    assert not convert.is_model_variable("beta2_power")


def _wheel() -> Path | None:
    path = os.environ.get("MUSICNN_WHEEL")
    return Path(path) if path and Path(path).is_file() else None


@pytest.mark.skipif(_wheel() is None, reason="set MUSICNN_WHEEL to musicnn-0.1.0-py3-none-any.whl to re-convert")
def test_conversion_reproduces_shipped_weights(tmp_path):
    written = convert.convert(_wheel(), tmp_path)
    for name, path in written.items():
        assert path.read_bytes() == musicnn.weights_path(name).read_bytes(), name
    with zipfile.ZipFile(_wheel()) as wheel:
        license_text = wheel.read("musicnn-0.1.0.dist-info/LICENSE.md").decode()
    assert license_text.strip().splitlines()[0] in (tmp_path / "LICENSE").read_text()
