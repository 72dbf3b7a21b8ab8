"""`kill -9` of a `zstag preprocess` or `zstag tag` with worker processes leaves no process behind.

Each command runs as a real CLI process in a session of its own. A sitecustomize module (put first on
the child's PYTHONPATH, so the fork server and the workers load it too) makes the decoding of one file
block, so the run is surely still going when the test kills it: no race with a fast machine. The test
waits until both workers exist and one is inside that file, SIGKILLs the main process, and then waits,
up to a bound, for every process of the session (fork server, resource tracker, workers) to be gone.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import zstag

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

SR = 22050
START_S = 180  # bound on the start (a cold import of torch on a slow, busy 2-core machine)
GONE_S = 30  # bound on the exit of what is left: the workers notice at once, the rest when they are gone

BLOCKING_DECODER = textwrap.dedent(
    """
    import os
    import time

    if os.environ.get("ZSTAG_TEST_BLOCK"):
        import zstag.audio as audio

        real = audio.decode_audio

        def decode_audio(path, *args, **kwargs):
            if os.path.basename(str(path)) == os.environ["ZSTAG_TEST_BLOCK"]:
                open(os.environ["ZSTAG_TEST_BLOCKED"], "a").close()
                time.sleep(3600)
            return real(path, *args, **kwargs)

        audio.decode_audio = decode_audio
    """
)


def session(sid: int) -> dict[int, int]:
    """pid → parent pid of each live (not zombie) process in session sid."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid, _, session_id = stat.rsplit(")", 1)[1].split()[:4]
        if int(session_id) == sid and state not in ("Z", "X"):
            members[int(entry.name)] = int(ppid)
    return members


def write_folder_corpus(root: Path, n: int = 8) -> None:
    import soundfile as sf

    for i in range(n):
        folder = root / ("rock", "jazz")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        t = np.arange(2 * SR) / SR
        sf.write(folder / f"{i:02d}.wav", (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t)).astype(np.float32), SR)


def kill_and_check(tmp_path: Path, args: list[str], blocked: str) -> None:
    """Run `python -m zstag ARGS` with the decoding of file `blocked` hanging; kill -9 it inside."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKING_DECODER)
    flag = tmp_path / "blocked"
    env = {**os.environ, "ZSTAG_TEST_BLOCK": blocked, "ZSTAG_TEST_BLOCKED": str(flag),
           "PYTHONPATH": os.pathsep.join([str(hook), str(Path(zstag.__file__).resolve().parents[1])])}
    with open(tmp_path / "stderr.txt", "wb") as err:
        child = subprocess.Popen([sys.executable, "-m", "zstag", *args], env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=err)
    sid = child.pid
    try:
        deadline = time.monotonic() + START_S
        while True:
            workers = [pid for pid, ppid in session(sid).items() if pid != sid and ppid != sid]  # the fork server's
            if flag.exists() and len(workers) >= 2:
                break
            assert child.poll() is None, f"zstag exited first: {(tmp_path / 'stderr.txt').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no two workers and a blocked file after {START_S} s"
            time.sleep(0.05)
        child.kill()
        child.wait()
        deadline = time.monotonic() + GONE_S
        while session(sid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: (Path(f"/proc/{pid}/cmdline").read_bytes()[:120] if Path(f"/proc/{pid}").exists() else b"")
                for pid in session(sid)}
        assert not left, f"still running {GONE_S} s after kill -9 of zstag: {left}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in session(sid):  # only on failure: nothing of this test outlives it
            os.kill(pid, signal.SIGKILL)


def test_kill_9_of_preprocess_leaves_no_worker_fork_server_or_resource_tracker(tmp_path):
    write_folder_corpus(tmp_path / "corpus")
    kill_and_check(tmp_path, ["preprocess", "--corpus", "folder", "--root", str(tmp_path / "corpus"),
                              "--out", str(tmp_path / "cache"), "--workers", "2", "--no-progress"], "01.wav")


def test_kill_9_of_tag_leaves_no_worker_fork_server_or_resource_tracker(tmp_path, tiny_model_dir):
    write_folder_corpus(tmp_path / "corpus")
    kill_and_check(tmp_path, ["tag", str(tmp_path / "corpus"), "--model", tiny_model_dir, "-l", "rock,jazz",
                              "--workers", "2", "--no-cache"], "01.wav")
