"""Reference outputs of the ORIGINAL musicnn TensorFlow graph, for tests/test_musicnn.py.

Run once, in a throwaway venv outside the repo (the project itself never needs TensorFlow):

    python3 -m venv /tmp/tfenv                          # CPython 3.11.7
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.15.1 "numpy<2" librosa   # numpy 1.26.4, librosa 0.11.0
    pip download --no-deps musicnn==0.1.0 -d /tmp/mw
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/tfenv/bin/python recipes/make_musicnn_reference.py \
        /tmp/mw/musicnn-0.1.0-py3-none-any.whl

It
1. reads every tensor of the four checkpoints in the wheel (MSD/MTT × musicnn/vgg, Adam slots
   included) with zstag/backbones/convert_musicnn.py's reader and with TensorFlow's, and stops unless all are
   bit-identical;
2. writes tests/data/musicnn_reference_ckpt.{index,data-00000-of-00001}: a tiny checkpoint written by
   TensorFlow's Saver (several dtypes and shapes), with the values TensorFlow reads back, so the test
   suite can check the reader without TensorFlow;
3. builds the graph of the wheel's musicnn/models.py (imported unchanged, as extractor.py does it:
   tf.compat.v1 graph mode, Saver.restore, is_training False) for MSD_musicnn and MTT_musicnn and
   runs it on fixed inputs: two seeded random patches and a synthetic chord's log-mel, 187 frames,
   plus one random 100-frame patch (musicnn takes any length); writes inputs and outputs to
   tests/data/musicnn_reference.npz.
Inputs are in TF layout [batch, frames, 96]; zstag's port takes [batch, 96, frames].
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)  # tf.compat.v1.layers

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zstag.backbones import convert_musicnn  # noqa: E402  (the reader under test; numpy only)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "tests" / "data"
REFERENCE = DATA_DIR / "musicnn_reference.npz"
FIXTURE_PREFIX = DATA_DIR / "musicnn_reference_ckpt"
CHECKPOINTS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
MODELS = ("MSD_musicnn", "MTT_musicnn")
N_MELS = 96
PATCH_FRAMES = 187
SHORT_FRAMES = 100
SEED = 20190801
SR, N_FFT, HOP = 16000, 512, 256  # musicnn/configuration.py


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def cross_check_reader(unpacked: Path) -> None:
    for name in CHECKPOINTS:
        prefix = unpacked / "musicnn" / name
        ours = convert_musicnn.read_checkpoint(
            (prefix / ".index").read_bytes(), (prefix / ".data-00000-of-00001").read_bytes()
        )
        reader = tf.compat.v1.train.NewCheckpointReader(str(prefix) + "/")
        theirs = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
        assert set(ours) == set(theirs), f"{name}: tensor names differ"
        for key, value in theirs.items():
            value = np.asarray(value)
            assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, f"{name}/{key}"
            assert ours[key].tobytes() == value.tobytes(), f"{name}/{key}: values differ"
        print(f"reader == TensorFlow on {name}: {len(ours)} tensors, {sum(v.size for v in ours.values()):,} values")


def write_fixture_checkpoint() -> dict[str, np.ndarray]:
    """A tiny TF1 checkpoint of assorted dtypes/shapes; returns what TensorFlow reads back."""
    rng = np.random.default_rng(SEED)
    values = {
        "scope/kernel": rng.standard_normal((3, 2, 1, 4)).astype(np.float32),
        "scope/bias": rng.standard_normal(4).astype(np.float32),
        "scope/batch_normalization/moving_variance": rng.random(5).astype(np.float32),
        "doubles": rng.standard_normal((2, 3)).astype(np.float64),
        "halves": rng.standard_normal(7).astype(np.float16),
        "global_step": np.int64(123456789012),
        "counts": rng.integers(-1000, 1000, size=(2, 2, 2)).astype(np.int32),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
    }
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(v, name=k) for k, v in values.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            with tempfile.TemporaryDirectory() as tmp:
                saved = saver.save(sess, os.path.join(tmp, "ckpt"), write_meta_graph=False)
                index = Path(saved + ".index").read_bytes()
                data = Path(saved + ".data-00000-of-00001").read_bytes()
                reader = tf.compat.v1.train.NewCheckpointReader(saved)
                expected = {k: np.asarray(reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()}
    atomic_write(FIXTURE_PREFIX.with_suffix(".index"), index)
    atomic_write(FIXTURE_PREFIX.with_suffix(".data-00000-of-00001"), data)
    print(f"fixture checkpoint: {len(expected)} tensors, index {len(index)} B, data {len(data)} B")
    return expected


def chord_patch() -> np.ndarray:
    """Log-mel of a synthetic A-major chord, computed as musicnn's extractor.batch_data does it."""
    import librosa

    rng = np.random.default_rng(SEED + 1)
    t = np.arange(int(3.2 * SR)) / SR
    audio = np.zeros_like(t)
    for f0 in (220.0, 277.18, 329.63, 440.0):
        for harmonic in range(1, 6):
            audio += np.sin(2 * np.pi * f0 * harmonic * t) * np.exp(-1.5 * t) / harmonic
    audio = (0.1 * audio + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    mel = librosa.feature.melspectrogram(y=audio, sr=SR, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS).T
    mel = mel.astype(np.float16)
    return np.log10(10000 * mel + 1)[:PATCH_FRAMES].astype(np.float32)


def reference_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    random = rng.uniform(0.0, 3.5, size=(2, PATCH_FRAMES, N_MELS)).astype(np.float16).astype(np.float32)
    short = rng.uniform(0.0, 3.5, size=(1, SHORT_FRAMES, N_MELS)).astype(np.float16).astype(np.float32)
    return {"input": np.concatenate([random, chord_patch()[None]]), "input_short": short}


def run_original(unpacked: Path, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """models.define_model as extractor.extractor builds it; the checkpoint restored by Saver."""
    from musicnn import models  # the wheel's, unchanged

    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, batch.shape[1], N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        y, timbral, temporal, cnn1, cnn2, cnn3, mean_pool, max_pool, penultimate = models.define_model(
            x, is_training, model, 50
        )
        normalized_y = tf.nn.sigmoid(y)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().restore(sess, str(unpacked / "musicnn" / model) + "/")
        fetched = sess.run(
            {"taggram": normalized_y, "logits": y, "penultimate": penultimate, "max_pool": max_pool,
             "mean_pool": mean_pool},
            feed_dict={x: batch, is_training: False},
        )
    return {k: np.asarray(v, np.float32) for k, v in fetched.items()}


def main() -> int:
    wheel = Path(sys.argv[1])
    tf.compat.v1.disable_eager_execution()
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = Path(tmp)
        zipfile.ZipFile(wheel).extractall(unpacked)
        sys.path.insert(0, str(unpacked))
        cross_check_reader(unpacked)
        expected = write_fixture_checkpoint()
        arrays = reference_inputs()
        arrays.update({f"ckpt.{k}": v for k, v in expected.items()})
        for model in MODELS:
            for key in ("input", "input_short"):
                for name, value in run_original(unpacked, model, arrays[key]).items():
                    arrays[f"{model}.{key}.{name}"] = value
            print(model, "taggram[chord] top:", np.argsort(-arrays[f"{model}.input.taggram"][2])[:5])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(REFERENCE, buffer.getvalue())
    print(f"{REFERENCE}: {REFERENCE.stat().st_size:,} bytes; TF {tf.__version__}, numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
