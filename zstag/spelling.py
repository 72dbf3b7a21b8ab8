"""Likely typos among label words that *are* in the vocabulary: "jaz" has a GloVe vector, so it is scored,
silently, as whatever "jaz" means in web text (nearest words "4-wheel", "az-zahir"), not as "jazz".

A word is called a likely typo when all of these hold (the vocabulary is frequency-ordered, so a word's row
is its frequency rank; Zipf: frequency ~ 1 / rank):
- it is rare: rank above TYPO_RARE_RANK (common words are meant as typed);
- a word within edit distance 1 (2 for words of TYPO_LONG_WORD letters or more; Damerau: a swap of two
  neighbouring letters is one edit) is among the TYPO_COMMON_WORDS most frequent words and at least
  TYPO_FREQUENCY_RATIO times more frequent;
- that word is a music word (word cosine with "music", what labels describe, at least TYPO_ANCHOR_MIN) and
  nearer in meaning to music than the word typed, by TYPO_ANCHOR_MARGIN. Closeness to the typed word cannot
  be asked for (a typo's vector is unrelated: "jaz"/"jazz" -0.13), and frequency alone flags real names: "edm"
  (rank 56,656) is one letter from "eds" (rank 2,029). The most music-like such word is suggested.

In GloVe 6B: "jaz" (rank 79,726) → "jazz" (3,282), "popp" → "pop" (not "pope"), "contry" → "country";
"edm", "djent", "zouk", "bachata", "dubstep", "lo-fi", "bluesy" get no note. Of 500 rare words picked at random,
16 do, mostly true typos ("competion", "particulary"); of 500 rare music words, 7 ("filk" → "folk", "musics").
Without the anchor word in the vocabulary (a user's vectors) nothing is noted: there is no meaning to compare.
"""

from __future__ import annotations

import functools

import numpy as np

TYPO_RARE_RANK = 50_000  # words ranked above this may be typos ("jaz": 79,725; "dubstep" 69,621 has no near common word)
TYPO_FREQUENCY_RATIO = 20  # the other spelling is at least this many times more frequent (jazz: 24x jaz)
TYPO_COMMON_WORDS = 20_000  # ... and among these most frequent words (at TYPO_RARE_RANK / 20 x, the top 2,500)
TYPO_LONG_WORD = 10  # letters from which two edits are allowed (from 8, "pegboard" was "keyboard")
TYPO_ANCHOR = "music"
TYPO_ANCHOR_MIN = 0.5  # a music word: country 0.50, metal 0.52, jazz 0.82; not start 0.44, record 0.47, fighter 0.20
# cos(suggestion, music) - cos(typed, music) at least this: jaz/jazz +0.94, metall/metal +0.49, but djent/dent +0.16,
# edm/eds 0.00, and a variant meant as typed ("bluesy"/"blues", "cumbias"/"cumbia") is as musical as its source.
TYPO_ANCHOR_MARGIN = 0.3


def typo_note(words, label: str) -> str | None:
    """One line ('"jaz" is a rare word (rank 79725); did you mean "jazz" (rank 3281)?') for the first word of the
    label's phrase that is a likely typo, else None. words: a words.WordVectors; UnknownLabelError as its phrase()."""
    if TYPO_ANCHOR not in words.index:
        return None
    for word in words.phrase(label).words:
        rank = _rank(words, word)
        if rank is None or rank <= TYPO_RARE_RANK:
            continue
        limit = min(rank // TYPO_FREQUENCY_RATIO, TYPO_COMMON_WORDS)
        typed = _cosine(words, word, TYPO_ANCHOR)
        music = {other: _cosine(words, other, TYPO_ANCHOR) for other in _near_spellings(words, word, limit)}
        likely = [other for other, cosine in music.items()
                  if cosine >= TYPO_ANCHOR_MIN and cosine - typed >= TYPO_ANCHOR_MARGIN]
        if likely:  # the most musical: "popp" is one letter from "pope" and "pop"
            other = max(likely, key=music.get)
            return f'"{word}" is a rare word (rank {rank}); did you mean "{other}" (rank {_rank(words, other)})?'
    return None


def _rank(words, word: str) -> int | None:
    row = words.index.get(word)
    return None if row is None else row + 1


def _cosine(words, a: str, b: str) -> float:
    x, y = words._vector(a).astype(np.float64), words._vector(b).astype(np.float64)
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-12))


def _near_spellings(words, word: str, limit: int) -> list[str]:
    """The words among the `limit` most frequent within the edit distance allowed. One Damerau (optimal string
    alignment) distance for all of them at once: a loop over the word's letters and the candidates' positions
    within the band the distance allows, each step a numpy operation over every candidate."""
    if limit < 1:
        return []
    most = 2 if len(word) >= TYPO_LONG_WORD else 1
    common, lengths = _common_words(words)
    lengths = lengths[:limit]
    keep = np.flatnonzero(np.abs(lengths - len(word)) <= most)
    if keep.size == 0:
        return []
    width = int(lengths[keep].max())
    codes = np.array([common[i] for i in keep], dtype=f"<U{width}").view(np.uint32).reshape(len(keep), width)
    query = np.array([ord(c) for c in word], dtype=np.uint32)
    differ = (codes[:, None, :] != query[None, :, None]).astype(np.int8)  # [candidate, letter of word, position]
    far = np.int8(most + 1)  # distances are capped there: only "within `most`" matters
    # previous[:, j]: distance of word[:i - 1] to candidate[:j]; before: of word[:i - 2]; column 0 = empty prefix
    previous = np.minimum(np.arange(width + 1), far).astype(np.int8)[None].repeat(len(keep), axis=0)
    before = None
    for i in range(1, len(word) + 1):
        current = np.full_like(previous, far)
        current[:, 0] = min(i, far)
        for j in range(max(1, i - most), min(width, i + most) + 1):  # outside the band: more than `most` edits
            best = np.minimum(np.minimum(previous[:, j], current[:, j - 1]) + 1, previous[:, j - 1] + differ[:, i - 1, j - 1])
            if before is not None and j > 1:  # two neighbouring letters swapped
                swap = (differ[:, i - 1, j - 2] == 0) & (differ[:, i - 2, j - 1] == 0)
                best = np.where(swap, np.minimum(best, before[:, j - 2] + 1), best)
            current[:, j] = np.minimum(best, far)
        before, previous = previous, current
    distance = previous[np.arange(len(keep)), lengths[keep]]
    return [common[i] for d, i in zip(distance, keep) if 0 < d <= most]


@functools.lru_cache(maxsize=2)
def _common_words(words) -> tuple[list[str], np.ndarray]:
    """The TYPO_COMMON_WORDS most frequent words (the first rows) and their lengths, once per vocabulary."""
    common = words._words[:TYPO_COMMON_WORDS] if words._words is not None else words.index.words(TYPO_COMMON_WORDS)
    return common, np.array([len(w) for w in common])
