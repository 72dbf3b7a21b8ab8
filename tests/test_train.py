"""`zstag train`: sampling, loss going down, checkpoints and resume, the saved model, the CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zstag.train as train_module
from zstag.audio import PAPER
from zstag.corpora import Track
from zstag.features import FeatureCache, preprocess
from zstag.model import load_model
from zstag.train import (TrackSet, TrainError, TrainOptions, label_vectors, random_vectors, ranking_metrics,
                         sample_plan, train)

SR = 22050
LABELS = ["rock", "jazz", "piano", "guitar"]
FREQS = {"rock": 150.0, "jazz": 400.0, "piano": 1100.0, "guitar": 2600.0}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """32 four-second tracks: each label is a tone band, so a few epochs can learn it."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("train-corpus")
    rng = np.random.default_rng(0)
    tracks = []
    for i in range(32):
        label = LABELS[i % 4]
        t = np.arange(4 * SR) / SR
        f = FREQS[label] * (1 + 0.05 * rng.standard_normal())
        x = 0.3 * np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * (1 + i % 3) * t))
        x += 0.01 * rng.standard_normal(len(t))
        path = root / f"{i:02d}.wav"
        sf.write(path, x.astype(np.float32), SR)
        tracks.append(Track(f"{i:02d}", path, (label,), f"artist {i % 8}"))
    preprocess(tracks, root / "cache", PAPER, shard_size=8, progress=False, source={"name": "tones", "kind": "csv"})
    return root / "cache"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def ids(cache, part):
    all_ids = sorted(e.id for e in cache.tracks)
    return all_ids[:24] if part == "train" else all_ids[24:]


def run(cache_dir, out, **options):
    cache = FeatureCache.open(cache_dir)
    defaults = dict(epochs=4, batch_size=8, optimizer="adam", seed=0, threads=1, val_samples=64)
    resume = options.pop("resume", False)
    return train(cache, ids(cache, "train"), ids(cache, "val"), LABELS, out, TrainOptions(**{**defaults, **options}),
                 split_sha256="f" * 64, corpus_name="tones", progress=False, log=lambda _: None, resume=resume)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "weights.safetensors")


def test_training_lowers_the_loss_and_saves_a_loadable_model(cache_dir, tmp_path):
    result = run(cache_dir, tmp_path / "m", epochs=8)
    history = result["history"]
    assert len(history) == 8
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert min(h["val_loss"] for h in history) < 0.6 * history[0]["val_loss"]
    model = load_model(tmp_path / "m")
    assert model.model_id == result["model_id"]
    assert model.train_labels == LABELS
    assert model.front_end == PAPER
    assert model.config["words"] == "glove-6B-50d" and model.config["word_dim"] == 50
    assert model.config["split_sha256"] == "f" * 64
    assert model.config["training"]["epoch"] == result["best_epoch"]
    stats = json.loads((tmp_path / "m" / "corpus_stats.json").read_text())
    assert stats["corpus"] == "tones" and stats["n_tracks"] == 24 and len(stats["mean_embedding"]) == 100
    assert json.loads((tmp_path / "m" / "history.json").read_text()) == history


def test_resume_continues_exactly_as_an_uninterrupted_run(cache_dir, tmp_path):
    straight = run(cache_dir, tmp_path / "straight", epochs=4)
    run(cache_dir, tmp_path / "stopped", epochs=2)
    resumed = run(cache_dir, tmp_path / "stopped", epochs=4, resume=True)
    drop = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert drop(resumed["history"]) == drop(straight["history"])
    last = tmp_path / "straight" / "checkpoints" / "epoch-0004", tmp_path / "stopped" / "checkpoints" / "epoch-0004"
    a, b = weights(last[0]), weights(last[1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert weights(tmp_path / "straight").keys() == a.keys()


def test_resume_keeps_the_lr_schedule_and_early_stopping_across_the_interruption(cache_dir, tmp_path):
    """SGD at a rate too small to move the weights (yet above the scheduler's eps, 1e-8): after epoch 1 no
    epoch improves by MIN_IMPROVEMENT. With LR patience 1 the rate halves at epochs 3 and 5, and early
    stopping (4 bad epochs) ends the run after epoch 5. A run stopped after epoch 2 has counted one bad
    epoch in the scheduler and in early stopping: resumed, it must halve at 3 and stop after 5 too (a
    fresh scheduler would halve at 4, a fresh count stop later)."""
    options = dict(optimizer="sgd", lr=1e-7, lr_factor=0.5, lr_patience=1, early_stop=4)
    straight = run(cache_dir, tmp_path / "straight", epochs=8, **options)
    assert [h["lr"] for h in straight["history"]] == [1e-7, 1e-7, 5e-8, 5e-8, 2.5e-8]
    assert straight["stopped_early"] and straight["best_epoch"] == 1
    run(cache_dir, tmp_path / "stopped", epochs=2, **options)
    resumed = run(cache_dir, tmp_path / "stopped", epochs=8, resume=True, **options)
    drop = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert drop(resumed["history"]) == drop(straight["history"])
    assert resumed["stopped_early"] and resumed["best_epoch"] == 1


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_checkpoint_restores_optimizer_state(cache_dir, tmp_path, optimizer):
    run(cache_dir, tmp_path / "m", epochs=1, optimizer=optimizer, lr=0.01)
    _, tensors, meta = train_module.load_checkpoint(tmp_path / "m")
    state = train_module._optimizer_join(tensors, meta["optimizer"])
    key = "momentum_buffer" if optimizer == "sgd" else "exp_avg"
    assert state["state"] and all(torch.is_tensor(s[key]) for s in state["state"].values())
    names = {p.name for p in (tmp_path / "m" / "checkpoints" / "epoch-0001").iterdir()}
    assert names == {"weights.safetensors", "state.safetensors", "state.json"}  # nothing that needs pickle


def test_seed_makes_runs_repeatable(cache_dir, tmp_path):
    run(cache_dir, tmp_path / "a", epochs=2)
    run(cache_dir, tmp_path / "b", epochs=2)
    run(cache_dir, tmp_path / "c", epochs=2, seed=1)
    a, b, c = (weights(tmp_path / x / "checkpoints" / "epoch-0002") for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_finished_run_is_not_overwritten_without_resume(cache_dir, tmp_path):
    run(cache_dir, tmp_path / "m", epochs=1)
    with pytest.raises(TrainError, match="--resume"):
        run(cache_dir, tmp_path / "m", epochs=1)


def test_early_stopping_and_lr_reduction(cache_dir, tmp_path):
    # lr so small nothing improves: the lr drops after lr_patience bad epochs, training stops after early_stop.
    result = run(cache_dir, tmp_path / "m", epochs=50, optimizer="sgd", lr=1e-7, lr_patience=1, early_stop=3)
    assert result["stopped_early"] and result["epochs"] == 4  # epoch 1 sets the best; 2, 3, 4 do not beat it
    assert [h["lr"] for h in result["history"]] == pytest.approx([1e-7, 1e-7, 2e-8, 2e-8])


def test_sample_plan_draws_positives_from_the_track_and_negatives_from_the_rest(cache_dir):
    cache = FeatureCache.open(cache_dir)
    tracks = TrackSet(cache, ids(cache, "train"), LABELS)
    plan = sample_plan(tracks, np.random.default_rng(5), 100, 3, 130)
    again = sample_plan(tracks, np.random.default_rng(5), 100, 3, 130)
    assert all(np.array_equal(plan[k], again[k]) for k in plan)
    assert sorted(np.bincount(plan["track"][:24])) == [1] * 24  # the first pass visits every track once
    for t, pos, negs, start in zip(plan["track"], plan["positive"], plan["negatives"], plan["start"]):
        labels = set(cache.by_id[tracks.ids[t]].labels)
        assert LABELS[pos] in labels and not {LABELS[n] for n in negs} & labels
        assert 0 <= start <= max(0, tracks.n_frames[t] - 130)


def test_tracks_without_a_seen_label_are_not_trained_on(cache_dir):
    cache = FeatureCache.open(cache_dir)
    tracks = TrackSet(cache, ids(cache, "train") + ["not-in-cache"], ["rock", "jazz"])
    assert len(tracks) == 12 and all(cache.by_id[i].labels[0] in ("rock", "jazz") for i in tracks.ids)


def test_random_vectors_are_fixed_per_label():
    a = random_vectors(["Rock", "jazz"], 16, seed=3)
    b = random_vectors(["jazz", "rock", "polka"], 16, seed=3)
    np.testing.assert_array_equal(a[0], b[1])  # the same label (after normalisation) → the same vector
    np.testing.assert_array_equal(a[1], b[0])
    assert not np.allclose(random_vectors(["rock"], 16, seed=4), a[:1])
    vectors, name = label_vectors(["rock", "jazz"], "random:16:3")
    np.testing.assert_array_equal(vectors, a)
    assert name == "random:16:3"
    with pytest.raises(TrainError):
        label_vectors(["rock"], "random:x")


def test_ranking_metrics():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.1, 0.2, 0.3]])
    metrics = ranking_metrics(scores, [np.array([0]), np.array([0, 2]), np.array([0])])
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["mean_rank"] == pytest.approx((1 + 2 + 3) / 3)


def test_cli_split_then_train(cache_dir, tmp_path):
    from typer.testing import CliRunner

    from zstag.cli import app
    from zstag.splits import load_split

    runner = CliRunner()
    split_file = tmp_path / "split.json"
    result = runner.invoke(app, ["split", "--features", str(cache_dir), "--out", str(split_file), "--unseen", " Guitar",
                                 "--split-by", "artist", "--test-fraction", "0"])  # named as labels are looked up
    assert result.exit_code == 0, result.output
    split = load_split(split_file)
    assert split.unseen == ["guitar"] and split.corpus == "tones"
    args = ["train", "--features", str(cache_dir), "--out", str(tmp_path / "m"), "--split", str(split_file),
            "--batch-size", "8", "--val-samples", "32", "--threads", "1", "--no-progress"]
    result = runner.invoke(app, args + ["--epochs", "2"])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "m")
    assert model.train_labels == split.seen and model.config["split_sha256"] == split.sha256
    result = runner.invoke(app, args + ["--epochs", "3", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 2" in result.output
    result = runner.invoke(app, ["train", "--features", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "not a feature cache" in result.output


def test_cli_train_makes_and_keeps_its_split(cache_dir, tmp_path):
    from typer.testing import CliRunner

    from zstag.cli import app
    from zstag.splits import load_split

    result = CliRunner().invoke(app, ["train", "--features", str(cache_dir), "--out", str(tmp_path / "m"), "--unseen",
                                      "piano", "--epochs", "1", "--batch-size", "8", "--val-samples", "32", "--vectors", "random:20:1",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    split = load_split(tmp_path / "m" / "split.json")
    model = load_model(tmp_path / "m")
    assert split.unseen == ["piano"] and model.config["split_sha256"] == split.sha256
    assert model.config["words"] == "random:20:1" and model.config["word_dim"] == 20


def test_torchrun_with_two_processes_matches_one_process(cache_dir, tmp_path):
    """DDP on CPU (gloo): two processes of half batches average to the one-process gradient."""
    pytest.importorskip("torch.distributed.run")
    common = ["--features", str(cache_dir), "--unseen", "piano", "--test-fraction", "0", "--epochs", "2",
              "--batch-size", "8", "--epoch-size", "24", "--val-samples", "32", "--optimizer", "adam", "--threads", "1",
              "--vectors", "random:50:0", "--no-progress", "--device", "cpu"]  # gloo, also where a GPU is
    one = subprocess.run([sys.executable, "-m", "zstag", "train", "--out", str(tmp_path / "one"), *common],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "zstag", "train", "--out", str(tmp_path / "two"), *common],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    last = tmp_path / "one" / "checkpoints" / "epoch-0002"
    a, b = weights(last), weights(tmp_path / "two" / "checkpoints" / "epoch-0002")
    lr = json.loads((last / "state.json").read_text())["optimizer"]["param_groups"][0]["lr"]
    steps = int(train_module.load_checkpoint(tmp_path / "one")[1]["optimizer.0.step"])  # 2 epochs x 24 / 8
    # Both runs add the same products in another order (half batches, then gloo's sum), so each weight
    # gradient g = sum of n = batch x frames <= 8 x 130 terms differs by ~ lambda sqrt(n) u S (u = 2^-24,
    # lambda = 6 standard deviations; Higham & Mary's probabilistic bound), S = sum |terms| ~ sqrt(n) |g|
    # for terms of random sign. Adam divides by sqrt(v) ~ |g|, so a weight moves by ~lr |m / sqrt(v)|
    # <= ~lr a step whatever |g|: where g is within that error of zero (a fraction p = lambda n u of the
    # N elements a step) its step can change sign, 2 lr apart; elsewhere steps differ by ~lambda n u lr.
    # So per tensor |w_one - w_two|_2 <= 2 lr sqrt(steps max(1, N p)) (+ lr steps sqrt(N) p, negligible):
    # ~0.02 for the 65536 conv weights, where a run whose processes do not share gradients moves each
    # weight by ~lr a step differently (|.|_2 ~ lr steps sqrt(N) / 2 ~ 0.8).
    p = 6 * 8 * 130 * 2.0**-24
    assert a.keys() == b.keys()
    for key in a:
        bound = 2 * lr * (steps * max(1.0, a[key].numel() * p)) ** 0.5 + lr * steps * a[key].numel() ** 0.5 * p
        assert torch.linalg.vector_norm(a[key] - b[key]) <= bound, key
    history = [json.loads((tmp_path / x / "history.json").read_text()) for x in ("one", "two")]
    # The losses are means of <= 32 positive hinge terms (no cancellation): float32 forward error of 5
    # layers of <= 512-term products, 5 lambda sqrt(512) u ~ 4e-5 relative, plus the weights above.
    assert [h["loss"] for h in history[0]] == pytest.approx([h["loss"] for h in history[1]], rel=1e-4)
    shutil.rmtree(tmp_path / "one")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU on this machine")
def test_training_on_a_gpu_learns_repeats_and_matches_the_cpu(cache_dir, tmp_path):
    gpu = [run(cache_dir, tmp_path / name, epochs=6, device="cuda") for name in ("gpu-a", "gpu-b")]
    cpu = run(cache_dir, tmp_path / "cpu", epochs=6, device="cpu")
    history = gpu[0]["history"]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    a, b = weights(tmp_path / "gpu-a"), weights(tmp_path / "gpu-b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed, the same weights
    assert gpu[0]["model_id"] == gpu[1]["model_id"]
    # The same sampling and start; only float sums differ: the first epoch's loss agrees closely.
    assert history[0]["loss"] == pytest.approx(cpu["history"][0]["loss"], rel=1e-3)


# --- the CLI refuses before it writes ----------------------------------------------------------------

FAST = ["--epochs", "1", "--batch-size", "8", "--val-samples", "32", "--threads", "1", "--no-progress", "--device", "cpu"]


def cli(*args):
    from typer.testing import CliRunner

    from zstag.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def files_in(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_a_run_refused_for_its_out_leaves_the_model_untouched(cache_dir, tmp_path):
    out = tmp_path / "m"
    result = cli("train", "--features", cache_dir, "--out", out, "--unseen", "piano", "--vectors", "random:20:1", *FAST)
    assert result.exit_code == 0, result.output
    before = files_in(out)
    result = cli("train", "--features", cache_dir, "--out", out, "--seed", "5", *FAST)  # another split
    assert result.exit_code == 1 and "pass --resume" in result.output
    assert files_in(out) == before  # split.json still the model's own


def test_cli_a_model_folder_without_checkpoints_is_not_trained_over(cache_dir, tmp_path, tiny_model_dir):
    """A shipped or copied model (config.json, no checkpoints/) is refused as --out, untouched."""
    import shutil

    out = tmp_path / "m"
    shutil.copytree(tiny_model_dir, out)
    before = files_in(out)
    result = cli("train", "--features", cache_dir, "--out", out, *FAST)
    assert result.exit_code == 1 and "holds a model already" in result.output, result.output
    assert result.output.count("\n") == 1 and files_in(out) == before


@pytest.mark.parametrize("extra, code", [
    (["--optimizer", "rmsprop"], 2), (["--lr", "-1"], 2), (["--vectors", "random:abc"], 2),
    (["--val-fraction", "1"], 2), (["--unseen-fraction", "1"], 2), (["--split-by", "album"], 2),
    (["--vectors", "/nowhere/vectors.txt"], 2), (["--unseen", "qwxzvbk"], 2),
])
def test_cli_a_refused_run_writes_nothing(cache_dir, tmp_path, extra, code):
    result = cli("train", "--features", cache_dir, "--out", tmp_path / "m", *FAST, *extra)
    assert result.exit_code == code, result.output
    assert result.output.startswith("zstag: error:") and result.output.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_cli_a_split_of_another_corpus_writes_nothing(cache_dir, tmp_path):
    from zstag.corpora import Corpus
    from zstag.splits import make_split, save_split

    tracks = [Track(f"t{i}", tmp_path / f"{i}.wav", (("rock", "polka")[i % 2],)) for i in range(10)]
    save_split(make_split(Corpus("other", "csv", tmp_path, tracks, ["polka", "rock"], True), unseen=["polka"]),
               tmp_path / "other.json")
    result = cli("train", "--features", cache_dir, "--out", tmp_path / "m", "--split", tmp_path / "other.json", *FAST)
    assert result.exit_code == 1 and "labels not in corpus" in result.output, result.output
    assert not (tmp_path / "m").exists()


def test_cli_train_on_a_cache_missing_a_shard_file(cache_dir, tmp_path):
    shutil.copytree(cache_dir, tmp_path / "cache")
    (tmp_path / "cache" / "shard-00001.npy").unlink()
    result = cli("train", "--features", tmp_path / "cache", "--out", tmp_path / "m", *FAST)
    assert result.exit_code == 1
    assert result.output == f"zstag: error: {tmp_path / 'cache' / 'shard-00001.npy'}: missing; rerun `zstag preprocess`\n"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args", [
    ["preprocess", "--root", "ROOT", "--out", "OUT", "--shard", "abc"],
    ["preprocess", "--root", "ROOT", "--out", "OUT", "--front-end", "foo"],
    ["preprocess", "--root", "ROOT", "--out", "OUT", "--corpus", "bogus"],
    ["preprocess", "--root", "ROOT", "--out", "OUT", "--corpus", "folder", "--top-n", "3"],
    ["split", "--out", "OUT"],
    ["split", "--features", "FEAT", "--out", "OUT", "--split-by", "album"],
    ["split", "--features", "FEAT", "--out", "OUT", "--val-fraction", "1"],
    ["split", "--features", "FEAT", "--out", "OUT", "--unseen-fraction", "1"],
    ["split", "--features", "FEAT", "--out", "OUT", "--unseen", "guitar,qwxzvbk"],  # a label the corpus lacks
])
def test_cli_option_value_errors_are_usage_errors(cache_dir, tmp_path, args):
    (tmp_path / "root").mkdir()
    places = {"ROOT": tmp_path / "root", "OUT": tmp_path / "out", "FEAT": cache_dir}
    result = cli(*(places.get(a, a) for a in args))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("zstag: error:") and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_split_warnings_are_one_line(cache_dir, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping the CLI would print Python's two-line form
        result = cli("split", "--features", cache_dir, "--out", tmp_path / "s.json", "--unseen", "guitar",
                     "--split-by", "artist", "--val-fraction", "0.01", "--test-fraction", "0")
    assert result.exit_code == 0, result.output
    assert "zstag: warning: corpus tones: the validation partition is empty" in result.stderr


# --- --resume where there is no checkpoint (yet) ------------------------------------------------------

RUN = ["--unseen", "piano", "--vectors", "random:20:1", *FAST]
NOTE = "starting at epoch 1"


def test_cli_resume_before_the_first_checkpoint_starts_afresh_with_a_note(cache_dir, tmp_path):
    straight = cli("train", "--features", cache_dir, "--out", tmp_path / "straight", *RUN)
    assert straight.exit_code == 0, straight.output
    assert NOTE not in straight.stderr
    nothing_yet = cli("train", "--features", cache_dir, "--out", tmp_path / "new", *RUN, "--resume")
    assert nothing_yet.exit_code == 0, nothing_yet.output
    (note,) = [line for line in nothing_yet.stderr.splitlines() if "note" in line]
    assert note == f"zstag: note: {tmp_path / 'new'}: no checkpoint to resume from yet; {NOTE}"
    # A run killed while it wrote its first checkpoint: the split, epoch 1's model, checkpoints/ with a
    # temporary folder in it, no checkpoint.
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", killed)
    shutil.rmtree(killed / "checkpoints")
    (killed / "checkpoints" / ".epoch-0001.abc.tmp").mkdir(parents=True)
    (killed / "history.json").unlink()
    refused = cli("train", "--features", cache_dir, "--out", killed, *RUN)
    assert refused.exit_code == 1 and "before its first checkpoint; pass --resume" in refused.output
    again = cli("train", "--features", cache_dir, "--out", killed, *RUN, "--resume")
    assert again.exit_code == 0, again.output
    assert again.stderr.count(NOTE) == 1 and "resuming" not in again.output
    timed = [Path("history.json"), Path("checkpoints/epoch-0001/state.json")]  # hold each epoch's seconds
    untimed = lambda folder: {k: v for k, v in files_in(folder).items() if k not in timed}  # noqa: E731
    epochs = lambda folder: [{k: v for k, v in h.items() if k != "seconds"}  # noqa: E731
                             for h in json.loads((folder / "history.json").read_text())]
    for run in ("new", "killed"):  # the same seed: the same model as the run that was never interrupted
        assert untimed(tmp_path / run) == untimed(tmp_path / "straight")
        assert epochs(tmp_path / run) == epochs(tmp_path / "straight")


def test_cli_resume_of_a_model_folder_is_still_refused(cache_dir, tmp_path, tiny_model_dir):
    out = tmp_path / "m"
    shutil.copytree(tiny_model_dir, out)  # a shipped or copied model: no run of zstag train started here
    before = files_in(out)
    result = cli("train", "--features", cache_dir, "--out", out, *FAST, "--resume")
    assert result.exit_code == 1 and "holds a model already" in result.output, result.output
    assert files_in(out) == before


def test_cli_resume_finds_a_checkpoint_without_latest_json_and_refuses_a_damaged_one(cache_dir, tmp_path):
    out = tmp_path / "m"
    assert cli("train", "--features", cache_dir, "--out", out, *RUN).exit_code == 0
    (out / "checkpoints" / "latest.json").unlink()  # killed between the epoch folder and latest.json
    result = cli("train", "--features", cache_dir, "--out", out, *RUN, "--epochs", "2", "--resume")
    assert result.exit_code == 0 and "resuming after epoch 1" in result.output, result.output
    weights_file = out / "checkpoints" / "epoch-0002" / "weights.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    before = files_in(out)
    for extra in (["--resume"], []):  # never dropped: not with --resume, not without it
        result = cli("train", "--features", cache_dir, "--out", out, *RUN, "--epochs", "3", *extra)
        assert result.exit_code == 1, result.output
        assert ("no usable checkpoint" if extra else "pass --resume") in result.output
        assert result.output.count("\n") == 1 and files_in(out) == before


def test_cli_file_names_that_are_not_utf8_go_through_preprocess_split_train_and_eval(tmp_path):
    """A folder-per-label corpus with Latin-1 file names (os.fsdecode: lone surrogates): preprocess (was a
    UnicodeEncodeError in index.parquet), split (in split.json), train and eval all succeed, every JSON and
    CSV file is strict UTF-8, and the ids round-trip exactly: the split made from the cache is the one made
    from the audio, train finds every split track in the cache, eval every test track in the corpus."""
    import os

    import soundfile as sf
    from typer.testing import CliRunner

    from zstag.cli import app
    from zstag.splits import load_split

    root = tmp_path / "corpus"
    for label in ("rock", "jazz", "piano"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            t = np.arange(3 * SR) / SR
            sf.write(root / label / f"{i}.wav", (0.3 * np.sin(2 * np.pi * FREQS[label] * (1 + i / 40) * t)).astype(
                np.float32), SR)
    os.rename(root / "jazz" / "0.wav", os.fsencode(root / "jazz") + b"/caf\xe9.wav")  # seen: trained on
    os.rename(root / "piano" / "0.wav", os.fsencode(root / "piano") + b"/d\xe9j\xe0.wav")  # unseen: evaluated
    root = root.rename(tmp_path / os.fsdecode(b"m\xfasica"))  # the corpus's name: in cache.json, split.json, config.json
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    run("preprocess", "--corpus", "folder", "--root", root, "--out", tmp_path / "cache", "--no-progress")
    run("split", "--corpus", "folder", "--root", root, "--out", tmp_path / "split.json", "--unseen", "piano")
    run("split", "--features", tmp_path / "cache", "--out", tmp_path / "from-cache.json", "--unseen", "piano")
    split = load_split(tmp_path / "split.json")
    assert load_split(tmp_path / "from-cache.json") == split and split.corpus == "m\ufffdsica"
    assert os.fsdecode(b"jazz/caf\xe9.wav") in split.tracks("train") + split.tracks("validation")
    assert os.fsdecode(b"piano/d\xe9j\xe0.wav") in split.tracks("test")
    result = run("train", "--features", tmp_path / "cache", "--out", tmp_path / "m", "--split", tmp_path / "split.json",
                 "--epochs", "1", "--batch-size", "4", "--val-samples", "8", "--threads", "1", "--no-progress")
    assert "not in the feature cache" not in result.output
    run("eval", "--corpus", "folder", "--root", root, "--model", tmp_path / "m", "--split", tmp_path / "split.json",
        "--out", tmp_path / "report.json", "--workers", "0")
    report = json.loads((tmp_path / "report.json").read_bytes().decode("utf-8"))
    assert report["tracks"]["evaluated"] == 3 and not report["tracks"]["failed"]
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".json", ".csv") and root not in p.parents]
    assert len(written) > 8
    for path in written:
        text = path.read_bytes().decode("utf-8")  # strict: invalid UTF-8 raises
        if path.suffix == ".json":
            json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")  # nor any escaped lone surrogate
