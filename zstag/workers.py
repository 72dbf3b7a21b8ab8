"""The decoder processes: a pool of workers that decode audio files into log-mel segments.

    for index, outcome in decode_files([(0, "a.mp3"), (1, "b.wav")], fe_dict, 0.0, None, workers=2): ...

Each worker decodes a file, cuts it into log-mel segments and computes a few acoustic statistics
(decode_file); the outcome is (segments, stats) or the file's one-line error. The workers come from a
fork server (they never inherit torch or its threads) started with one BLAS thread (WORKER_ENV) and
preloaded with the decoding modules; start_decoders starts it early, while the main process imports
torch. A worker that dies (decoder crash, out of memory) costs only its file (decode_files retries the
files it may have held, one at a time); each worker exits as soon as the main process ends, kill -9
too (watch_main, also used by preprocess's workers in features.py). Workers silence fd 2: decoders
print notes there, and a failure comes back as its one line. workers=0 decodes in this process, with
the same settings (one BLAS thread, fd 2 silenced), so the features are bit-identical either way.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

import numpy as np

from zstag import audio, windows
from zstag.acoustics import analyse_file, error_cause, error_line, failure_line
from zstag.errors import Notice, notify

IN_FLIGHT_PER_WORKER = 2  # decoded tracks waiting per worker: keeps workers busy, bounds memory
PARENT_POLL_S = 0.5  # how often a worker checks that the main process still runs
CRASH_MESSAGE = "the decoder process died (crash or out of memory)"
NO_DECODERS = "decoder processes cannot start; decoding in this process"
# The fork server starts with these, so every worker has them from the start (see _start_fork_server).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MALLOC_HEAP_MAX = 32 << 20  # workers: allocations up to this come from the heap, not mmap (glibc) ...
MALLOC_KEEP = 64 << 20  # ... and up to this much freed heap is kept for the next file
RESULT_PIPE_BYTES = 1 << 20  # the pipe results come back through (Linux; see _widen_result_pipe)
# Imported once in the fork server and inherited by every worker (scipy.fft: ~0.15 s).
PRELOAD = ["zstag.workers", "soundfile", "soxr", "scipy.fft"]


class ContentFailure(str):
    """decode_file's error line for an audio.ContentError: the one kind of failure the cache keeps
    (embedcache.store). A str, so it passes wherever an error line does; .cause is the line without the
    file's name, as stored."""

    def __new__(cls, path: str, cause: str):
        line = super().__new__(cls, failure_line(path, cause))
        line.path, line.cause = path, cause
        return line

    def __reduce__(self):  # it comes back from the workers pickled: rebuilt from its two parts
        return ContentFailure, (self.path, self.cause)


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def decode_file(path: str, fe_dict: dict, offset: float = 0.0, max_seconds: float | None = None,
                sample_seconds: float | None = None):
    """(segments [n_seg, n_mels, T] float32, stats dict), or a one-line error string naming the file: a
    ContentFailure when the file's bytes are to blame (audio.ContentError). sample_seconds: only that much
    of the span, in windows spread over it (windows.py)."""
    try:
        fe = audio.FrontEnd.from_dict(fe_dict)
        if sample_seconds is not None:
            segments, stats = windows.analyse_sampled(path, fe, sample_seconds, offset, max_seconds)
            return np.ascontiguousarray(segments, dtype=np.float32), {**stats, "segments": len(segments)}
        mel, stats = analyse_file(path, fe, offset=offset, duration=max_seconds)
        segments = np.ascontiguousarray(audio.segment(mel, fe), dtype=np.float32)
        return segments, {**stats, "segments": len(segments)}  # the embedding set's n_segments
    except audio.ContentError as exc:
        return ContentFailure(path, error_cause(path, exc))
    except Exception as exc:  # a worker must answer for every file, whatever the decoder throws
        return error_line(path, exc)


def decode_files(
    jobs: list[tuple[int, str]], fe_dict: dict, offset: float, max_seconds: float | None, workers: int,
    decode=decode_file, sample_seconds: float | None = None, notice: Notice | None = None,
):
    """Yield (index, decode(path, fe_dict, offset, max_seconds)) for each (index, path) job, in completion order;
    sample_seconds, when given, goes to decode too (decode_file's).

    At most IN_FLIGHT_PER_WORKER decoded tracks per worker wait for the consumer. If a worker dies
    (a decoder crash, the OOM killer), the files it may have held are retried one at a time in a
    fresh pool; the one that kills its worker again is reported as failed, and the rest go on. If no
    worker can start at all, the rest decode in this process, with one notice (errors.notify).
    """
    if sample_seconds is not None:
        decode = functools.partial(decode, sample_seconds=sample_seconds)  # pickles: decode is a module's function
    if workers == 0 or not jobs:
        yield from _decode_here(jobs, decode, fe_dict, offset, max_seconds)
        return
    queue = deque(jobs)
    suspects: deque = deque()
    while queue or suspects:
        n = max(1, min(workers, len(queue) + len(suspects)))
        pool = decoder_pool(n)
        in_flight: dict = {}
        isolating = False
        try:
            while queue or suspects or in_flight:
                if suspects:
                    if not in_flight:
                        job = suspects[0]
                        in_flight[pool.submit(decode, job[1], fe_dict, offset, max_seconds)] = job
                        suspects.popleft()  # only once submitted: a broken pool must not lose it
                        isolating = True
                else:
                    isolating = False
                    while queue and len(in_flight) < n * IN_FLIGHT_PER_WORKER:
                        job = queue[0]
                        in_flight[pool.submit(decode, job[1], fe_dict, offset, max_seconds)] = job
                        queue.popleft()
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: in_flight[f][0]):
                    outcome = future.result()  # raises BrokenProcessPool if its worker died
                    index = in_flight.pop(future)[0]
                    yield index, outcome
        except BrokenProcessPool:
            lost = list(in_flight.values())
            pool.shutdown(wait=True, cancel_futures=True)
            if not _pool_starts():
                # Workers cannot even start (e.g. the parent's __main__ cannot be re-imported, as
                # for `python - < script`): decode the rest here rather than fail every file.
                notify(notice, NO_DECODERS)
                yield from _decode_here(sorted(lost) + list(suspects) + list(queue), decode, fe_dict, offset, max_seconds)
                return
            if isolating and len(lost) == 1:
                yield lost[0][0], failure_line(lost[0][1], CRASH_MESSAGE)
            else:
                suspects.extend(sorted(lost))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _decode_here(jobs, decode, fe_dict, offset, max_seconds):
    """decode_files in this process: (index, outcome) per job, decoder notes kept off stderr, and one
    BLAS thread as in the workers (bit-identical features), also before embeddings' inference_threads has set it."""
    blas = _blas_controller()
    for index, path in jobs:
        # Neither held across the yield: the consumer prints, and may change thread settings itself.
        with _native_stderr_silenced(), (blas.limit(limits=1, user_api="blas") if blas else contextlib.nullcontext()):
            outcome = decode(path, fe_dict, offset, max_seconds)
        yield index, outcome


def _blas_controller():
    """threadpoolctl's view of this process's thread pools (scanned once per call), or None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def _native_stderr_silenced():
    """fd 2 → /dev/null while a file decodes in this process, as in the workers (_init_worker): libmpg123
    prints resync notes straight to fd 2, and the file's failure, if any, comes back as its one line. A
    progress-bar refresh that falls in this window is skipped, nothing else is lost: nothing else prints."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 at all: nothing to silence
        saved = None
    if saved is None:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_decoders() -> None:
    """Start the decoders' fork server now; it loads numpy, soundfile, soxr and scipy (~0.25 s) in its
    own process while this one goes on. Call it before other slow start-up work (importing torch,
    building the model) when files will be decoded: embeddings.embed_files then finds it ready. Harmless to call
    more than once, or when nothing gets decoded after all (the server just exits with this process)."""
    mp_context()


def _pool_starts() -> bool:
    """Whether a fresh worker process can start and answer at all."""
    pool = decoder_pool(1)
    try:
        pool.submit(os.getpid).result()
        return True
    except BrokenProcessPool:
        return False
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def blas_limit(user_api: str | None = None):
    """One thread for the native thread pools (BLAS, and OpenMP unless user_api says only "blas")."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(1, user_api=user_api)


def _init_worker(main_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    watch_main(main_pid)
    # Decoders print notes straight to fd 2 (libmpg123: "Note: Illegal Audio-MPEG-Header ..."); the
    # worker reports each failure as one line through its result instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    blas_limit()  # one BLAS thread per worker: the workers already fill the cores, and results stay put
    keep_freed_memory()


def keep_freed_memory() -> None:
    """glibc only (elsewhere nothing happens): decoding a file allocates and frees buffers of a few MB
    (decoded blocks, the resampled track, STFT blocks, segments). By default each is mmapped and
    unmapped again, so every file faults in ~8-13 MB of fresh zeroed pages: ~3 ms of the ~30 ms a
    30 s mp3 costs. Served from a heap that keeps MALLOC_KEEP bytes, they are reused instead."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-1, MALLOC_KEEP)  # M_TRIM_THRESHOLD
    mallopt(-3, MALLOC_HEAP_MAX)  # M_MMAP_THRESHOLD


def _exit_with(main_pid: int) -> None:
    """Exit when the main process is gone, however it ended (kill -9 too): a worker of a killed run would
    otherwise wait for ever on its task queue, whose write end it holds itself, and keep the fork server
    and resource tracker alive with it (they exit once no worker holds their pipes). Waits on a pidfd
    (Linux ≥ 5.3), which also wakes while the dead main process is an unreaped zombie; elsewhere polls.
    Run on a daemon thread by each worker, tag's and preprocess's alike."""
    try:
        fd = os.pidfd_open(main_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # not Linux, an old kernel, or a sandbox that forbids it
        fd = None
    if fd is not None:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()  # readable once the process has ended
        os._exit(1)
    while True:
        time.sleep(PARENT_POLL_S)
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # the pid exists (owned by another user): not proof of death


def watch_main(main_pid: int) -> None:
    """In a worker process: exit as soon as the process ``main_pid`` (the one that made the pool) ends."""
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True, name="zstag-watch-main").start()


def mp_context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    _start_fork_server()
    return context


def _start_fork_server() -> None:
    """Start the fork server (if it is not running yet) with WORKER_ENV in its environment, leaving
    this process's environment as it was. OpenBLAS reads its thread count once, when numpy loads it:
    started with the default (all cores), each forked worker re-creates helper threads that spin for
    ~0.1 s of CPU over its first files although threadpoolctl has set one thread (~10% of a 60-file run
    on 2 cores)."""
    from multiprocessing import forkserver

    saved = {name: os.environ.get(name) for name in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def decoder_pool(n: int) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(n, mp_context=mp_context(), initializer=_init_worker, initargs=(os.getpid(),))
    _widen_result_pipe(pool)
    return pool


def _widen_result_pipe(pool: ProcessPoolExecutor) -> None:
    """A 30 s track's segments (~0.7 MB) through the default 64 KB pipe take ~11 turns of worker
    writing and this process reading; through a 1 MB pipe, one (~4% off tagging time on 2 cores).
    Best effort: Linux only, a CPython detail, and the kernel may refuse the size."""
    try:
        import fcntl

        fcntl.fcntl(pool._result_queue._writer.fileno(), fcntl.F_SETPIPE_SZ, RESULT_PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass
