"""Rebuild models/musicnn/ from PyPI's musicnn==0.1.0 wheel (the conversion: zstag/backbones/convert_musicnn.py).

    pip download --no-deps musicnn==0.1.0 -d /tmp/mw
    python recipes/convert_musicnn.py /tmp/mw/musicnn-0.1.0-py3-none-any.whl

prints each file written and its size; a wheel that cannot be read or converted is one line on stderr, exit 1.
"""

import argparse
import sys
import zipfile
from pathlib import Path


def main(argv=None) -> int:
    from zstag.backbones.convert_musicnn import WHEEL_NAME, CheckpointError, convert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help=f"path to {WHEEL_NAME} (pip download --no-deps musicnn==0.1.0)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: models/musicnn)")
    args = parser.parse_args(argv)
    try:
        written = convert(args.wheel, args.out)
    except (OSError, zipfile.BadZipFile, CheckpointError) as exc:
        print(f"{args.wheel}: {exc}", file=sys.stderr)
        return 1
    for path in written.values():
        print(f"{path}  {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
