"""The audio a tag write must keep (tagfiles.write): a digest of a file's coded audio without its metadata,
taken of the copy before and after mutagen tags it. mutagen rewrites only metadata, as it parsed it; in a
damaged container (a FLAC metadata block whose length runs into the frames, an Ogg page cut short, an MP4
atom of a wrong size) what it parsed as metadata may hold audio, which the rewrite would drop. A digest
that differs, or a container that cannot be walked, refuses the file; its bytes stay as they were.

What is compared, per container: FLAC, the bytes after the last metadata block, which must start with a
frame sync; MP3, the bytes between the ID3v2 tag and an ID3v1 tag (mutagen updates both); Ogg Vorbis and
Opus, the packets after the codec headers (pages may be renumbered around a longer comment packet); MP4,
the payload of every mdat atom. Ogg FLAC is not checked (no zstag test file; rare).
"""

from __future__ import annotations

import hashlib

CHUNK = 1 << 20
FLAC_SYNC = (0xFF, 0xF8)  # a frame header's first 15 bits: 0xFFF8 (fixed block size) or 0xFFF9 (variable)
OGG_HEADERS = {"OggVorbis": 3, "OggOpus": 2}  # header packets before the audio packets


class Unwalkable(ValueError):
    """The container's structure does not hold together: its audio cannot be told from its metadata."""


def audio_digest(path: str, kind: str) -> str | None:
    """sha256 of the file's coded audio (see the module docstring), read as a stream; None for a kind not
    checked (Ogg FLAC, anything else). kind: the mutagen class's name. Unwalkable for a damaged container;
    OSError as open() raises it."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        digest = hashlib.sha256()
        if kind == "FLAC":
            _hash_range(f, _flac_audio_start(f, size), size, digest)
        elif kind in ("MP3", "EasyMP3"):
            start = _id3v2_end(f, 0, size)
            end = size - 128 if size - 128 >= start and _read(f, size - 128, 3) == b"TAG" else size
            _hash_range(f, start, end, digest)
        elif kind in OGG_HEADERS:
            _hash_ogg_audio(f, size, OGG_HEADERS[kind], digest)
        elif kind in ("MP4", "EasyMP4"):
            for start, end in _mp4_mdat(f, size):
                _hash_range(f, start, end, digest)
        else:
            return None
    return digest.hexdigest()


def _read(f, pos: int, n: int) -> bytes:
    f.seek(pos)
    return f.read(n)


def _hash_range(f, start: int, end: int, digest) -> None:
    f.seek(start)
    left = end - start
    while left > 0:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise Unwalkable("the file ends early")
        digest.update(chunk)
        left -= len(chunk)


def _id3v2_end(f, pos: int, size: int) -> int:
    """Where an ID3v2 tag starting at pos ends (pos when there is none)."""
    head = _read(f, pos, 10)
    if len(head) < 10 or head[:3] != b"ID3":
        return pos
    length = 0
    for byte in head[6:10]:
        if byte & 0x80:
            raise Unwalkable("ID3v2 size is not syncsafe")
        length = length << 7 | byte
    end = pos + 10 + length + (10 if head[5] & 0x10 else 0)  # + the footer
    if end > size:
        raise Unwalkable("ID3v2 tag runs past the end of the file")
    return end


def _flac_audio_start(f, size: int) -> int:
    pos = _id3v2_end(f, 0, size)  # some taggers put an ID3v2 tag before "fLaC"
    if _read(f, pos, 4) != b"fLaC":
        raise Unwalkable("no fLaC marker")
    pos += 4
    while True:
        head = _read(f, pos, 4)
        if len(head) < 4:
            raise Unwalkable("metadata block header past the end of the file")
        pos += 4 + int.from_bytes(head[1:4], "big")
        if head[0] & 0x80:  # the last block
            break
    sync = _read(f, pos, 2)
    if pos > size or (sync and (len(sync) < 2 or sync[0] != FLAC_SYNC[0] or sync[1] & 0xFE != FLAC_SYNC[1])):
        raise Unwalkable("the metadata blocks do not end where a FLAC frame starts")
    return pos


def _hash_ogg_audio(f, size: int, headers: int, digest) -> None:
    """The lacing values and bytes of every packet after the first `headers`: a packet's lacing follows from
    its length alone, so the digest does not depend on how packets are laid out in pages."""
    pos, packets = 0, 0
    while pos < size:
        head = _read(f, pos, 27)
        if len(head) < 27 or head[:4] != b"OggS":
            raise Unwalkable(f"no Ogg page at byte {pos}")
        lacing = f.read(head[26])
        body = f.read(sum(lacing))
        if len(lacing) < head[26] or len(body) < sum(lacing):
            raise Unwalkable("an Ogg page runs past the end of the file")
        at = 0
        for value in lacing:
            if packets >= headers:
                digest.update(bytes((value,)))
                digest.update(body[at:at + value])
            at += value
            packets += value < 255
        pos += 27 + len(lacing) + len(body)


def _mp4_mdat(f, size: int) -> list[tuple[int, int]]:
    spans, pos = [], 0
    while pos + 8 <= size:
        head = _read(f, pos, 16)
        length, name, header = int.from_bytes(head[:4], "big"), head[4:8], 8
        if length == 1:
            length, header = int.from_bytes(head[8:16], "big"), 16
        elif length == 0:
            length = size - pos  # the last atom, to the end of the file
        if length < header or pos + length > size:
            raise Unwalkable(f"MP4 atom {name!r} at byte {pos} has a wrong size")
        if name == b"mdat":
            spans.append((pos + header, pos + length))
        pos += length
    if pos != size:
        raise Unwalkable("bytes after the last MP4 atom")
    return spans
