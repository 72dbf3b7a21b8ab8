"""paths.atomic_write: whole or nothing, flushed to disk before the rename."""

import os
import stat

import pytest

from zstag import paths


def test_writes_bytes_and_text_as_ordinary_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    paths.atomic_write(target, "é\n")
    assert target.read_bytes() == "é\n".encode()
    paths.atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(paths.os, "replace", broken)
    with pytest.raises(OSError):
        paths.atomic_write(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_the_data_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(paths.os, "fsync", lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                       real_fsync(fd)))
    monkeypatch.setattr(paths.os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b)))
    paths.atomic_write(tmp_path / "out.bin", b"data")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]  # the file, the rename, the folder


def test_a_file_system_without_fsync_still_gets_the_file(tmp_path, monkeypatch):
    import errno

    def unsupported(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(paths.os, "fsync", unsupported)
    paths.atomic_write(tmp_path / "out.txt", "ok")
    assert (tmp_path / "out.txt").read_text() == "ok"


def test_a_device_or_fifo_is_written_to_not_replaced(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    paths.atomic_write(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    paths.atomic_write(os.devnull, "gone")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # /dev/null stays a device (a rename would replace it as root)


def test_a_link_is_followed_and_its_target_replaced(tmp_path):
    """follow_links (a user's output file, `tag -o`, `eval --out`): the link's final target is replaced."""
    folder = tmp_path / "real"
    folder.mkdir()
    target = folder / "out.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    paths.atomic_write(link, "new", follow_links=True)
    assert link.is_symlink() and os.readlink(link) == str(target) and target.read_text() == "new"
    assert os.listdir(folder) == ["out.json"] and sorted(os.listdir(tmp_path)) == ["link.json", "real"]
    chain = tmp_path / "chain.json"  # a link to a link
    chain.symlink_to(link)
    paths.atomic_write(chain, "newer", follow_links=True)
    assert chain.is_symlink() and link.is_symlink() and target.read_text() == "newer"
    dangling = tmp_path / "dangling.json"  # its target is created, in a folder that exists ...
    dangling.symlink_to(folder / "later.json")
    paths.atomic_write(dangling, "made", follow_links=True)
    assert dangling.is_symlink() and (folder / "later.json").read_text() == "made"
    nowhere = tmp_path / "nowhere.json"  # ... but no folder is made for it
    nowhere.symlink_to(tmp_path / "missing" / "x.json")
    with pytest.raises(OSError):
        paths.atomic_write(nowhere, "no", follow_links=True)
    assert not (tmp_path / "missing").exists()


def test_the_projects_own_files_replace_a_link_not_its_target(tmp_path):
    """A model or cache file that is a link into a store shared elsewhere (DVC, git-annex, a hub cache)
    gets its own new file; the shared one is never changed."""
    shared = tmp_path / "store.bin"
    shared.write_bytes(b"shared")
    link = tmp_path / "model" / "weights.safetensors"
    link.parent.mkdir()
    link.symlink_to(shared)
    paths.atomic_write(link, b"mine")
    assert not link.is_symlink() and link.read_bytes() == b"mine" and shared.read_bytes() == b"shared"


def test_the_file_stdout_goes_to_is_written_through_stdout(tmp_path):
    """`-o /dev/stdout >> log`: the bytes go through this process's stdout (the redirection's append
    kept), the file is not replaced. Run in a child whose stdout is the log, opened for appending."""
    import subprocess
    import sys

    log = tmp_path / "log.txt"
    log.write_text("before\n")
    code = "import sys; from zstag import paths; print('printed'); paths.atomic_write('/dev/stdout', 'written\\n')"
    with open(log, "ab") as handle:
        subprocess.run([sys.executable, "-c", code], stdout=handle, check=True, timeout=60)
    assert log.read_text() == "before\nprinted\nwritten\n"


def test_a_link_to_a_fifo_or_device_is_written_through(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "to-pipe"
    link.symlink_to(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    paths.atomic_write(link, "through the link")
    reader.join(timeout=10)
    assert got == [b"through the link"] and link.is_symlink() and stat.S_ISFIFO(os.stat(fifo).st_mode)
    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    paths.atomic_write(null, "gone")
    assert null.is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)
