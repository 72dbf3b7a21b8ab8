"""Shared fixtures: a private cache folder, per-test cache folders, a tiny random model, a synthetic-audio writer."""

from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Point ZSTAG_CACHE_DIR at a temporary folder so tests never touch the user's cache."""
    old = os.environ.get("ZSTAG_CACHE_DIR")
    os.environ["ZSTAG_CACHE_DIR"] = str(tmp_path_factory.mktemp("zstag-cache"))
    yield
    if old is None:
        os.environ.pop("ZSTAG_CACHE_DIR", None)
    else:
        os.environ["ZSTAG_CACHE_DIR"] = old


def _tone(seconds: float, sample_rate: int, freqs=(440.0,), amplitude: float = 0.3, noise: float = 0.0,
         seed: int = 0) -> np.ndarray:
    """float32 mono: a sum of sines (each `amplitude`) plus optional white noise, deterministic."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    x = sum(amplitude * np.sin(2 * np.pi * f * t) for f in freqs)
    x = x + noise * np.random.default_rng(seed).standard_normal(len(t))
    return np.asarray(x, dtype=np.float32)


@pytest.fixture
def tone():
    """tone(seconds, sample_rate, freqs=(440.0,), amplitude=0.3, noise=0.0, seed=0) -> float32 mono."""
    return _tone


@pytest.fixture
def write_audio(tmp_path):
    """write_audio(name, samples [n] or [n, channels], sample_rate, **soundfile_kwargs) -> Path in tmp_path."""
    import soundfile as sf

    def write(name: str, samples: np.ndarray, sample_rate: int, **kwargs):
        path = tmp_path / name
        sf.write(str(path), samples, sample_rate, **kwargs)
        return path

    return write


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    """A fresh ZSTAG_CACHE_DIR for one test (embedding cache, word-vector cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("ZSTAG_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved, seeded, untrained paper CNN1D (GloVe 50-d labels): fast to run, deterministic. Read-only."""
    import torch

    from zstag.audio import PAPER
    from zstag.model import ZeroShotModel, cnn1d_config, save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d")), folder)
    return str(folder)


@pytest.fixture()
def forbid_decoding():
    """forbid_decoding(monkeypatch): from then on, fail the test if any file is decoded (cache hits only)."""
    from zstag import embeddings

    def install(monkeypatch):
        real = embeddings.decode_files

        def guarded(jobs, *args, **kwargs):
            assert not jobs, f"decoded {[p for _, p in jobs]}"
            return real(jobs, *args, **kwargs)

        monkeypatch.setattr(embeddings, "decode_files", guarded)

    return install


@pytest.fixture()
def long_folder():
    """long_folder(parent, length) -> a folder made under parent whose path is at least `length` characters:
    a few nested folders of 200-character names (libsndfile refuses names over ~1,000 bytes)."""
    def make(parent, length: int):
        folder, level = parent, 0
        while len(str(folder)) < length:
            folder, level = folder / f"{level:02d}{'n' * 198}", level + 1
        folder.mkdir(parents=True)
        return folder

    return make


@pytest.fixture()
def deep_folder():
    """deep_folder(parent, levels) -> the deepest of `levels` nested folders "d" made under parent.

    Made and removed one level at a time, relative to the level above (os.makedirs and shutil.rmtree, and so
    pytest's clean-up of old temporary folders, recurse once per level: RecursionError past ~1,000); files
    a test writes in the deepest folder are removed with it."""
    made = []

    def make(parent, levels: int) -> str:
        fd = os.open(parent, os.O_RDONLY)
        try:
            for _ in range(levels):
                os.mkdir("d", dir_fd=fd)
                fd, above = os.open("d", os.O_RDONLY, dir_fd=fd), fd
                os.close(above)
        finally:
            os.close(fd)
        made.append((str(parent), levels))
        return os.path.join(str(parent), *["d"] * levels)

    yield make
    here = os.getcwd()
    try:
        for parent, levels in made:
            os.chdir(os.path.join(parent, *["d"] * levels))
            for name in os.listdir("."):
                os.unlink(name)
            for _ in range(levels):
                os.chdir("..")
                os.rmdir("d")
    finally:
        os.chdir(here)
