"""paths.atomic_write: whole or nothing, flushed to disk before the rename."""

import os
import stat

import pytest

from zstag import paths


def test_writes_bytes_and_text_as_ordinary_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    old = os.umask(0o022)  # a new file: 0666 less the umask (the runner's own umask may be 002 or 077)
    try:
        paths.atomic_write(target, "é\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == "é\n".encode()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.chmod(target, 0o640)
    paths.atomic_write(target, b"\x00\x01")  # a file replaced keeps its permissions
    assert target.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
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


# --- check_output: no command writes over its own inputs ----------------------------------------


def test_an_output_that_is_an_input_under_any_spelling_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    source = data / "labels.txt"
    source.write_text("jazz\n")
    (tmp_path / "soft.txt").symlink_to(source)
    os.link(source, tmp_path / "hard.txt")
    inputs = [paths.Input("the input file", tmp_path / "other.wav"), paths.Input("the labels file", source)]
    for output in (source, data / ".." / "data" / "labels.txt", tmp_path / "soft.txt", tmp_path / "hard.txt"):
        with pytest.raises(paths.OutputIsInputError) as caught:
            paths.check_output(output, "-o", inputs)
        assert str(caught.value) == f"{output}: -o is the labels file {source} (it would be overwritten)"
    paths.check_output(data / "new.json", "-o", inputs)  # beside an input, not one: fine
    paths.check_output(os.devnull, "-o", [paths.Input("the input file", os.devnull)])  # written to, not replaced


def test_nothing_may_be_written_inside_a_folder_read_as_a_whole(tmp_path):
    cache = tmp_path / "features"
    cache.mkdir()
    (tmp_path / "alias").symlink_to(cache)
    whole = [paths.Input("the feature cache", cache, whole=True)]
    for output in (cache / "cache.json", cache / "new.json", tmp_path / "alias" / "new.json", cache / "sub" / "m"):
        with pytest.raises(paths.OutputIsInputError, match=f"lies inside the feature cache {cache} "):
            paths.check_output(output, "--out", whole)
    paths.check_output(tmp_path / "features.json", "--out", whole)  # a name that only starts like the folder's


def test_a_folder_output_may_not_hold_an_input_except_the_allowed_ones(tmp_path):
    out = tmp_path / "model"
    (out / "sub").mkdir(parents=True)
    (out / "split.json").write_text("{}")
    (out / "sub" / "vectors.txt").write_text("jazz 1\n")
    split = paths.Input("the split file", out / "split.json")
    paths.check_output(out, "--out", [split], folder=True, allowed=[out / "split.json"])
    paths.check_output(out, "--out", [paths.Input("the word-vector file", "random:50:0")], folder=True)  # no file
    for item in (split, paths.Input("the word-vector file", out / "sub" / "vectors.txt")):
        with pytest.raises(paths.OutputIsInputError) as caught:
            paths.check_output(out, "--out", [item], folder=True)
        assert str(caught.value) == (f"{out}: --out holds {item.what} {item.path} "
                                     "(the command writes its own files there)")
    with pytest.raises(paths.OutputIsInputError, match="is the corpus root"):
        paths.check_output(out, "--out", [paths.Input("the corpus root", out / "sub" / "..")], folder=True)
    paths.check_output(tmp_path / "new", "--out", [split], folder=True)  # not there yet: holds nothing


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(paths.OutputIsInputError) as caught:
        paths.check_distinct({"--out": tmp_path / "r.json", "--plot": tmp_path / "sub" / ".." / "r.json"})
    plot = tmp_path / "sub" / ".." / "r.json"
    assert str(caught.value) == f"{plot}: --plot is the --out file {tmp_path / 'r.json'} (one would overwrite the other)"
    paths.check_distinct({"--out": tmp_path / "r.json", "--plot": tmp_path / "r.png"})
    paths.check_distinct({"--out": tmp_path / "r.json", "--plot": None})


# --- walk ---------------------------------------------------------------------------------------


def test_walk_is_os_walk_topdown(tmp_path):
    for folder in ("a/x", "a/y/z", "b", ".hidden/q"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("a/1.wav", "a/y/z/2.wav", "b/3.wav", "top.wav"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "b" / "to_a").symlink_to(tmp_path / "a")
    for follow in (False, True):
        assert list(paths.walk(tmp_path, follow_links=follow)) == list(os.walk(tmp_path, followlinks=follow))
    walked = []
    for folder, dirs, _ in paths.walk(tmp_path):
        walked.append(os.path.relpath(folder, tmp_path))
        dirs[:] = sorted(d for d in dirs if d not in (".hidden", "y"))  # pruned and ordered in place
    assert walked == [".", "a", "a/x", "b"]
    errors = []
    assert list(paths.walk(tmp_path / "missing", onerror=errors.append)) == []
    assert [e.filename for e in errors] == [str(tmp_path / "missing")]


def test_walk_goes_deeper_than_the_recursion_limit(tmp_path, deep_folder):
    import sys

    levels = sys.getrecursionlimit() + 100  # 1,100 by default
    deepest = deep_folder(tmp_path, levels)
    assert [folder for folder, _, _ in paths.walk(tmp_path)][-1] == deepest
    if sys.version_info < (3, 12):  # os.walk, which find_audio_files and the corpus readers called, recurses
        with pytest.raises(RecursionError):
            list(os.walk(tmp_path))


# --- file names in outputs ----------------------------------------------------------------------


def test_file_names_become_valid_utf8_and_one_line():
    from urllib.parse import unquote_to_bytes

    raw = b"/m\xfcsic/caf\xc3\xa9 100%.wav"  # a Latin-1 byte, UTF-8 "é", a "%"
    name = os.fsdecode(raw)
    assert paths.valid_text(name) == "/m\ufffdsic/caf\u00e9 100%.wav"
    assert paths.valid_text("caf\u00e9") == "caf\u00e9" and paths.name_bytes("caf\u00e9") is None
    assert unquote_to_bytes(paths.name_bytes(name)) == raw and paths.name_bytes(name).isascii()
    assert paths.valid_text("a\ud800b") == "a?b"  # not os.fsdecode's: still valid
    assert paths.one_line(name + "\n\x1b[31m\u2028\t") == "/m\\xfcsic/caf\u00e9 100%.wav\\n\\x1b[31m\\u2028\\t"


def test_names_stored_in_files_read_back_exactly():
    """stored_name/read_name (lists) and put_name/get_name (records): a UTF-8 name as itself, one that is
    not as U+FFFD text plus its percent-encoded bytes, read back to os.fsdecode's very string."""
    import json

    odd = os.fsdecode(b"jazz/caf\xe9 100%.wav")
    for name in (odd, "jazz/caf\u00e9 100%.wav", "%E9"):
        stored = paths.stored_name(name)
        assert isinstance(stored, dict) == (name == odd)
        record = paths.put_name({}, "id", name)
        assert sorted(record) == (["id", "id_bytes"] if name == odd else ["id"])
        again = json.loads(json.dumps([stored, record], ensure_ascii=False).encode("utf-8"))  # strict UTF-8
        assert paths.read_name(again[0]) == name == paths.get_name(again[1], "id")
    assert paths.stored_name(odd) == {"text": "jazz/caf\ufffd 100%.wav", "bytes": "jazz/caf%E9%20100%25.wav"}
    for bad in (3, None, {"text": "x"}):
        with pytest.raises((TypeError, KeyError)):
            paths.read_name(bad)
