"""--device for tag, eval and train: names, one-line errors, and — where torch sees a CUDA GPU — GPU
embeddings that repeat exactly and match the CPU's to float32 rounding."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zstag.cli import app
from zstag.devices import DeviceError, check_device, pick_device

from test_tag import LABELS, _fresh_cache, write_music  # noqa: F401  (_fresh_cache: autouse fixture)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="torch sees no CUDA GPU on this machine")
GPU_CPU_TOLERANCE = 2e-4  # embeddings: relative to their largest entry (different sums, no TF32)


@pytest.fixture()
def music(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    for seed in (0, 4, 9):
        write_music(folder / f"{seed}.wav", seconds=7.0, seed=seed)
    return folder


def tag(*args):
    return CliRunner().invoke(app, ["tag", *map(str, args)])


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_that_are_accepted(name):
    assert check_device(name) == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", "", "cpu:0"])
def test_other_device_names_are_one_line_errors(name):
    with pytest.raises(DeviceError, match="expected auto .*cpu, cuda or cuda:N"):
        check_device(name)


@pytest.mark.parametrize("command", ["tag", "eval", "train"])
def test_a_bad_device_is_a_usage_error_before_any_work(command, tmp_path, music, tiny_model_dir):
    args = {
        "tag": ["tag", str(music), "--labels", "rock", "--model", tiny_model_dir],
        "eval": ["eval", "--corpus", "folder", "--root", str(music), "--model", tiny_model_dir],
        "train": ["train", "--features", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")],
    }[command]
    result = CliRunner().invoke(app, [*args, "--device", "gpu"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["zstag: error: --device 'gpu': expected " +
                                                  "auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"]


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_says_so_in_one_line(music, tiny_model_dir, tmp_path):
    out = tmp_path / "out.json"
    result = tag(music, "--labels", "rock", "--model", tiny_model_dir, "--device", "cuda", "-o", out)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--device cuda: torch" in result.stderr and "sees no CUDA GPU" in result.stderr
    assert not out.exists()
    assert pick_device("auto") == torch.device("cpu")
    for args in (["eval", "--corpus", "folder", "--root", str(music), "--model", tiny_model_dir],
                 ["train", "--features", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]):
        result = CliRunner().invoke(app, [*args, "--device", "cuda"])
        assert result.exit_code == 2 and "sees no CUDA GPU" in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()  # nothing written to --out


def test_model_device_follows_to():
    from zstag.model import load_model

    for name in ("default", "conse"):  # conse has buffers only; musicnn keeps its backbones out of the state dict
        model = load_model(name).to(torch.float64)
        assert model.device.type == "cpu"
        assert all(p.dtype == torch.float64 for p in model.segment_encoder._backbones[0].parameters())
        other = load_model(name)  # its own backbones: untouched by the first model's .to()
        assert all(p.dtype == torch.float32 for p in other.segment_encoder._backbones[0].parameters())


def test_auto_runs_on_the_cpu_without_a_gpu(music, tiny_model_dir):
    if HAS_CUDA:
        pytest.skip("auto is the GPU here (compared with the CPU in the GPU tests)")
    outputs = [tag(music, "--labels", ",".join(LABELS), "--model", tiny_model_dir, "-f", "json", "--no-cache",
                   "--device", device) for device in ("auto", "cpu")]
    assert all(r.exit_code == 0 for r in outputs)
    assert outputs[0].stdout == outputs[1].stdout


# --- on a GPU -----------------------------------------------------------------------------------


def _segments(path, model):
    from zstag.workers import decode_file

    segments, _ = decode_file(str(path), model.front_end.to_dict())
    return segments


@needs_cuda
@pytest.mark.parametrize("which", ["cnn1d", "default", "conse"])
def test_gpu_embeddings_repeat_exactly_and_match_the_cpu(which, music, tiny_model_dir):
    from zstag.devices import deterministic_cuda
    from zstag.model import load_model

    model = load_model(tiny_model_dir if which == "cnn1d" else which)
    segments = _segments(music / "4.wav", model)
    on_cpu = model.embed_track(segments)
    model.to("cuda")
    with deterministic_cuda():
        first, second = model.embed_track(segments), model.embed_track(segments)
    assert model.device.type == "cuda" and first.dtype == np.float32
    assert np.array_equal(first, second)
    assert np.abs(first - on_cpu).max() <= GPU_CPU_TOLERANCE * np.abs(on_cpu).max()


@needs_cuda
def test_tag_on_the_gpu_ranks_like_the_cpu(music):
    runs = {}
    for device in ("cuda", "cpu", "cuda"):
        result = tag(music, "--labels", "rock,jazz,classical,electronic,speech", "-f", "json", "--no-cache",
                     "--device", device)
        assert result.exit_code == 0, result.stderr
        runs.setdefault(device, []).append(json.loads(result.stdout)["files"])
    assert runs["cuda"][0] == runs["cuda"][1]  # a GPU run repeats to the last digit
    for gpu, cpu in zip(runs["cuda"][0], runs["cpu"][0]):
        assert [t["label"] for t in gpu["tags"]] == [t["label"] for t in cpu["tags"]]
        assert [t["score"] for t in gpu["tags"]] == pytest.approx([t["score"] for t in cpu["tags"]], abs=1e-4)


@needs_cuda
def test_embed_files_puts_the_model_back(music, tiny_model_dir):
    from zstag.embeddings import embed_files
    from zstag.model import load_model

    model = load_model(tiny_model_dir)
    results = embed_files(model, sorted(music.iterdir()), workers=0, use_cache=False, progress=False, device="cuda")
    assert all(r.ok for r in results)
    assert model.device.type == "cpu"


def test_a_failed_move_to_the_device_leaves_everything_as_it_was(tiny_model_dir, music, monkeypatch):
    from zstag.embeddings import embed_files
    from zstag.model import load_model

    model = load_model(tiny_model_dir)
    threads = torch.get_num_threads()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model, "to", out_of_memory)
    with pytest.raises(RuntimeError, match="simulated"):
        embed_files(model, sorted(music.iterdir()), workers=0, use_cache=False, progress=False, device="cpu")
    assert torch.get_num_threads() == threads


def test_torchrun_processes_may_not_share_one_named_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine
    with pytest.raises(DeviceError, match="under torchrun each process takes the GPU of its local rank"):
        pick_device("cuda:0", local_rank=1)
    assert pick_device("cpu").type == "cpu"
    assert pick_device(torch.device("cpu")).type == "cpu"  # a torch.device is taken as its name


def test_a_fully_cached_run_embeds_nothing_and_does_not_check_the_gpu(music, tiny_model_dir):
    """Documented: the device matters only when a file must be embedded (checking it needs torch)."""
    first = tag(music, "--labels", "rock,jazz", "--model", tiny_model_dir, "-f", "json")
    warm = tag(music, "--labels", "rock,jazz", "--model", tiny_model_dir, "-f", "json", "--device", "cuda:7")
    assert first.exit_code == warm.exit_code == 0
    assert json.loads(warm.stdout)["files"] == json.loads(first.stdout)["files"]
    assert "(3 from the cache)" in warm.stderr


def test_a_fully_cached_cuda_run_without_a_gpu_answers_from_the_cache_without_torch(music, tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    """README: a run whose files are all cached embeds nothing and does not check the device. A fresh
    process that sees no GPU (CUDA_VISIBLE_DEVICES empty) tags with --device cuda from a CPU run's cache."""
    from test_tag import cli_subprocess

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = ["tag", music, "--labels", "rock,jazz", "--model", tiny_model_dir, "-f", "json"]
    cpu = tag(*args[1:], "--device", "cpu")
    assert cpu.exit_code == 0 and "(0 from the cache)" in cpu.stderr
    proc, heavy = cli_subprocess(tmp_path, *args, "--device", "cuda")
    assert proc.returncode == 0, proc.stderr
    assert heavy == [] and proc.stderr.strip().endswith("(3 from the cache)")
    assert json.loads(proc.stdout)["files"] == json.loads(cpu.stdout)["files"]
    music.joinpath("new.wav").write_bytes(music.joinpath("0.wav").read_bytes()[:-4000])  # one file to embed:
    proc, _ = cli_subprocess(tmp_path, *args, "--device", "cuda")  # now the device is checked, and refused
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cuda" in proc.stderr, proc.stderr


# --- --bf16 (bfloat16 products on a CPU that has them) -----------------------------------------


def _bf16_problem_here():
    from zstag.devices import bf16_problem

    return bf16_problem(torch.device("cpu"))


@pytest.mark.skipif(_bf16_problem_here() is not None, reason=f"{_bf16_problem_here()}")
def test_bf16_is_close_to_float32_repeats_exactly_and_is_cached_apart(music):
    args = [music, "--labels", "rock,jazz,classical,electronic,speech", "-f", "json", "--device", "cpu"]
    exact = tag(*args, "--no-cache")
    fast, again = tag(*args, "--bf16"), tag(*args, "--bf16")
    assert exact.exit_code == fast.exit_code == again.exit_code == 0, fast.stderr
    assert torch.backends.mkldnn.matmul.fp32_precision == "none"  # put back after the run
    assert "(0 from the cache)" in fast.stderr and "(3 from the cache)" in again.stderr
    assert fast.stdout == again.stdout  # and a fresh bf16 embedding repeats to the last digit:
    assert tag(*args, "--bf16", "--no-cache").stdout == fast.stdout
    exact_scores = [t["score"] for f in json.loads(exact.stdout)["files"] for t in sorted(f["tags"], key=str)]
    fast_scores = [t["score"] for f in json.loads(fast.stdout)["files"] for t in sorted(f["tags"], key=str)]
    assert fast_scores != exact_scores  # bfloat16 did run ...
    assert fast_scores == pytest.approx(exact_scores, abs=0.02)  # ... and moved scores by little
    assert [json.loads(r.stdout)["precision"] for r in (exact, fast)] == ["float32", "bfloat16"]
    cached_exact = tag(*args)  # float32 does not take the bfloat16 rows
    assert "(0 from the cache)" in cached_exact.stderr and cached_exact.stdout == exact.stdout


@pytest.mark.skipif(not hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"),
                    reason=f"torch {torch.__version__} has no mkldnn fp32_precision setting (torch >= 2.9), so "
                           "zstag refuses --bf16 there (devices.bf16_problem)")
def test_bf16_rows_are_cached_apart_on_any_cpu(music, tiny_model_dir, cache_dir, monkeypatch):
    """With the capability check passed (patched: this CPU may have no native bfloat16), a --bf16 run
    neither takes nor gives float32 rows: its rows sit under the model id + "+bf16"."""
    import sqlite3

    from zstag import devices
    from zstag.modelfile import read_model

    monkeypatch.setattr(devices, "bf16_problem", lambda device: None)
    args = [music, "--labels", "rock,jazz", "--model", tiny_model_dir, "-f", "json", "--device", "cpu"]
    runs = [tag(*args), tag(*args, "--bf16"), tag(*args, "--bf16"), tag(*args)]
    assert all(r.exit_code == 0 for r in runs), [r.stderr for r in runs]
    cached = [r.stderr.split("(")[-1].split(" from")[0] for r in runs]
    assert cached == ["0", "0", "3", "3"]
    assert [json.loads(r.stdout)["precision"] for r in runs] == ["float32", "bfloat16", "bfloat16", "float32"]
    model_id = read_model(tiny_model_dir).model_id
    with sqlite3.connect(cache_dir / "embeddings.sqlite") as db:
        rows = dict(db.execute("SELECT model_id, COUNT(*) FROM embeddings GROUP BY model_id").fetchall())
    assert rows == {model_id: 3, model_id + "+bf16": 3}


def test_bf16_where_it_cannot_run_is_a_usage_error(music, tiny_model_dir, tmp_path, monkeypatch):
    from zstag import devices

    monkeypatch.setattr(devices, "bf16_problem", lambda device: "--bf16: no bfloat16 here")
    out = tmp_path / "out.json"
    result = tag(music, "--labels", "rock", "--model", tiny_model_dir, "--bf16", "-o", out)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == ["zstag: error: --bf16: no bfloat16 here"]
    assert not out.exists()
    monkeypatch.undo()
    from zstag.devices import bf16_problem

    assert "CPU only" in bf16_problem(torch.device("cuda")) and "--device cpu" in bf16_problem(torch.device("cuda"))


def test_eval_bf16_is_in_the_report_and_a_usage_error_where_it_cannot_run(tmp_path, monkeypatch):
    from zstag import devices

    corpus = tmp_path / "corpus"
    for label, seed in (("rock", 0), ("rock", 4), ("jazz", 9)):
        (corpus / label).mkdir(parents=True, exist_ok=True)
        write_music(corpus / label / f"{seed}.wav", seconds=5.0, seed=seed)
    args = ["eval", "--corpus", "folder", "--root", str(corpus), "--device", "cpu", "--out"]
    if _bf16_problem_here() is None:
        exact = CliRunner().invoke(app, [*args, str(tmp_path / "exact.json")])
        fast = CliRunner().invoke(app, [*args, str(tmp_path / "fast.json"), "--bf16"])
        assert exact.exit_code == fast.exit_code == 0, fast.stderr
        assert "bfloat16 products" in fast.stdout and "bfloat16" not in exact.stdout
        reports = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("exact", "fast")]
        assert [r["model"]["bf16"] for r in reports] == [False, True]
    monkeypatch.setattr(devices, "bf16_problem", lambda device: "--bf16: no bfloat16 here")
    result = CliRunner().invoke(app, [*args, str(tmp_path / "never.json"), "--bf16"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == ["zstag: error: --bf16: no bfloat16 here"]
    assert not (tmp_path / "never.json").exists()


@pytest.mark.parametrize("isa", ["AVX512_CORE_BF16", "AVX512_CORE"])
def test_bf16_is_refused_where_onednn_would_keep_float32_products(isa):
    """oneDNN capped below AMX (as on a Cooper Lake, Zen 4 or Skylake CPU) ignores the bf16 setting, though
    torch calls such CPUs bf16-capable: --bf16 would be no faster, yet cached apart as if it ran."""
    import os
    import subprocess
    import sys

    code = "import torch; from zstag.devices import bf16_problem; print(bf16_problem(torch.device('cpu')))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("--bf16: ") and "float32" in out and len(out.strip().splitlines()) == 1
