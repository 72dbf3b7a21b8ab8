"""Corpus readers: each turns a data set on disk into a list of `Track(id, path, labels, artist)`.

    corpus = open_corpus("mtat", Path("~/data/mtat"), top_n=50)
    corpus.tracks[0]   # Track(id='2', path=.../f/...mp3, labels=('classical', 'strings'), artist='...')

Kinds: msd (Last.fm tags), mtat (MagnaTagATune), gtzan, folder (one subfolder per label),
csv (a manifest with path,labels[,artist]). Readers only look at names and metadata; they never
decode audio. Labels keep the corpus's own spelling; other modules normalise them.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from zstag.errors import ZstagError

KINDS = ("msd", "mtat", "gtzan", "folder", "csv")

# Extensions a reader accepts as audio (lower case); decoding is audio.py's business.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".au", ".snd", ".aif", ".aiff", ".m4a", ".aac", ".wma"}
)


class CorpusError(ZstagError):
    """A root that does not look like the expected corpus; str(e) is one line."""


@dataclass(frozen=True)
class Track:
    id: str                      # unique within the corpus (MSD track id, MTAT clip_id, relative path...)
    path: Path                   # the audio file (exists when the corpus was read)
    labels: tuple[str, ...]      # as spelled by the corpus, no duplicates
    artist: Optional[str] = None


@dataclass
class Corpus:
    name: str                    # "msd", "mtat", "gtzan", or the folder / manifest name
    kind: str                    # one of KINDS
    root: Path
    tracks: list[Track]          # sorted by id; only tracks whose audio was found
    labels: list[str]            # sorted vocabulary: every label carried by at least one track
    single_label: bool           # one label per track by construction (GTZAN, folder) or in fact (csv)
    missing: list[str] = field(default_factory=list)   # ids whose audio file was not found
    skipped: list[str] = field(default_factory=list)   # one line per row/file left out: "where: why"
    options: dict = field(default_factory=dict)        # reader options that shaped this corpus
    sources: list[Path] = field(default_factory=list)  # the files other than audio that were read (a manifest,
                                                       # annotations, tag databases): no output may replace them
    _by_id: Optional[dict] = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.tracks)

    def track(self, track_id: str) -> Track:
        if self._by_id is None:
            self._by_id = {t.id: t for t in self.tracks}
        return self._by_id[track_id]

    @property
    def has_artists(self) -> bool:
        return any(t.artist for t in self.tracks)

    def left_out(self) -> Optional[str]:
        """One line on what the reader left out (counts and the first entry's cause), or None if nothing."""
        if not (self.missing or self.skipped):
            return None
        first = self.skipped[0] if self.skipped else f"track {self.missing[0]}: no audio file"
        return (f"{self.root}: {len(self.missing)} listed tracks have no audio file, {len(self.skipped)} entries "
                f"skipped; going on with {len(self.tracks)} tracks (first: {first})")


def open_corpus(kind: str, root, **options) -> Corpus:
    """Read a corpus of the given kind ("auto" guesses it from the layout) rooted at `root`."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CorpusError(f"{root}: no such file or folder")
    try:
        return _read(kind, root, options)
    except OSError as exc:  # unreadable folders or files: one line, not a traceback
        where = exc.filename or root
        raise CorpusError(f"{where}: cannot read: {exc.strerror or exc}") from None


def _read(kind: str, root: Path, options: dict) -> Corpus:
    if kind == "auto":
        kind = detect_kind(root)
    if kind == "msd":
        from zstag.corpora import msd as reader
    elif kind == "mtat":
        from zstag.corpora import mtat as reader
    elif kind == "gtzan":
        from zstag.corpora import gtzan as reader
    elif kind == "folder":
        from zstag.corpora import folder as reader
    elif kind == "csv":
        from zstag.corpora import manifest as reader
    else:
        raise CorpusError(f"{root}: unknown corpus kind {kind!r}: expected one of {', '.join(KINDS)} or auto")
    return reader.read(root, **options)


def detect_kind(root: Path) -> str:
    """Guess the corpus kind from the files at the top of `root` (cheap: no deep walk)."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv" and root.name != "annotations_final.csv":
            return "csv"
        if root.name == "annotations_final.csv":
            return "mtat"
        if root.suffix.lower() == ".db":
            return "msd"
        raise CorpusError(f"{root}: cannot tell the corpus kind of this file: "
                          "expected a .csv manifest, annotations_final.csv or lastfm_tags.db")
    names = {p.name for p in root.iterdir()}
    if "manifest.csv" in names:
        return "csv"
    if "annotations_final.csv" in names:
        return "mtat"
    if names & {"lastfm_tags.db", "lastfm_train", "lastfm_test"}:
        return "msd"
    if names & {"genres", "genres_original"}:
        return "gtzan"
    from zstag.corpora import gtzan

    if gtzan.genre_folder(root) is not None:
        return "gtzan"
    return "folder"


_WHERE = re.compile(r"(.*?):(\d+): ")  # "manifest.csv:12: cause"


def _file_order(entry: str) -> tuple:
    match = _WHERE.match(entry)
    return (match[1], int(match[2])) if match else (entry, 0)


def file_key(path) -> Optional[tuple]:
    """The same key for every spelling of one regular file (x.wav, ./x.wav, its absolute path, a link to
    it): (device, inode), or the resolved path where the file system has no inode numbers; None when
    there is no regular file there."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # as os.path.isfile: missing, unreadable folder, NUL in the name
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino) if info.st_ino else (os.path.realpath(path),)


def corpus_inputs(corpus: Corpus) -> list:
    """What a command reading the corpus reads, as paths.Input: the metadata files, the root, every audio
    file (no output may replace one: paths.check_output)."""
    from zstag.paths import Input

    return ([Input("the corpus file", path) for path in corpus.sources] + [Input("the corpus root", corpus.root)]
            + [Input("the corpus's audio file", track.path) for track in corpus.tracks])


def is_audio(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def unique(labels: Iterable[str]) -> tuple[str, ...]:
    """Labels stripped, empty ones dropped, duplicates removed, first spelling kept in order."""
    out: dict[str, None] = {}
    for label in labels:
        label = label.strip()
        if label:
            out.setdefault(label, None)
    return tuple(out)


def select_labels(counts: Counter, vocabulary=None, top_n=None, min_tracks: int = 1, where: str = "") -> list[str]:
    """The labels to keep, from per-label track counts: a given vocabulary, then min_tracks, then top_n.

    top_n keeps the most frequent labels (ties broken by name, so the choice is deterministic).
    """
    if vocabulary is not None:
        vocabulary = list(unique(vocabulary))
        absent = [label for label in vocabulary if counts.get(label, 0) == 0]
        if absent:
            raise CorpusError(f"{where}: labels not in this corpus: {', '.join(absent[:10])}"
                              + (f" (and {len(absent) - 10} more)" if len(absent) > 10 else ""))
        kept = vocabulary
    else:
        kept = list(counts)
    kept = [label for label in kept if counts.get(label, 0) >= min_tracks]
    kept.sort(key=lambda label: (-counts[label], label))
    if top_n is not None:
        if top_n < 1:
            raise CorpusError(f"{where}: top_n must be at least 1, got {top_n}")
        kept = kept[:top_n]
    return sorted(kept)


def build_corpus(
    name: str,
    kind: str,
    root: Path,
    rows: Iterable[tuple],
    *,
    single_label: Optional[bool] = None,
    vocabulary=None,
    top_n: Optional[int] = None,
    min_tracks: int = 1,
    keep_untagged: bool = False,
    skipped: Optional[list[str]] = None,
    options: Optional[dict] = None,
    check_files: bool = True,
    expected: str = "",
    sources: Iterable = (),
) -> Corpus:
    """Common tail of every reader: label selection, untagged and missing tracks, sorting.

    rows are (id, audio path or None, labels, artist[, where]): where ("manifest.csv:12") names the row in
    messages (default: the root). Label frequencies count every row, found audio or not, so "top 50" means
    the corpus's usual top 50, not the top 50 of whatever audio is at hand. single_label=None means "one
    label per track in fact". With check_files, a file listed under a second id (./x.wav, an absolute
    path, a link) is skipped as listed twice, so one recording never becomes two tracks.
    """
    rows = list(rows)
    skipped = list(skipped or [])
    where = str(root)
    counts = Counter(label for row in rows for label in row[2])
    if vocabulary is not None or top_n is not None or min_tracks > 1:
        keep = set(select_labels(counts, vocabulary, top_n, min_tracks, where))
        rows = [(row[0], row[1], tuple(label for label in row[2] if label in keep), *row[3:]) for row in rows]

    tracks: list[Track] = []
    missing: list[str] = []
    seen_ids: set[str] = set()
    seen_files: dict = {}  # file_key → the id of the track that has the file
    for row in rows:
        track_id, path, labels, artist = row[:4]
        at = row[4] if len(row) > 4 else where
        if track_id in seen_ids:
            skipped.append(f"{at}: track {track_id}: listed twice, first one kept")
            continue
        seen_ids.add(track_id)
        if not labels and not keep_untagged:
            continue
        if path is None or (check_files and (key := file_key(path)) is None):
            missing.append(track_id)
            continue
        if check_files:
            if key in seen_files:
                skipped.append(f"{at}: track {track_id}: listed twice (the same file as track {seen_files[key]}), "
                               "first one kept")
                continue
            seen_files[key] = track_id
        tracks.append(Track(track_id, Path(path), labels, artist or None))
    if not tracks:
        detail = f" ({len(missing)} listed tracks have no audio file)" if missing else ""
        raise CorpusError(f"{where}: no usable {kind} tracks found{detail}" + (f": {expected}" if expected else ""))
    tracks.sort(key=lambda t: t.id)
    missing.sort()
    skipped.sort(key=_file_order)  # the reader's and these, merged in file order
    if single_label is None:
        single_label = all(len(t.labels) == 1 for t in tracks)
    labels = sorted({label for t in tracks for label in t.labels})
    return Corpus(name, kind, root, tracks, labels, single_label, missing, skipped, dict(options or {}),
                  [Path(p) for p in sources])
