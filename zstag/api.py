"""The Python API: ``zstag.tag``, ``zstag.embed``, ``zstag.load_model``.

The same pipeline as the CLI (audio → segments → track embeddings → scores), without printing or
exiting: results come back as records, a bad file as a record with its one-line ``error``, bad options
(unknown labels, a missing model, an unusable device) as exceptions. Track embeddings share the CLI's cache.
What a run goes on past (an unusable or damaged embedding cache, moved aside; decoding in this process when
decoder processes cannot start) comes as a ``zstag.errors.ZstagWarning`` through the ``warnings`` module,
where the CLI prints "zstag: warning: …": ``warnings.simplefilter("error", ZstagWarning)`` makes it raise.

    import zstag
    for r in zstag.tag(["song.mp3", "~/Music/album"], ["jazz", "lo-fi", "drum and bass"]):
        print(r.path, r.error or r.best(3))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
import numpy as np

DEFAULT_MODEL = "default"


@dataclass
class Embedding:
    """One input file's track embedding ([D] float32, the model's joint space) or the reason it has none."""

    path: str
    embedding: np.ndarray | None
    error: str | None = None
    cached: bool = False


@dataclass
class Tags:
    """One input file's scores: label → score (the model's: a cosine in -1..1, or calibrated 0..1: zstag/scoring.py),
    in the order the labels were given;
    ``error`` (one line naming the file and the cause) when the file could not be tagged."""

    path: str
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def best(self, k: int | None = None) -> list[tuple[str, float]]:
        """The k best (label, score) pairs, best first; ties keep the given label order."""
        ranked = sorted(self.scores.items(), key=lambda item: -item[1])  # sorted() is stable
        return ranked if k is None else ranked[:k]


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The torch model (``zstag.model.ZeroShotModel``) of a shipped model name ("default", "conse") or a model
    folder; read without executing code (JSON + safetensors). Raises ``zstag.modelfile.ModelError``."""
    from zstag.model import load_model as _load

    return _load(name_or_path)


def embed(
    paths: str | os.PathLike | list[str | os.PathLike],
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    extensions: str | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    offset: float = 0.0,
    max_seconds: float | None = None,
    device: str = "auto",
    bf16: bool = False,
    sample_seconds: float | None = None,
) -> list[Embedding]:
    """Track embeddings of files and folders (searched recursively for audio, as ``zstag tag`` does), in
    discovery order; inputs that do not exist come back as records with an error. sample_seconds: embed only
    that much of each track, in windows spread evenly over it (deterministic; ``zstag tag --sample-seconds``)."""
    files, found = _files_and_inputs(model, paths, extensions)
    results = _results(files, found.files, use_cache, workers, offset, max_seconds, device, bf16, sample_seconds)
    return ([Embedding(r.path, r.embedding, r.error, r.cached) for r in results]
            + [Embedding(path, None, line) for path, line in zip(found.problem_paths, found.problems)])


def tag(
    paths: str | os.PathLike | list[str | os.PathLike],
    labels: str | list[str],
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    vectors: str | os.PathLike | None = None,
    extensions: str | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    offset: float = 0.0,
    max_seconds: float | None = None,
    device: str = "auto",
    bf16: bool = False,
    sample_seconds: float | None = None,
) -> list[Tags]:
    """Score files and folders against free-text labels (a list, or one comma-separated string).

    Labels are checked before any audio is decoded (``zstag.words.UnknownLabelError`` names the nearest known
    spellings). Scores are the CLI's, to the last bit: the model's scores (zstag/scoring.py), not probabilities.
    sample_seconds: as for ``embed``.
    """
    from zstag import modelfile, scoring
    from zstag.tagger import parse_labels
    from zstag.words import load_words

    label_list = parse_labels([labels] if isinstance(labels, str) else list(labels))
    files = modelfile.read_model(model)
    words = load_words(files, vectors)
    label_emb = modelfile.label_embeddings(files, words, label_list)
    _, found = _files_and_inputs(files, paths, extensions)
    results = _results(files, found.files, use_cache, workers, offset, max_seconds, device, bf16, sample_seconds)
    good = [r for r in results if r.ok]
    scores = (scoring.scores(files.config, np.stack([r.embedding for r in good]), label_emb) if good
              else np.zeros((0, len(label_list)), dtype=np.float32))
    rows = iter(scores)
    out = [Tags(r.path, dict(zip(label_list, map(float, next(rows))))) if r.ok else Tags(r.path, error=r.error)
           for r in results]
    return out + [Tags(path, error=line) for path, line in zip(found.problem_paths, found.problems)]


def _files_and_inputs(model, paths, extensions):
    from zstag import modelfile
    from zstag.tagger import find_audio_files, parse_extensions

    files = model if isinstance(model, modelfile.ModelFiles) else modelfile.read_model(model)
    inputs = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    inputs = [os.path.expanduser(os.fspath(p)) for p in inputs]
    return files, find_audio_files(inputs, parse_extensions(extensions))


def _results(files, paths, use_cache, workers, offset, max_seconds, device, bf16, sample_seconds):
    from zstag.audio import check_span
    from zstag.devices import Target
    from zstag.tagger import track_results
    from zstag.windows import check_sample_seconds

    check_span(offset, max_seconds)
    check_sample_seconds(sample_seconds)  # windows.SampleSecondsError: a UsageError and, as a bad span, a ValueError
    return track_results(files, paths, workers=workers, use_cache=use_cache, offset=offset,
                         max_seconds=max_seconds, device=Target(device, bf16), sample_seconds=sample_seconds)

