"""zstag.words, zstag.paths and `zstag labels`: label phrases, unknown labels, user vector files."""

from __future__ import annotations

import numpy as np
import pytest

from zstag.words import LabelPhrase, UnknownLabelError, VectorsError, WordVectors, normalise_label


@pytest.fixture(scope="module")
def glove() -> WordVectors:
    return WordVectors.load()


def unit(v):
    return v / np.linalg.norm(v)


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("label, expected", [
    ("Hip-Hop", "hip-hop"),
    ("  hip   hop ", "hip hop"),
    ("hip_hop", "hip hop"),
    ("Hip - Hop", "hip-hop"),
    ("Drum & Bass", "drum and bass"),
    ("drum n bass", "drum and bass"),
    ("drum-n-bass", "drum-and-bass"),
    ("Drum'n'Bass", "drum and bass"),
    ("Rock \u2019n\u2019 Roll", "rock and roll"),
    ("R&B", "r&b"),
    ("1980s", "80s"),
    ("1980's", "80s"),
    ("'80s", "80s"),
    ("80's pop", "80s pop"),
    ("2000s", "2000s"),
    ("ＪＡＺＺ", "jazz"),  # full-width letters (NFKC)
    ("rock + roll", "rock and roll"),
    ("c++", "c++"),
])
def test_normalise_label(label, expected):
    assert normalise_label(label) == expected


# --- phrases with the default GloVe vectors -----------------------------------------------------


def test_default_vectors(glove):
    assert glove.source == "glove-6B-50d" and glove.dim == 50 and len(glove) == 400_000
    assert glove.words[0] == "the"  # frequency order: spelling suggestions rely on it


def test_spellings_of_one_token_agree(glove):
    reference = glove.phrase("hip-hop")
    assert reference.in_vocab and reference.words == ("hip-hop",)
    for label in ["Hip-Hop", "hip hop", "HIP_HOP", "Hip - Hop"]:
        phrase = glove.phrase(label)
        assert phrase.words == ("hip-hop",), label
        np.testing.assert_array_equal(phrase.vector, reference.vector)


def test_oov_word_finds_its_hyphenated_form(glove):
    assert "lofi" not in glove and "lo-fi" in glove
    phrase = glove.phrase("lofi")
    assert phrase.words == ("lo-fi",) and phrase.in_vocab
    np.testing.assert_array_equal(phrase.vector, glove.matrix[glove.index["lo-fi"]])
    assert glove.phrase("triphop").words == ("trip-hop",)


def test_rare_closed_compound_takes_its_frequent_spelling(glove):
    # GTZAN's genre folder "hiphop" is a GloVe word, but a rare one (rank ~101k; "hip-hop" ~16k) whose
    # nearest words are not music ones; MSD's Last.fm tag "rnb" likewise against "r&b".
    for label, token in [("hiphop", "hip-hop"), ("HipHop", "hip-hop"), ("rnb", "r&b"), ("postpunk", "post-punk"),
                         ("kpop", "k-pop")]:
        assert label.lower() in glove
        phrase = glove.phrase(label)
        assert phrase.words == (token,) and phrase.in_vocab, label
        np.testing.assert_array_equal(phrase.vector, glove.matrix[glove.index[token]])
    # Frequent closed words stay as they are, whatever rarer hyphenated spellings exist.
    for word in ["online", "website", "weekend", "email", "synthpop", "jazz", "rocknroll"]:
        assert glove.phrase(word).words == (word,), word
    assert glove.phrase("hiphop dance").words == ("hip-hop", "dance")  # also inside a composed label


@pytest.mark.parametrize("label, denied", [
    ("no vocals", "vocals"), ("No-Vocals", "vocals"), ("without drums", "drums"), ("not sad", "sad"),
    ("no drum and bass", "drum and bass"), ("no voice", "voice"),
    ("no-brainer", None), ("non-stop", None), ("no", None), ("jazz", None), ("rock and roll", None), ("piano no", None),
])
def test_negated_labels(glove, label, denied):
    assert glove.negated(label) == denied


def test_a_very_long_word_is_not_split_at_every_letter(glove):
    # Each of a word's len(word) hyphenated spellings is a string of len(word): a 100k-letter label took ~10 GB.
    import tracemalloc

    from zstag import words

    assert words._spelling_variants("a" * (words.SPELLING_MAX_CHARS + 1)) == []
    assert "hip-hop" in words._spelling_variants("hiphop")
    tracemalloc.start()
    with pytest.raises(UnknownLabelError):
        glove.phrase("q" * 10_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 30_000_000  # spelling suggestions read ~8 MB of words; the spellings took 200 MB


def test_spelling_preference_follows_vocabulary_order(tmp_path):
    # The rule reads frequency from the row order: the same words in another order give the other choice.
    words = ["hip-hop", "r&b", "jazz", "hiphop", "rock", "rnb"]
    matrix = np.eye(len(words), dtype=np.float32)
    assert WordVectors(words, matrix, "t").phrase("hiphop").words == ("hip-hop",)
    assert WordVectors(words, matrix, "t").phrase("rnb").words == ("r&b",)
    flipped = ["hiphop", "rnb", "jazz", "hip-hop", "rock", "r&b"]  # closed spellings the frequent ones
    assert WordVectors(flipped, matrix, "t").phrase("hiphop").words == ("hiphop",)
    assert WordVectors(flipped, matrix, "t").phrase("rnb").words == ("rnb",)
    # Only 2x more frequent counts: rows 1 and 2 are too close.
    assert WordVectors(["jazz", "hip-hop", "hiphop"], np.eye(3, dtype=np.float32), "t").phrase("hiphop").words == ("hiphop",)

def test_composed_phrase_is_the_mean_of_content_words(glove):
    phrase = glove.phrase("drum and bass")
    assert isinstance(phrase, LabelPhrase)
    assert phrase.words == ("drum", "bass") and not phrase.in_vocab  # "and" is a function word
    expected = (glove.matrix[glove.index["drum"]] + glove.matrix[glove.index["bass"]]) / 2
    np.testing.assert_allclose(phrase.vector, expected, rtol=1e-6)
    assert phrase.vector.dtype == np.float32 and phrase.vector.shape == (50,)
    for variant in ["Drum & Bass", "drum n bass", "drum'n'bass"]:
        np.testing.assert_array_equal(glove.phrase(variant).vector, phrase.vector)
    assert glove.phrase("female vocalist").words == ("female", "vocalist")
    assert glove.phrase("folk/jazz").words == ("folk", "jazz")


def test_decades_and_abbreviations(glove):
    for label in ["80s", "1980s", "'80s", "80's"]:
        assert glove.phrase(label).words == ("80s",), label
    assert glove.phrase("R&B").words == ("r&b",)
    assert glove.phrase("rock and roll").words == ("rock-and-roll",)


def test_vectors_stack_rows(glove):
    matrix = glove.vectors(["jazz", "drum and bass", "lofi"])
    assert matrix.shape == (3, 50) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[2], glove.phrase("lofi").vector)


def test_nearest(glove):
    near = glove.nearest("80s", k=3)
    assert [w for w, _ in near] == ["90s", "70s", "60s"]
    assert all(-1 <= s <= 1 for _, s in near) and near[0][1] >= near[1][1] >= near[2][1]
    by_vector = glove.nearest(glove.phrase("jazz").vector, k=2)
    # float32 cos(v, v): v.v and |v|^2 sum 50 positive terms, each off by <= gamma_50 = 50 u: 2 gamma_50 = 6e-6
    assert by_vector[0][0] == "jazz" and by_vector[0][1] == pytest.approx(1.0, abs=1e-5)
    assert "jazz" not in [w for w, _ in glove.nearest("jazz", k=10)]  # a label's own words are left out


# --- unknown labels -----------------------------------------------------------------------------


def test_unknown_label_names_label_and_spellings(glove):
    with pytest.raises(UnknownLabelError) as excinfo:
        glove.phrase("jazzz")
    message = str(excinfo.value)
    assert "\n" not in message and '"jazzz"' in message and "jazz" in message.split("spellings")[1]


def test_unknown_word_in_phrase_is_not_dropped(glove):
    with pytest.raises(UnknownLabelError, match='"bazz" in label "drum and bazz"'):
        glove.phrase("drum and bazz")


@pytest.mark.parametrize("label", ["", "   ", "qwxzvbk"])
def test_labels_without_usable_words(glove, label):
    with pytest.raises(UnknownLabelError):
        glove.phrase(label)


def test_vectors_reports_every_unknown_label(glove):
    with pytest.raises(UnknownLabelError) as excinfo:
        glove.vectors(["jazz", "jazzz", "qwxzvbk"])
    assert "jazzz" in str(excinfo.value) and "qwxzvbk" in str(excinfo.value) and "\n" not in str(excinfo.value)


# --- user vector files --------------------------------------------------------------------------

USER_WORDS = ["jazz", "rock", "hip-hop", "drum", "bass", "and", "lo-fi", "80s"]


@pytest.fixture
def user_matrix():
    return np.random.default_rng(7).standard_normal((len(USER_WORDS), 6)).astype(np.float32)


@pytest.fixture
def glove_text(tmp_path, user_matrix):
    path = tmp_path / "mine.glove.txt"
    path.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in v)}\n" for w, v in zip(USER_WORDS, user_matrix)))
    return path


def test_glove_text_file(glove_text, user_matrix):
    wv = WordVectors.load(glove_text)
    assert wv.source == str(glove_text) and wv.dim == 6 and wv.words == USER_WORDS
    np.testing.assert_allclose(wv.phrase("Hip Hop").vector, user_matrix[2], atol=1e-6)
    np.testing.assert_allclose(wv.phrase("drum & bass").vector, user_matrix[3:5].mean(0), atol=1e-6)
    assert wv.phrase("lofi").words == ("lo-fi",)
    with pytest.raises(UnknownLabelError, match="polka"):
        wv.phrase("polka")


def test_user_file_is_cached_and_invalidated(glove_text, user_matrix, tmp_path, monkeypatch):
    monkeypatch.setenv("ZSTAG_CACHE_DIR", str(tmp_path / "cache"))
    first = WordVectors.load(glove_text)
    cached = sorted(p.suffix for p in (tmp_path / "cache" / "vectors").iterdir())
    assert cached == [".json", ".npy"]
    again = WordVectors.load(glove_text)
    assert isinstance(again.matrix, np.memmap)  # served from the cache
    np.testing.assert_array_equal(np.asarray(again.matrix), first.matrix)
    glove_text.write_text("jazz 1 2 3\nrock 4 5 6\n")  # a changed file is parsed again
    changed = WordVectors.load(glove_text)
    assert changed.dim == 3 and changed.words == ["jazz", "rock"]


@pytest.mark.parametrize("kind", ["word2vec-text", "word2vec-binary", "gensim-kv"])
def test_other_vector_formats(kind, tmp_path, user_matrix):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(6)
    kv.add_vectors(USER_WORDS, user_matrix)
    path = tmp_path / f"vectors.{kind}"
    if kind == "gensim-kv":
        kv.save(str(path))
    else:
        kv.save_word2vec_format(str(path), binary=kind == "word2vec-binary")
    wv = WordVectors.load(path)
    assert wv.dim == 6 and list(wv.words) == USER_WORDS
    np.testing.assert_allclose(wv.phrase("jazz").vector, user_matrix[0], atol=1e-6)


@pytest.mark.parametrize("content, cause", [
    ("", "empty file"),
    ("hello world\nfoo 1 2\n", "not a readable"),
])
def test_bad_vector_file(tmp_path, content, cause):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(VectorsError, match=cause) as excinfo:
        WordVectors.load(path)
    assert str(excinfo.value).startswith(f"{path}: ") and "\n" not in str(excinfo.value)
    with pytest.raises(VectorsError, match="no such file"):
        WordVectors.load(tmp_path / "missing.txt")


def test_a_vector_file_without_gensim_is_a_one_line_error(tmp_path, monkeypatch):
    """gensim is a dependency, but an install without it says so instead of a traceback."""
    import sys

    path = tmp_path / "tiny.txt"
    path.write_text("rock 0.1 0.2 0.3\n")
    monkeypatch.setitem(sys.modules, "gensim", None)  # `import gensim...` now raises ImportError
    monkeypatch.setitem(sys.modules, "gensim.models", None)
    with pytest.raises(VectorsError, match="needs gensim") as excinfo:
        WordVectors.load(path)
    assert str(excinfo.value).startswith(f"{path}: ") and "\n" not in str(excinfo.value)


@pytest.mark.parametrize("error", ["ImportError('cannot import name\\n  triu')",
                                   "ValueError('numpy.dtype size changed, may indicate binary incompatibility')"])
def test_a_broken_gensim_is_a_one_line_error(tmp_path, monkeypatch, error):
    """A gensim that fails to import (built for another numpy or scipy: ValueError, or a message of
    several lines) is reported like a missing one."""
    import sys

    fake = tmp_path / "fake" / "gensim"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    for name in [n for n in sys.modules if n == "gensim" or n.startswith("gensim.")]:
        monkeypatch.delitem(sys.modules, name)
    path = tmp_path / "tiny.txt"
    path.write_text("rock 0.1 0.2 0.3\n")
    with pytest.raises(VectorsError, match="needs gensim") as excinfo:
        WordVectors.load(path)
    assert "\n" not in str(excinfo.value)


# --- paths --------------------------------------------------------------------------------------


def test_paths(tmp_path, monkeypatch):
    from zstag import paths

    monkeypatch.setenv("ZSTAG_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ZSTAG_CACHE_DIR")
    assert "zstag" in str(paths.cache_dir())
    assert paths.models_dir().name == "models" and (paths.models_dir().parent / "zstag").is_dir()


# --- CLI ----------------------------------------------------------------------------------------


def run_cli(*args):
    from typer.testing import CliRunner

    from zstag.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})  # wide enough that rows don't wrap


def test_cli_labels():
    result = run_cli("labels", "Hip-Hop", "lofi", "drum and bass")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 5}
    assert set(rows) == {"Hip-Hop", "lofi", "drum and bass"}
    assert "hip-hop" in rows["Hip-Hop"] and "lo-fi" in rows["lofi"]
    assert "drum + bass" in rows["drum and bass"] and "composed" in rows["drum and bass"]


def test_cli_labels_with_user_vectors(glove_text):
    result = run_cli("labels", "--vectors", str(glove_text), "jazz")
    assert result.exit_code == 0, result.output
    assert str(glove_text.name) in result.stdout


def test_cli_unknown_label_or_vectors_are_usage_errors():
    """Exit 2, as in tag and eval."""
    result = run_cli("labels", "jazz", "qwxzvbk")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "qwxzvbk" in result.stderr
    result = run_cli("labels", "--vectors", "/nowhere/vectors.txt", "jazz")
    assert result.exit_code == 2 and result.stderr == "zstag: error: /nowhere/vectors.txt: no such file\n"


# --- the fast default word index ----------------------------------------------------------------

INDEX_SAMPLE = ["the", "jazz", "lo-fi", "hip-hop", "r&b", "80s", "josé", "łódź", "café", "château", "māori",
                "同中書門下平章事", "中書省", "’s", "ﬁrst"]
NOT_WORDS = ["", "qwxzvbk", "jazz ", "Jazz", "cafe\u0301", "\n", "the\n", "中書", "lofi"]


@pytest.fixture(scope="module")
def full_index(glove):
    """The reference: a dict over the whole word list, as WordVectors builds for user files."""
    return dict(zip(glove.words, range(len(glove.words))))


def test_default_index_is_memory_mapped(glove):
    from zstag.words import WordIndex

    again = WordVectors.load()  # from the cached index: no word list in memory
    assert isinstance(again.index, WordIndex) and again._words is None
    assert isinstance(again.index.hashes, np.memmap) and isinstance(again.index.text, np.memmap)
    assert again.phrase("lofi").words == ("lo-fi",) and again._words is None  # lookups need no word list
    assert [w for w, _ in again.nearest("80s", k=3)] == ["90s", "70s", "60s"] and again._words is None
    assert again.words == glove.words and len(again) == 400_000


def test_default_index_agrees_with_the_full_word_list(glove, full_index):
    index = WordVectors.load().index
    rows = np.random.default_rng(0).choice(len(glove.words), 3000, replace=False)
    sample = INDEX_SAMPLE + [glove.words[i] for i in rows]
    sample += [w for w in glove.words if not w.isascii()][:500]  # accents, CJK, ligatures, punctuation
    for word in sample:
        assert word in full_index
        assert index.get(word) == full_index[word] and index[word] == full_index[word], word
        assert index.word(full_index[word]) == word
    for word in NOT_WORDS:
        assert word not in full_index and word not in index and index.get(word) is None, repr(word)
        with pytest.raises(KeyError):
            index[word]
    assert index.words(7) == glove.words[:7]


def test_word_index_survives_hash_collisions(monkeypatch):
    from zstag import wordindex as words_module  # WordIndex and its hash

    vocab = ["jazz", "rock", "lo-fi", "jazz", "café", "", "日本", "x"]  # a repeat: the last row wins, as in a dict
    monkeypatch.setattr(words_module, "_word_hash", lambda data: len(data) % 2)  # nearly every word collides
    index = words_module.WordIndex.build(vocab)
    assert {w: index.get(w) for w in vocab} == dict(zip(vocab, range(len(vocab))))
    assert index.get("pop") is None and index.get("jaz") is None
    assert index.words() == vocab and [index.word(i) for i in range(len(vocab))] == vocab


@pytest.mark.parametrize("damage", ["truncate text", "scramble hashes", "delete rows", "garbage offsets"])
def test_damaged_index_cache_is_rebuilt(damage, tmp_path, monkeypatch, full_index):
    from zstag.words import WordIndex

    monkeypatch.setenv("ZSTAG_CACHE_DIR", str(tmp_path / "cache"))
    WordVectors.load()
    folder = tmp_path / "cache" / "vectors"
    files = {p.name.split(".")[1]: p for p in folder.glob("glove-6B-50d-400000-*.npy")}
    assert sorted(files) == ["hashes", "offsets", "rows", "text"]
    stem = folder / files["text"].name.split(".")[0]  # keyed by word count and the word list file's size, mtime
    assert WordIndex.open(stem, 400_000) is not None
    if damage == "truncate text":
        data = files["text"].read_bytes()
        files["text"].write_bytes(data[: len(data) // 2])
    elif damage == "scramble hashes":
        data = bytearray(files["hashes"].read_bytes())
        data[200_000:1_800_000] = np.random.default_rng(0).bytes(1_600_000)
        files["hashes"].write_bytes(bytes(data))
    elif damage == "delete rows":
        files["rows"].unlink()
    else:
        files["offsets"].write_bytes(b"not an npy file")
    assert WordIndex.open(stem, 400_000) is None  # seen as damaged ...
    wv = WordVectors.load()  # ... and rebuilt
    assert WordIndex.open(stem, 400_000) is not None
    assert all(wv.index.get(w) == full_index[w] for w in INDEX_SAMPLE)
    assert wv.phrase("drum and bass").words == ("drum", "bass")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in files.values())  # no temp files


# --- random label vectors (the training baseline) -----------------------------------------------


def test_random_vectors_are_the_ones_training_used():
    from zstag.train import label_vectors, random_vectors

    labels = ["rock", "Drum & Bass", "west coast swing", "qwxzvbk", "lofi", "日本"]
    wv = WordVectors.load("random:8:3")
    assert wv.source == "random:8:3" and wv.dim == 8 and len(wv) == 0
    np.testing.assert_array_equal(wv.vectors(labels), random_vectors(labels, 8, 3))
    trained, source = label_vectors(labels, "random:8:3")
    assert source == wv.source
    np.testing.assert_array_equal(wv.vectors(labels), trained)
    assert WordVectors.load(source).vectors(labels).tobytes() == trained.tobytes()  # the source round-trips
    np.testing.assert_array_equal(WordVectors.load("random").vectors(["jazz"]), random_vectors(["jazz"], 50, 0))
    assert not np.array_equal(WordVectors.load("random:8:4").vectors(["rock"]), wv.vectors(["rock"]))
    assert wv.phrase("Drum & Bass").words == ("drum and bass",) and wv.nearest("rock") == []
    for bad in ("random:x", "random:0", "random:8:1:2"):
        with pytest.raises(VectorsError, match="random"):
            WordVectors.load(bad)


def test_load_words_follows_the_model_config(tmp_path):
    from types import SimpleNamespace

    from zstag.words import RandomVectors, load_words

    model = SimpleNamespace(config={"words": "random:8:3", "word_dim": 8})
    assert isinstance(load_words(model), RandomVectors) and load_words(model).source == "random:8:3"
    assert load_words(SimpleNamespace(config={"words": "glove-6B-50d", "word_dim": 50})).source == "glove-6B-50d"
    with pytest.raises(VectorsError, match="expects 50-d"):
        load_words(SimpleNamespace(config={"words": "random:8:3", "word_dim": 50}))
    with pytest.raises(VectorsError, match="pass --vectors"):
        load_words(SimpleNamespace(config={"words": str(tmp_path / "gone.txt"), "word_dim": 50}))


# --- label lists --------------------------------------------------------------------------------


def test_parse_labels(tmp_path):
    from zstag.words import LabelsError, parse_labels

    listed = tmp_path / "labels.txt"
    listed.write_text("# moods\nsad\n\nHIP-HOP  # again\n")
    assert parse_labels(['rock, "drum, bass", hip-hop', "Rock"], listed) == ["rock", "drum, bass", "hip-hop", "sad"]
    with pytest.raises(LabelsError, match="no labels"):
        parse_labels([" , "])
    with pytest.raises(LabelsError, match="missing.txt: cannot read"):
        parse_labels(["rock"], tmp_path / "missing.txt")


def test_a_label_that_is_not_utf8_is_one_line_not_a_traceback():
    """os.fsdecode gives undecodable argument bytes lone surrogates, which no output (nor the random
    baseline's hash) can encode."""
    import os

    from zstag.words import LabelsError, parse_labels

    with pytest.raises(LabelsError) as caught:
        parse_labels(["rock", os.fsdecode(b"jazz\xe9")])
    assert str(caught.value) == '--labels: "jazz\\xe9" is not UTF-8 text'


def test_parse_labels_line_breaks_byte_order_mark_and_spellings(tmp_path):
    from zstag.words import LabelsError, parse_labels

    # a line break separates labels like a comma (it made csv raise before)
    assert parse_labels(['rock\njazz, "drum, bass"\r\nlo-fi']) == ["rock", "jazz", "drum, bass", "lo-fi"]
    for head in ("", "# moods\n"):
        bom = tmp_path / "bom.txt"
        bom.write_bytes(b"\xef\xbb\xbf" + f"{head}rock\njazz\n".encode())  # a BOM, as some editors save
        assert parse_labels(None, bom) == ["rock", "jazz"]
    # the same normalised label once, first spelling first; "hip hop" and "hip-hop" are two labels
    assert parse_labels(["Hip-Hop, hip - hop ,HIP-HOP"]) == ["Hip-Hop"]
    assert parse_labels(["Hip Hop,hip_hop,  hip   hop"]) == ["Hip Hop"]
    assert parse_labels(["Hip Hop,hip-hop"]) == ["Hip Hop", "hip-hop"]
    with pytest.raises(LabelsError, match="--labels: field larger than field limit"):
        parse_labels(["x" * 200_000])


# --- likely typos (zstag.spelling) --------------------------------------------------------------


def rank(words, word):
    return words.index[word] + 1


def test_a_rare_word_one_letter_from_a_music_word_gets_a_note(glove):
    from zstag import spelling

    # the ranks the rule is about, in GloVe 6B: "jaz" is rare, "jazz" over 20x more frequent
    assert rank(glove, "jaz") > spelling.TYPO_RARE_RANK
    assert rank(glove, "jazz") * spelling.TYPO_FREQUENCY_RATIO <= rank(glove, "jaz")
    note = f'"jaz" is a rare word (rank {rank(glove, "jaz")}); did you mean "jazz" (rank {rank(glove, "jazz")})?'
    assert spelling.typo_note(glove, "jaz") == note
    assert spelling.typo_note(glove, "Smooth Jaz") == note  # a word of a composed label
    assert spelling.typo_note(glove, "popp").endswith('did you mean "pop" (rank 2565)?')  # "pope" is as near
    assert spelling.typo_note(glove, "contry").endswith('did you mean "country" (rank 124)?')
    assert len("electronical") >= spelling.TYPO_LONG_WORD  # two edits away, allowed for long words only
    assert spelling.typo_note(glove, "electronical").endswith('did you mean "electronic" (rank 2506)?')


@pytest.mark.parametrize("label", ["jazz", "hiphop", "lo-fi", "dubstep", "edm", "djent", "bachata", "zouk", "bluesy"])
def test_common_or_real_words_get_no_note(glove, label):
    from zstag import spelling

    assert spelling.typo_note(glove, label) is None
    # all but "jazz" and "hiphop" (scored as "hip-hop") are rarer than TYPO_RARE_RANK: the test would fail without
    # the other conditions ("edm" is one letter from "eds", rank 2029: frequent, but no music word)
    rare = rank(glove, glove.phrase(label).words[0]) > spelling.TYPO_RARE_RANK
    assert rare == (label not in ("jazz", "hiphop"))


def test_no_note_without_a_vocabulary_to_judge_by(glove, monkeypatch):
    from zstag import spelling
    from zstag.words import RandomVectors

    assert spelling.typo_note(RandomVectors(), "jaz") is None
    monkeypatch.setattr(spelling, "TYPO_ANCHOR", "qwxzvbk")  # user vectors without the word "music"
    assert spelling.typo_note(glove, "jaz") is None


def test_cli_labels_notes_a_likely_typo():
    result = run_cli("labels", "jaz", "jazz")
    assert result.exit_code == 0, result.output
    assert result.stderr == ('zstag: note: "jaz" is a rare word (rank 79726); did you mean "jazz" (rank 3282)?\n')
