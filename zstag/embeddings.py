"""Whole-track embeddings of audio files, shared by `zstag tag` and `zstag eval`.

    results = embed_files(model, ["a.mp3", "b.wav"])   # [TrackResult(path, embedding, error, stats, cached)]

Pipeline: the decoder processes (workers.py) decode each file into log-mel segments; the main process
embeds each track while they decode the next files: the mean over *all* its segments
(model.embed_track), never a random crop, each track on its own so that its embedding does not depend
on which files share a batch. A cold `zstag tag` may pass a ModelBuild instead of a model: the workers
start decoding while torch is imported and the model built on a thread (~1 s of a CLI start), and what
they decode meanwhile waits. Each forward pass runs on one torch thread; for the heavy musicnn
backbones, several passes at once (of one track or several) on threads of this process (see
_Inference). The thread count that a track's numbers depend on is fixed, so results are bit-identical
whatever --workers says, in a worker or in this process.

Cache hits (embedcache.py) are looked up before anything is decoded (cached_results: without the model
at all); each new embedding, and each failure the file's bytes caused, is stored as it comes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import chain
from typing import Callable

import numpy as np

from zstag import audio
from zstag.acoustics import failure_line
from zstag.embedcache import EmbeddingCache, cache_id, content_digests, file_stamp, lookup, store
from zstag.errors import Notice
from zstag.workers import ContentFailure, blas_limit, decode_files, default_workers

QUEUED_PER_THREAD = 1  # decoded tracks per inference thread (heavy models) waiting, besides those being embedded
WAITING_BYTES = 256 << 20  # decoded segments held while the model builds (~3 hours of audio)


@dataclass
class TrackResult:
    path: str
    embedding: np.ndarray | None  # float32 [D] in the joint space; None when the file failed
    error: str | None = None  # one line naming the file and the cause
    stats: dict | None = None  # acoustics.file_stats of the file
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.embedding is not None


class ModelBuild:
    """A model being built on a thread of its own, for embed_files: a cold `zstag tag` starts decoding
    at once instead of after torch's import and the model's construction (~1 s of a CLI start, while the
    decoders' cores would idle). What decoding and the cache need is known without torch: the model id
    and its front end (audio.FrontEnd). The caller should not touch torch until result(): an import
    of it would wait for the building thread's."""

    def __init__(self, build: Callable, model_id: str, front_end: audio.FrontEnd):
        self.model_id, self.front_end = model_id, front_end
        self._future: Future = Future()
        # Not a daemon: an early exit waits for the import rather than tearing it down half-way.
        threading.Thread(target=self._run, args=(build,), name="zstag-model-build").start()

    def _run(self, build: Callable) -> None:
        try:
            self._future.set_result(build())
        except BaseException as exc:  # re-raised by result(), in the caller's thread
            self._future.set_exception(exc)

    def done(self) -> bool:
        return self._future.done()

    def result(self):
        """The model (waits for it), or the exception its build raised."""
        return self._future.result()


def embed_files(
    model,
    paths: list[str | os.PathLike],
    *,
    workers: int | None = None,
    use_cache: bool = True,
    offset: float = 0.0,
    max_seconds: float | None = None,
    progress: Callable | None = None,
    cache: EmbeddingCache | None = None,
    device="cpu",
    bf16: bool = False,
    sample_seconds: float | None = None,
    notice: Notice | None = None,
) -> list[TrackResult]:
    """Embed each file as a whole track; results in input order. Never raises for a bad file.

    model: a model, or a ModelBuild (its build's exception is raised once the model is needed, after
    the first files have decoded; no embedding or failure is stored before). workers: decode processes
    (None: all cores; 0: decode in this process). progress: a callback, progress("embedding", done, total)
    as files finish (progress.Bar draws it). cache: an open EmbeddingCache (default: the one in
    cache_dir()). device: where the model runs: a devices.Target, or its name (devices.DEVICE_HELP) with bf16; DeviceError before any decoding if
    unusable, unless model is a ModelBuild, whose build should resolve it; the model is back where it was
    when this returns. Cache rows do not depend on it (see devices.py). bf16: run the model's float32
    products in bfloat16 on a CPU that has it natively (devices.cpu_bfloat16; DeviceError otherwise, when
    the device is resolved); such rows are cached apart (cache_id). sample_seconds: embed only that much
    audio of each track, in windows spread over it (windows.py); cached apart too. notice: notice(text) for
    what the run goes on past (errors.notify: the cache's errors, decoding in this process when decoder
    processes cannot start); a cache passed in reports to its own.
    """
    from zstag.devices import target_of

    target = target_of(device, bf16)
    building = isinstance(model, ModelBuild)
    if not building:  # a ModelBuild's thread imports torch and resolves it
        target.device
    report = progress if callable(progress) else None
    paths = [str(p) for p in paths]
    workers = default_workers() if workers is None else max(0, int(workers))
    if not building:
        model.eval()
    results: list[TrackResult | None] = [None] * len(paths)
    model_id = getattr(model, "model_id", "untrained")
    own_cache = use_cache and model_id != "untrained" and cache is None  # an unsaved model has no stable id
    if own_cache:
        cache = EmbeddingCache.open_default(notice)
    if not use_cache or model_id == "untrained":
        cache = None
    try:
        _embed(model, cache_id(model_id, target.bf16, sample_seconds), paths, results, cache, workers, offset,
               max_seconds, _Count(len(paths), report), target, sample_seconds, notice)
    finally:
        if own_cache and cache is not None:
            cache.close()
    return results


def cached_results(
    model_id: str,
    paths: list[str | os.PathLike],
    *,
    offset: float = 0.0,
    max_seconds: float | None = None,
    workers: int | None = None,
    cache: EmbeddingCache | None = None,
    notice: Notice | None = None,
) -> list[TrackResult | None]:
    """Each file's cached outcome, without the model or any decoding: a TrackResult (cached=True) per
    hit, with its embedding or, for content that failed to decode before, its error line; None per miss
    (not cached, unreadable, gone, or changed while hashed). A miss is never dropped: the caller embeds
    it (embed_files). Digests of newly hashed files are remembered, so embed_files
    does not hash them again. workers: hashing threads (None: all cores). cache: default cache_dir()'s,
    opened with notice (as embed_files').
    """
    paths = [str(p) for p in paths]
    results: list[TrackResult | None] = [None] * len(paths)
    own_cache = cache is None
    if own_cache:
        cache = EmbeddingCache.open_default(notice)
        if cache is None:
            return results
    try:
        workers = default_workers() if workers is None else max(0, int(workers))
        _fill_hits(cache, model_id, paths, content_digests(cache, paths, workers), offset, max_seconds, results)
    finally:
        if own_cache:
            cache.close()
    return results


def _fill_hits(cache, model_id, paths, digests, offset, max_seconds, results) -> None:
    """results[i] = the cached TrackResult of each digested path that the cache holds."""
    for i, (digest, _) in digests.items():
        hit = lookup(cache, model_id, digest, offset, max_seconds)
        if isinstance(hit, str):  # the stored cause of a content failure, named by today's path
            results[i] = TrackResult(paths[i], None, failure_line(paths[i], hit), cached=True)
        elif hit is not None:
            results[i] = TrackResult(paths[i], hit[0], None, hit[1], cached=True)


def _embed(model, model_id, paths, results, cache, workers, offset, max_seconds, bar, target,
           sample_seconds=None, notice=None) -> None:
    digests: dict[int, tuple[str, tuple]] = {}  # index → (content digest, stat stamp when hashed)
    if cache is not None:
        digests = content_digests(cache, paths, workers)
        _fill_hits(cache, model_id, paths, digests, offset, max_seconds, results)
        bar.advance(sum(r is not None for r in results))

    def finish(i: int, outcome, stats: dict | None) -> None:
        failed = isinstance(outcome, str)
        results[i] = TrackResult(paths[i], None, outcome) if failed else TrackResult(paths[i], outcome, None, stats)
        # Stored only if the file did not change between hashing and decoding, and a failure only if its
        # bytes caused it (a crash, a missing ffmpeg, "cannot embed" may not happen next time).
        keep = not failed or isinstance(outcome, ContentFailure)
        if keep and cache is not None and i in digests and file_stamp(paths[i]) == digests[i][1]:
            store(cache, model_id, digests[i][0], offset, max_seconds, outcome.cause if failed else outcome, stats)
        bar.advance(1)

    todo = [(i, paths[i]) for i, r in enumerate(results) if r is None]
    building = isinstance(model, ModelBuild)
    if building and (workers == 0 or not todo):
        model, building = model.result().eval(), False  # decoding here would wait for the import anyway
    with contextlib.closing(decode_files(todo, model.front_end.to_dict(), offset, max_seconds, workers,
                                         sample_seconds=sample_seconds, notice=notice)) as decoded:
        early: deque = deque()
        if building:
            early = _decoded_while_building(model, decoded)
            model = model.result().eval()
        with _Inference(model, target.device, workers, target.bf16) as inference:
            for i, outcome in chain(_popping(early), decoded):
                if isinstance(outcome, str):
                    finish(i, outcome, None)
                else:
                    for done in inference.submit(i, paths[i], *outcome):
                        finish(*done)
            for done in inference.drain():
                finish(*done)


def _decoded_while_building(build: ModelBuild, decoded) -> deque:
    """The (index, outcome) pairs that decoded tracks yield until the model is built, all of them
    decoded, or WAITING_BYTES of segments held: taking them lets the workers go on (decode_files keeps
    only a few in flight). Checked between tracks, so the model may wait for one decode."""
    early, held = deque(), 0
    while not build.done() and held < WAITING_BYTES:
        item = next(decoded, None)
        if item is None:
            break
        early.append(item)
        held += 0 if isinstance(item[1], str) else item[1][0].nbytes
    return early


def _popping(items: deque):
    """Yield and forget each item: a track's segments are freed once it is embedded."""
    while items:
        yield items.popleft()


class inference_threads:
    """Thread settings while embedding: one torch thread, one BLAS thread, whatever the model.

    One torch thread per forward pass, because float sums split differently across thread counts: a
    fixed count keeps a track's embedding, and its cache entry, the same whatever --workers says. Heavy
    models get their parallelism from running several passes at once instead (_Inference): as fast
    as torch's own threads on an idle machine (~3% faster for musicnn beside two decode workers), and
    far less fragile on a busy one, where OpenMP threads that wait for each other at every op stall
    whenever one is preempted (2-3x slower when other work shared the 2 cores). BLAS: one thread, as
    in the workers, so that decoding in this process (workers=0) gives bit-identical features.
    """

    def __enter__(self):
        import torch

        # BLAS first: threadpoolctl restores every pool it saw, OpenMP (torch's) included, so it must
        # save torch's count before it changes and restore before torch's own restore.
        self.blas = blas_limit(user_api="blas")
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        if self.blas is not None:
            self.blas.restore_original_limits()
        torch.set_num_threads(self.saved)


class _Inference:
    """Embeds decoded tracks, each forward pass on one torch thread (see inference_threads).

    The paper's CNN1D (~2 ms per 30 s of audio, less than decoding it) runs inline. The musicnn
    backbones (~0.25 s per 30 s on a CPU core) run on a thread pool, one thread per decode worker
    (--workers; at least one, at most one per core; torch releases the GIL), while the workers decode the
    next files. The pool takes a track in its forward passes of TRACK_BATCH segments (~48 s of audio), so
    a long track, or the last tracks of a run, use every thread; a track's passes are added in order
    (ZeroShotModel.mean_of_sums), so its embedding is the same whichever threads ran them. At most
    QUEUED_PER_THREAD decoded tracks per thread wait, so decoding never runs far ahead of inference and
    memory stays bounded. On a GPU every model runs inline, a track per call, with deterministic kernels
    (devices.deterministic_cuda), while the workers decode the next files.
    """

    def __init__(self, model, device, workers: int, bf16: bool = False):
        self.model = model
        self.device = device
        self.home = model.device  # where the caller's model goes back to
        cpu_light = model.config.get("audio_encoder", {}).get("type") == "cnn1d"
        self.threads = 1 if device.type != "cpu" or cpu_light else max(1, min(workers, default_workers()))
        self.settings = inference_threads()
        self.pool: ThreadPoolExecutor | None = None
        self.pending: dict = {}  # a forward pass's future → (its _Track, the pass's number)
        self.tracks: list[_Track] = []  # in submission order
        self.cuda = None
        self.bf16, self.bfloat16 = bf16, None  # the latter: the active devices.cpu_bfloat16

    def __enter__(self):
        self.settings.__enter__()  # before the pool starts: its threads take torch's count when they start
        try:
            if self.device.type == "cuda":
                from zstag.devices import deterministic_cuda

                self.cuda = deterministic_cuda().__enter__()
            if self.bf16:
                from zstag.devices import cpu_bfloat16

                self.bfloat16 = cpu_bfloat16().__enter__()
            self.model.to(self.device)
            if self.threads > 1:
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="zstag-embed")
        except BaseException:  # e.g. the GPU is out of memory: leave threads, flags and the model as they were
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            try:
                if self.cuda is not None:
                    self.cuda.__exit__(*exc)
                if self.bfloat16 is not None:
                    self.bfloat16.__exit__(*exc)
                self.model.to(self.home)
            finally:
                self.settings.__exit__(*exc)

    def submit(self, index: int, path: str, segments: np.ndarray, stats: dict) -> list[tuple]:
        """Embed a track; returns the tracks finished by now as (index, embedding or error line, stats)."""
        from zstag.model import track_chunks

        chunks = track_chunks(segments)
        if self.pool is None or not chunks:
            return [(index, self._embed(path, segments), stats)]
        track = _Track(index, path, stats, len(segments), [None] * len(chunks), len(chunks))
        self.tracks.append(track)
        for k, chunk in enumerate(chunks):
            self.pending[self.pool.submit(self._forward, chunk)] = (track, k)
        finished = self._collect(block=False)
        while len(self.tracks) > self.threads * (1 + QUEUED_PER_THREAD):  # a pass done is not a track done
            finished += self._collect(block=True)
        return finished

    def drain(self):
        """Yield the remaining tracks as they finish."""
        while self.tracks:
            yield from self._collect(block=True)

    def _collect(self, block: bool) -> list[tuple]:
        """The tracks whose every forward pass is done (waiting for at least one pass if block)."""
        if block:
            wait(self.pending, return_when=FIRST_COMPLETED)
        for future in [f for f in self.pending if f.done()]:
            track, k = self.pending.pop(future)
            track.sums[k] = future.result()
            track.running -= 1
        finished = []
        for track in [t for t in self.tracks if t.running == 0]:
            self.tracks.remove(track)
            finished.append((track.index, self._project(track), track.stats))
        return finished

    def _forward(self, chunk: np.ndarray):
        """One forward pass of a track (on a pool thread): its segment_sum, or the exception it raised."""
        try:
            return self.model.segment_sum(chunk)
        except Exception as exc:  # never lose the run to one file
            return exc

    def _project(self, track: "_Track") -> np.ndarray | str:
        """The track's embedding from its passes, or its error line if one of them failed."""
        failed = next((part for part in track.sums if isinstance(part, Exception)), None)
        if failed is not None:
            return _cannot_embed(track.path, failed)
        try:
            return np.asarray(self.model.embed_sums(track.sums, track.n_segments), dtype=np.float32)
        except Exception as exc:  # never lose the run to one file
            return _cannot_embed(track.path, exc)

    def _embed(self, path: str, segments: np.ndarray) -> np.ndarray | str:
        try:
            return np.asarray(self.model.embed_track(segments), dtype=np.float32)
        except Exception as exc:  # never lose the run to one file
            return _cannot_embed(path, exc)


@dataclass
class _Track:
    """A track whose forward passes run on _Inference's pool."""

    index: int
    path: str
    stats: dict
    n_segments: int
    sums: list  # per forward pass: its segment_sum, or the exception it raised
    running: int  # passes not done yet


def _cannot_embed(path: str, exc: Exception) -> str:
    return failure_line(path, " ".join(f"cannot embed: {type(exc).__name__}: {exc}".split()))


class _Count:
    """Files done so far, reported to a progress callback (none: nothing)."""

    def __init__(self, total: int, report: Callable | None):
        self.total, self.done, self.report = total, 0, report
        if report is not None:
            report("embedding", 0, total)

    def advance(self, n: int) -> None:
        if self.report is not None and n:
            self.done += n
            self.report("embedding", self.done, self.total)
