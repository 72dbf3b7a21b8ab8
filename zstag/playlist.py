"""Extended M3U playlists (.m3u8: UTF-8) of ranked tracks, for `zstag search` / `zstag similar`.

    #EXTM3U
    #EXTINF:183,Artist - Title
    Music/Artist/track.flac

Written beside the music (the playlist's folder holds a track), a track's path is relative to that
folder, so the library and its playlists can move together; other tracks keep absolute paths. On stdout
paths are written as given. The title is the file's own artist and title tags where mutagen reads them,
else the file name without its extension; the duration is whole seconds, -1 when unknown (the format's
"unknown"). A file name that is not UTF-8 is written as its own bytes, so that players find the file.
"""

from __future__ import annotations

import os

from zstag.paths import valid_text


def m3u8(paths: list[str], durations: list[float | None], playlist: str | None = None) -> str:
    """The playlist's text; playlist: the file it is written to (None: stdout)."""
    folder = os.path.dirname(os.path.abspath(playlist)) if playlist is not None else None
    lines = ["#EXTM3U"]
    for path, seconds in zip(paths, durations):
        length = -1 if seconds is None else round(seconds)
        title = valid_text(track_title(path)).replace("\n", " ").replace("\r", " ")
        lines += [f"#EXTINF:{length},{title}", entry_path(path, folder)]
    return "\n".join(lines) + "\n"


def entry_path(path: str, folder: str | None) -> str:
    """path relative to folder when folder holds it (forward slashes), else absolute; as given without folder."""
    if folder is None:
        return path
    real = os.path.abspath(path)
    if os.path.commonpath([real, folder]) == folder:
        return os.path.relpath(real, folder).replace(os.sep, "/")
    return real


def track_title(path: str) -> str:
    """"Artist - Title" from the file's tags (mutagen's common names), the title alone, or the file name."""
    import mutagen

    name = os.path.splitext(os.path.basename(path))[0]
    try:
        audio = mutagen.File(path, easy=True)
    except (mutagen.MutagenError, OSError, ValueError):
        return name
    tags = getattr(audio, "tags", None)
    if not tags:
        return name
    try:
        title, artist = tags.get("title"), tags.get("artist")
    except (KeyError, ValueError):  # tag types without easy names
        return name
    if title and artist:
        return f"{artist[0]} - {title[0]}"
    return title[0] if title else name
