"""Where the model runs: ``--device auto|cpu|cuda|cuda:N`` for `zstag train`, `tag` and `eval`.

``check_device`` reads the name without torch (a warm `zstag tag` never imports it); ``pick_device``
resolves it to a torch.device and says in one line why a GPU that was asked for cannot be used.
On a GPU, inference runs with cuDNN's deterministic algorithms and without TF32, so a track gives the
same embedding every run; it may differ from the CPU's in the last float32 digits (different sums).
Training on a GPU uses deterministic algorithms too, so a seed gives the same weights every run.
"""

from __future__ import annotations

import os
import re

DEVICE_HELP = "auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"
_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A --device that is malformed or not present on this machine (one-line message)."""


def check_device(name: str) -> str:
    """The name, if it is one of DEVICE_HELP's forms; DeviceError otherwise. Imports no torch."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DeviceError(f"--device {name!r}: expected {DEVICE_HELP}")
    return name


def pick_device(name: str = "auto", local_rank: int = 0):
    """The torch.device for name; "auto" and "cuda" take GPU local_rank (the process's GPU under torchrun)."""
    import torch

    check_device(name)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise DeviceError(f"--device {name}: torch {torch.__version__} ({build}) sees no CUDA GPU")
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


class deterministic_cuda:
    """While active: cuDNN picks deterministic algorithms (no autotuning) and neither convolutions nor
    matrix products use TF32, whose 10-bit mantissa would move embeddings by ~1e-3. Restores on exit."""

    def __enter__(self):
        import torch

        self.saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                      torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        import torch

        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = self.saved


def deterministic_training() -> None:
    """For a training process on a GPU: deterministic kernels (cuBLAS needs its workspace setting before it
    starts), no TF32. Process-wide and left on: training is all that process does."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic_cuda().__enter__()
