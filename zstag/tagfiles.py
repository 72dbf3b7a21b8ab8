"""Write chosen labels into audio files' own tags (`zstag tag --write-tags`), with mutagen.

Fields: by default zstag's own, which no other tool writes, so the user's tags are never clobbered:
the Vorbis comment ``ZSTAG`` (Ogg Vorbis, Opus, FLAC), the ID3 frame ``TXXX:ZSTAG`` (mp3) and the MP4
freeform atom ``----:com.zstag:ZSTAG`` (m4a), holding the labels best first, joined by "; ". ``ZSTAG_MODEL``
beside it holds the model id, so that labels from another model are recognisable. ``--tag-field`` writes
a standard field instead (genre, mood, grouping, comment): replaced, or with ``append`` extended by the
labels it does not hold yet (compared case-insensitively, across values split at ";"), so that a re-run
adds nothing twice. A file whose fields already hold the new values is not rewritten.

ID3 versions: an mp3's tag keeps its version, since older players (Windows Explorer before 10, car stereos)
read no ID3v2.4. A v2.3 tag is rewritten as v2.3 with the user's frames as they were (mutagen's default
reading would merge TYER/TDAT into v2.4's TDRC and drop TSIZ, TRDA...); mood, which v2.3 has no frame for, is
``TXXX:MOOD`` there (as Picard writes it). A v2.2 tag, which mutagen cannot write, becomes v2.3; a v2.4 tag
stays v2.4, and a file without a tag gets v2.4.

Safety: only the tags change, never the audio: mutagen rewrites the metadata blocks, and the tagged copy's
coded audio is compared with the original's (tagcheck.py), which refuses a damaged container whose
"metadata" holds audio; the tests decode every format before and after. A file is never written in place:
its bytes are copied to a hidden temporary file beside it (same folder: same file system), the copy is
tagged, flushed to disk, given the original's owner, extended attributes (users' own tags in file
managers, ACLs) and mode, and renamed over the original, then the folder is flushed. An error, Ctrl-C or
kill at any point leaves the original as it was (only a kill -9 may leave the hidden ``.NAME.zstag-*`` copy).
Refused, one line each: read-only files, files with several hard links (the rename would split them),
formats zstag does not tag (WAV, AIFF...), and files whose content is no longer what was embedded
(their content digest differs from the one the embedding cache keyed the scores by).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass

from zstag.paths import _fsync, _fsync_folder, read_only
from zstag.errors import ZstagError

ZSTAG_FIELD = "zstag"
FIELDS = (ZSTAG_FIELD, "genre", "mood", "grouping", "comment")
SEPARATOR = "; "
ZSTAG_NAME, MODEL_NAME = "ZSTAG", "ZSTAG_MODEL"
MP4_ZSTAG_MEAN = "com.zstag"
# Standard fields as Picard and beets map them: Vorbis comment names, ID3v2.4 frames (v2.3: TXXX:MOOD for
# mood), MP4 atoms.
VORBIS_NAMES = {"genre": "GENRE", "mood": "MOOD", "grouping": "GROUPING", "comment": "COMMENT"}
ID3_FRAMES = {"genre": "TCON", "mood": "TMOO", "grouping": "TIT1"}  # comment: COMM with an empty description
ID3V23_FRAMES = {**ID3_FRAMES, "mood": "TXXX:MOOD"}
MP4_ATOMS = {"genre": "\xa9gen", "mood": "----:com.apple.iTunes:MOOD", "grouping": "\xa9grp", "comment": "\xa9cmt"}
TAGGED_FORMATS = "mp3, ogg, opus, flac, m4a"


class TagWriteError(ZstagError):
    """One file could not be tagged; str(e) is one line naming the file and the cause."""


@dataclass
class Change:
    """What writing a file's labels changes: each field's old and new values (lists of strings)."""
    path: str
    fields: dict[str, tuple[list[str], list[str]]]  # field name as the file spells it → (old, new)

    @property
    def changed(self) -> bool:
        return any(old != new for old, new in self.fields.values())


# --- the fields of each container ----------------------------------------------------------------


def _container(audio) -> str:
    """ "id3" (saved as ID3v2.4), "id3v23" (a tag older than v2.4: saved as v2.3), "vorbis" or "mp4" for the
    mutagen file types zstag tags; TagWriteError otherwise."""
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggflac import OggFLAC
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis

    if isinstance(audio, MP3):
        return "id3v23" if audio.tags is not None and audio.tags.version < (2, 4, 0) else "id3"
    if isinstance(audio, (OggVorbis, OggOpus, FLAC, OggFLAC)):
        return "vorbis"
    if isinstance(audio, MP4):
        return "mp4"
    raise TagWriteError(f"cannot tag {type(audio).__name__} files (zstag writes tags to {TAGGED_FORMATS})")


def _name(kind: str, field: str) -> str:
    """The field's name in the file: what the dry run shows and the Change is keyed by."""
    if kind == "vorbis":
        return {ZSTAG_FIELD: ZSTAG_NAME, "model": MODEL_NAME}.get(field) or VORBIS_NAMES[field]
    if kind in ("id3", "id3v23"):
        own = {ZSTAG_FIELD: f"TXXX:{ZSTAG_NAME}", "model": f"TXXX:{MODEL_NAME}", "comment": "COMM"}
        return own.get(field) or (ID3_FRAMES if kind == "id3" else ID3V23_FRAMES)[field]
    own = {ZSTAG_FIELD: f"----:{MP4_ZSTAG_MEAN}:{ZSTAG_NAME}", "model": f"----:{MP4_ZSTAG_MEAN}:{MODEL_NAME}"}
    return own.get(field) or MP4_ATOMS[field]


def _get(tags, kind: str, name: str) -> list[str]:
    if tags is None:
        return []
    if kind == "vorbis":
        return list(tags.get(name, []))
    if kind in ("id3", "id3v23"):
        if name == "COMM":
            return [t for frame in tags.getall("COMM") if frame.desc == "" for t in frame.text]
        frames = tags.getall(name)
        if name == "TCON":
            return [g for frame in frames for g in frame.genres]  # "(17)" references spelled out
        return [str(t) for frame in frames for t in frame.text]
    values = tags.get(name, [])
    return [bytes(v).decode("utf-8", "replace") if name.startswith("----") else str(v) for v in values]


def _set(tags, kind: str, name: str, values: list[str]) -> None:
    if kind == "vorbis":
        if values:
            tags[name] = values
        elif name in tags:
            del tags[name]
    elif kind in ("id3", "id3v23"):
        from mutagen import id3

        if kind == "id3v23" and len(values) > 1:  # v2.3 has one text per frame: joined as zstag joins labels
            values = [SEPARATOR.join(values)]
        if name == "COMM":
            for key in [k for k in tags.keys() if k.startswith("COMM:") and tags[k].desc == ""]:
                del tags[key]
            if values:
                tags.add(id3.COMM(encoding=3, lang="eng", desc="", text=values))
        elif name.startswith("TXXX:"):
            tags.delall(name)
            if values:
                tags.add(id3.TXXX(encoding=3, desc=name[5:], text=values))
        else:
            tags.delall(name)
            if values:
                tags.add(getattr(id3, name)(encoding=3, text=values))
    else:
        from mutagen.mp4 import MP4FreeForm

        if not values:
            tags.pop(name, None)
        elif name.startswith("----"):
            tags[name] = [MP4FreeForm(v.encode("utf-8")) for v in values]
        else:
            tags[name] = values


def _items(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(";") if part.strip()]


def new_values(old: list[str], labels: list[str], *, append: bool) -> list[str]:
    """The field's values after writing labels (best first): one value, the labels joined by "; ";
    append: the old values kept, plus one value joining the labels they do not hold yet."""
    if not append:
        return [SEPARATOR.join(labels)] if labels else []
    held = {item.casefold() for item in _items(old)}
    missing = [label for label in dict.fromkeys(labels) if label.casefold() not in held]
    return old + [SEPARATOR.join(missing)] if missing else old


def plan(path: str, labels: list[str], model_id: str, *, field: str = ZSTAG_FIELD, append: bool = False):
    """(Change, mutagen file) for writing labels to path; reads the file, writes nothing.

    The zstag field with no labels (all under --threshold) is removed; a standard field is then left
    as it was (never emptied)."""
    import mutagen

    if field not in FIELDS:
        raise ValueError(f"unknown tag field {field!r} (choose from {', '.join(FIELDS)})")
    try:
        audio = mutagen.File(path)
    except (mutagen.MutagenError, OSError) as exc:
        raise TagWriteError(f"{path}: cannot read its tags: {_cause(exc)}") from None
    except Exception as exc:  # damaged bytes can also end in IndexError, struct.error... inside mutagen
        raise TagWriteError(f"{path}: cannot read its tags (damaged?): {type(exc).__name__}: {_cause(exc)}") from None
    if audio is None:
        raise TagWriteError(f"{path}: cannot tag this format (zstag writes tags to {TAGGED_FORMATS})")
    try:
        kind = _container(audio)
    except TagWriteError as exc:
        raise TagWriteError(f"{path}: {exc}") from None
    fields = {}
    name = _name(kind, field)
    old = _get(audio.tags, kind, name)
    fields[name] = (old, old if field != ZSTAG_FIELD and not labels else new_values(old, labels, append=append))
    model_name = _name(kind, "model")
    fields[model_name] = (_get(audio.tags, kind, model_name), [model_id])
    return Change(path, fields), audio


def write(path: str, labels: list[str], model_id: str, *, digest: str | None, field: str = ZSTAG_FIELD,
          append: bool = False, dry_run: bool = False) -> tuple[Change, str | None]:
    """Write labels into path's tags (see the module docstring); returns (Change, the new content digest,
    None when nothing was written). digest: the content digest the labels were computed from
    (embedcache.content_digest); the file is refused if its content differs. TagWriteError, one line."""
    from zstag.embedcache import content_digest

    change, audio = plan(path, labels, model_id, field=field, append=append)
    if not change.changed:
        return change, None
    target = os.path.realpath(path)  # a symbolic link stays; its target gets the tags
    st = _replaceable(path, target)
    if dry_run:
        return change, None
    folder, name = os.path.split(target)
    base, ext = os.path.splitext(name)
    try:  # the copy keeps the extension: mutagen recognises some formats (mp3) by it
        fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{base}.zstag-", suffix=ext)
    except OSError as exc:
        raise TagWriteError(f"{path}: cannot write a temporary copy beside it: {_cause(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as out, open(target, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        if digest is not None and content_digest(tmp) != digest:
            raise TagWriteError(f"{path}: changed since it was embedded (its labels may not fit it): not tagged; "
                                "run the command again")
        kept = _audio_digest(path, tmp, type(audio).__name__)  # the copy's bytes are the original's
        _apply(type(audio), tmp, change)
        if _audio_digest(path, tmp, type(audio).__name__) != kept:
            raise TagWriteError(f"{path}: tagging would change its audio stream (a damaged container?): not tagged")
        with open(tmp, "rb+") as handle:
            _fsync(handle.fileno())
        if hasattr(os, "chown") and (os.stat(tmp).st_uid, os.stat(tmp).st_gid) != (st.st_uid, st.st_gid):
            os.chown(tmp, st.st_uid, st.st_gid)
        _copy_xattrs(path, target, tmp)  # after chown, which may drop a file-capability attribute
        os.chmod(tmp, stat.S_IMODE(st.st_mode))  # last: chown clears set-id bits, an ACL attribute sets the mode
        if _stamp(os.stat(target)) != _stamp(st):
            raise TagWriteError(f"{path}: changed while it was being tagged: not tagged; run the command again")
        new_digest = content_digest(tmp)
        os.replace(tmp, target)
    except TagWriteError:
        _remove(tmp)
        raise
    except BaseException as exc:  # a kill (KeyboardInterrupt) too: the original stays, the copy goes
        _remove(tmp)
        if isinstance(exc, Exception):
            raise TagWriteError(f"{path}: cannot write its tags: {_cause(exc)}") from None
        raise
    _fsync_folder(folder or ".")
    return change, new_digest


def _replaceable(path: str, target: str) -> os.stat_result:
    """target's stat, or TagWriteError when zstag should not replace it (a dry run says so too)."""
    try:
        st = os.stat(target)
    except OSError as exc:
        raise TagWriteError(f"{path}: cannot read: {_cause(exc)}") from None
    if read_only(st, target):
        raise TagWriteError(f"{path}: read-only file: not tagged")
    if st.st_nlink > 1:
        raise TagWriteError(f"{path}: has {st.st_nlink} hard links: replacing it would split them; not tagged")
    return st


def _copy_xattrs(path: str, source: str, copy: str) -> None:
    """The file's extended attributes onto its tagged copy: file managers keep users' own tags and ratings
    there (KDE: user.xdg.tags, user.baloo.rating), and POSIX ACLs live there (system.posix_acl_*). One that
    cannot be kept refuses the file (TagWriteError), except security.* labels, which the file system gives
    a new file itself (SELinux). Linux only (os.listxattr)."""
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(source)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return  # a file system without extended attributes: nothing to keep
        raise
    for name in names:
        try:
            os.setxattr(copy, name, os.getxattr(source, name))
        except OSError as exc:
            if not name.startswith("security."):
                raise TagWriteError(f"{path}: cannot keep its extended attribute {name} on the tagged copy "
                                    f"({_cause(exc)}): not tagged") from None


def _audio_digest(path: str, copy: str, kind: str) -> str | None:
    """tagcheck.audio_digest of the copy; TagWriteError when its container cannot be walked."""
    from zstag.tagcheck import Unwalkable, audio_digest

    try:
        return audio_digest(copy, kind)
    except Unwalkable as exc:
        raise TagWriteError(f"{path}: damaged container ({exc}): not tagged") from None


def _apply(cls, tmp: str, change: Change) -> None:
    audio = _load(cls, tmp)
    kind = _container(audio)
    if audio.tags is None:
        audio.add_tags()
    for name, (_, new) in change.fields.items():
        _set(audio.tags, kind, name, new)
    if kind == "id3":
        audio.save(v2_version=4)
    elif kind == "id3v23":
        audio.save(v2_version=3, v23_sep=None)  # sep None: others' multi-value frames are written as read
    else:
        audio.save()


def _load(cls, tmp: str):
    """The copy as mutagen reads it to rewrite its tags. ID3 is read untranslated, then brought to the version
    it is saved as: a v2.3 tag's frames stay as they were (see the module docstring)."""
    from mutagen.mp3 import MP3

    if not issubclass(cls, MP3):
        return cls(tmp)
    audio = cls(tmp, translate=False)
    if audio.tags is not None and audio.tags.version >= (2, 4, 0):
        audio.tags.update_to_v24()  # what mutagen's default reading does
    elif audio.tags is not None and audio.tags.version < (2, 3, 0):
        audio.tags.update_to_v23()  # v2.2 frames (already renamed on reading) made valid v2.3
    return audio


def _stamp(st: os.stat_result) -> tuple:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _cause(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


def describe(change: Change) -> str:
    """The dry run's lines for one file: each field's old and new values."""
    from zstag.paths import one_line

    lines = [one_line(change.path)]
    for name, (old, new) in change.fields.items():
        shown_old = " | ".join(old) if old else "(none)"
        if old == new:
            lines.append(f"  {name}: {shown_old} (unchanged)")
        else:
            lines.append(f"  {name}: {shown_old} -> {' | '.join(new) if new else '(removed)'}")
    return "\n".join(lines) + "\n"


# --- a tag run ---------------------------------------------------------------------------------


@dataclass
class WriteReport:
    changes: list[Change]  # every file planned or written, in order
    written: int  # files rewritten (0 in a dry run)
    failures: list[str]  # one line each
    warnings: list[str]  # one line each: the run did its work all the same

    def dry_run_text(self) -> str:
        return "".join(describe(change) for change in self.changes)


def record_labels(record: dict) -> list[str]:
    """The labels a tagger.file_records record chose, best first: its tags, or the --single label."""
    if "tags" in record:
        return [tag["label"] for tag in record["tags"]]
    return [record["label"]] if record.get("label") is not None else []


def write_records(records: list[dict], model_id: str, digests: dict[str, str | None], *, field: str = ZSTAG_FIELD,
                  append: bool = False, dry_run: bool = False, use_cache: bool = True, notice=None) -> WriteReport:
    """Write each record's labels into its file (tagger.file_records' records, in order); a file that
    fails is one line in the report and the others go on. digests: path → the content digest its scores
    came from (embedcache.file_digests before embedding). With the cache, a rewritten file's embeddings
    are kept under its new digest (the audio is the same), so it is not embedded again. notice: where a cache
    that cannot be opened is reported (embedcache.EmbeddingCache.open_default)."""
    from zstag.embedcache import EmbeddingCache, file_stamp

    report = WriteReport([], 0, [], [])
    moved = []  # (old digest, new digest, real path)
    for record in records:
        path = record["path"]
        digest = digests.get(path)
        if digest is None and not dry_run:
            report.failures.append(f"{path}: changed or unreadable since it was embedded: not tagged")
            continue
        try:
            change, new_digest = write(path, record_labels(record), model_id, digest=digest, field=field,
                                       append=append, dry_run=dry_run)
        except TagWriteError as exc:
            report.failures.append(str(exc))
            continue
        report.changes.append(change)
        if new_digest is not None:
            report.written += 1
            moved.append((digest, new_digest, os.path.realpath(path)))
    cache = EmbeddingCache.open_default(notice) if use_cache and moved else None
    if cache is not None:
        try:
            for old, new, real in moved:
                cache.copy_rows(old, new)
                stamp = file_stamp(real)
                if stamp is not None:
                    cache.remember_digests([(real, stamp, new)])
        except Exception as exc:  # sqlite3.Error: the tags are written; the files will be embedded again
            report.warnings.append(f"embedding cache: cannot record the tagged files: {_cause(exc)}")
        finally:
            cache.close()
    return report
