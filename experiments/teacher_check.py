"""What the two teacher taggers hear in the acceptance recordings (MODEL_CARD.md, the acceptance test): each
tagger's top tags, as the track mean of its patch probabilities, for the cc-examples files named on the command
line (default: the three that fail).

    python experiments/teacher_check.py [NAME_PART ...]     # a second; needs the cached features of build_default_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FAILURES = ("ragtime", "Drum-bass", "robin")
TOP = 4


def main(argv: list[str]) -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]
    import build_default_model as B

    from zstag.backbones.musicnn import musicnn_tags

    manifest = B.find_sets()["cc-examples"]
    tracks = B.load_tracks({"cc-examples": B.extract_set("cc-examples", B.read_manifest(manifest), log=lambda *a: None)})
    taggrams = B.track_taggrams(tracks)
    for i, track in enumerate(tracks):
        if not any(part in track.id for part in argv or FAILURES):
            continue
        print(Path(track.id).name)
        for backbone in B.BACKBONES:
            tags, p = musicnn_tags(backbone), taggrams[backbone][i]
            top = ", ".join(f"{tags[j]} {p[j]:.2f}" for j in np.argsort(-p)[:TOP])
            electronic = f"; electronic {p[tags.index('electronic')]:.2f}" if "electronic" in tags else ""
            print(f"  {backbone}: {top}{electronic}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
