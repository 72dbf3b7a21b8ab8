"""Cost of embedding one 30 s track (10 musicnn patches of 3 s) with the default model.

    python benchmarks/musicnn_forward.py [--device cpu|cuda] [--bf16] [--repeats 20] [--patches 10]

Times model.embed_track on fixed random log-mel patches and prints the wall time and this process's CPU
time per track (medians over --repeats, after 3 warm-up passes). On a GPU the model runs as `zstag tag`
runs it (deterministic kernels, no TF32; the embedding's copy back to the host waits for the GPU), and
the CPU time is what the main process spends while the decoders share its cores. On a CPU torch uses
one thread, as each of tag's inference threads does; --bf16 as `zstag tag --bf16`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 products on the CPU (devices.cpu_bfloat16)")
    parser.add_argument("--patches", type=int, default=10, help="3 s patches per track (10: a 30 s track)")
    args = parser.parse_args()

    import torch

    from zstag.backbones import musicnn
    from zstag.devices import cpu_bfloat16, deterministic_cuda, pick_device
    from zstag.model import load_model

    torch.set_num_threads(1)
    device = pick_device(args.device)
    model = load_model("default").to(device)
    segments = np.random.default_rng(0).uniform(0, 3, (args.patches, musicnn.N_MELS, musicnn.PATCH_FRAMES))
    segments = segments.astype(np.float32)
    walls, cpus = [], []
    with deterministic_cuda() if device.type == "cuda" else cpu_bfloat16() if args.bf16 else torch.no_grad():
        for i in range(args.repeats + 3):
            wall, cpu = time.perf_counter(), time.process_time()
            model.embed_track(segments)
            if i >= 3:
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
    print(f"default model, {args.patches} patches per track, device {device}{' (bf16)' if args.bf16 else ''}, torch {torch.__version__}: "
          f"{1000 * statistics.median(walls):.2f} ms wall, {1000 * statistics.median(cpus):.2f} ms CPU per track")


if __name__ == "__main__":
    main()
