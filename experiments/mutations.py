"""A small mutation check: do the tests meant to catch a plausible one-line bug fail when it is there?

Each mutation below replaces one fragment of a core module (it must occur exactly once) in a copy of
the repository, then runs the tests that are there for it; the mutation is "killed" if they fail,
"survived" if they pass. Not part of CI: it takes a while (the whole list ~20-40 min on 2 cores).

    python experiments/mutations.py                 # every mutation
    python experiments/mutations.py -k softmax      # those whose name contains "softmax"
    python experiments/mutations.py --list

Exit status: 0 if every mutation was killed, 1 if any survived or could not be applied.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900

# (name, file, original fragment, mutated fragment, pytest arguments)
MUTATIONS = [
    ("tag --output written in place", "zstag/cli_run.py",
     "atomic_write(output, data, follow_links=True)",
     'open(output, "wb").write(data)',
     ["tests/test_tag.py", "-k", "output"]),
    ("tag exit code 0 although files failed", "zstag/cli_run.py",
     "return 1 if failures or (written is not None and written.failures) else 0", "return 0",
     ["tests/test_tag.py", "-k", "bad_files"]),
    ("softmax without temperature", "zstag/tagger.py",
     "z = np.asarray(scores, dtype=np.float64) / temperature", "z = np.asarray(scores, dtype=np.float64)",
     ["tests/test_tag.py", "-k", "softmax or single_top_k"]),
    ("--threshold keeps scores below it", "zstag/tagger.py",
     "order = [i for i in order if row[i] >= threshold]", "order = [i for i in order if row[i] >= threshold - 0.01]",
     ["tests/test_tag.py", "-k", "single_top_k"]),
    ("--top-k keeps one more", "zstag/tagger.py",
     "order = order[:top_k]", "order = order[: top_k + 1]",
     ["tests/test_tag.py", "-k", "single_top_k"]),
    ("bf16 rows cached with float32 rows", "zstag/embedcache.py",
     'return model_id + (BF16_CACHE_SUFFIX if bf16 else "") + sampled', "return model_id + sampled",
     ["tests/test_devices.py", "-k", "bf16"]),
    ("cache key ignores --offset", "zstag/embedcache.py",
     "return model_id, digest, float(offset), _max_key(max_seconds), PIPELINE_VERSION",
     "return model_id, digest, 0.0, _max_key(max_seconds), PIPELINE_VERSION",
     ["tests/test_tag.py", "tests/test_embeddings.py", "-k", "offset"]),
    ("eval table prints 'all' in every row", "zstag/evalrender.py",
     "table.add_row(name, *(fmt(f[section].get(key)) for f in figures.values()))",
     'table.add_row(name, *(fmt(figures["all"][section].get(key)) for f in figures.values()))',
     ["tests/test_evaluate.py", "-k", "cli_writes_report or mtat_plot"]),
    ("eval table prints 'all' in every row (classification)", "zstag/evalrender.py",
     "table.add_row(name, *(fmt(f[key]) for f in figures.values()))",
     'table.add_row(name, *(fmt(figures["all"][key]) for f in figures.values()))',
     ["tests/test_evaluate.py", "-k", "cli_writes_report or every_figure"]),
    ("eval: unseen = every label", "zstag/evaluate.py",
     "unseen = [label for label in labels if label not in seen_set]", "unseen = list(labels)",
     ["tests/test_evaluate.py"]),
    ("resume without the scheduler's state", "zstag/train.py",
     'scheduler.load_state_dict(meta["scheduler"])', "pass",
     ["tests/test_train.py", "-k", "resume"]),
    ("resume forgets the bad epochs", "zstag/train.py",
     'bad_epochs, history = meta["bad_epochs"], meta["history"]', 'bad_epochs, history = 0, meta["history"]',
     ["tests/test_train.py", "-k", "resume"]),
    ("torchrun processes share no gradients", "zstag/train.py",
     "if world > 1:\n        objective = nn.parallel.DistributedDataParallel",
     "if world > 99:\n        objective = nn.parallel.DistributedDataParallel",
     ["tests/test_train.py", "-k", "torchrun"]),
    ("labels: case kept", "zstag/labels.py",
     's = unicodedata.normalize("NFKC", label).casefold()', 's = unicodedata.normalize("NFKC", label)',
     ["tests/test_words.py"]),
    ("labels: decades not normalised", "zstag/labels.py",
     'parts = [_DECADE.sub(r"\\1s", part) for part in token.split("-")]', 'parts = token.split("-")',
     ["tests/test_words.py"]),
    ("labels: the same label twice", "zstag/labels.py",
     "if key and key not in seen:", "if key:",
     ["tests/test_words.py"]),
    ("negation: 'not' is no negation", "zstag/labels.py",
     'NEGATIONS = frozenset({"no", "not", "without"})', 'NEGATIONS = frozenset({"no", "without"})',
     ["tests/test_words.py", "tests/test_tag.py", "-k", "negat"]),
    ("MLP label branch without its ReLU", "zstag/modelfile.py",
     "x = np.maximum(x, 0.0)", "x = x",
     ["tests/test_modelfile.py"]),
    ("cosine without the label norm", "zstag/modelfile.py",
     "b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)", "b = b",
     ["tests/test_modelfile.py"]),
    ("model id without the separator", "zstag/modelfile.py",
     'config_bytes + b"\\0" + weights_bytes', "config_bytes + weights_bytes",
     ["tests/test_modelfile.py"]),
    ("musicnn: symmetric 'same' padding", "zstag/backbones/musicnn.py",
     "return (kernel - 1) // 2, kernel // 2", "return kernel // 2, (kernel - 1) // 2",
     ["tests/test_musicnn.py", "-k", "port_matches"]),
    ("musicnn: batch-norm epsilon 1e-5", "zstag/backbones/musicnn.py",
     "BN_EPS = 1e-3", "BN_EPS = 1e-5",
     ["tests/test_musicnn.py", "-k", "port_matches"]),
    ("calibrated: no label takes the teacher path", "zstag/scoring.py",
     "teacher = weights.sum(axis=1) > 0", "teacher = weights.sum(axis=1) > 1",
     ["tests/test_scoring.py", "-k", "rows_score or labels_shows"]),
    ("calibrated: the shared cosine offset added, not subtracted", "zstag/scoring.py",
     "rows[:, -1] = np.where(teacher, 0.0, -mean / std)", "rows[:, -1] = np.where(teacher, 0.0, mean / std)",
     ["tests/test_scoring.py", "-k", "rows_score"]),
    ("calibrated: a denial scores as what it denies", "zstag/scoring.py",
     "rows[:, :-1] *= signs[:, None]", "rows[:, :-1] *= 1.0",
     ["tests/test_scoring.py", "-k", "rows_score or cold_and_warm"]),
    ("calibrated: the outputs say cosine", "zstag/scoring.py",
     "return CALIBRATED_NOTE if is_calibrated(config) else cosine_note", "return cosine_note",
     ["tests/test_scoring.py", "-k", "cold_and_warm"]),
    ("calibrated: a respelled label misses its teacher word", "zstag/scoring.py",
     "    if found is None and hasattr(words, \"phrase\"):", "    if False:",
     ["tests/test_scoring.py", "-k", "resolves_to"]),
    ("calibrated: a damaged spread accepted", "zstag/scoring.py",
     "for v in (mean, std)) or std <= 0:", "for v in (mean, std)):",
     ["tests/test_scoring.py", "-k", "joint_stats or damaged"]),
    ("--write-tags keeps a copy whose audio changed", "zstag/tagfiles.py",
     "if _audio_digest(path, tmp, type(audio).__name__) != kept:", "if False:",
     ["tests/test_reliability.py", "-k", "changed_the_audio or flac_whose_metadata"]),
    ("embedding-cache row checksum not checked", "zstag/embedcache.py",
     "(len(blob) != size + CHECK_BYTES or blob[size:] != _check(dim, blob[:size], stats))",
     "(len(blob) != size + CHECK_BYTES)",
     ["tests/test_reliability.py", "-k", "flipped_byte"]),
    ("a read-only output replaced", "zstag/paths.py",
     "if not folder and st is not None and read_only(st, output) and _standard_stream(Path(output)) is None:",
     "if False:",
     ["tests/test_no_overwrite.py", "-k", "read_only"]),
    ("a replaced output loses its mode", "zstag/paths.py",
     "            os.chmod(tmp, kept)", "            os.chmod(tmp, 0o644)",
     ["tests/test_reliability.py", "-k", "mode"]),
]


def copy_repo(target: Path) -> None:
    """The working tree (tracked and untracked files, not .git or caches) into target."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info", "experiments")
    shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)


def apply(repo: Path, file: str, original: str, mutated: str) -> str | None:
    """Replace the fragment in repo/file; an error message when it is not there exactly once."""
    path = repo / file
    text = path.read_text()
    if text.count(original) != 1:
        return f"{file}: the fragment occurs {text.count(original)} times"
    path.write_text(text.replace(original, mutated))
    return None


def run_tests(repo: Path, args: list[str]) -> tuple[str, float, str]:
    """(killed | survived | timeout | error, seconds, last line) of pytest on the mutated copy."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, ""
    lines = (proc.stdout.strip().splitlines() or [""])
    outcome = {0: "survived", 1: "killed"}.get(proc.returncode, "error")  # 5: no test selected, 2-4: pytest trouble
    return outcome, time.monotonic() - started, lines[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    options = parser.parse_args()
    chosen = [m for m in MUTATIONS if options.k in m[0]]
    if options.list:
        for name, file, *_, args in chosen:
            print(f"{name:45} {file:28} {' '.join(args)}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="zstag-mutations-") as tmp:
        pristine = Path(tmp) / "pristine"
        copy_repo(pristine)
        check = subprocess.run([sys.executable, "-c", "import zstag; print(zstag.__file__)"], cwd=pristine,
                               env={**os.environ, "PYTHONPATH": str(pristine)}, capture_output=True, text=True)
        if not check.stdout.startswith(str(pristine)):  # an installed zstag would hide the mutants
            print(f"the copy's zstag is not the one imported: {check.stdout or check.stderr}", file=sys.stderr)
            return 2
        for name, file, original, mutated, args in chosen:
            repo = Path(tmp) / "mutant"
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(pristine, repo, symlinks=True)
            problem = apply(repo, file, original, mutated)
            outcome, seconds, last = ("error", 0.0, problem) if problem else run_tests(repo, args)
            results.append((name, outcome))
            print(f"{outcome:9} {seconds:6.0f} s  {name}  [{last}]", flush=True)
    survivors = [name for name, outcome in results if outcome != "killed"]
    print(f"{len(results) - len(survivors)} of {len(results)} killed" +
          (f"; not killed: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
