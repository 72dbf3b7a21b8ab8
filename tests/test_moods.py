"""zstag/moods.py: the valence–arousal word axes, the track read-out, the mood score and the gated combination."""

import numpy as np
import pytest

from zstag import moods


class TinyWords:
    """A word space of hand-placed vectors (what moods needs of WordVectors: ``vectors``)."""

    def __init__(self, table):
        self.table = {k: np.asarray(v, np.float32) for k, v in table.items()}

    def vectors(self, labels):
        return np.stack([self.table[x] for x in labels])


E = np.eye(4)
TINY = TinyWords({"glad": E[0], "glum": -E[0], "wild": E[1], "still": -E[1], "neutral": E[2],
                  "gladwild": E[0] + E[1]})
PAIRS_V, PAIRS_A = (("glad", "glum"),), (("wild", "still"),)


def test_seed_lists_exclude_the_test_words_and_the_validation_words():
    seeds = {w for pairs in (moods.VALENCE_PAIRS, moods.AROUSAL_PAIRS) for pair in pairs for w in pair}
    validation = {w for ws in moods.VALIDATION_WORDS.values() for w in ws}
    assert not seeds & set(moods.TEST_WORDS)
    assert not validation & (seeds | set(moods.TEST_WORDS))


def test_coords_are_the_cosine_weighted_mean_sign_of_each_axis_seeds():
    axes = moods.MoodAxes.from_words(TINY, PAIRS_V, PAIRS_A, beta=2.0)
    va = axes.coords(TINY.vectors(["glad", "neutral", "gladwild"]))
    # "glad": cosines 1 / -1 with glad / glum, so valence = (e^2 - e^-2) / (e^2 + e^-2) = tanh(2); arousal: both
    # arousal seeds at cosine 0, so 0. float64 arithmetic on exact ±1/0 cosines: 1e-12 is ~1e4 ulps of slack.
    assert va[0] == pytest.approx([np.tanh(2.0), 0.0], abs=1e-12)
    assert va[1] == pytest.approx([0.0, 0.0], abs=1e-12)  # orthogonal to every seed
    c = 1 / np.sqrt(2)  # "gladwild": cosine 1/√2 with glad and wild
    assert va[2] == pytest.approx([np.tanh(2.0 * c), np.tanh(2.0 * c)], abs=1e-12)


def test_moodness_and_gate():
    axes = moods.MoodAxes.from_words(TINY, PAIRS_V, PAIRS_A)
    # the seeds cancel in pairs: a zero centroid gives every word moodness 0, never NaN
    assert np.all(axes.moodness(TINY.vectors(["glad", "neutral"])) == 0.0)
    lo, hi = moods.GATE
    g = moods.gate(np.array([lo - 0.1, lo, (lo + hi) / 2, hi, hi + 0.1]))
    assert g == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0], abs=1e-12)


def test_default_glove_gates_mood_words_in_and_genres_and_instruments_out():
    from zstag.words import WordVectors

    words = WordVectors.load()
    moods_of = {m.label: m for m in moods.word_moods(words, ["happy", "sad", "angry", "calm", "rock", "jazz", "metal",
                                                             "techno", "classical", "piano", "guitar", "drums", "violin"])}
    # the margins are ≥ 0.07 in cosine (measured 0.48 at most for these genres/instruments, ≥ 0.66 for the
    # mood words): far beyond float32 rounding of 50-d unit vectors (~1e-6)
    for word in ("happy", "sad", "angry", "calm"):
        assert moods_of[word].gate == 1.0
    for word in ("rock", "jazz", "metal", "techno", "classical", "piano", "guitar", "drums", "violin"):
        assert moods_of[word].gate == 0.0
    assert moods_of["happy"].valence > 0 > moods_of["sad"].valence  # the axis' one sign the seeds clearly give
    assert moods_of["angry"].arousal > 0


def test_track_axes_from_moments_equal_the_fitted_ones():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 5))
    matrix = moods.track_matrix(["happy", "rock", "slow", "sad", "loud"])
    assert matrix[1].tolist() == [0.0, 0.0]  # a genre word does not vote
    fitted = moods.TrackAxes.fit(z, matrix)
    mean = z.mean(axis=0)
    moments = moods.TrackAxes.from_moments(mean, (z - mean).T @ (z - mean) / len(z), matrix)
    # the same float64 sums in two orders: agreement to ~1e-12 relative on values of order 1
    assert moments.mean == pytest.approx(fitted.mean, abs=1e-9)
    assert moments.std == pytest.approx(fitted.std, abs=1e-9)
    out = fitted(z)
    assert out.mean(axis=0) == pytest.approx([0, 0], abs=1e-9) and out.std(axis=0) == pytest.approx([1, 1], abs=1e-9)


def test_mood_scores_follow_the_angle_and_shrink_neutral_tracks():
    words = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])  # happy angry sad calm
    tracks = np.array([[2.0, 2.0], [-3.0, 0.5], [-0.5, -3.0], [3.0, -0.2], [0.0, 0.0]])
    s = moods.mood_scores(tracks, words)
    assert s[:4].argmax(axis=1).tolist() == [0, 1, 2, 3]
    assert np.all(np.abs(s) < 1) and np.all(s[4] == 0.0)
    assert s[0, 0] == pytest.approx(4 / np.sqrt(2) / 3, abs=1e-12)  # (1,1)/√2 · (2,2) / √(1 + 8)


def test_combine_leaves_labels_with_gate_zero_bit_for_bit():
    rng = np.random.default_rng(1)
    joint = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
    mood = rng.uniform(-1, 1, (6, 3))
    out = moods.combine(joint, mood, np.array([0.0, 1.0, 0.25]))
    assert out.dtype == np.float32
    assert np.array_equal(out[:, 0], joint[:, 0])
    assert np.array_equal(out[:, 1], mood[:, 1].astype(np.float32))
    # one float64 blend then one float32 rounding: within 1 float32 ulp of values ≤ 1 (6e-8)
    assert out[:, 2] == pytest.approx(0.75 * joint[:, 2] + 0.25 * mood[:, 2], abs=1.2e-7)
