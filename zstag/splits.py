"""Seen/unseen label splits and track partitions (Choi et al., ISMIR 2019, multi-label zero-shot protocol).

Labels are split at random (seeded) into seen X (80 %) and unseen Y (20 %), or the unseen ones are named.
Tracks then fall into three groups:
    A: at least one seen label and no unseen label   -> the only tracks training may touch
    B: seen and unseen labels
    C: unseen labels only
Training uses A, split 90/10 into train and validation at random (the paper's code). Evaluation uses the
"test" partition, B + C: unseen labels Y on B + C is zero-shot, X + Y on B + C is generalised zero-shot.
An optional test_fraction also holds out part of A, for seen-label evaluation on unheard tracks.

The artist split ("method": "artist") keeps every artist in one partition: credits are split on , & ; / feat.
so "Disclosure, Al Green" and "Disclosure" go together. Artists with group-A tracks are shuffled into
train/validation/test by track count; artists with only B/C tracks go to test (they have nothing to train
on); B/C tracks of train or validation artists are excluded, so no test track shares an artist with training.
A corpus without any artist metadata is an error (SplitError), not a silent track split.

The split is one JSON file shared by train and eval, written atomically, with a sha256 of its content.
A track id or label that is not UTF-8 (a file name's bytes, as os.fsdecode gives them) is stored as
{"text": ..., "bytes": percent-encoded} (zstag.paths.stored_name): the file stays valid UTF-8 and reads
back to the very same id. Such a file is format zstag-split/2, so that an older zstag refuses it in one
line rather than miss those tracks; every other split is zstag-split/1, as before.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence
from zstag.paths import atomic_write, read_name, stored_name, valid_text
from zstag.errors import UsageError, ZstagError

SPLIT_FORMAT = "zstag-split/1"
SPLIT_FORMAT_NAMES = "zstag-split/2"  # some id or label stored as {"text", "bytes"} (not UTF-8)
SPLIT_FORMATS = (SPLIT_FORMAT, SPLIT_FORMAT_NAMES)
UNSEEN_FRACTION = 0.2            # the paper: 80 % seen, 20 % unseen labels
VALIDATION_FRACTION = 0.1        # the paper's code: group A split 90/10 into train/validation
ARTIST_TEST_FRACTION = 0.1       # artist split: share of group-A tracks whose artists go to test
GROUPS = ("A", "B", "C")
PARTITIONS = ("train", "validation", "test")
METHODS = ("track", "artist")
ARTIST_SEPARATORS = re.compile(r"\s*(?:,|;|&|/|\bfeat\b\.?|\bft\.|\bfeaturing\b)\s*", re.IGNORECASE)
NOT_AN_ARTIST = frozenset({"", "jr", "jr.", "sr", "sr.", "the"})   # credit fragments that must not link artists
EPSILON = 1e-9                   # keeps floor(0.8 * 10) at 8 despite binary fractions


class SplitError(ZstagError, ValueError):
    """A split that cannot be made or a split file that cannot be used; str(e) is one line."""


class SplitLabelError(SplitError, UsageError):
    """Named unseen labels that the corpus does not have (a usage error: the CLI exits 2)."""


@dataclass
class Split:
    corpus: str
    method: str                              # "track" (the paper) | "artist"
    seed: int
    seen: list[str]                          # X, sorted
    unseen: list[str]                        # Y, sorted
    groups: dict[str, list[str]]             # "A" / "B" / "C" -> sorted track ids
    partitions: dict[str, list[str]]         # "train" / "validation" / "test" -> sorted track ids
    excluded: list[str] = field(default_factory=list)   # corpus tracks in no partition (see module doc)
    fractions: dict = field(default_factory=dict)       # unseen (None when named) / validation / test

    @property
    def labels(self) -> list[str]:
        return sorted(self.seen + self.unseen)

    @property
    def sha256(self) -> str:
        return split_hash(self)

    def group_of(self, track_id: str) -> Optional[str]:
        for group in GROUPS:
            if track_id in self._group_sets()[group]:
                return group
        return None

    def tracks(self, partition: str, groups: str = "ABC") -> list[str]:
        """Track ids of one partition, keeping only the given groups ("BC": the zero-shot test tracks)."""
        if partition not in PARTITIONS:
            raise SplitError(f"unknown partition {partition!r}: expected one of {', '.join(PARTITIONS)}")
        sets = self._group_sets()
        return [t for t in self.partitions[partition] if any(t in sets[g] for g in groups)]

    def counts(self) -> dict[str, int]:
        out = {"seen": len(self.seen), "unseen": len(self.unseen)}
        out.update({g: len(self.groups[g]) for g in GROUPS})
        out.update({p: len(self.partitions[p]) for p in PARTITIONS})
        out["excluded"] = len(self.excluded)
        return out

    def _group_sets(self) -> dict[str, set[str]]:
        cache = self.__dict__.get("_sets")
        if cache is None:
            cache = self.__dict__["_sets"] = {g: set(self.groups[g]) for g in GROUPS}
        return cache

    def to_dict(self) -> dict:
        stored = [False]

        def names(values) -> list:
            out = [stored_name(v) for v in values]
            stored[0] = stored[0] or any(isinstance(v, dict) for v in out)
            return out

        d = {
            "format": SPLIT_FORMAT,
            "corpus": valid_text(self.corpus),  # a name to show (the corpus folder's), never matched
            "method": self.method,
            "seed": self.seed,
            "fractions": dict(self.fractions),
            "seen": names(self.seen),
            "unseen": names(self.unseen),
            "groups": {g: names(self.groups[g]) for g in GROUPS},
            "partitions": {p: names(self.partitions[p]) for p in PARTITIONS},
            "excluded": names(self.excluded),
        }
        if stored[0]:
            d["format"] = SPLIT_FORMAT_NAMES
        d["sha256"] = split_hash(d)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "split") -> "Split":
        if not isinstance(d, dict) or d.get("format") not in SPLIT_FORMATS:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise SplitError(f"{where}: not a zstag split file: expected format {SPLIT_FORMAT!r}, found {found!r}")

        def names(values) -> list[str]:
            if d["format"] == SPLIT_FORMAT:  # as read before names were stored: numbers and all
                return [str(x) for x in values]
            return [read_name(x) for x in values]

        try:
            split = cls(
                corpus=str(d["corpus"]), method=str(d["method"]), seed=int(d["seed"]),
                seen=names(d["seen"]), unseen=names(d["unseen"]),
                groups={g: names(d["groups"][g]) for g in GROUPS},
                partitions={p: names(d["partitions"][p]) for p in PARTITIONS},
                excluded=names(d.get("excluded", [])), fractions=dict(d.get("fractions", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SplitError(f"{where}: malformed split file: missing or bad field {e}") from None
        if "sha256" in d and d["sha256"] != split_hash(d):
            raise SplitError(f"{where}: sha256 does not match the content (file edited or damaged)")
        _check_consistent(split, where)
        return split


def split_hash(split) -> str:
    """sha256 (hex) of a split's canonical JSON content, its own "sha256" field left out."""
    d = split.to_dict() if isinstance(split, Split) else split
    content = {k: v for k, v in d.items() if k != "sha256"}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_labels(labels: Iterable[str], seed: int = 0, unseen: Optional[Sequence[str]] = None,
                 unseen_fraction: float = UNSEEN_FRACTION) -> tuple[list[str], list[str]]:
    """(seen, unseen), both sorted: the named unseen labels, or a seeded random unseen_fraction of them. A name
    matches the corpus labels it normalises as (labels.normalise_label: "cha_cha" and "Cha Cha" name "cha cha")."""
    labels = sorted(set(labels))
    if unseen is not None:
        from zstag.labels import normalise_label

        by_spelling: dict[str, list[str]] = {}
        for label in labels:
            by_spelling.setdefault(normalise_label(label), []).append(label)
        named = sorted(set(unseen))
        unknown = [name for name in named if normalise_label(name) not in by_spelling]
        if unknown:
            hints = difflib.get_close_matches(unknown[0], labels, n=3)
            hint = f" (nearest: {', '.join(hints)})" if hints else ""
            raise SplitLabelError(f"unseen labels not in the corpus: {', '.join(unknown)}{hint}")
        unseen = sorted({label for name in named for label in by_spelling[normalise_label(name)]})
    else:
        if not 0.0 <= unseen_fraction < 1.0:
            raise SplitError(f"unseen_fraction must be in [0, 1), got {unseen_fraction}")
        n = len(labels)
        n_seen = math.floor(n * (1.0 - unseen_fraction) + EPSILON)   # as the paper's code: int(n * 0.8) seen
        if unseen_fraction > 0:
            if n < 2:
                raise SplitError(f"cannot split {n} label(s) into seen and unseen: need at least 2")
            n_seen = min(max(n_seen, 1), n - 1)
        shuffled = list(labels)
        random.Random(f"zstag/{seed}/labels").shuffle(shuffled)
        unseen = sorted(shuffled[n_seen:])
    seen = [label for label in labels if label not in set(unseen)]
    if not seen:
        raise SplitError("every label is unseen: nothing left to train on")
    return seen, unseen


def track_group(labels: Iterable[str], seen: set[str], unseen: set[str]) -> Optional[str]:
    """"A" (seen only), "B" (seen and unseen), "C" (unseen only), or None (neither)."""
    labels = set(labels)
    has_seen, has_unseen = bool(labels & seen), bool(labels & unseen)
    if has_seen:
        return "B" if has_unseen else "A"
    return "C" if has_unseen else None


def group_tracks(tracks, seen: Iterable[str], unseen: Iterable[str]) -> dict[str, list[str]]:
    """Track ids (sorted) per group A / B / C; tracks with neither kind of label are left out."""
    seen, unseen = set(seen), set(unseen)
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for track in tracks:
        group = track_group(track.labels, seen, unseen)
        if group is not None:
            groups[group].append(track.id)
    return {g: sorted(ids) for g, ids in groups.items()}


def artist_keys(artist: str) -> list[str]:
    """Lower-cased names in an artist credit; tracks sharing any of them share a partition."""
    parts = [p.strip().casefold() for p in ARTIST_SEPARATORS.split(artist)]
    parts = [p for p in parts if p not in NOT_AN_ARTIST]
    return parts or [artist.strip().casefold()]


def artist_components(tracks) -> tuple[list[list[str]], int]:
    """Track ids grouped so that no artist name spans two groups; also the count of tracks without artist."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, str] = {}   # artist name -> first track id carrying it
    no_artist = 0
    for track in tracks:
        parent.setdefault(track.id, track.id)
        if not track.artist:
            no_artist += 1
            continue
        for key in artist_keys(track.artist):
            if key in owner:
                a, b = find(owner[key]), find(track.id)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[key] = track.id
    components: dict[str, list[str]] = {}
    for track_id in parent:
        components.setdefault(find(track_id), []).append(track_id)
    return sorted(sorted(c) for c in components.values()), no_artist


def _cut(n: int, validation: float, test: float) -> tuple[int, int]:
    """(n_train, n_validation) for n items; test takes the rest (the rounding remainder goes to test or,
    without test, to validation, as the paper's int(n * 0.9) train cut)."""
    n_train = math.floor(n * (1.0 - validation - test) + EPSILON)
    n_val = math.floor(n * validation + EPSILON) if test > 0 else n - n_train
    return n_train, n_val


def check_fractions(unseen_fraction: Optional[float], validation_fraction: float, test_fraction: float) -> None:
    """SplitError unless the fractions can make a split (unseen None: the unseen labels are named); needs no
    corpus, so the CLI checks them as option values before reading any data."""
    if unseen_fraction is not None and not 0.0 <= unseen_fraction < 1.0:
        raise SplitError(f"unseen fraction {unseen_fraction}: must be in [0, 1)")
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise SplitError(f"validation ({validation_fraction}) and test ({test_fraction}) fractions must be >= 0 "
                         "and leave something to train on")


def make_split(corpus, *, seed: int = 0, unseen: Optional[Sequence[str]] = None,
               unseen_fraction: float = UNSEEN_FRACTION, by_artist: bool = False,
               validation_fraction: float = VALIDATION_FRACTION, test_fraction: Optional[float] = None) -> Split:
    """The paper's split of a corpus (see module doc); by_artist keeps artists within one partition."""
    method = "artist" if by_artist else "track"
    if test_fraction is None:
        test_fraction = ARTIST_TEST_FRACTION if by_artist else 0.0
    check_fractions(None if unseen is not None else unseen_fraction, validation_fraction, test_fraction)
    seen, unseen_labels = split_labels(corpus.labels, seed, unseen, unseen_fraction)
    groups = group_tracks(corpus.tracks, seen, unseen_labels)
    group_of = {t: g for g in GROUPS for t in groups[g]}
    if not groups["A"]:
        raise SplitError(f"corpus {corpus.name}: no track has only seen labels (group A is empty): nothing to train on")

    parts: dict[str, list[str]] = {p: [] for p in PARTITIONS}
    excluded = [t.id for t in corpus.tracks if t.id not in group_of]
    if not by_artist:
        a_tracks = list(groups["A"])
        random.Random(f"zstag/{seed}/tracks").shuffle(a_tracks)
        n_train, n_val = _cut(len(a_tracks), validation_fraction, test_fraction)
        parts["train"] = a_tracks[:n_train]
        parts["validation"] = a_tracks[n_train:n_train + n_val]
        parts["test"] = a_tracks[n_train + n_val:] + groups["B"] + groups["C"]
    else:
        if not corpus.has_artists:
            raise SplitError(f"corpus {corpus.name}: no track has an artist, so an artist split is impossible; "
                             "use the track split")
        components, no_artist = artist_components(t for t in corpus.tracks if t.id in group_of)
        if no_artist:
            warnings.warn(f"corpus {corpus.name}: {no_artist} tracks have no artist; each is treated as its own artist",
                          stacklevel=2)
        trainable = [c for c in components if any(group_of[t] == "A" for t in c)]
        parts["test"] = [t for c in components if all(group_of[t] != "A" for t in c) for t in c]   # B/C-only artists
        random.Random(f"zstag/{seed}/artists").shuffle(trainable)
        total = sum(group_of[t] == "A" for c in trainable for t in c)
        train_end, val_end = 1.0 - validation_fraction - test_fraction, 1.0 - test_fraction
        done = 0
        for component in trainable:
            size = sum(group_of[t] == "A" for t in component)
            middle = (done + size / 2) / total   # the artist goes where the middle of its tracks falls
            done += size
            part = "train" if middle < train_end else "validation" if middle < val_end else "test"
            if part == "test":
                parts["test"] += component
            else:
                parts[part] += [t for t in component if group_of[t] == "A"]
                excluded += [t for t in component if group_of[t] != "A"]
    if not parts["train"]:
        raise SplitError(f"corpus {corpus.name}: too few group-A tracks ({len(groups['A'])}) for a train partition")
    for name, fraction in (("validation", validation_fraction), ("test", test_fraction)):
        if fraction > 0 and not parts[name]:
            warnings.warn(f"corpus {corpus.name}: the {name} partition is empty (too few tracks or artists)",
                          stacklevel=2)
    split = Split(
        corpus=corpus.name, method=method, seed=int(seed), seen=seen, unseen=unseen_labels, groups=groups,
        partitions={p: sorted(ids) for p, ids in parts.items()}, excluded=sorted(excluded),
        fractions={"unseen": None if unseen is not None else unseen_fraction,
                   "validation": validation_fraction, "test": test_fraction},
    )
    _check_consistent(split, f"corpus {corpus.name}")
    return split


def _check_consistent(split: Split, where: str) -> None:
    """Invariants every split keeps: X and Y disjoint, partitions disjoint, train only from group A."""
    both = sorted(set(split.seen) & set(split.unseen))
    if both:
        raise SplitError(f"{where}: labels both seen and unseen: {', '.join(both[:5])}")
    if split.method not in METHODS:
        raise SplitError(f"{where}: unknown split method {split.method!r}")
    owner: dict[str, str] = {}
    for part in PARTITIONS + ("excluded",):
        for track_id in split.partitions[part] if part != "excluded" else split.excluded:
            if track_id in owner:
                raise SplitError(f"{where}: track {track_id} is in both {owner[track_id]} and {part}")
            owner[track_id] = part
    group_a = set(split.groups["A"])
    leaked = [t for p in ("train", "validation") for t in split.partitions[p] if t not in group_a]
    if leaked:
        raise SplitError(f"{where}: track {leaked[0]} has an unseen label but is in train/validation")


def check_split(split: Split, corpus) -> list[str]:
    """Ids the split names that the corpus lacks (e.g. audio gone since); SplitError if the labels differ."""
    absent = [label for label in split.labels if label not in set(corpus.labels)]
    if absent:
        raise SplitError(f"split for corpus {split.corpus}: labels not in corpus {corpus.name}: "
                         f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''} (read with other options?)")
    have = {t.id for t in corpus.tracks}
    return sorted({t for ids in split.partitions.values() for t in ids if t not in have})


def save_split(split: Split, path) -> Path:
    """Write the split as JSON atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(split.to_dict(), ensure_ascii=False, indent=1) + "\n"
    atomic_write(path, text)
    return path


def load_split(path) -> Split:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise SplitError(f"{path}: cannot read split file ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SplitError(f"{path}: not a JSON split file ({e})") from None
    return Split.from_dict(data, where=str(path))
