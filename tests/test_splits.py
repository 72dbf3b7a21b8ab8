"""The paper's seen/unseen split, track groups, train/validation, artist split, JSON file."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest

from zstag.corpora import Corpus, Track
from zstag.splits import (
    SplitError,
    SplitLabelError,
    artist_components,
    artist_keys,
    check_split,
    group_tracks,
    load_split,
    make_split,
    save_split,
    split_hash,
    split_labels,
)


def corpus_of(rows, name="toy") -> Corpus:
    """rows: (id, labels, artist)."""
    tracks = sorted((Track(i, Path(f"/audio/{i}.wav"), tuple(labels), artist) for i, labels, artist in rows),
                    key=lambda t: t.id)
    labels = sorted({label for t in tracks for label in t.labels})
    return Corpus(name, "csv", Path("/audio"), tracks, labels, single_label=False)


HAND = corpus_of([
    ("t1", ["rock"], "a1"),
    ("t2", ["rock", "pop"], "a2"),
    ("t3", ["rock", "jazz"], "a3"),          # seen + unseen -> B
    ("t4", ["jazz"], "a4"),                  # unseen only -> C
    ("t5", ["jazz", "blues"], "a5"),         # unseen only -> C
    ("t6", ["pop", "blues", "metal"], "a6"),  # B
    ("t7", [], "a7"),                        # no label -> in no group
    ("t8", ["metal"], "a8"),
])


def test_groups_by_hand():
    seen, unseen = split_labels(HAND.labels, unseen=["jazz", "blues"])
    assert (seen, unseen) == (["metal", "pop", "rock"], ["blues", "jazz"])
    assert group_tracks(HAND.tracks, seen, unseen) == {"A": ["t1", "t2", "t8"], "B": ["t3", "t6"], "C": ["t4", "t5"]}
    split = make_split(HAND, unseen=["jazz", "blues"], validation_fraction=1 / 3)
    assert split.partitions["test"] == ["t3", "t4", "t5", "t6"]
    assert sorted(split.partitions["train"] + split.partitions["validation"]) == ["t1", "t2", "t8"]
    assert len(split.partitions["validation"]) == 1
    assert split.excluded == ["t7"]
    assert split.tracks("test", "C") == ["t4", "t5"] and split.tracks("test", "BC") == ["t3", "t4", "t5", "t6"]
    assert split.group_of("t6") == "B" and split.group_of("t7") is None
    assert split.fractions["unseen"] is None and split.method == "track"


def big_corpus(n_labels=23, n_tracks=400, seed=0, with_artists=True) -> Corpus:
    rng = random.Random(seed)
    labels = [f"style {i}" for i in range(n_labels)]
    rows = []
    for i in range(n_tracks):
        k = 1 if rng.random() < 0.7 else 2
        artist = f"artist {rng.randrange(n_tracks // 3)}" if with_artists else None
        rows.append((f"tr{i:04d}", rng.sample(labels, k), artist))
    return corpus_of(rows, name="big")


def test_paper_proportions():
    corpus = big_corpus()
    split = make_split(corpus, seed=3)
    assert (len(split.seen), len(split.unseen)) == (18, 5)          # int(23 * 0.8) seen, as the paper's code
    a = split.groups["A"]
    assert len(split.partitions["train"]) == int(len(a) * 0.9)
    assert sorted(split.partitions["train"] + split.partitions["validation"]) == a
    assert split.partitions["test"] == sorted(split.groups["B"] + split.groups["C"])
    seen, unseen = set(split.seen), set(split.unseen)
    for track in corpus.tracks:   # the defining property of each group, checked track by track
        labels = set(track.labels)
        expected = "A" if labels <= seen else "C" if labels <= unseen else "B"
        assert split.group_of(track.id) == expected
    assert len(split_labels([f"l{i}" for i in range(10)], seed=1)[1]) == 2


def test_deterministic_under_seed():
    corpus = big_corpus()
    shuffled = corpus_of([(t.id, t.labels, t.artist) for t in reversed(corpus.tracks)], name="big")
    for by_artist in (False, True):
        one = make_split(corpus, seed=7, by_artist=by_artist)
        assert one.to_dict() == make_split(corpus, seed=7, by_artist=by_artist).to_dict()
        assert one.to_dict() == make_split(shuffled, seed=7, by_artist=by_artist).to_dict()
        others = [make_split(corpus, seed=s, by_artist=by_artist) for s in (8, 9)]
        assert any(o.unseen != one.unseen for o in others)
        assert any(o.partitions != one.partitions for o in others)


def test_artist_split_keeps_artists_apart():
    corpus = big_corpus(seed=5)
    corpus.tracks[0] = Track(corpus.tracks[0].id, corpus.tracks[0].path, corpus.tracks[0].labels,
                             "artist 1, artist 2 feat. Artist 3")   # a collaboration links three artists
    split = make_split(corpus, seed=11, by_artist=True)
    where: dict[str, str] = {}
    for part, ids in split.partitions.items():
        for track_id in ids:
            for key in artist_keys(corpus.track(track_id).artist):
                assert where.setdefault(key, part) == part, f"artist {key} in {where[key]} and {part}"
    every = [t for ids in split.partitions.values() for t in ids] + split.excluded
    assert sorted(every) == [t.id for t in corpus.tracks]            # each track in exactly one place
    group_a = set(split.groups["A"])
    assert all(t in group_a for p in ("train", "validation") for t in split.partitions[p])
    assert all(split.group_of(t) in "BC" for t in split.excluded)   # unseen-label tracks of training artists
    assert split.partitions["validation"] and split.tracks("test", "A") and split.tracks("test", "BC")
    a_total = len(split.groups["A"])
    assert abs(len(split.partitions["train"]) / a_total - 0.8) < 0.1


def test_artist_keys_and_components():
    assert artist_keys("Disclosure, Gregory Porter, Gus Pirelli") == ["disclosure", "gregory porter", "gus pirelli"]
    assert artist_keys("Hank Williams, Jr.") == ["hank williams"]
    assert artist_keys("Brooks & Dunn") == ["brooks", "dunn"]
    corpus = corpus_of([("1", ["x"], "Disclosure, Al Green"), ("2", ["x"], "Disclosure"), ("3", ["x"], "Al Green"),
                        ("4", ["x"], "Other"), ("5", ["x"], None)])
    components, no_artist = artist_components(corpus.tracks)
    assert components == [["1", "2", "3"], ["4"], ["5"]] and no_artist == 1


def test_artist_split_without_artists():
    with pytest.raises(SplitError, match="no track has an artist"):
        make_split(big_corpus(with_artists=False), by_artist=True)
    corpus = big_corpus()
    corpus.tracks[0] = Track(corpus.tracks[0].id, corpus.tracks[0].path, corpus.tracks[0].labels, None)
    with pytest.warns(UserWarning, match="1 tracks have no artist"):
        make_split(corpus, by_artist=True)


def test_unseen_labels_are_named_as_labels_are_looked_up():
    """words.normalise_label: "cha_cha", "Cha Cha" and "cha  cha" name the corpus label "cha cha"."""
    labels = ["cha cha", "Hip-Hop", "waltz"]
    assert split_labels(labels, unseen=["cha_cha", "hip-hop"]) == (["waltz"], ["Hip-Hop", "cha cha"])
    assert split_labels(labels, unseen=["Cha  Cha"]) == (["Hip-Hop", "waltz"], ["cha cha"])


def test_bad_requests():
    with pytest.raises(SplitLabelError, match=r"unseen labels not in the corpus: jaz \(nearest: jazz\)"):
        make_split(HAND, unseen=["jaz"])
    with pytest.raises(SplitError, match="every label is unseen"):
        split_labels(["a", "b"], unseen=["a", "b"])
    with pytest.raises(SplitError, match="group A is empty"):
        make_split(corpus_of([("1", ["a", "b"], None), ("2", ["b"], None)]), unseen=["b"])
    with pytest.raises(SplitError, match="fractions"):
        make_split(HAND, validation_fraction=0.5, test_fraction=0.5)


def test_json_round_trip(tmp_path):
    split = make_split(big_corpus(), seed=2, by_artist=True, unseen=["style 1", "style 2"])
    path = save_split(split, tmp_path / "splits" / "big.json")
    assert [p.name for p in path.parent.iterdir()] == ["big.json"]     # no temp file left behind
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["sha256"] == split_hash(data) == split.sha256 == split_hash(split)
    assert data["seen"] == split.seen and data["unseen"] == ["style 1", "style 2"]
    assert set(data["groups"]) == {"A", "B", "C"} and set(data["partitions"]) == {"train", "validation", "test"}
    loaded = load_split(path)
    assert loaded == split and loaded.to_dict() == split.to_dict()
    # the hash covers the content: moving one track between partitions is detected
    data["partitions"]["train"].append(data["partitions"]["validation"].pop())
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SplitError, match="sha256 does not match"):
        load_split(path)
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(SplitError, match="not a zstag split file"):
        load_split(path)


def test_check_split():
    corpus = big_corpus()
    split = make_split(corpus)
    assert check_split(split, corpus) == []
    fewer = corpus_of([(t.id, t.labels, t.artist) for t in corpus.tracks[1:]], name="big")
    assert check_split(split, fewer) == [corpus.tracks[0].id]
    with pytest.raises(SplitError, match="labels not in corpus"):
        check_split(split, HAND)


def test_dance_like_holdout():
    """The team's use: five named styles held out, artists kept apart."""
    corpus = big_corpus(seed=9)
    held_out = ["style 3", "style 5", "style 8", "style 13", "style 21"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = make_split(corpus, unseen=held_out, by_artist=True, seed=0)
    assert split.unseen == sorted(held_out) and len(split.seen) == 18
    train_labels = {label for t in split.partitions["train"] for label in corpus.track(t).labels}
    assert not train_labels & set(held_out)


def test_a_track_id_that_is_not_utf8_is_stored_losslessly_and_marks_the_format(tmp_path):
    """A file name's bytes that are not UTF-8 (os.fsdecode: lone surrogates) made save_split raise
    UnicodeEncodeError. It is stored as {"text", "bytes"}: the file is strict UTF-8 JSON, reads back to the
    very same id, and says zstag-split/2; a split of UTF-8 ids keeps format 1 and its sha256."""
    import os

    odd = os.fsdecode(b"jazz/caf\xe9.wav")
    rows = [(odd, ["jazz"], None), ("jazz/b.wav", ["jazz"], None), ("rock/c.wav", ["rock"], None),
            ("rock/d.wav", ["rock"], None), ("pop/e.wav", ["pop"], None)]
    split = make_split(corpus_of(rows), unseen=["pop"], validation_fraction=0.0)
    path = save_split(split, tmp_path / "split.json")
    data = json.loads(path.read_bytes().decode("utf-8"))  # strict: invalid UTF-8 raises
    json.dumps(data, ensure_ascii=False).encode("utf-8")  # and no lone surrogate was escaped into it
    assert data["format"] == "zstag-split/2"
    assert {"text": "jazz/caf\ufffd.wav", "bytes": "jazz/caf%E9.wav"} in data["partitions"]["train"]
    loaded = load_split(path)
    assert loaded == split and odd in loaded.tracks("train") and loaded.sha256 == split.sha256
    plain = make_split(corpus_of(rows[1:]), unseen=["pop"], validation_fraction=0.0)
    assert json.loads(save_split(plain, tmp_path / "plain.json").read_text())["format"] == "zstag-split/1"
    data["partitions"]["train"][0] = {"text": "no bytes"}
    data["sha256"] = split_hash(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SplitError, match="malformed split file"):
        load_split(path)
