"""`zstag embed --engine ray` (rayengine.py) on a local Ray of 2 CPUs: the rows of --engine local, and a file that
crashes its decoder every time is an error row. Skipped where Ray is not installed (pip install 'zstag[ray]')."""

import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

import zstag
import zstag.rayengine
from test_embedset import by_path, cli  # tests/test_embedset.py
from test_tag import _fresh_cache, music, write_bad_files  # noqa: F401 (fixtures)
from zstag.workers import CRASH_MESSAGE

ray = pytest.importorskip("ray")

# Loaded by every Python process of the Ray cluster (the actors and their decoder processes): decoding a file
# named $ZSTAG_TEST_CRASH kills the process, every time.
CRASHING_DECODER = textwrap.dedent(
    """
    import os
    import signal

    if os.environ.get("ZSTAG_TEST_CRASH"):
        import zstag.audio as audio

        real = audio.decode_audio

        def decode_audio(path, *args, **kwargs):
            if os.path.basename(str(path)) == os.environ["ZSTAG_TEST_CRASH"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, *args, **kwargs)

        audio.decode_audio = decode_audio

    if os.environ.get("ZSTAG_TEST_CRASH_ACTOR"):  # an actor given this file dies, every time
        import zstag.embedset as embedset

        real_rows = embedset.embed_rows

        def embed_rows(sources, embed_paths):
            if any(os.path.basename(s.name) == os.environ["ZSTAG_TEST_CRASH_ACTOR"] for s in sources):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rows(sources, embed_paths)

        embedset.embed_rows = embed_rows
    """
)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(CRASHING_DECODER)
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "ZSTAG_TEST_CRASH", "ZSTAG_TEST_CRASH_ACTOR")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(hook), str(Path(zstag.__file__).resolve().parents[1])])
    os.environ["ZSTAG_TEST_CRASH"] = "crash.wav"
    os.environ["ZSTAG_TEST_CRASH_ACTOR"] = "killer.wav"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # its processes take this environment
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield
    ray.shutdown()


def test_ray_gives_the_rows_of_local_and_a_crashing_file_is_an_error_row(ray_cluster, music, tiny_model_dir, tmp_path):
    write_bad_files(music)
    local = cli("embed", music, "--out", tmp_path / "local", "--model", tiny_model_dir, "--no-cache")
    assert local.exit_code == 1, local.stderr
    shutil.copy(music / "a.wav", music / "crash.wav")  # after the local run: this process does not load the hook
    result = cli("embed", music, "--out", tmp_path / "ray", "--model", tiny_model_dir, "--engine", "ray",
                 "--workers", "1", "--part-files", "3", "--no-progress")
    assert result.exit_code == 1, result.stderr
    expected, got = by_path(tmp_path / "local"), by_path(tmp_path / "ray")  # by_path: one row per file
    crash = got.pop(str(music / "crash.wav"))
    assert crash["error"] == f"{music / 'crash.wav'}: {CRASH_MESSAGE}" and crash["embedding"] is None
    assert crash["digest"] == expected[str(music / "a.wav")]["digest"]
    assert sorted(got) == sorted(expected)
    for path, r in expected.items():
        other = got[path]
        assert {k: v for k, v in other.items() if k != "embedding"} == {k: v for k, v in r.items() if k != "embedding"}
        if r["embedding"] is None:
            assert other["embedding"] is None
        else:  # the same code on one torch thread: equal in fact; the issue asks for 1e-6
            assert np.max(np.abs(np.subtract(other["embedding"], r["embedding"]))) <= 1e-6
    assert len(zstag.embedset.parts(tmp_path / "ray")) == 3  # 8 rows, 3 per part

    again = cli("embed", music, "--out", tmp_path / "ray", "--model", tiny_model_dir, "--engine", "ray", "--no-progress")
    assert again.exit_code == 0 and "embedded 0 of 0 files; 8 already there" in again.stderr


def test_a_file_that_kills_its_actor_every_time_is_an_error_row_and_the_rest_are_embedded(ray_cluster, music,
                                                                                          tiny_model_dir, tmp_path):
    shutil.copy(music / "a.wav", music / "killer.wav")
    result = cli("embed", music, "--out", tmp_path / "ray", "--model", tiny_model_dir, "--engine", "ray",
                 "--workers", "1", "--no-progress")
    assert result.exit_code == 1, result.stderr
    got = by_path(tmp_path / "ray")
    assert sorted(got) == sorted(str(p) for p in (music / "a.wav", music / "c.mp3", music / "sub" / "b.flac",
                                                  music / "killer.wav"))
    assert got[str(music / "killer.wav")]["error"] == f"{music / 'killer.wav'}: {zstag.rayengine.DIED}"
    assert all(got[str(p)]["embedding"] is not None for p in (music / "a.wav", music / "c.mp3", music / "sub" / "b.flac"))
