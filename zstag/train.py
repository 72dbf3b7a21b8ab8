"""Training (`zstag train`): the paper's joint embedding, learned from a feature cache.

Sampling as Choi et al. (ISMIR 2019): each epoch visits every training track once, in a seeded random
order; a sample is a random 130-frame crop of the track, one of its seen labels drawn at random as the
positive, and ``negatives`` seen labels it lacks as negatives. Loss: the triplet hinge loss (cosine,
margin 0.4). SGD (lr 0.001, Nesterov momentum 0.9) or Adam, batch 64, ReduceLROnPlateau on the
validation loss (factor 0.2, patience 5), early stopping (patience 20); the best model (lowest
validation loss) is the one saved.

Determinism: the model is initialised from ``seed``; epoch e's samples come from a generator seeded
with (seed, e) and the validation samples from (seed, VALIDATION_STREAM), so an epoch does not depend on
how the run got there. A checkpoint (every epoch, atomic) holds weights, optimizer and scheduler state
and the torch RNG; ``resume`` continues exactly where the last complete epoch ended, and starts afresh
where a run stopped before its first checkpoint (a damaged checkpoint is an error: it is never dropped).

Several GPUs or machines: run under ``torchrun``; each process takes every world_size-th sample of the
epoch's plan (DistributedSampler), DistributedDataParallel averages the gradients, every process
validates (so all take the same scheduler and stopping decisions) and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from zstag.audio import segment
from zstag.checkpoints import (CHECKPOINT_DIR, TrainError, _optimizer_join, has_checkpoint,  # noqa: F401
                               load_checkpoint, save_checkpoint)  # (TrainError, has_checkpoint, load_checkpoint: re-exported)
from zstag.devices import deterministic_training, pick_device
from zstag.features import FeatureCache
from zstag.model import CONFIG_FILE, MARGIN, ZeroShotModel, cnn1d_config, save_model, triplet_hinge_loss
from zstag.paths import atomic_write
from zstag.sampling import CropDataset, TrackSet, sample_plan
from zstag.words import RANDOM_DIM
from zstag.words import RANDOM_SOURCE as RANDOM_VECTORS  # --vectors random[:DIM[:SEED]]: the random-label baseline

OPTIMIZERS = ("sgd", "adam")
MIN_IMPROVEMENT = 1e-4  # relative: a validation loss must beat the best by this to count (LR schedule and stopping)
VALIDATION_STREAM = 2**31 - 1  # second seed word of the fixed validation sample plan
VALIDATION_SAMPLES = 1024  # small validation sets are sampled several times for a steadier loss
VALIDATION_MAX_TRACKS = 2000  # whole-track validation metrics on at most this many tracks
STATS_MAX_TRACKS = 2000  # training tracks embedded for corpus_stats.json
TRACK_BATCH_SEGMENTS = 256  # segments per forward pass when embedding whole tracks
HISTORY_FILE = "history.json"
SPLIT_FILE = "split.json"
RESUME_MAY_CHANGE = ("epochs", "device", "loader_workers", "threads")  # options that do not change the results


@dataclass
class TrainOptions:
    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.001
    optimizer: str = "sgd"  # sgd (Nesterov) | adam
    momentum: float = 0.9
    negatives: int = 1
    margin: float = MARGIN
    lr_factor: float = 0.2
    lr_patience: int = 5
    early_stop: int = 20  # epochs without a better validation loss
    epoch_size: int | None = None  # samples per epoch; None: one per training track (the paper)
    val_samples: int = VALIDATION_SAMPLES  # fixed validation crops (at least one per validation track)
    seed: int = 0
    batch_norm: bool = False
    device: str = "auto"
    loader_workers: int = 0
    threads: int | None = None  # torch CPU threads

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"--optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "negatives"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise TrainError("--lr must be positive")


# --- label vectors ------------------------------------------------------------------------------


def random_vectors(labels: list[str], dim: int = RANDOM_DIM, seed: int = 0) -> np.ndarray:
    """Fixed random label vectors: each label's own seeded normal draw (zstag.words.random_vector), so any
    label set can be scored, and tag/eval rebuild exactly these from the model's ``words`` entry."""
    from zstag.words import random_vector

    return np.stack([random_vector(label, dim, seed) for label in labels]).reshape(len(labels), dim)


def label_vectors(labels: list[str], source: str | None = None) -> tuple[np.ndarray, str]:
    """(float32 [n, dim] vectors, canonical source name) from GloVe (None), a file, or random[:DIM[:SEED]]."""
    from zstag.words import VectorsError, parse_random_source

    try:
        random_source = parse_random_source(source)
    except VectorsError as exc:
        raise TrainError(f"--vectors {exc}") from None
    if random_source is not None:
        dim, seed = random_source
        return random_vectors(labels, dim, seed), f"{RANDOM_VECTORS}:{dim}:{seed}"
    from zstag.words import DEFAULT_SOURCE, WordVectors

    vectors = WordVectors.load(None if source == DEFAULT_SOURCE else source)
    return vectors.vectors(labels), vectors.source


class TripletObjective(nn.Module):
    """The loss as one forward(), so DistributedDataParallel can wrap it."""

    def __init__(self, model: ZeroShotModel, margin: float):
        super().__init__()
        self.model, self.margin = model, margin

    def forward(self, x, positive, negatives, vectors):
        audio = self.model.embed_segments(x)
        labels = self.model.embed_labels(vectors)  # all training labels at once: [L, D]
        return triplet_hinge_loss(audio, labels[positive], labels[negatives], self.margin)


# --- whole tracks -------------------------------------------------------------------------------


@torch.no_grad()
def embed_cached_tracks(model: ZeroShotModel, cache: FeatureCache, track_ids: list[str], device="cpu") -> np.ndarray:
    """[N, D] track embeddings: segment features averaged over the whole track, then projected (as tag)."""
    fe = model.front_end
    out = np.zeros((len(track_ids), int(model.config.get("embed_dim", 100))), dtype=np.float32)
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        batch = torch.from_numpy(np.concatenate([s for _, s in pending])).to(device)
        features = model.segment_features(batch).double()
        offset = 0
        for row, segs in pending:
            pooled = features[offset : offset + len(segs)].mean(dim=0, keepdim=True).float()
            out[row] = model.audio_projection(pooled)[0].cpu().numpy()
            offset += len(segs)
        pending.clear()

    for row, track_id in enumerate(track_ids):
        pending.append((row, segment(cache.mel(track_id), fe)))
        if sum(len(s) for _, s in pending) >= TRACK_BATCH_SEGMENTS:
            flush()
    if pending:
        flush()
    return out


def ranking_metrics(scores: np.ndarray, positives: list[np.ndarray]) -> dict:
    """accuracy (argmax is a positive) and mean rank (1 = best) of each track's best-ranked positive."""
    if len(scores) == 0:
        return {"accuracy": None, "mean_rank": None}
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    ranks[np.arange(len(order))[:, None], order] = np.arange(1, scores.shape[1] + 1)
    best = np.array([ranks[i, pos].min() for i, pos in enumerate(positives)])
    return {"accuracy": float(np.mean(best == 1)), "mean_rank": float(np.mean(best))}


# --- the loop -----------------------------------------------------------------------------------


def _distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        deterministic_training()  # a seed gives the same weights on a GPU too
        torch.cuda.set_device(device)  # before the process group: NCCL and pin_memory use the current device
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def _make_optimizer(params, options: TrainOptions) -> torch.optim.Optimizer:
    if options.optimizer == "adam":
        return torch.optim.Adam(params, lr=options.lr)
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, nesterov=True)


def _validate(model, cache, tracks: TrackSet, plan: dict, vectors, options, device) -> dict:
    model.eval()
    with torch.no_grad():
        total, count = 0.0, 0
        objective = TripletObjective(model, options.margin)
        loader = torch.utils.data.DataLoader(
            CropDataset(cache, tracks, plan, model.front_end.segment_frames), batch_size=options.batch_size
        )
        for x, pos, neg in loader:
            loss = objective(x.to(device), pos.to(device), neg.to(device), vectors)
            total += float(loss) * len(x)
            count += len(x)
        ids = tracks.ids[:VALIDATION_MAX_TRACKS]
        emb = embed_cached_tracks(model, cache, ids, device)
        label_emb = model.embed_labels(vectors).cpu().numpy()
        metrics = ranking_metrics(model.scores(emb, label_emb), tracks.positives[: len(ids)])
    model.train()
    return {"val_loss": total / max(count, 1), "val_accuracy": metrics["accuracy"], "val_mean_rank": metrics["mean_rank"]}


def train(
    cache: FeatureCache,
    train_ids: list[str],
    val_ids: list[str],
    labels: list[str],
    out: str | Path,
    options: TrainOptions | None = None,
    *,
    vectors_source: str | None = None,
    split_sha256: str | None = None,
    corpus_name: str | None = None,
    resume: bool = False,
    progress: Callable | None = None,
    log: Callable[[str], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict:
    """Train a CNN1D model on ``train_ids`` with the seen ``labels``; the best model is saved in ``out``.

    ``on_start`` runs on rank 0 once every check has passed, before the first epoch (the CLI saves the
    split there: a run refused for its options, vectors or ``out`` leaves ``out`` as it was). On rank 0,
    ``log`` gets a line per epoch and warnings, ``progress`` is called as progress("epochs", epoch, epochs,
    info=...) and progress("batches", batch, batches, info=...) (progress.Bar draws it); None: nothing.
    ``resume``: go on from the last checkpoint in ``out``; where a run stopped before its first one
    (has_checkpoint is False), start afresh; a model folder that no run of this kind started is refused.

    Returns {"model_id", "epochs", "best_epoch", "best_val_loss", "stopped_early", "history"}.
    """
    options = options or TrainOptions()
    options.check()
    out = Path(out)
    rank, world, device = _distributed(options.device)
    log = log if log is not None and rank == 0 else (lambda line: None)
    bar = progress if callable(progress) and rank == 0 else (lambda *args, **fields: None)
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.batch_size % world:
        raise TrainError(f"--batch-size {options.batch_size} is not divisible by the {world} processes")

    labels = list(labels)
    vectors_np, vectors_name = label_vectors(labels, vectors_source)
    vectors = torch.from_numpy(vectors_np).to(device)
    train_set, val_set = TrackSet(cache, train_ids, labels), TrackSet(cache, val_ids, labels)
    if not len(train_set):
        raise TrainError("no training track has a seen label (and a seen label it lacks) in the feature cache")
    frames = cache.front_end.segment_frames

    torch.manual_seed(options.seed)
    config = cnn1d_config(cache.front_end, vectors_np.shape[1], vectors_name, batch_norm=options.batch_norm,
                          train_labels=labels)
    config["split_sha256"] = split_sha256
    config["training"] = {"corpus": corpus_name, "cache_plan_sha256": cache.manifest.get("plan_sha256"),
                          "options": {k: v for k, v in asdict(options).items() if k not in RESUME_MAY_CHANGE}}
    model = ZeroShotModel(config).to(device)
    objective: nn.Module = TripletObjective(model, options.margin)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _make_optimizer(model.parameters(), options)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=options.lr_factor, patience=options.lr_patience, threshold=MIN_IMPROVEMENT
    )

    start_epoch, best_loss, best_epoch, bad_epochs, history = 1, math.inf, 0, 0, []
    # checkpoints/ is made before the first epoch: a model folder with it but no checkpoint is a run killed
    # between epoch 1's model and its checkpoint, which --resume starts again.
    started_here = (out / CHECKPOINT_DIR).is_dir()
    if resume and has_checkpoint(out):
        weights, tensors, meta = load_checkpoint(out)
        if meta.get("cache_plan_sha256") != cache.manifest.get("plan_sha256") or meta.get("split_sha256") != split_sha256:
            raise TrainError(f"{out}: the checkpoint was made from another feature cache or split")
        changed = [k for k, v in asdict(options).items() if k not in RESUME_MAY_CHANGE and meta["options"].get(k) != v]
        if changed:
            log(f"warning: resuming with other {', '.join(changed)} than the run was started with")
        model.load_state_dict(weights)
        optimizer.load_state_dict(_optimizer_join(tensors, meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))])
        start_epoch, best_loss, best_epoch = meta["epoch"] + 1, meta["best_val_loss"], meta["best_epoch"]
        bad_epochs, history = meta["bad_epochs"], meta["history"]
        log(f"resuming after epoch {meta['epoch']} (best validation loss {best_loss:.4f} at epoch {best_epoch})")
    elif has_checkpoint(out):
        raise TrainError(f"{out}: holds a training run already; pass --resume to continue it or choose another --out")
    elif (out / CONFIG_FILE).exists() and not started_here:  # a finished or shipped model: never trained over
        raise TrainError(f"{out}: holds a model already ({CONFIG_FILE}); choose another --out")
    elif (out / CONFIG_FILE).exists() and not resume:
        raise TrainError(f"{out}: holds a training run stopped before its first checkpoint; pass --resume to "
                         "start it again or choose another --out")

    n_samples = options.epoch_size or len(train_set)
    monitored = val_set if len(val_set) else train_set
    if not len(val_set):
        log("warning: no validation tracks; monitoring the loss on training tracks instead")
    val_rng = np.random.default_rng([options.seed, VALIDATION_STREAM])
    val_plan = sample_plan(monitored, val_rng, max(len(monitored), options.val_samples), options.negatives, frames)
    per_process_batch = options.batch_size // world
    stopped_early = False
    if rank == 0:
        (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        if on_start is not None:
            on_start()
    bar("epochs", start_epoch - 1, options.epochs, info="")
    bar("batches", 0, None, info="")
    for epoch in range(start_epoch, options.epochs + 1):
        if bad_epochs >= options.early_stop:
            stopped_early = True
            break
        started = time.perf_counter()
        plan = sample_plan(train_set, np.random.default_rng([options.seed, epoch]), n_samples, options.negatives, frames)
        dataset = CropDataset(cache, train_set, plan, frames)
        sampler = None
        if world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(dataset, world, rank, shuffle=False)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=per_process_batch, sampler=sampler, num_workers=options.loader_workers,
            pin_memory=device.type == "cuda",
        )
        bar("batches", 0, len(loader), info="")
        model.train()
        total, count, step = 0.0, 0, 0
        for x, pos, neg in loader:
            loss = objective(x.to(device, non_blocking=True), pos.to(device), neg.to(device), vectors)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
            step += 1
            bar("batches", step, len(loader), info=f"loss {total / count:.4f}")
        if world > 1:  # report the loss over every process's samples, not just this one's
            import torch.distributed as dist

            sums = torch.tensor([total, count], dtype=torch.float64, device=device)
            dist.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        val = _validate(model, cache, monitored, val_plan, vectors, options, device)
        scheduler.step(val["val_loss"])
        record = {"epoch": epoch, "loss": total / count, **val, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - started, 3)}
        history.append(record)
        improved = val["val_loss"] < best_loss * (1 - MIN_IMPROVEMENT)
        if improved:
            best_loss, best_epoch, bad_epochs = val["val_loss"], epoch, 0
        else:
            bad_epochs += 1
        if rank == 0:
            if improved:
                config["training"].update(epoch=epoch, val_loss=val["val_loss"])
                save_model(model, out)
            state = {"best_val_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                     "history": history, "options": asdict(options), "split_sha256": split_sha256,
                     "cache_plan_sha256": cache.manifest.get("plan_sha256")}
            save_checkpoint(out, epoch, model, optimizer, scheduler, state)
            atomic_write(out / HISTORY_FILE, json.dumps(history, indent=1).encode())
            bar("epochs", epoch, options.epochs, info=f"best val loss {best_loss:.4f} (epoch {best_epoch})")
            log(f"epoch {epoch}: {_epoch_line(record)}")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    result = {"epochs": len(history), "best_epoch": best_epoch, "best_val_loss": best_loss,
              "stopped_early": stopped_early, "history": history}
    if rank == 0 and best_epoch:
        result["model_id"] = _finish(out, cache, train_set, corpus_name, device, log)
    return result


def _finish(out: Path, cache: FeatureCache, train_set: TrackSet, corpus_name: str | None, device, log) -> str:
    """Reload the best model and add corpus_stats.json (training-corpus acoustics and mean embedding)."""
    from zstag.model import load_model

    model = load_model(out).to(device)
    try:
        from types import SimpleNamespace

        from zstag.acoustics import corpus_summary

        ids = train_set.ids[:: max(1, math.ceil(len(train_set) / STATS_MAX_TRACKS))]
        emb = embed_cached_tracks(model, cache, ids, device)
        results = [SimpleNamespace(embedding=e, stats=cache.by_id[i].stats) for i, e in zip(ids, emb)]
        extra = {"corpus_stats.json": corpus_summary(corpus_name or "training", results)}
    except ImportError:
        extra = {}
    return save_model(model.cpu(), out, extra_files=extra)


def _epoch_line(r: dict) -> str:
    acc = "–" if r["val_accuracy"] is None else f"{r['val_accuracy']:.3f}"
    rank = "–" if r["val_mean_rank"] is None else f"{r['val_mean_rank']:.2f}"
    return f"loss {r['loss']:.4f}  val loss {r['val_loss']:.4f}  val acc {acc}  val rank {rank}  lr {r['lr']:.2g}"
