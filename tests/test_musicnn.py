"""The torch port of musicnn against the original TensorFlow graph, and the TF checkpoint reader.

tests/data/musicnn_reference* come from recipes/make_musicnn_reference.py (TensorFlow 2.15.1 running the
wheel's own models.py on the wheel's checkpoints); see that script's header.
"""

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
ATOL = 1e-4  # TF's own float32 rounding is ~1e-5 relative on the largest pooled features
POOL_RTOL = 1e-5




@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def run(net: MusiCNN, tf_batch: np.ndarray) -> dict[str, np.ndarray]:
    """TF layout [B, T, 96] → port layout [B, 96, T]."""
    with torch.no_grad():
        out = net(torch.from_numpy(tf_batch).transpose(1, 2))
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("name", musicnn.MODEL_NAMES)
@pytest.mark.parametrize("key", ["input", "input_short"])
def test_port_matches_tensorflow(reference, name, key):
    out = run(load_musicnn(name), reference[key])
    for output in ("taggram", "logits", "penultimate"):
        expected = reference[f"{name}.{key}.{output}"]
        assert out[output].shape == expected.shape
        assert np.abs(out[output] - expected).max() <= ATOL, output
    for output in ("max_pool", "mean_pool"):  # values up to ~76: allow float32 rounding relative to size
        np.testing.assert_allclose(out[output], reference[f"{name}.{key}.{output}"], rtol=POOL_RTOL, atol=ATOL)


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
    torch.testing.assert_close(batch["taggram"][1:2], single["taggram"], atol=1e-6, rtol=1e-5)


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
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
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
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


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
