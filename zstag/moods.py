"""Mood words as a valence–arousal plane shared by words and tracks (issue #22).

**Word side (semantic axes from antonym seeds).** Valence and arousal are read from the word space through fixed
antonym seed pairs (VALENCE_PAIRS, AROUSAL_PAIRS: mood adjectives on Russell's circumplex; the four words of the
held-out mood test, happy, angry, sad and calm, are not among them). Each seed word carries +1 or -1 on its own
axis; a word's coordinate on an axis is the mean sign of that axis's seeds weighted by exp(BETA * cosine) between
the word and each seed (a kernel regression on the poles). It placed the 40 VALIDATION_WORDS (mood words of known
quadrant, none a seed or a test word) in the right quadrant 0.70 of the time, against 0.65 for the difference-of-
poles direction ("SemAxis", An et al. 2018), which puts "calm" at the centre; GloVe places antonyms close together
(shared contexts), so neither is sharp. How much a label is a mood word is the cosine of its unit vector to the
seeds' centroid (``moodness``): mood adjectives sit near it, genre and instrument words far from it; ``gate`` maps
it linearly from 0 at GATE[0] to 1 at GATE[1], so labels below GATE[0] are left alone.

**Track side (no mood labels).** A track's valence and arousal are a fixed linear read-out of the musicnn
taggers' own mood and energy words (TRACK_AXES: MSD's happy, sad, party, mellow, chillout; MTT's fast, slow,
loud, quiet, soft), each the word's value standardised over a reference library of music (as the teacher part of
a calibrated model's track embedding, zstag/scoring.py), then standardised again so both axes have unit variance
over that library.

**Score.** The mood score of a track for a label is the label's unit (valence, arousal) direction dotted with
the track's standardised (valence, arousal), shrunk to (-1, 1) by ``x / sqrt(1 + |z|²)`` (a cosine-like number:
the angle decides the argmax, a neutral track stays near 0). ``combine`` mixes it with the joint-space score by
the label's gate: ``(1 - g) * joint + g * mood``: labels with gate 0 (genres, instruments) keep their score
exactly; the same rule for every label, no per-word cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (positive pole, negative pole). Valence: pleasant vs unpleasant feelings; arousal: activated vs deactivated.
VALENCE_PAIRS = (("pleasant", "unpleasant"), ("cheerful", "gloomy"), ("joyful", "sorrowful"), ("delighted", "miserable"),
                 ("hopeful", "hopeless"), ("uplifting", "depressing"), ("friendly", "hostile"), ("satisfied", "frustrated"))
AROUSAL_PAIRS = (("energetic", "sleepy"), ("excited", "bored"), ("aggressive", "peaceful"), ("tense", "relaxed"),
                 ("frantic", "serene"), ("agitated", "tranquil"), ("furious", "soothing"), ("intense", "gentle"))
# Mood words of known quadrant (Russell 1980 / common usage), none a seed or a test word: only to choose how
# word coordinates are computed (BETA, the method), never to fit anything the test scores.
VALIDATION_WORDS = {
    (1, 1): ("merry", "joyous", "elated", "thrilled", "lively", "playful", "upbeat", "exuberant", "ecstatic", "enthusiastic"),
    (-1, 1): ("anxious", "nervous", "afraid", "annoyed", "irritated", "scared", "alarmed", "fearful", "enraged", "outraged"),
    (-1, -1): ("depressed", "melancholy", "lonely", "tired", "weary", "mournful", "somber", "dejected", "unhappy", "despondent"),
    (1, -1): ("content", "restful", "mellow", "tender", "dreamy", "placid", "contented", "comfortable", "idyllic", "leisurely"),
}
TEST_WORDS = ("happy", "angry", "sad", "calm")  # the held-out test's words: never seeds (unless a check asks)
BETA = 10.0  # kernel sharpness: VALIDATION_WORDS quadrant 0.675 / 0.70 / 0.70 / 0.675 / 0.625 at 3 / 5 / 10 / 20 / 30
GATE = (0.55, 0.65)  # moodness → gate 0 .. 1 (cosine to the seeds' centroid)

# Teacher word → (valence, arousal) it speaks for, by the tag's meaning (Last.fm / MagnaTagATune usage), written
# before measuring. Words of the taggers not listed (genres, instruments, "beautiful", "sexy", "catchy") do not vote.
TRACK_AXES = {
    "happy": (1.0, 0.0), "sad": (-1.0, 0.0), "party": (0.5, 0.5), "mellow": (0.0, -1.0), "chillout": (0.0, -1.0),
    "fast": (0.0, 1.0), "slow": (0.0, -1.0), "loud": (0.0, 1.0), "quiet": (0.0, -1.0), "soft": (0.0, -1.0),
}
EPS = 1e-12


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


@dataclass(frozen=True)
class MoodAxes:
    """The seed words (unit vectors), their sign on each axis (0: not a seed of that axis), the seeds' centroid."""

    seeds: np.ndarray  # [S, d] unit vectors
    signs: np.ndarray  # [S, 2] (valence, arousal) sign of each seed: +1 / -1 on its own axis, 0 on the other
    centroid: np.ndarray  # [d] mean of the seeds' unit vectors
    beta: float = BETA

    @classmethod
    def from_words(cls, words, valence_pairs=VALENCE_PAIRS, arousal_pairs=AROUSAL_PAIRS, beta: float = BETA) -> "MoodAxes":
        """Axes from antonym pairs through ``words.vectors`` (UnknownLabelError for a seed out of vocabulary)."""
        seeds, signs = [], []
        for column, pairs in ((0, valence_pairs), (1, arousal_pairs)):
            for pair in pairs:
                for word, sign in zip(pair, (1.0, -1.0)):
                    seeds.append(word)
                    signs.append((sign, 0.0) if column == 0 else (0.0, sign))
        unit = _unit(words.vectors(seeds))
        return cls(unit, np.array(signs), unit.mean(axis=0), float(beta))

    def coords(self, vectors: np.ndarray) -> np.ndarray:
        """[M, 2] (valence, arousal) in [-1, 1] of word vectors [M, d]: per axis, the mean sign of that axis's
        seeds weighted by exp(beta * cosine) (a kernel regression on the poles)."""
        sims = _unit(vectors) @ self.seeds.T
        weights = np.exp(self.beta * (sims - sims.max(axis=1, keepdims=True)))  # shifted: no overflow, same ratios
        on_axis = (self.signs != 0).astype(np.float64)  # [S, 2]
        return (weights @ self.signs) / np.maximum(weights @ on_axis, EPS)

    def moodness(self, vectors: np.ndarray) -> np.ndarray:
        """[M] cosine of each vector to the seeds' centroid: how much it is a mood word."""
        return _unit(vectors) @ _unit(self.centroid)


def gate(moodness: np.ndarray, bounds=GATE) -> np.ndarray:
    """[M] in [0, 1]: 0 up to bounds[0], 1 from bounds[1], linear between."""
    lo, hi = bounds
    return np.clip((np.asarray(moodness, np.float64) - lo) / (hi - lo), 0.0, 1.0)


@dataclass(frozen=True)
class WordMood:
    label: str
    valence: float
    arousal: float
    moodness: float
    gate: float


def word_moods(words, labels: list[str], axes: MoodAxes | None = None) -> list[WordMood]:
    """Each label's (valence, arousal), moodness and gate (multi-word labels: their phrase vector)."""
    axes = axes or MoodAxes.from_words(words)
    vectors = words.vectors(labels)
    va, m = axes.coords(vectors), axes.moodness(vectors)
    g = gate(m)
    return [WordMood(label, float(va[i, 0]), float(va[i, 1]), float(m[i]), float(g[i])) for i, label in enumerate(labels)]


def track_matrix(teacher_words: list[str], table: dict[str, tuple[float, float]] = TRACK_AXES) -> np.ndarray:
    """[K, 2]: each teacher word's weight on (valence, arousal) (zero for words the table does not name)."""
    return np.array([table.get(w, (0.0, 0.0)) for w in teacher_words], np.float64).reshape(len(teacher_words), 2)


def raw_track_va(teacher_z: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """[N, 2]: standardised teacher values [N, K] read out on the axes, before the final standardisation."""
    return np.asarray(teacher_z, np.float64) @ matrix


@dataclass(frozen=True)
class TrackAxes:
    """The read-out [K, 2] and the reference library's mean and standard deviation of its raw output."""

    matrix: np.ndarray
    mean: np.ndarray  # [2]
    std: np.ndarray  # [2]

    @classmethod
    def fit(cls, teacher_z_reference: np.ndarray, matrix: np.ndarray) -> "TrackAxes":
        raw = raw_track_va(teacher_z_reference, matrix)
        return cls(matrix, raw.mean(axis=0), np.maximum(raw.std(axis=0), 1e-6))

    @classmethod
    def from_moments(cls, mean_z: np.ndarray, cov_z: np.ndarray, matrix: np.ndarray) -> "TrackAxes":
        """The same statistics from the reference's teacher mean [K] and covariance [K, K] (what a calibrated
        model stores): exact, since the read-out is linear."""
        var = np.einsum("ka,kl,la->a", matrix, np.asarray(cov_z, np.float64), matrix)
        return cls(matrix, np.asarray(mean_z, np.float64) @ matrix, np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-6))

    def __call__(self, teacher_z: np.ndarray) -> np.ndarray:
        """[N, 2] standardised (valence, arousal) of tracks."""
        return (raw_track_va(teacher_z, self.matrix) - self.mean) / self.std


def mood_scores(track_va: np.ndarray, word_va: np.ndarray) -> np.ndarray:
    """[N, M] in (-1, 1): unit word direction · track (v, a), shrunk by sqrt(1 + |track|²)."""
    t = np.asarray(track_va, np.float64)
    return (t @ _unit(word_va).T) / np.sqrt(1.0 + (t * t).sum(axis=1, keepdims=True))


def combine(joint: np.ndarray, mood: np.ndarray, gates: np.ndarray) -> np.ndarray:
    """[N, M]: (1 - g) * joint + g * mood per label; a label with gate 0 keeps its joint score bit for bit."""
    g = np.asarray(gates, np.float64)[None, :]
    joint = np.asarray(joint)
    out = np.where(g > 0, (1.0 - g) * joint + g * np.asarray(mood, np.float64), joint)
    return out.astype(joint.dtype)
