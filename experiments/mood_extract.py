"""Cache both musicnn backbones' per-patch outputs for the mood sets (recipes/build_mood_sets.py), as
recipes/build_default_model.py's extract stage does, under runs/default-model/mood-features/<set>/ (the recipe's
own features folder is never written). moods-game-titles needs nothing: its files are the game sets', already
cached under their own set names.

    python experiments/mood_extract.py [--sets moods-rendered,moods-rendered-tune]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOOD_FEATURES = ROOT / "runs" / "default-model" / "mood-features"


def main(argv=None) -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]
    import torch

    import build_default_model as recipe
    from zstag.paths import cache_dir

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="moods-rendered,moods-rendered-tune")
    args = parser.parse_args(argv)
    recipe.FEATURES = MOOD_FEATURES  # feature_path reads the module constant
    for name in args.sets.split(","):
        rows = recipe.read_manifest(cache_dir() / "sets" / name / "manifest.csv")
        done = recipe.extract_set(name, rows, log=lambda m: print(m, flush=True))
        print(f"{name}: {len(done)}/{len(rows)} files cached", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
