"""Rebuild models/musicnn/ from PyPI's musicnn==0.1.0 wheel (see zstag/backbones/convert_musicnn.py).

    pip download --no-deps musicnn==0.1.0 -d /tmp/mw
    python recipes/convert_musicnn.py /tmp/mw/musicnn-0.1.0-py3-none-any.whl
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zstag.backbones.convert_musicnn import main

    sys.exit(main())
