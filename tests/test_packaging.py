"""A built wheel carries the shipped models: installed (not editable) and run from another folder, `zstag tag`
uses the default model from the package data (pyproject maps the top-level models/ to zstag/models/)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())


@pytest.mark.skipif(_setuptools_version() < (77,), reason="building offline needs setuptools >= 77 installed")
def test_wheel_tags_with_the_default_model_from_another_folder(tmp_path, write_audio, tone):
    # Built from a copy of the sources: setuptools reuses a checkout's build/ folder, which may hold files
    # that today's pyproject would no longer package.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("zstag-*.whl"))

    # A venv of its own: the dependencies come from this interpreter's site-packages through a plain path
    # list (a .pth of folder names runs no code), so an editable zstag installed there cannot shadow the wheel.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--target", purelib, str(wheel)], check=True, capture_output=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    audio = write_audio("a.wav", tone(4.0, 16000, freqs=(220.0, 330.0)), 16000)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import zstag.paths as p; print(p.models_dir())"],
                           check=True, capture_output=True, text=True, cwd=work, env=env).stdout.strip()
    assert Path(where) == Path(purelib) / "zstag" / "models"
    done = subprocess.run([str(python), "-m", "zstag", "tag", str(audio), "--labels", "jazz,speech", "-f", "json",
                           "--no-cache", "--device", "cpu"], capture_output=True, text=True, cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    from zstag.modelfile import read_model

    assert report["model"] == read_model("default").model_id  # the repository's default model, from the wheel
    assert sorted(t["label"] for t in report["files"][0]["tags"]) == ["jazz", "speech"]
