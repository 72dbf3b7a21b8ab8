"""`zstag eval` end to end on fixtures in the real GTZAN and MTAT layouts, with a tiny random model whose
training vocabulary the test sets. Expected figures are recomputed here from independently embedded
tracks, so the wiring (track order, label columns, seen/unseen sets, split partitions) is checked."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.console import Console
from typer.testing import CliRunner

from zstag import evalrender, evaluate, metrics
from zstag.audio import PAPER, track_segments
from zstag.cli import app
from zstag.corpora import open_corpus
from zstag.model import ZeroShotModel, cnn1d_config, load_model, save_model
from zstag.splits import make_split, save_split
from zstag.words import WordVectors

SHARED_DANCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dance"
SR = 22050
SECONDS = 1.5  # under one 3 s segment: wrap-padded to one, so a file embeds in milliseconds
GENRES = ("blues", "country", "jazz", "rock")
TRAIN_LABELS = ["Blues", "ROCK", "metal", "guitar", "Piano"]  # spelled unlike the corpora: compared normalised
MTAT_TAGS = ("classical", "female vocal", "guitar", "piano", "techno")
MTAT_CLIPS = {  # clip_id: (mp3_path, tags)
    "2": ("f/american_bach_soloists-j_s__bach-01-bwv_1-0-29.mp3", ("classical", "piano")),
    "6": ("f/american_bach_soloists-j_s__bach-01-bwv_1-30-59.mp3", ("classical",)),
    "10": ("0/ambient_teknology-the_all_seeing_eye-02-the_all_seeing_eye-0-29.mp3", ("techno",)),
    "11": ("0/ambient_teknology-the_all_seeing_eye-02-the_all_seeing_eye-30-59.mp3", ("techno", "guitar")),
    "12": ("c/jacob_heringman-josquin-01-praeter_rerum-0-29.mp3", ("guitar",)),
    "15": ("c/jacob_heringman-josquin-01-praeter_rerum-30-59.mp3", ("guitar", "female vocal")),
    "20": ("c/jacob_heringman-josquin-02-mille_regretz-0-29.mp3", ("piano", "female vocal")),
    "21": ("c/jacob_heringman-josquin-02-mille_regretz-30-59.mp3", ("piano",)),
}
TRAIN_STATS = {
    "corpus": "trainset",
    "n_tracks": 10,
    "acoustics": {
        "native_sample_rate": {"n": 10, "median": 44100.0, "q25": 44100.0, "q75": 44100.0},
        "duration_s": {"n": 10, "median": 30.0, "q25": 29.0, "q75": 30.0},
        "loudness_dbfs": {"n": 10, "median": -14.0, "q25": -16.0, "q75": -12.0},
        "spectral_centroid_hz": {"n": 10, "median": 2000.0, "q25": 1500.0, "q75": 2500.0},
    },
    "mean_embedding": [1.0] * 100,
}


def tone(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (110 + 60 * seed) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def gtzan(tmp_path_factory):
    root = tmp_path_factory.mktemp("gtzan")
    seed = 0
    for genre in GENRES:
        (root / "genres" / genre).mkdir(parents=True)
        for i in range(2):
            sf.write(root / "genres" / genre / f"{genre}.{i:05d}.wav", tone(seed), SR)
            seed += 1
    (root / "genres" / "rock" / "rock.00009.wav").write_bytes(b"RIFF garbage, not audio")
    return root


@pytest.fixture(scope="module")
def mtat(tmp_path_factory):
    return write_mtat(tmp_path_factory.mktemp("mtat"), MTAT_TAGS, MTAT_CLIPS)


def write_mtat(root: Path, tags, clips: dict) -> Path:
    """annotations_final.csv (tab-separated, every field quoted) and a tone per clip under its mp3_path."""
    with open(root / "annotations_final.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
        writer.writerow(["clip_id", *tags, "mp3_path"])
        for seed, (clip, (rel, on)) in enumerate(clips.items()):
            writer.writerow([clip, *("1" if t in on else "0" for t in tags), rel])
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, tone(seed), SR)
    return root


def make_model(folder, stats: bool = True, **config):
    torch.manual_seed(0)
    net = ZeroShotModel({**cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d", train_labels=TRAIN_LABELS), **config})
    save_model(net, folder, extra_files={evaluate.STATS_FILE: TRAIN_STATS} if stats else None)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def words():
    return WordVectors.load()


def expected_scores(model_dir, paths, labels, words):
    """Cosine scores computed without evaluate.py or the embedding cache."""
    net = load_model(model_dir)
    tracks = np.stack([net.embed_track(track_segments(p, net.front_end)) for p in paths])
    return net.scores(tracks, net.embed_label_vectors(words.vectors(labels)))


def run(kind, root, model_dir, **options):
    return evaluate.evaluate(kind, root, model=str(model_dir), workers=0, progress=False, **options)


# --- single-label (GTZAN layout) ---------------------------------------------------------------------


def test_gtzan_seen_unseen_and_figures(gtzan, model_dir, words):
    result = run("gtzan", gtzan, model_dir)
    report = result.report
    assert report["task"] == "classification" and report["seen_from"] == "model.train_labels"
    assert report["labels"]["seen"] == ["blues", "rock"]  # "Blues" and "ROCK" after normalisation
    assert report["labels"]["unseen"] == ["country", "jazz"]
    assert report["labels"]["all"] == list(GENRES)
    assert report["tracks"]["selected"] == 9 and report["tracks"]["evaluated"] == 8
    [failure] = report["tracks"]["failed"]
    assert failure["id"] == "rock.00009" and "rock.00009.wav" in failure["error"] and "\n" not in failure["error"]

    corpus = open_corpus("gtzan", gtzan)
    good = [t for t in corpus.tracks if t.id != "rock.00009"]
    scores = expected_scores(model_dir, [t.path for t in good], list(GENRES), words)
    true = np.array([GENRES.index(t.labels[0]) for t in good])
    for name, subset in (("all", [0, 1, 2, 3]), ("seen", [0, 3]), ("unseen", [1, 2])):
        rows = np.isin(true, subset)
        predicted = np.array(subset)[scores[rows][:, subset].argmax(axis=1)]
        figures = report["metrics"][name]
        assert figures["n_tracks"] == rows.sum() == (8 if name == "all" else 4)
        assert figures["accuracy"] == pytest.approx(np.mean(predicted == true[rows]))
        matrix = np.zeros((len(subset), len(subset)), dtype=int)
        for t, p in zip(true[rows], predicted):
            matrix[subset.index(t), subset.index(p)] += 1
        assert figures["confusion"]["matrix"] == matrix.tolist()
        assert figures["confusion"]["labels"] == [GENRES[i] for i in subset]


def test_seen_means_the_same_word_vectors_as_a_training_label(tmp_path):
    # GTZAN's genre folder is "hiphop"; the model learnt "Hip-Hop" (MSD's spelling). Both resolve to GloVe's
    # "hip-hop", so the model cannot tell them apart: the label is seen, and an exact overlap.
    root = tmp_path / "gtzan"
    for seed, genre in enumerate(("hiphop", "jazz")):
        (root / "genres" / genre).mkdir(parents=True)
        sf.write(root / "genres" / genre / f"{genre}.00000.wav", tone(seed), SR)
    model = make_model(tmp_path / "model", train_labels=["Hip-Hop", "rock"])
    report = run("gtzan", root, model, use_cache=False).report
    assert report["labels"]["seen"] == ["hiphop"] and report["labels"]["unseen"] == ["jazz"]
    overlap = report["transfer"]["label_overlap"]
    assert overlap["exact"] == ["hiphop"]
    assert overlap["nearest"]["hiphop"] == {"train_label": "Hip-Hop", "cosine": pytest.approx(1.0, abs=1e-6)}
    words = WordVectors.load()
    assert evaluate.label_sets(["hip hop", "hiphop", "hip", "jazz"], ["Hip-Hop"], words=words)["seen"] == \
        ["hip hop", "hiphop"]
    assert evaluate.label_sets(["hip hop", "hiphop"], ["Hip-Hop"])["seen"] == []  # no vectors: spelling only
    # A composed label is the mean of its words' vectors: the same label in any word order.
    seen = evaluate.label_sets(["piano sad", "sad piano", "piano"], ["Sad Piano"], words=words)["seen"]
    assert seen == ["piano sad", "sad piano"]


def test_warnings_when_the_model_learnt_from_the_corpus(gtzan, mtat, tmp_path):
    sources = [{"corpus": "gtzan", "via": "a teacher tagger trained on GTZAN"}]
    torch.manual_seed(0)
    net = ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d", train_labels=TRAIN_LABELS))
    save_model(net, tmp_path / "taught", extra_files={evaluate.STATS_FILE: {**TRAIN_STATS, "label_sources": sources}})
    [warning] = run("gtzan", gtzan, tmp_path / "taught").report["warnings"]
    assert warning.startswith("not zero-shot transfer: the model learnt from gtzan itself (a teacher tagger trained")
    assert run("mtat", mtat, tmp_path / "taught").report["warnings"] == []
    # Sources count even when the file has no acoustics to compare (or acoustics that are not an object).
    for acoustics in (None, ["not", "an", "object"]):
        stats = {"corpus": "x", "label_sources": sources, **({} if acoustics is None else {"acoustics": acoustics})}
        save_model(net, tmp_path / "bare", extra_files={evaluate.STATS_FILE: stats})
        report = run("gtzan", gtzan, tmp_path / "bare").report
        assert report["warnings"][0].startswith("not zero-shot transfer")
        assert "no acoustics" in report["transfer"]["acoustics"]["note"]

    trained = make_model(tmp_path / "trained", training={"corpus": "gtzan"})  # as zstag train records it
    [warning] = run("gtzan", gtzan, trained).report["warnings"]
    assert "trained on a corpus named 'gtzan'" in warning and "--split" in warning
    assert run("mtat", mtat, trained).report["warnings"] == []


def test_a_corpus_named_as_a_training_set_is_no_transfer(gtzan, tmp_path):
    """recipes/build_default_model.py records its training sets as training.sets (the default model: dance,
    gcompris and ten more); a corpus of one of those names gets a warning, as training.corpus does."""
    trained = make_model(tmp_path / "trained", training={"sets": ["asc", "Dance", "gcompris"]})
    folder = tmp_path / "dance"
    (folder / "audio").mkdir(parents=True)
    for i in range(2):
        sf.write(folder / "audio" / f"{i}.wav", tone(i), SR)
    (folder / "manifest.csv").write_text("path,labels\naudio/0.wav,waltz\naudio/1.wav,tango\n")
    [warning] = run("csv", folder, trained).report["warnings"]
    assert warning.startswith("the model was trained on a set named 'Dance' (one of its 3 training sets)")
    assert run("gtzan", gtzan, trained).report["warnings"] == []


@pytest.mark.skipif(not SHARED_DANCE.is_dir(), reason="needs the real dance corpus in ../shared/data/dance")
def test_the_default_model_warns_on_the_dance_corpus_it_trained_on():
    from zstag.modelfile import read_model

    config = read_model("default").config
    [warning] = evaluate.provenance_warnings(config, None, open_corpus("csv", SHARED_DANCE), None)
    assert "trained on a set named 'dance'" in warning


@pytest.mark.parametrize("sources, warned", [
    (5, False), ("gtzan", False), ([None, "gtzan"], False), ({"corpus": "gtzan", "via": "x"}, True),
    ([{"corpus": "GTZAN"}], True), ([{"corpus": "mtat"}], False),
])
def test_hand_written_label_sources_never_stop_an_evaluation(sources, warned):
    # corpus_stats.json may be written by hand: a value that is not a list of objects gives no warning (it was a
    # TypeError once every track had been embedded), one object alone counts, and the corpus is any case.
    from types import SimpleNamespace

    corpus = SimpleNamespace(kind="gtzan", name="gtzan")
    warnings = evaluate.provenance_warnings({}, {"label_sources": sources}, corpus, None)
    assert len(warnings) == warned
    assert not any("(None)" in w for w in warnings)  # no "via": nothing said about it


@pytest.mark.parametrize("stats", [
    {"label_sources": [], "mean_embedding": "abc"}, {"mean_embedding": [[1.0, 2.0], [3.0]]},
    {"mean_embedding": {"x": 1}}, {"acoustics": {"duration_s": 5}},
    {"acoustics": {"duration_s": {"median": "x", "q25": 1, "q75": 2}}}, {"acoustics": {"duration_s": {"median": 1.0}}},
])
def test_hand_written_stats_never_stop_an_evaluation(gtzan, tmp_path, stats):
    # A corpus_stats.json without acoustics is read since its label_sources count: a mean_embedding or a field that
    # is not what zstag writes is left out of the comparison, not a crash after every track is embedded.
    torch.manual_seed(0)
    net = ZeroShotModel(cnn1d_config(PAPER, word_dim=50, words="glove-6B-50d", train_labels=TRAIN_LABELS))
    save_model(net, tmp_path / "m", extra_files={evaluate.STATS_FILE: {"corpus": "hand", **stats}})
    report = run("gtzan", gtzan, tmp_path / "m").report
    acoustics = report["transfer"]["acoustics"]
    assert acoustics["mean_embedding_cosine"] is None and acoustics["fields"]["duration_s"]["train"] is None
    console = Console(file=io.StringIO(), width=200)
    evalrender.render(report, console)
    assert "training corpus hand" in console.file.getvalue()


def test_shipped_models_declare_what_they_learnt_from():
    for name in ("default", "conse"):
        stats = json.loads((Path(__file__).resolve().parents[1] / "models" / name / evaluate.STATS_FILE).read_text())
        assert [s["corpus"] for s in stats["label_sources"]] == ["msd", "mtat"]


def test_gtzan_transfer_report(gtzan, model_dir, words):
    report = run("gtzan", gtzan, model_dir).report
    overlap = report["transfer"]["label_overlap"]
    assert overlap["exact"] == ["blues", "rock"] and overlap["n_train_labels"] == len(TRAIN_LABELS)
    assert overlap["nearest"]["blues"]["train_label"] == "Blues"
    assert overlap["nearest"]["blues"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    jazz = words.phrase("jazz").vector
    train = np.stack([words.phrase(t).vector for t in TRAIN_LABELS])
    cos = train @ jazz / (np.linalg.norm(train, axis=1) * np.linalg.norm(jazz))
    assert overlap["nearest"]["jazz"] == {"train_label": TRAIN_LABELS[int(cos.argmax())], "cosine": pytest.approx(cos.max())}

    acoustics = report["transfer"]["acoustics"]
    assert acoustics["train_corpus"] == "trainset" and acoustics["note"] is None
    assert acoustics["fields"]["loudness_dbfs"]["train"] == TRAIN_STATS["acoustics"]["loudness_dbfs"]
    assert acoustics["fields"]["duration_s"]["eval"]["median"] == pytest.approx(SECONDS, abs=0.01)
    assert acoustics["fields"]["native_sample_rate"]["eval"]["median"] == SR
    net = load_model(model_dir)
    paths = sorted(gtzan.glob("genres/*/*.0000[01].wav"))
    mean = np.mean([net.embed_track(track_segments(p, net.front_end)) for p in paths], axis=0)
    assert acoustics["mean_embedding_cosine"] == pytest.approx(mean.sum() / (np.linalg.norm(mean) * 10), abs=1e-4)


def test_model_without_stats_says_so(gtzan, tmp_path):
    report = run("gtzan", gtzan, make_model(tmp_path / "m", stats=False)).report
    acoustics = report["transfer"]["acoustics"]
    assert acoustics["note"] == evaluate.NO_STATS_NOTE and acoustics["mean_embedding_cosine"] is None
    assert acoustics["fields"]["loudness_dbfs"]["train"] is None
    assert acoustics["fields"]["loudness_dbfs"]["eval"]["n"] == 8


def test_labels_option_restricts_labels_and_tracks(gtzan, model_dir):
    report = run("gtzan", gtzan, model_dir, labels=["Jazz", "rock"]).report
    assert report["labels"]["all"] == ["jazz", "rock"]
    assert report["labels"]["seen"] == ["rock"] and report["labels"]["unseen"] == ["jazz"]
    assert report["tracks"]["selected"] == 5  # 2 jazz + 2 rock + the broken rock file
    with pytest.raises(evaluate.EvalError, match="not evaluation labels of this corpus: polka"):
        run("gtzan", gtzan, model_dir, labels=["polka"])


def test_label_without_word_vector_is_left_out(tmp_path, model_dir):
    for i, label in enumerate(("jazz", "rock", "qxzvbnmw")):
        (tmp_path / "corpus" / label).mkdir(parents=True)
        sf.write(tmp_path / "corpus" / label / "a.wav", tone(i), SR)
    report = run("folder", tmp_path / "corpus", model_dir).report
    assert list(report["labels"]["without_vector"]) == ["qxzvbnmw"]
    assert report["labels"]["all"] == ["jazz", "rock"] and report["tracks"]["selected"] == 2


def test_second_run_is_cached_and_identical(gtzan, model_dir):
    first = run("gtzan", gtzan, model_dir)
    second = run("gtzan", gtzan, model_dir)
    assert second.cached == 8
    assert json.dumps(first.report) == json.dumps(second.report)
    assert run("gtzan", gtzan, model_dir, use_cache=False).cached == 0


# --- multi-label (MTAT layout) -----------------------------------------------------------------------


def test_mtat_tagging_figures(mtat, model_dir, words):
    report = run("mtat", mtat, model_dir).report
    assert report["task"] == "tagging"
    assert report["labels"]["seen"] == ["guitar", "piano"]
    assert report["labels"]["unseen"] == ["classical", "female vocal", "techno"]
    corpus = open_corpus("mtat", mtat)
    scores = expected_scores(model_dir, [t.path for t in corpus.tracks], list(MTAT_TAGS), words)
    truth = np.array([[tag in t.labels for tag in MTAT_TAGS] for t in corpus.tracks])
    for name in ("seen", "unseen", "all"):
        cols = [MTAT_TAGS.index(label) for label in report["labels"][name]]
        figures = report["metrics"][name]
        retrieval = metrics.retrieval(truth[:, cols], scores[:, cols])
        annotation = metrics.annotation(truth[:, cols], scores[:, cols])
        top = metrics.top_k(truth[:, cols], scores[:, cols])
        assert figures["n_tracks"] == 8 and figures["n_labels"] == len(cols)
        assert figures["retrieval"]["roc_auc"] == pytest.approx(retrieval["roc_auc"])
        assert figures["retrieval"]["pr_auc"] == pytest.approx(retrieval["pr_auc"])
        assert figures["annotation"]["roc_auc"] == pytest.approx(annotation["roc_auc"])
        assert figures["annotation"]["average_precision"] == pytest.approx(annotation["pr_auc"])
        assert figures["annotation"]["skipped_no_positive"] == (truth[:, cols].sum(axis=1) == 0).sum()
        assert figures["top_k"] == pytest.approx(top)
    assert report["metrics"]["seen"]["annotation"]["skipped_no_positive"] == 2  # clips 6 and 10: neither guitar nor piano
    assert report["metrics"]["all"]["per_label"]["techno"]["n_positive"] == 2


def test_mtat_negated_tag_is_scored_as_the_opposite(tmp_path, model_dir, words):
    # MTAT's "no vocals" / "no voice" tags: unseen by the model, scored as the opposite of "vocals"/"voice"
    # (modelfile.label_embeddings), not as the mean of the vectors of "no" and "vocals".
    tags = ("vocals", "no vocals", "piano")
    clips = {"1": ("0/a-0-29.mp3", ("vocals",)), "2": ("0/a-30-59.mp3", ("no vocals", "piano")),
             "3": ("1/b-0-29.mp3", ("vocals", "piano")), "4": ("1/b-30-59.mp3", ("no vocals",)),
             "5": ("2/c-0-29.mp3", ("no vocals",))}
    write_mtat(tmp_path, tags, clips)
    report = run("mtat", tmp_path, model_dir, use_cache=False).report
    corpus = open_corpus("mtat", tmp_path)
    naive = expected_scores(model_dir, [t.path for t in corpus.tracks], ["vocals", "no vocals"], words)
    truth = np.array([[tag in t.labels for tag in ("vocals", "no vocals")] for t in corpus.tracks])
    per_label = report["metrics"]["all"]["per_label"]
    assert report["labels"]["scored_as"] == {"no vocals": "-vocals"}
    console = Console(file=io.StringIO(), width=200)
    evalrender.render(report, console)
    assert "scored as -vocals" in console.file.getvalue()
    negated = metrics.retrieval(truth[:, 1:], -naive[:, :1])["roc_auc"]
    assert per_label["no vocals"]["roc_auc"] == pytest.approx(negated)
    assert negated != pytest.approx(metrics.retrieval(truth[:, 1:], naive[:, 1:])["roc_auc"])  # the test can fail
    assert per_label["vocals"]["roc_auc"] == pytest.approx(metrics.retrieval(truth[:, :1], naive[:, :1])["roc_auc"])
    # A model that trained on "No Vocals" scores it as trained.
    trained = make_model(tmp_path / "trained", train_labels=["No Vocals", "piano"])
    again_report = run("mtat", tmp_path, trained, use_cache=False).report
    assert again_report["labels"]["scored_as"] == {}
    again = again_report["metrics"]["all"]["per_label"]
    plain = expected_scores(trained, [t.path for t in corpus.tracks], ["no vocals"], words)
    assert again["no vocals"]["roc_auc"] == pytest.approx(metrics.retrieval(truth[:, 1:], plain)["roc_auc"])
    opposite = -expected_scores(trained, [t.path for t in corpus.tracks], ["vocals"], words)
    assert again["no vocals"]["roc_auc"] != pytest.approx(metrics.retrieval(truth[:, 1:], opposite)["roc_auc"])


def test_mtat_with_split(mtat, tmp_path, words):
    corpus = open_corpus("mtat", mtat)
    split = make_split(corpus, unseen=["female vocal", "techno"], seed=0)
    split_path = save_split(split, tmp_path / "split.json")
    model_dir = make_model(tmp_path / "m", split_sha256=split.sha256)
    report = run("mtat", mtat, model_dir, split=split_path).report
    assert report["seen_from"] == "split" and report["split"]["matches_model"] is True
    assert report["split"]["sha256"] == split.sha256 and report["split"]["partition"] == "test"
    # The split's seen labels win over the model's vocabulary (which has no "classical").
    assert report["labels"]["seen"] == ["classical", "guitar", "piano"]
    assert report["labels"]["unseen"] == ["female vocal", "techno"]
    test_ids = split.tracks("test")
    assert sorted(test_ids) == ["10", "11", "15", "20"]  # every clip with an unseen tag (groups B, C)
    assert report["tracks"]["evaluated"] == len(test_ids)
    assert report["split"]["groups"] == {"A": 0, "B": 3, "C": 1}
    tracks = [corpus.track(i) for i in test_ids]
    scores = expected_scores(model_dir, [t.path for t in tracks], ["female vocal", "techno"], words)
    truth = np.array([[tag in t.labels for tag in ("female vocal", "techno")] for t in tracks])
    assert report["metrics"]["unseen"]["retrieval"]["roc_auc"] == pytest.approx(metrics.retrieval(truth, scores)["roc_auc"])
    console = Console(file=io.StringIO(), width=150)
    evalrender.render(report, console)
    assert "the model's split" in console.file.getvalue() and "groups A 0, B 3, C 1" in console.file.getvalue()


@pytest.mark.skipif(not SHARED_DANCE.is_dir(), reason="needs the real dance corpus in ../shared/data/dance")
def test_real_dance_corpus_end_to_end(model_dir):
    # The first 3 s of each of the 138 real songs: the CSV reader, decoding and bookkeeping on real files.
    report = run("csv", SHARED_DANCE, model_dir, max_seconds=3.0).report
    assert report["task"] == "classification" and report["tracks"]["failed"] == []
    assert report["tracks"]["evaluated"] == report["corpus"]["n_tracks"] == 138
    assert len(report["labels"]["all"]) == 23 and report["labels"]["seen"] == []  # no dance in TRAIN_LABELS
    assert sum(map(sum, report["metrics"]["all"]["confusion"]["matrix"])) == 138
    assert report["transfer"]["acoustics"]["fields"]["native_sample_rate"]["eval"]["median"] == 22050


# --- command line ------------------------------------------------------------------------------------


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """The first table printed (the summary: a row per figure, a column per label set), as each label set's
    column of cells, top to bottom."""
    figures = []
    for line in stdout.splitlines():
        if line.startswith("└"):
            break
        if line.startswith("│"):
            figures.append([c.strip() for c in line.strip("│ ").split("│")][1:])
    return {name: [row[i] for row in figures] for i, name in enumerate(evaluate.SETS)} if figures else {}


def expected_rows(report: dict) -> dict[str, list[str]]:
    """Each label set's row as the JSON report's figures give it (3 decimals, "—" for none)."""
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    rows = {}
    for name in evaluate.SETS:
        f = report["metrics"][name]
        row = [str(f["n_labels"]), str(f["n_tracks"])]
        if report["task"] == "classification":
            row += [fmt(f["accuracy"]), fmt(f["mean_recall"])]
        else:
            row += [fmt(f["retrieval"]["roc_auc"]), fmt(f["retrieval"]["pr_auc"]), fmt(f["annotation"]["roc_auc"]),
                    fmt(f["annotation"]["average_precision"])]
            row += [fmt(f["top_k"][k]) for k in ("hit@1", "hit@5", "hit@10", "P@1", "P@5", "P@10")]
        rows[name] = row
    return rows


def test_cli_writes_report_and_plot(gtzan, model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "report.json", tmp_path / "confusion.png"
    result = CliRunner().invoke(app, ["eval", "--corpus", "gtzan", "--root", str(gtzan), "--model", str(model_dir),
                                      "--workers", "0", "--out", str(out), "--plot", str(png)])
    assert result.exit_code == 1, result.output  # rock.00009.wav is not audio: as tag, a failed file is exit 1 ...
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout  # ... after the whole output
    [summary] = [line for line in result.stderr.splitlines() if line.startswith("zstag: evaluated ")]
    assert re.fullmatch(r"zstag: evaluated 8 of 9 tracks \(\d from the cache\); 1 failed", summary), summary
    report = json.loads(out.read_text())
    assert summary_rows(result.stdout) == expected_rows(report)  # the printed table is the report's
    assert expected_rows(report)["seen"][:2] == ["2", "4"]  # the sets differ: a row of another set shows
    assert report["model"]["id"] == load_model(model_dir).model_id
    assert report["corpus"]["kind"] == "gtzan" and report["labels"]["unseen"] == ["country", "jazz"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rock.00009.wav" in result.stderr


def test_cli_wrong_layout_is_one_line(tmp_path, model_dir):
    (tmp_path / "jazz").mkdir()
    result = CliRunner().invoke(app, ["eval", "--corpus", "gtzan", "--root", str(tmp_path), "--model", str(model_dir)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "expected genres/<genre>/<genre>.NNNNN.wav" in result.stderr


def test_cli_mtat_plot_is_a_warning(mtat, model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(app, ["eval", "-c", "mtat", "-r", str(mtat), "-m", str(model_dir), "--workers", "0",
                                      "--plot", str(tmp_path / "x.png"), "--out", str(tmp_path / "r.json")],
                                env={"COLUMNS": "250"})  # rich: wide enough for every column
    assert result.exit_code == 0, result.output
    assert "retrieval ROC-AUC" in result.stdout and "nothing drawn" in result.stderr
    assert not (tmp_path / "x.png").exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert summary_rows(result.stdout) == expected_rows(report)
    assert len({tuple(row) for row in expected_rows(report).values()}) == 3


def test_cli_plot_without_matplotlib_is_one_line_before_any_work(gtzan, model_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    result = CliRunner().invoke(app, ["eval", "-c", "gtzan", "-r", str(gtzan), "-m", str(model_dir), "--workers", "0",
                                      "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("zstag: error: --plot needs matplotlib, which is not installed: "
                             "install zstag's plot extra (pip install -e '.[plot]')\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("max_seconds", [float("nan"), float("inf")])
def test_non_finite_max_seconds_is_an_eval_error_before_anything_loads(max_seconds, tmp_path):
    from zstag.evaluate import EvalError, evaluate

    with pytest.raises(EvalError, match="finite"):
        evaluate("csv", tmp_path, model=str(tmp_path / "no-model"), max_seconds=max_seconds)


def eval_cli(root, model_dir, *args, corpus="csv"):
    return CliRunner().invoke(app, ["eval", "--corpus", corpus, "--root", str(root), "--model", str(model_dir),
                                    "--workers", "0", *map(str, args)])


def test_cli_reports_manifest_rows_left_out(tmp_path, model_dir):
    for i, name in enumerate(("a/1.wav", "a/2.wav", "b/3.wav", "b/4.wav")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, tone(i), SR)
    (tmp_path / "manifest.csv").write_text(
        "path,labels\na/1.wav,jazz\n./a/1.wav,rock\nzz/missing.wav,jazz\na/2.wav,\nb/3.wav,rock,guitar\nb/4.wav,blues\n",
        encoding="utf-8")
    out = tmp_path / "report.json"
    result = eval_cli(tmp_path, model_dir, "--out", out)
    assert result.exit_code == 0, result.output
    line = f"zstag: {tmp_path}: 1 listed tracks have no audio file, 3 entries skipped; going on with 2 tracks (first: "
    [summary] = [s for s in result.stderr.splitlines() if s.startswith(line)]
    assert summary.endswith("manifest.csv:3: track ./a/1.wav: listed twice (the same file as track a/1.wav), first one kept)")
    corpus = json.loads(out.read_text())["corpus"]
    assert (corpus["n_tracks"], corpus["n_missing"], corpus["n_skipped"]) == (2, 1, 3)
    assert corpus["left_out"] == summary[len("zstag: "):]


def test_split_and_preprocess_report_rows_left_out_alike(tmp_path):
    """`zstag split --root` (silent before) and `preprocess` print the reader's one summary line."""
    for i in range(12):
        name = f"{'ab'[i % 2]}/{i}.wav"
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, tone(i % 4), SR)
    rows = [f"{'ab'[i % 2]}/{i}.wav,{['jazz', 'rock', 'blues', 'pop'][i % 4]}" for i in range(12)]
    (tmp_path / "manifest.csv").write_text("path,labels\n" + "\n".join(rows + ["zz/missing.wav,jazz"]) + "\n")
    line = f"zstag: {tmp_path}: 1 listed tracks have no audio file, 0 entries skipped; going on with 12 tracks"
    split = CliRunner().invoke(app, ["split", "--corpus", "csv", "--root", str(tmp_path), "--out", str(tmp_path / "s.json"),
                                     "--unseen", "pop"])
    assert split.exit_code == 0, split.output
    pre = CliRunner().invoke(app, ["preprocess", "--corpus", "csv", "--root", str(tmp_path), "--out", str(tmp_path / "f"),
                                   "--no-progress"])
    assert pre.exit_code == 0, pre.output
    for result in (split, pre):
        assert [s for s in result.stderr.splitlines() if s.startswith(line)], result.stderr


def test_options_that_cannot_work_are_usage_errors(gtzan, model_dir, tmp_path):
    """Exit 2 and one line, as for preprocess and tag: --top-n on a corpus kind without it; a non-finite
    --max-seconds; a label the corpus does not have; a model or word vectors that cannot be read."""
    for args in (["--top-n", "5"], ["--max-seconds", "nan"], ["--labels", "jazz,qwxzvbk"], ["--model", tmp_path],
                 ["--vectors", tmp_path / "nowhere.txt"]):
        result = eval_cli(gtzan, model_dir, *args, corpus="gtzan")
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_one_label_warns_that_accuracy_is_trivial(tmp_path, model_dir, gtzan):
    (tmp_path / "one" / "jazz").mkdir(parents=True)
    for i in range(2):
        sf.write(tmp_path / "one" / "jazz" / f"{i}.wav", tone(i), SR)
    out = tmp_path / "report.json"
    result = eval_cli(tmp_path / "one", model_dir, "--out", out, corpus="folder")
    assert result.exit_code == 0, result.output
    warning = "only one evaluation label (jazz): accuracy is trivially 1.0"
    assert f"zstag: warning: {warning}\n" in result.stderr
    report = json.loads(out.read_text())
    assert report["warnings"] == [warning] and report["metrics"]["all"]["accuracy"] == 1.0
    # one seen and one unseen label: each set's accuracy is trivial, the generalised one is not
    assert run("gtzan", gtzan, model_dir, labels=["jazz", "rock"]).report["warnings"] == [
        "only one seen label (rock): the seen accuracy is trivially 1.0",
        "only one unseen label (jazz): the unseen accuracy is trivially 1.0",
    ]
    assert run("gtzan", gtzan, model_dir).report["warnings"] == []


def test_cli_out_naming_a_folder_fails_before_the_evaluation(tmp_path):
    for option in ("--out", "--plot"):  # before the model is loaded: there is none
        result = eval_cli(tmp_path, tmp_path / "no-model", option, tmp_path, corpus="gtzan")
        assert result.exit_code == 2 and result.stderr == f"zstag: error: {tmp_path}: {option} names a folder, not a file\n"


def test_report_and_plot_are_written_although_stdout_is_closed(gtzan, model_dir, tmp_path):
    """`zstag eval ... --out r.json | head -1`: the files are written before the table, which alone is cut."""
    pytest.importorskip("matplotlib")
    import subprocess
    import sys

    out, png = tmp_path / "r.json", tmp_path / "c.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zstag", "eval", "-c", "gtzan", "-r", gtzan, "-m", model_dir, "--workers", "0",
         "--out", out, "--plot", png], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line of the table
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 1  # as rich (and `zstag tag`) end on a closed stdout
    assert json.loads(out.read_text())["tracks"]["evaluated"] == 8 and png.read_bytes()[:4] == b"\x89PNG"
    lines = stderr.splitlines()
    assert all(line.startswith("zstag: ") for line in lines), stderr
    assert f"zstag: report written to {out}" in lines and f"zstag: confusion matrix written to {png}" in lines


@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_a_table_that_cannot_be_written_is_one_line_and_exit_1(gtzan, model_dir, tmp_path, stdout):
    import os
    import subprocess
    import sys

    out = tmp_path / "r.json"
    args = [sys.executable, "-m", "zstag", "eval", "-c", "gtzan", "-r", gtzan, "-m", model_dir, "--workers", "0", "--out", out]
    if stdout == "closed":
        proc = subprocess.run(args, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1), timeout=300)
    else:
        with open("/dev/full", "w") as full:
            proc = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 1 and json.loads(out.read_text())["tracks"]["evaluated"] == 8
    lines = proc.stderr.splitlines()
    assert all(line.startswith("zstag: ") for line in lines), proc.stderr
    assert lines[-1].startswith("zstag: error: cannot write the table to stdout: "), lines[-1]


def test_file_names_that_are_not_utf8_give_a_valid_utf8_report(tmp_path, model_dir):
    """A decodable and an undecodable file whose names are Latin-1 (os.fsdecode: lone surrogates): the report
    is strict JSON in valid UTF-8, each bad byte as U+FFFD (it was a UnicodeEncodeError traceback)."""
    import os

    root = tmp_path / "corpus"
    for label, seed in (("rock", 0), ("jazz", 1)):
        (root / label).mkdir(parents=True)
        sf.write(root / label / "plain.wav", tone(seed), SR)
    os.rename(root / "jazz" / "plain.wav", os.fsencode(root / "jazz") + b"/caf\xe9.wav")
    (root / "rock" / os.fsdecode(b"d\xe9mo.wav")).write_bytes(b"not audio")
    out = tmp_path / "report.json"
    result = eval_cli(root, model_dir, "--out", out, corpus="folder")
    assert result.exit_code == 1, result.output  # one track failed; the report is written all the same
    report = json.loads(out.read_bytes().decode("utf-8"))  # strict: invalid UTF-8 raises
    assert report["tracks"]["evaluated"] == 2
    assert [f["id"] for f in report["tracks"]["failed"]] == ["rock/d\ufffdmo.wav"]
    assert f"{root}/rock/d\ufffdmo.wav: cannot decode" in result.stderr


def table_rows(text: str) -> dict[str, list[list[str]]]:
    """The cells of every table row printed (rich's "│" lines), by first cell; a name printed in several tables
    or blocks (the confusion matrix's row names) has a list per printing."""
    printed, previous = [], None
    for line in text.splitlines():
        if not line.startswith("│"):
            previous = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if previous and all(not c for c, p in zip(cells, previous) if re.fullmatch(r"[\d.—]+|yes|no", p)):
            previous[:] = [f"{p} {c}".strip() for p, c in zip(previous, cells)]  # a folded text cell goes on
        else:
            previous = cells
            printed.append(cells)
    rows: dict[str, list[list[str]]] = {}
    for cells in printed:
        rows.setdefault(cells[0], []).append(cells[1:])
    return rows


# 23 single-label classes, as the dance corpus has: its confusion matrix is wider than 80 columns
CLASSES = ("blues", "country", "jazz", "rock", "waltz", "tango", "salsa", "samba", "polka", "reggae", "soul", "funk",
           "disco", "techno", "opera", "folk", "gospel", "punk", "metal", "swing", "rumba", "mambo", "ska")


@pytest.mark.parametrize("columns", ["80", "44", None])  # None: CliRunner's output is no terminal (a pipe)
def test_every_figure_is_printed_with_its_digits_at_any_width(mtat, model_dir, tmp_path, columns):
    """At 80 columns (or fewer), or piped, no number is cut to "0.…": each figure of the JSON report is in its
    table row with all its digits, the confusion matrix in blocks of columns."""
    root = tmp_path / "classes"
    for seed, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        sf.write(root / name / "0.wav", tone(seed % 9), SR)
    for kind, corpus in (("folder", root), ("mtat", mtat)):
        out = tmp_path / f"{kind}.json"
        env = {"COLUMNS": columns} if columns else {"COLUMNS": None}
        result = CliRunner().invoke(app, ["eval", "-c", kind, "-r", str(corpus), "-m", str(model_dir), "--workers", "0",
                                          "--out", str(out)], env=env)
        assert result.exit_code == 0, result.output
        assert "…" not in result.stdout
        report, rows = json.loads(out.read_text()), table_rows(result.stdout)
        figures = report["metrics"]
        single = kind == "folder"
        if single:
            expected = {"accuracy": "accuracy", "mean recall": "mean_recall"}
            for name, key in expected.items():
                assert rows[name] == [[evalrender.fmt(figures[s][key]) for s in ("seen", "unseen", "all")]]
        else:
            for name, (section, key) in {"retrieval ROC-AUC": ("retrieval", "roc_auc"), "P@1": ("top_k", "P@1"),
                                         "annotation AP": ("annotation", "average_precision")}.items():
                assert rows[name] == [[evalrender.fmt(figures[s][section][key]) for s in ("seen", "unseen", "all")]]
        for label, f in figures["all"]["per_label"].items():
            [cells] = [r for r in rows[label] if r[0] in ("yes", "no")]
            numbers = [f["recall"]] if single else [f["roc_auc"], f["pr_auc"]]
            assert all(evalrender.fmt(n) in cells[2:5] for n in numbers), (label, cells)
        if single:  # each true label's counts, over the blocks in order
            confusion = figures["all"]["confusion"]
            for j, (label, counts) in enumerate(zip(confusion["labels"], confusion["matrix"])):
                printed = [cell for block in rows[f"{j} {label}"] for cell in block]
                assert printed == [str(n) if n else "." for n in counts]
            assert len(rows["0 blues"]) > 1  # in blocks


def test_a_label_that_is_likely_a_typo_is_noted(tmp_path, model_dir):
    for i, label in enumerate(("jaz", "rock")):
        sf.write(tmp_path / f"{i}.wav", tone(i), SR)
    (tmp_path / "manifest.csv").write_text("path,labels\n0.wav,jaz\n1.wav,rock\n")
    out = tmp_path / "report.json"
    result = eval_cli(tmp_path, model_dir, "--out", out)
    assert result.exit_code == 0, result.output
    note = '"jaz" is a rare word (rank 79726); did you mean "jazz" (rank 3282)?'
    assert f"zstag: note: {note}\n" in result.stderr
    assert json.loads(out.read_text())["labels"]["likely_typos"] == [note]
