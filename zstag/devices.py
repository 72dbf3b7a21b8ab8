"""Where the model runs: ``--device auto|cpu|cuda|cuda:N`` for `zstag train`, `tag` and `eval`.

``check_device`` reads the name without torch (a warm `zstag tag` never imports it); ``pick_device``
resolves it to a torch.device and says in one line why a GPU that was asked for cannot be used.
On a GPU, inference runs with cuDNN's deterministic algorithms and without TF32, so a track gives the
same embedding every run; it may differ from the CPU's by ~1e-4 relative (other summation orders).
Training on a GPU uses deterministic algorithms too, so a seed gives the same weights every run.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from zstag.errors import UsageError

DEVICE_HELP = "auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"
_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(UsageError, ValueError):
    """A --device that is malformed or not present on this machine (one-line message)."""


def check_device(name) -> str:
    """The name (a str, or a torch.device as its str), if it is one of DEVICE_HELP's forms; DeviceError
    otherwise. Imports no torch."""
    if type(name).__name__ == "device" and type(name).__module__ == "torch":
        name = str(name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DeviceError(f"--device {name!r}: expected {DEVICE_HELP}")
    return name


@dataclass(frozen=True)
class Target:
    """--device and --bf16, made once (the CLI, the API) and passed down: the name checked without torch
    when made (a warm `zstag tag` never imports it), the torch.device resolved once, when a model first runs."""

    name: str = "auto"
    bf16: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_device(self.name))  # a torch.device becomes its name

    @functools.cached_property
    def device(self):
        """The torch.device (pick_device), with bf16 checked on it (check_bf16); DeviceError otherwise."""
        device = pick_device(self.name)
        if self.bf16:
            check_bf16(device)
        return device


def target_of(device, bf16: bool = False) -> Target:
    """device itself when it is a Target, else Target(device, bf16)."""
    return device if isinstance(device, Target) else Target(device, bf16)


def pick_device(name: str = "auto", local_rank: int = 0):
    """The torch.device for name; "auto" and "cuda" take GPU local_rank (the process's GPU under torchrun).

    DeviceError (one line) for a malformed name, a GPU that torch does not see, or "cuda:N" under torchrun
    (every process would take the same GPU)."""
    import torch

    name = check_device(name)
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name.startswith("cuda:") and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise DeviceError(f"--device {name}: under torchrun each process takes the GPU of its local rank; "
                          "use --device cuda (or auto)")
    device = torch.device(f"cuda:{local_rank}" if name in ("auto", "cuda") else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise DeviceError(f"--device {name}: torch {torch.__version__} ({build}) sees no CUDA GPU")
        if device.index >= torch.cuda.device_count():
            rank = f" (the GPU of local rank {local_rank})" if name in ("auto", "cuda") else ""
            raise DeviceError(f"--device {name}: no GPU cuda:{device.index}{rank}; this machine has "
                              f"{torch.cuda.device_count()} CUDA GPU(s)")
    return device


class deterministic_cuda:
    """While active: cuDNN picks deterministic algorithms (no autotuning) and neither convolutions nor
    matrix products use TF32, whose 10-bit mantissa would move embeddings by ~1e-3. Restores on exit."""

    def __enter__(self):
        import torch

        # cuBLAS is bit-reproducible only with a fixed workspace; read when it first starts in this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        cudnn = torch.backends.cudnn
        self.saved = (cudnn.deterministic, cudnn.benchmark, _precision())
        cudnn.deterministic, cudnn.benchmark = True, False
        _set_precision(None)
        return self

    def __exit__(self, *exc):
        import torch

        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, precision = self.saved
        _set_precision(precision)


def _precision_settings():
    """torch ≥ 2.9's fp32_precision settings (cuDNN convolutions and RNNs, CUDA matrix products), or None
    on older torch. Once a program uses them, torch refuses the old allow_tf32 flags, so they come first."""
    import torch

    try:
        return (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    except AttributeError:
        return None


def _precision():
    """The current TF32 settings, exactly as they are, for _set_precision to put back."""
    import torch

    settings = _precision_settings()
    if settings is not None and all(hasattr(x, "fp32_precision") for x in settings):
        return tuple(x.fp32_precision for x in settings)
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _set_precision(saved) -> None:
    """saved: what _precision returned, or None for full float32 (no TF32) everywhere."""
    import torch

    settings = _precision_settings()
    if settings is not None and all(hasattr(x, "fp32_precision") for x in settings):
        for setting, value in zip(settings, saved or ("ieee",) * 3):
            setting.fp32_precision = value
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved or (False, False)


def bf16_problem(device) -> str | None:
    """Why `--bf16` cannot run on device (a torch.device), in one line; None when it can: a CPU whose
    oneDNN really takes bfloat16 inputs for float32 products (AMX; _bf16_in_effect, which sets cpu_bfloat16
    for a moment: call it before inference starts). Elsewhere oneDNN keeps float32 products, no faster; on a
    GPU zstag runs float32 only (deterministic kernels, see deterministic_cuda)."""
    import torch

    if device.type != "cpu":
        return f"--bf16: bfloat16 inference is for the CPU only (the model would run on {device}): add --device cpu"
    mkldnn = torch.backends.mkldnn
    native = mkldnn.is_available() and getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    if not native or not hasattr(getattr(mkldnn, "matmul", None), "fp32_precision") or not _bf16_in_effect():
        return (f"--bf16: this CPU or torch {torch.__version__} has no native bfloat16 matrix products "
                "(AMX, torch >= 2.9); float32 (without --bf16) is as fast here")
    return None


def check_bf16(device) -> None:
    """DeviceError (bf16_problem's line) when `--bf16` cannot run on device."""
    problem = bf16_problem(device)
    if problem:
        raise DeviceError(problem)


@functools.lru_cache(maxsize=1)
def _bf16_in_effect() -> bool:
    """Whether oneDNN really takes bfloat16 inputs under cpu_bfloat16. torch's bf16 check passes on any
    AVX512 CPU, but oneDNN (torch 2.13) ignores the setting below AMX and keeps float32 products: then
    --bf16 would be no faster, yet cached apart. 1 + 2**-10 is not a bfloat16 (7 mantissa bits)."""
    import torch

    x = torch.full((64, 64), 1 + 2 ** -10)
    with torch.no_grad(), cpu_bfloat16():
        product = (x @ torch.eye(64))[0, 0].item()
    return product != x[0, 0].item()


class cpu_bfloat16:
    """While active: oneDNN runs float32 matrix products and convolutions with bfloat16 inputs and float32
    accumulation and results (~2x faster for musicnn on a CPU with AMX; embeddings move by ~0.4% relative).
    Process-wide, for every thread: embed_files holds it for its whole inference. Restores on exit."""

    def __enter__(self):
        import torch

        mkldnn = torch.backends.mkldnn
        self.saved = (mkldnn.matmul.fp32_precision, mkldnn.conv.fp32_precision)
        mkldnn.matmul.fp32_precision = mkldnn.conv.fp32_precision = "bf16"
        return self

    def __exit__(self, *exc):
        import torch

        torch.backends.mkldnn.matmul.fp32_precision, torch.backends.mkldnn.conv.fp32_precision = self.saved


def deterministic_training() -> None:
    """For a training process on a GPU: deterministic kernels, no TF32 (deterministic_cuda, which also fixes
    cuBLAS's workspace). Process-wide and left on: training is all that process does."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic_cuda().__enter__()
