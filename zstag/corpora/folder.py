"""Folder per label: <root>/<label>/**/<audio file>; the subfolder name is the track's one label.

Track ids are paths relative to the root ("jazz/live/a.wav"). Hidden files and folders are skipped.
"""

from __future__ import annotations

from pathlib import Path

from zstag.corpora import Corpus, CorpusError, build_corpus, is_audio
from zstag.paths import walk

EXPECTED = "expected one subfolder per label with audio files inside (<root>/<label>/<file>.wav)"


def read(root: Path, *, vocabulary=None) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder-per-label root: {EXPECTED}")
    rows = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder, dirs, files in walk(label_dir):  # no recursion: any depth
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not is_audio(name):
                    continue
                path = Path(folder) / name
                rows.append((path.relative_to(root).as_posix(), path, (label_dir.name,), None))
    if not rows:
        raise CorpusError(f"{root}: not a folder-per-label root: {EXPECTED}")
    return build_corpus(root.resolve().name or str(root), "folder", root, rows, single_label=True,
                        vocabulary=vocabulary, options={"vocabulary": vocabulary})
