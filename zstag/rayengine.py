"""`zstag embed --engine ray`: the files of an embedding set embedded on a Ray cluster (Ray Data).

The driver (this process) plans the set as for the local engine (embedset.plan: digests, skips) and writes
the parts; Ray only decides where files are embedded. The files to embed go through `map_batches` over a
pool of actors (--workers of them, --gpus-per-worker each), each holding the model and running
embedset.embed_rows with embeddings.embed_files (the code of `zstag tag`: a decoder process per actor, so
a file that crashes its decoder is an error row; one torch thread per pass, so the numbers are those of
the local engine). Ray Data streams the batches with backpressure (memory stays bounded whatever the
library's size), restarts a dead actor and retries its batch (ACTOR_RETRIES times). Should a batch still fail
(a file that kills the actor itself every time), its files are embedded again one per batch, in passes
while some succeed, and a file that fails alone every time becomes an error row. Ray is imported only here, only for --engine ray.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np

BATCH_FILES = 8  # files per actor call: small, so a retried or failed batch costs little
ACTOR_RETRIES = 2  # retries of a batch whose actor died (the actor itself is always restarted)
DIED = "the Ray worker died while embedding it (crash or out of memory)"


class EmbedActor:
    """A Ray actor holding the model: embeds batches of {name, local} with embedset.embed_rows."""

    def __init__(self, model_folder: str, model_id: str, dim: int, device: str, bf16: bool):
        from zstag.model import load_model

        self.model, self.dim, self.device, self.bf16 = load_model(model_folder), dim, device, bf16
        if self.model.model_id != model_id:  # the folder differs on this node: its rows would lie about their model
            raise RuntimeError(f"{model_folder}: model {self.model.model_id} on this node, {model_id} on the driver")

    def __call__(self, batch: dict) -> dict:
        from zstag.embeddings import embed_files
        from zstag.embedset import embed_rows
        from zstag.setinputs import Source

        sources = [Source(os.fsdecode(name), os.fsdecode(local) if local else None)
                   for name, local in zip(batch["name"], batch["local"])]
        rows = embed_rows(sources, lambda paths: embed_files(self.model, paths, workers=1, use_cache=False,
                                                             device=self.device, bf16=self.bf16))
        embedding = np.zeros((len(rows), self.dim), np.float32)  # an error row's: zeros, dropped by the driver
        for k, r in enumerate(rows):
            if r["embedding"] is not None:
                embedding[k] = r["embedding"]
        return {
            "index": np.asarray(batch["index"], np.int64), "embedding": embedding,
            "error": np.array([r["error"] or "" for r in rows], dtype=object),
            "duration_s": np.array([np.nan if r["duration_s"] is None else r["duration_s"] for r in rows]),
            "n_segments": np.array([-1 if r["n_segments"] is None else r["n_segments"] for r in rows], np.int64),
        }


def ray_batches(files, part_files: int, *, bf16: bool = False, address: str | None = None, actors: int | None = None,
                gpus_per_worker: float | None = None, progress: bool = True):
    """batches(sources) -> lists of rows (embedset.row) as they come back from the actors, part_files at a
    time: the local engine's contract. EmbedUsageError when Ray is not installed."""
    from zstag.embedset import EmbedUsageError, model_dim

    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise EmbedUsageError("--engine ray needs Ray: pip install 'zstag[ray]'") from None
    options = dict(model_folder=str(files.folder), model_id=files.model_id, dim=model_dim(files), device="cuda" if gpus_per_worker else "cpu", bf16=bf16)

    def batches(sources):
        if not sources:
            return
        _connect(address, progress)
        pending, rows, batch_files = dict(enumerate(sources)), [], BATCH_FILES
        while pending:  # later passes: the files of the batches that failed, one by one, while some succeed
            before = len(pending)
            for index, row in _embedded(pending, batch_files, options, actors, gpus_per_worker):
                rows.append(row)
                del pending[index]
                if len(rows) >= part_files:
                    yield rows
                    rows = []
            if batch_files == 1 and len(pending) == before:
                break  # each file left fails alone
            batch_files = 1
        from zstag.embedset import row as make_row

        rows += [make_row(source, None, f"{source.name}: {DIED}", None) for source in pending.values()]
        for start in range(0, len(rows), part_files):
            yield rows[start : start + part_files]

    return batches


def _connect(address: str | None, progress: bool) -> None:
    """ray.init (a local Ray when no address; a Ray already started in this process is used as it is)."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    for name in ("ray", "ray.data"):  # Ray Data's execution notes are INFO lines on stderr
        logging.getLogger(name).setLevel(logging.WARNING)
    context = DataContext.get_current()
    context.enable_progress_bars = progress
    context.max_errored_blocks = -1  # a batch that fails after its retries: its files are tried alone


def _embedded(pending: dict, batch_files: int, options: dict, actors, gpus_per_worker):
    """(index, row) of each pending source embedded by the actor pool; a batch that failed yields nothing."""
    import ray.data

    from zstag.embedset import row

    if not pending:
        return
    import pyarrow as pa

    # The driver's list of files as Arrow blocks of one batch each (not a Python dict per file: millions of
    # them would fill the driver's memory); names as bytes, as they are on disk.
    table = pa.table({"index": pa.array(list(pending), pa.int64()),
                      "name": pa.array([os.fsencode(s.name) for s in pending.values()], pa.binary()),
                      "local": pa.array([os.fsencode(s.local) if s.local else b"" for s in pending.values()], pa.binary())})
    blocks = [table.slice(start, batch_files) for start in range(0, len(table), batch_files)]
    size = actors or max(1, int(ray.available_resources().get("CPU", 1)) // 2)  # an actor + its decoder: 2 cores
    with warnings.catch_warnings():  # max_task_retries: Ray Data's default is to retry a batch for ever
        warnings.simplefilter("ignore", DeprecationWarning)
        data = ray.data.from_arrow(blocks).map_batches(
            EmbedActor, fn_constructor_kwargs=options, batch_size=batch_files, batch_format="numpy",
            # One file at a time per actor when isolating: an actor that dies for good takes no other file with it.
            compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1 if batch_files == 1 else None),
            num_cpus=1, num_gpus=gpus_per_worker or 0,
            max_restarts=-1, max_task_retries=ACTOR_RETRIES)  # a dead actor always comes back, a batch has 3 tries
    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
        for k, index in enumerate(batch["index"]):
            source, error = pending[int(index)], batch["error"][k] or None
            stats = {"duration_s": None if np.isnan(batch["duration_s"][k]) else float(batch["duration_s"][k]),
                     "segments": None if batch["n_segments"][k] < 0 else int(batch["n_segments"][k])}
            yield int(index), row(source, None if error else batch["embedding"][k], error, None if error else stats)
