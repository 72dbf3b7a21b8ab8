"""GTZAN: genres/<genre>/<genre>.NNNNN.wav (or .au), 10 genres x 100 clips, one label each.

Also accepted: the genre folders directly under the root, and Kaggle's genres_original/ (under the
root or under Data/). GTZAN has no artist metadata, so artist is None.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from zstag.corpora import Corpus, CorpusError, build_corpus, is_audio

# Where the genre folders may sit, relative to the root, in order of preference.
GENRE_PARENTS = ("genres", "genres_original", "Data/genres_original", ".")
CLIP_NAME = re.compile(r"^(?P<genre>[^.]+)\.(?P<number>\d{5})\.[A-Za-z0-9]+$")
EXPECTED = "expected genres/<genre>/<genre>.NNNNN.wav"


def _clips(folder: Path) -> list[str]:
    """File names in `folder` named <folder name>.NNNNN.<audio extension>."""
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            m = CLIP_NAME.match(entry.name)
            if m and m["genre"] == folder.name and is_audio(entry.name) and entry.is_file():
                names.append(entry.name)
    return names


def genre_folder(root: Path) -> Optional[Path]:
    """The folder holding the genre subfolders, or None when nothing under root looks like GTZAN."""
    for parent in GENRE_PARENTS:
        base = root / parent
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            if entry.is_dir() and _clips(entry):
                return base
    return None


def read(root: Path, *, vocabulary=None) -> Corpus:
    root = Path(root)
    base = genre_folder(root) if root.is_dir() else None
    if base is None:
        raise CorpusError(f"{root}: not a GTZAN root: {EXPECTED}")
    rows = []
    for genre_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for name in sorted(_clips(genre_dir)):
            rows.append((os.path.splitext(name)[0], genre_dir / name, (genre_dir.name,), None))
    return build_corpus("gtzan", "gtzan", root, rows, single_label=True, vocabulary=vocabulary,
                        options={"vocabulary": vocabulary}, check_files=False)
