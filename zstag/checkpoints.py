"""A training run's checkpoints: every epoch, `checkpoints/epoch-NNNN/` (weights, optimizer and
scheduler state, the torch RNG; written whole in a temporary folder, then renamed) and `latest.json`
pointing at it; the last KEEP_CHECKPOINTS kept. A damaged checkpoint is a TrainError, never dropped.
TrainError is defined here, the lowest of the training modules (train.py re-exports it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from zstag.errors import ZstagError
from zstag.paths import _fsync, _fsync_folder, atomic_write

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
KEEP_CHECKPOINTS = 2


class TrainError(ZstagError):
    """Inputs that cannot be trained on (one-line message)."""


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state as (tensors for safetensors, JSON-able rest)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": scalars}


def _optimizer_join(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {int(p): dict(v) for p, v in meta["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param, key = name.split(".", 2)
            state.setdefault(int(param), {})[key] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(folder: Path, epoch: int, model, optimizer, scheduler, progress: dict) -> Path:
    """checkpoints/epoch-NNNN/{weights,state}.safetensors + state.json, then latest.json points at it."""
    from safetensors.torch import save

    root = folder / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
    tensors, optimizer_meta = _optimizer_split(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    _write_synced(tmp / "weights.safetensors",
                  save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
    _write_synced(tmp / "state.safetensors", save(tensors))
    meta = {"epoch": epoch, "optimizer": optimizer_meta, "scheduler": scheduler.state_dict(), **progress}
    _write_synced(tmp / "state.json", json.dumps(meta, indent=1).encode())
    _fsync_folder(tmp)  # the files and their names on disk before the folder is renamed and latest.json names it
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
    _fsync_folder(root)
    atomic_write(root / LATEST_FILE, json.dumps({"epoch": epoch, "checkpoint": name}).encode())
    for old in sorted(root.glob("epoch-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".epoch-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return root / name


def _write_synced(path: Path, data: bytes) -> None:
    """data into a new file, flushed to disk (a power cut after the rename must not leave it empty)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        _fsync(handle.fileno())


def has_checkpoint(folder: str | Path) -> bool:
    """Whether folder holds a checkpoint, usable or not: latest.json, or an epoch folder (written whole,
    then renamed; latest.json follows it). False for a run stopped before its first checkpoint."""
    root = Path(folder) / CHECKPOINT_DIR
    return (root / LATEST_FILE).exists() or any(root.glob("epoch-*"))


def load_checkpoint(folder: Path) -> tuple[dict, dict, dict]:
    """(model state dict, state tensors, state.json) of the latest complete checkpoint: the one latest.json
    names or, without latest.json (a run killed just before writing it), the newest epoch folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = folder / CHECKPOINT_DIR
    try:
        if (root / LATEST_FILE).exists() or not any(root.glob("epoch-*")):
            where = root / json.loads((root / LATEST_FILE).read_text())["checkpoint"]
        else:
            where = max(root.glob("epoch-*"))
        weights = load_file(where / "weights.safetensors")
        tensors = load_file(where / "state.safetensors")
        meta = json.loads((where / "state.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # damaged: an error, never dropped
        raise TrainError(f"{root}: no usable checkpoint to resume from ({exc}); to start afresh, choose another "
                         "--out") from None
    return weights, tensors, meta
