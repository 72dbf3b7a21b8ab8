"""zstag.modelfile: model folders without torch — the model id and the numpy label branch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from zstag import modelfile
from zstag.model import ModelError, ZeroShotModel, cnn1d_config, load_model, save_model

SHIPPED = ["default", "conse"]


def saved_model(folder, label_projection: dict | None = None, seed: int = 0, word_dim: int = 50) -> str:
    from zstag.audio import PAPER

    config = cnn1d_config(PAPER, word_dim=word_dim, words="glove-6B-50d")
    if label_projection is not None:
        config["label_projection"] = label_projection
    torch.manual_seed(seed)
    save_model(ZeroShotModel(config), folder)
    return str(folder)


@pytest.fixture(scope="module")
def mlp_model_dir(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("mlp"), {"type": "mlp", "hidden": 32, "dropout": 0.5}, seed=1)


@pytest.fixture(params=SHIPPED + ["cnn1d", "mlp"])
def any_model(request, tiny_model_dir, mlp_model_dir):
    return {"cnn1d": tiny_model_dir, "mlp": mlp_model_dir}.get(request.param, request.param)


def test_model_id_is_the_hash_of_both_files(any_model):
    files = modelfile.read_model(any_model)
    config_bytes = (files.folder / modelfile.CONFIG_FILE).read_bytes()
    weights_bytes = (files.folder / modelfile.WEIGHTS_FILE).read_bytes()
    expected = hashlib.sha256(config_bytes + b"\0" + weights_bytes).hexdigest()[:16]
    assert files.model_id == modelfile.model_id(config_bytes, weights_bytes) == expected
    assert load_model(any_model).model_id == expected == load_model(files=files).model_id
    assert modelfile.model_id(config_bytes + b" ", weights_bytes) != expected


def test_save_model_returns_the_id_read_back(tmp_path):
    folder = tmp_path / "m"
    from zstag.audio import PAPER

    model_id = save_model(ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d")), folder)
    assert modelfile.read_model(folder).model_id == model_id


def test_numpy_label_branch_matches_torch(any_model):
    files = modelfile.read_model(any_model)
    net = load_model(files=files)
    vectors = np.random.default_rng(0).standard_normal((40, files.config["word_dim"])).astype(np.float32)
    with torch.no_grad():
        reference = net.embed_labels(torch.from_numpy(vectors)).numpy()
    ours = files.embed_label_vectors(vectors)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    # numpy works in float64 (exact to ~1e-16, then one rounding to float32), torch in float32 with any
    # BLAS's order: a layer y = x W^T + b of n = in + 1 terms is off by at most gamma_n S, S = |x| |W|^T + |b|
    # (gamma_n = n u / (1 - n u), u = 2^-24), and an error coming in passes through |W| (a ReLU adds none).
    u = 2.0**-24
    bound, x = np.zeros_like(vectors, dtype=np.float64), vectors.astype(np.float64)
    for k, prefix in enumerate(modelfile.label_layers(files.config)):
        w, b = (np.abs(files.label_weights[prefix + name]).astype(np.float64) for name in ("weight", "bias"))
        x = np.maximum(x, 0) if k else x
        gamma = (w.shape[1] + 1) * u / (1 - (w.shape[1] + 1) * u)
        bound = bound @ w.T + gamma * (np.abs(x) @ w.T + b)
        x = x @ files.label_weights[prefix + "weight"].astype(np.float64).T + files.label_weights[prefix + "bias"]
    bound += np.spacing(np.abs(reference))  # each side's result rounded to float32
    assert (np.abs(ours - reference) <= bound).all()
    # Both scores come from the same float64 cosine; a label vector b off by d moves b / |b| by at most
    # 2 |d| / |b|, so a cosine with a unit track vector by as much, plus one float32 rounding on each side.
    tracks = np.random.default_rng(1).standard_normal((25, reference.shape[1])).astype(np.float32)
    allowed = 2 * np.linalg.norm(bound, axis=1) / np.linalg.norm(reference, axis=1) + 2 * u
    assert (np.abs(modelfile.cosine_scores(tracks, ours) - modelfile.cosine_scores(tracks, reference)) <= allowed).all()
    # the torch model's own entry point uses the very same numpy code: bit-identical
    assert net.embed_label_vectors(vectors).tobytes() == ours.tobytes()


def test_cosine_scores_by_hand():
    """The cosine of each track with each label, whatever either vector's length: [3, 4] is 0.6 / 0.8 of
    the way along the axes, and opposite [-6, -8]."""
    scores = modelfile.cosine_scores(np.array([[3.0, 4.0], [0.5, 0.0]]), np.array([[1.0, 0.0], [0.0, 2.0], [-6.0, -8.0]]))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [[0.6, 0.8, -1.0], [1.0, 0.0, -0.6]], rtol=0, atol=2.0**-24)


def test_label_branch_kinds():
    kinds = {name: modelfile.label_projection_config(json.loads((modelfile.resolve_model_path(name) / "config.json")
                                                                 .read_text()))["type"] for name in SHIPPED}
    assert kinds == {"default": "linear", "conse": "identity"}
    files = modelfile.read_model("conse")
    vectors = np.random.default_rng(0).standard_normal((3, files.config["word_dim"])).astype(np.float32)
    assert files.label_weights == {} and files.embed_label_vectors(vectors).tobytes() == vectors.tobytes()


def test_damaged_label_weights_are_a_one_line_model_error(tmp_path, tiny_model_dir):
    from safetensors.numpy import load, save

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_bytes((modelfile.resolve_model_path(tiny_model_dir) / "config.json").read_bytes())
    tensors = load((modelfile.resolve_model_path(tiny_model_dir) / "weights.safetensors").read_bytes())
    for change, cause in [("drop", "no label_projection.weight"), ("shape", "do not take 50-d inputs"),
                          ("garbage", "do not match")]:
        if change == "drop":
            data = save({k: v for k, v in tensors.items() if not k.startswith("label_projection.")})
        elif change == "shape":
            data = save({**tensors, "label_projection.weight": np.zeros((100, 49), np.float32)})
        else:
            data = b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}"
        (folder / "weights.safetensors").write_bytes(data)
        with pytest.raises(ModelError, match=cause) as excinfo:
            modelfile.read_model(folder)
        assert str(excinfo.value).startswith(f"{folder}: ") and "\n" not in str(excinfo.value)
    with pytest.raises(ModelError, match="no such model folder"):
        modelfile.read_model(tmp_path / "nothing")


def test_modelfile_imports_no_torch(tiny_model_dir):
    code = ("import sys, numpy as np; from zstag import modelfile; f = modelfile.read_model(sys.argv[1]); "
            "f.embed_label_vectors(np.zeros((2, 50), np.float32)); "
            "print(sorted(m for m in ('torch', 'librosa', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, tiny_model_dir], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("config, cause", [
    ({"label_projection": "linear"}, "label_projection is not a JSON object"),
    ({"label_projection": None}, "label_projection is not a JSON object"),
    ({"label_projection": {"type": "weird"}}, "unknown projection type 'weird'"),
])
def test_damaged_config_is_a_one_line_model_error_naming_the_folder(tmp_path, tiny_model_dir, config, cause):
    folder = tmp_path / "broken"
    folder.mkdir()
    source = modelfile.resolve_model_path(tiny_model_dir)
    (folder / "weights.safetensors").write_bytes((source / "weights.safetensors").read_bytes())
    (folder / "config.json").write_text(json.dumps({**json.loads((source / "config.json").read_text()), **config}))
    with pytest.raises(ModelError, match=cause) as excinfo:
        modelfile.read_model(folder)
    assert str(excinfo.value).startswith(f"{folder}: ") and "\n" not in str(excinfo.value)


def test_unknown_audio_encoder_is_a_model_error_naming_the_folder(tmp_path, tiny_model_dir):
    folder = tmp_path / "broken"
    folder.mkdir()
    source = modelfile.resolve_model_path(tiny_model_dir)
    (folder / "weights.safetensors").write_bytes((source / "weights.safetensors").read_bytes())
    config = json.loads((source / "config.json").read_text())
    config["audio_encoder"]["type"] = "weird"
    (folder / "config.json").write_text(json.dumps(config))
    files = modelfile.read_model(folder)  # the label branch is fine: the warm path can still serve cached tracks
    with pytest.raises(ModelError, match="unknown audio encoder type 'weird'") as excinfo:
        load_model(files=files)
    assert str(excinfo.value).startswith(f"{folder}: ")
