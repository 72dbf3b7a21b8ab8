"""`WordIndex`: word → row of a large vocabulary (the default GloVe words) as memory-mapped arrays,
cached under zstag.paths.cache_dir() by words.py, so loading costs a few ms instead of parsing 400k words."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from zstag.paths import atomic_write, npy_bytes

INDEX_PARTS = ("text", "offsets", "rows", "hashes")  # a WordIndex's .npy files, in the order written
INDEX_CHECKS = 64  # entries of a cached WordIndex re-hashed on every load: damage means a rebuild


class WordIndex:
    """word → row of a large vocabulary without a dict of 400k str: arrays that load as memory maps.

    ``hashes`` (int64, sorted): a 64-bit hash of each distinct word's UTF-8; ``rows``: the row of each
    (a repeated word keeps its last row, as a dict would); ``text`` (uint8): every word's UTF-8 followed by
    "\n", by row; ``offsets`` (int64 [n + 1]): where each word starts in ``text``. A lookup hashes the
    word, binary-searches ``hashes`` and compares the stored bytes, so a hash collision is never a hit.
    """

    def __init__(self, text: np.ndarray, offsets: np.ndarray, rows: np.ndarray, hashes: np.ndarray):
        self.text, self.offsets, self.rows, self.hashes = text, offsets, rows, hashes

    @classmethod
    def build(cls, words: list[str]) -> WordIndex:
        encoded = [_utf8(w) for w in words]
        offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum([len(e) + 1 for e in encoded], out=offsets[1:])
        text = np.frombuffer(b"".join(e + b"\n" for e in encoded), dtype=np.uint8)
        rows = np.fromiter(dict(zip(words, range(len(words)))).values(), dtype=np.int64)
        hashes = np.fromiter((_word_hash(encoded[r]) for r in rows), dtype=np.int64, count=len(rows))
        order = np.argsort(hashes, kind="stable")
        return cls(text, offsets, rows[order], hashes[order])

    @classmethod
    def open(cls, stem: Path, n_words: int) -> WordIndex | None:
        """The index cached at ``stem.<part>.npy``, or None when a file is missing or damaged."""
        try:
            index = cls(*(np.load(_index_path(stem, part), mmap_mode="r", allow_pickle=False) for part in INDEX_PARTS))
            return index if index._sound(n_words) else None
        except (OSError, ValueError, IndexError):
            return None

    def save(self, stem: Path) -> None:
        for part in INDEX_PARTS:  # each file atomically; `hashes` last
            atomic_write(_index_path(stem, part), npy_bytes(getattr(self, part)))

    def get(self, word: str, default=None):
        key = _utf8(word)
        h = _word_hash(key)
        i = int(np.searchsorted(self.hashes, h))
        while i < len(self.hashes) and int(self.hashes[i]) == h:
            row = int(self.rows[i])
            if self._bytes(row) == key:
                return row
            i += 1
        return default

    def __contains__(self, word: str) -> bool:
        return self.get(word) is not None

    def __getitem__(self, word: str) -> int:
        row = self.get(word)
        if row is None:
            raise KeyError(word)
        return row

    def __len__(self) -> int:
        return len(self.hashes)

    def word(self, row: int) -> str:
        return self._bytes(row).decode("utf-8", "surrogatepass")

    def words(self, stop: int | None = None) -> list[str]:
        """The words of rows [0, stop) (all by default), in row order."""
        n = len(self.offsets) - 1 if stop is None else min(stop, len(self.offsets) - 1)
        words = self.text[: self.offsets[n]].tobytes().decode("utf-8", "surrogatepass").split("\n")[:-1]
        return words if len(words) == n else [self.word(i) for i in range(n)]  # a word with "\n" in it

    def _bytes(self, row: int) -> bytes:
        return self.text[self.offsets[row] : self.offsets[row + 1] - 1].tobytes()

    def _sound(self, n_words: int) -> bool:
        """Shapes and dtypes agree, the hashes are sorted, and a sample of entries (spread over the table)
        re-hash to their keys."""
        text, offsets, rows, hashes = self.text, self.offsets, self.rows, self.hashes
        if (text.dtype != np.uint8 or offsets.dtype != np.int64 or rows.dtype != np.int64 or hashes.dtype != np.int64
                or text.ndim != 1 or offsets.shape != (n_words + 1,) or rows.ndim != 1 or rows.shape != hashes.shape
                or not 0 < len(rows) <= n_words or offsets[0] != 0 or offsets[-1] != len(text)):
            return False
        if not np.all(hashes[1:] >= hashes[:-1]):
            return False
        for i in sorted({k * (len(rows) - 1) // (INDEX_CHECKS - 1) for k in range(INDEX_CHECKS)}):
            row = int(rows[i])
            if not (0 <= row < n_words and offsets[row] < offsets[row + 1] and text[offsets[row + 1] - 1] == 10
                    and _word_hash(self._bytes(row)) == int(hashes[i])):
                return False
        return True


def _utf8(word: str) -> bytes:
    return word.encode("utf-8", "surrogatepass")


def _word_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def _index_path(stem: Path, part: str) -> Path:
    return stem.with_name(f"{stem.name}.{part}.npy")
