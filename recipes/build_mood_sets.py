"""Build mood development sets (issue #22): clips labelled with one valence–arousal quadrant, never by hand.

    python recipes/build_mood_sets.py [--out FOLDER] [--per-quadrant N] [--sets moods-rendered,...] [--list]

Every set is labelled with the four words of the held-out test (happy, angry, sad, calm: the quadrants
valence+/arousal+, valence-/arousal+, valence-/arousal-, valence+/arousal-) and written like the other sets:
``FOLDER/<set>/manifest.csv`` (path,labels,artist,title,package,licence; recipes/build_music_sets.py's writer),
FOLDER defaulting to ``zstag.paths.cache_dir()/sets``.

- ``moods-rendered`` (development: measured on, never fitted on) and ``moods-rendered-tune`` (another seed:
  the only set any constant of a mood rule may be chosen on): clips rendered with the General MIDI SoundFont
  of recipes/build_rendered_instruments.py, whose quadrant is fixed by construction (QUADRANTS):
  harmony (major / minor, with dissonant clusters for "angry"), tempo and note length (fast / slow), loudness,
  velocity and density (drums, bass, staccato / legato), waveshaping distortion for "angry". Instruments, keys,
  registers, rooms and tempi are drawn per clip from its own seed, and the instrument pools overlap between
  quadrants (piano, strings, guitars in several), so an instrument alone does not name the quadrant.
- ``moods-game-titles``: the Debian game music already listed by recipes/build_music_sets.py whose title holds a
  word of TITLE_WORDS (the written title-word → quadrant table); files are used in place (no audio copied),
  licence taken from their own manifest. Small: it counts what real recordings the titles can label.

What is circular: the rendered quadrants are defined by the same acoustic cues (mode, tempo, loudness)
that descriptor-based mood estimators read; a rule fitted to such descriptors would be measured on its own
definition. The mood rule measured here (zstag/moods.py) is fitted on none of these sets.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

RATE = 22050
PER_QUADRANT = 40
SEEDS = {"moods-rendered": 0, "moods-rendered-tune": 1}
TITLE_SET = "moods-game-titles"
GAME_SETS = ("asc", "hyperrogue", "nexuiz", "singularity", "ufoai", "warzone2100", "wesnoth")
MODES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "harmonic minor": (0, 2, 3, 5, 7, 8, 11)}
PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 2, 4))
KIT_PRESETS = {"standard": 0, "room": 8, "power": 16, "jazz": 32, "brush": 40}

# quadrant → how its clips are made. tempo: beats per minute; lead_beats: note lengths in beats; velocity: MIDI;
# loudness: clip RMS dBFS; legato: sounding share of each note; drums: probability of a kit part; kits: which;
# drive: tanh waveshaper gain range (1 = clean); dissonance: probability a chord gets a minor 2nd or tritone;
# register: which part of the lead's range ("low" / "mid" / "high" third, drawn among these).
QUADRANTS = {
    "happy": dict(modes=("major",), tempo=(118, 165), lead_beats=(0.5, 0.5, 1.0, 0.25), velocity=(85, 115),
                  loudness=(-18.0, -12.0), legato=(0.4, 0.75), drums=0.8, kits=("standard", "room"), drive=(1.0, 1.0),
                  dissonance=0.0, register=("mid", "high"),
                  leads=("trumpet", "flute", "xylophone", "marimba", "glockenspiel", "clean guitar", "steel guitar",
                         "banjo", "bright piano", "grand piano", "steel drums", "piccolo", "alto sax", "accordion",
                         "violin", "fiddle", "synth lead"),
                  chords=("bright piano", "steel guitar", "brass section", "string ensemble", "pizzicato strings",
                          "drawbar organ", "electric piano"),
                  basses=("finger bass", "pick bass", "acoustic bass")),
    "angry": dict(modes=("minor", "harmonic minor"), tempo=(135, 185), lead_beats=(0.25, 0.5, 0.5, 1.0),
                  velocity=(105, 127), loudness=(-15.0, -10.0), legato=(0.6, 0.95), drums=0.9,
                  kits=("power", "standard", "room"), drive=(3.0, 12.0), dissonance=0.7, register=("low", "mid"),
                  leads=("distortion guitar", "overdriven guitar", "synth lead", "brass section", "trombone",
                         "string ensemble", "trumpet", "church organ", "grand piano", "violin"),
                  chords=("distortion guitar", "overdriven guitar", "string ensemble", "brass section",
                          "church organ", "grand piano"),
                  basses=("pick bass", "synth bass", "finger bass")),
    "sad": dict(modes=("minor", "harmonic minor"), tempo=(48, 72), lead_beats=(1.0, 2.0, 2.0, 1.5), velocity=(35, 65),
                loudness=(-30.0, -22.0), legato=(0.9, 1.0), drums=0.0, kits=("brush",), drive=(1.0, 1.0),
                dissonance=0.0, register=("low", "mid"),
                leads=("cello", "violin", "oboe", "clarinet", "french horn", "grand piano", "nylon guitar", "viola",
                       "choir", "alto sax", "flute", "electric piano"),
                chords=("string ensemble", "grand piano", "choir", "nylon guitar", "church organ", "synth pad"),
                basses=("contrabass", "acoustic bass")),
    "calm": dict(modes=("major",), tempo=(52, 80), lead_beats=(1.0, 2.0, 2.0, 1.5), velocity=(35, 65),
                 loudness=(-30.0, -22.0), legato=(0.85, 1.0), drums=0.1, kits=("brush",), drive=(1.0, 1.0),
                 dissonance=0.0, register=("mid", "high"),
                 leads=("flute", "pan flute", "harp", "vibraphone", "celesta", "nylon guitar", "electric piano",
                        "grand piano", "clarinet", "violin", "oboe", "cello"),
                 chords=("synth pad", "string ensemble", "harp", "electric piano", "grand piano", "nylon guitar"),
                 basses=("acoustic bass", "contrabass")),
}

# Title word → quadrant for moods-game-titles, written before any measurement. A title counts when one of its
# words (lower case, split on non-letters and camelCase) starts with a key; a title matching two quadrants is left out.
TITLE_WORDS = {
    "happy": ("victory", "win", "heroes", "celebrat", "joy", "triumph", "festiv", "minstrel", "rewards"),
    "angry": ("battle", "fight", "war", "siege", "veng", "revenge", "frantic", "chaos", "attack", "strike",
              "insanity", "beast", "blast", "raid", "infight"),
    "sad": ("sad", "dead", "defeat", "lose", "loose", "casualties", "falls", "broken", "collapse", "dimittis",
            "lament", "sorrow", "funeral"),
    "calm": ("peace", "sanctuary", "calm", "love", "dawn", "lullaby", "knolls", "nebula", "moonlight", "northern lights",
             "wanderer", "dreams", "elf", "elvish"),
}

Event = tuple[float, float, int, int]  # (start s, duration s, MIDI key, velocity)


# --- composition (pure: numbers in, note events out) --------------------------------------------


def triad(tonic: int, steps: tuple[int, ...], degree: int, base: int) -> list[int]:
    """The diatonic triad on a scale degree, its root the first key of that pitch class at or above base."""
    root = base + (tonic + steps[degree % 7] - base) % 12
    return [root + (steps[(degree + s) % 7] - steps[degree % 7]) % 12 for s in (0, 2, 4)]


def compose(rng: random.Random, q: dict, spec: dict, low: int, high: int, clip_seconds: float) -> dict[str, list[Event]]:
    """Lead, chords, bass and (maybe) drums of one clip: part → events."""
    steps, beat, tonic = MODES[q["mode"]], 60.0 / q["tempo"], q["tonic"]
    bar = 4 * beat
    progression = rng.choice(PROGRESSIONS)
    span = max(12, (high - low) // 3)
    start = {"low": low, "mid": (low + high - span) // 2, "high": high - span}[rng.choice(spec["register"])]
    keys = [k for k in range(start, start + span + 1) if (k - tonic) % 12 in steps] or [start]
    lead, chords, bass, t, i = [], [], [], 0.0, rng.randrange(len(keys))
    while t < clip_seconds - 0.3:
        length = beat * rng.choice(spec["lead_beats"])
        vel = max(1, min(127, q["velocity"] + rng.randint(-8, 8)))
        lead.append((t, length * q["legato"], keys[i], vel))
        i = max(0, min(len(keys) - 1, i + rng.choice((-2, -1, -1, 1, 1, 2, 0))))
        t += length
    for n in range(int(clip_seconds / bar) + 1):
        degree = progression[n % len(progression)]
        chord = triad(tonic, steps, degree, 48)
        if rng.random() < spec["dissonance"]:
            chord.append(chord[0] + rng.choice((1, 6)))  # a minor 2nd or a tritone above the root
        vel = max(1, q["velocity"] - 15)
        if q["arousal"] > 0:  # fast quadrants: chords struck on every beat
            chords += [(n * bar + b * beat, beat * 0.8, k, vel) for b in range(4) for k in chord]
            bass += [(n * bar + b * beat / 2, beat / 2 * 0.8, chord[0] - 12, vel) for b in range(8)]
        else:  # slow quadrants: held chords, a whole-bar bass note
            chords += [(n * bar, bar * 0.95, k, vel) for k in chord]
            bass.append((n * bar, bar * 0.95, chord[0] - 12, vel))
    parts = {"lead": lead, "chords": chords, "bass": bass}
    if rng.random() < spec["drums"]:
        parts["drums"] = drums(rng, beat, q["velocity"], q["arousal"] > 0, clip_seconds)
    return {k: [e for e in v if e[0] < clip_seconds - 0.2] for k, v in parts.items()}


def drums(rng: random.Random, beat: float, velocity: int, busy: bool, clip_seconds: float) -> list[Event]:
    """Kick / snare / hi-hat on an eighth grid; busy: kick on every beat and eighth hats, else a sparse pulse."""
    eighth, events, n = beat / 2, [], 0
    while n * eighth < clip_seconds - 0.3:
        t, s = n * eighth, n % 8
        v = max(1, min(127, velocity + rng.randint(-10, 5)))
        if (busy and s % 2 == 0) or s == 0:
            events.append((t, eighth, 36, v))
        if s in (2, 6) and (busy or s == 2):
            events.append((t, eighth, 38, v))
        if busy or s % 4 == 0:
            events.append((t, eighth, 42, max(1, v - 25)))
        n += 1
    return events


# --- the clips ----------------------------------------------------------------------------------


def clip_plan(seed: int, quadrant: str, index: int) -> dict:
    """Everything random about one clip, from its own seed (independent of which other clips are asked for)."""
    spec = QUADRANTS[quadrant]
    rng = random.Random(f"moods/{seed}/{quadrant}/{index}")
    return {"rng": rng, "quadrant": quadrant, "mode": rng.choice(spec["modes"]), "tonic": rng.randrange(12),
            "tempo": rng.uniform(*spec["tempo"]), "velocity": rng.randint(*spec["velocity"]),
            "legato": rng.uniform(*spec["legato"]), "loudness": rng.uniform(*spec["loudness"]),
            "drive": rng.uniform(*spec["drive"]), "lead": rng.choice(spec["leads"]), "chords": rng.choice(spec["chords"]),
            "bass": rng.choice(spec["basses"]), "kit": rng.choice(spec["kits"]),
            "room": rng.choice(("dry", "room", "hall") if quadrant in ("happy", "angry") else ("room", "hall")),
            "arousal": 1 if quadrant in ("happy", "angry") else -1}


def render_clip(synth, sfid: int, plan: dict, ri) -> tuple[np.ndarray | None, str]:
    """(clip or None when its lead is silent, title). ri: recipes/build_rendered_instruments (renderer, room)."""
    rng, spec = plan["rng"], QUADRANTS[plan["quadrant"]]
    _, _, _, _, low, high, _ = ri.INSTRUMENTS[plan["lead"]]
    parts = compose(rng, plan, spec, low, high, ri.CLIP_SECONDS)
    lead = ri.render_part(synth, sfid, plan["lead"], parts["lead"], channel=0)
    if ri.silent(lead):
        return None, plan["lead"]
    mix = lead.astype(np.float64)
    levels = {"chords": (-9.0, -4.0), "bass": (-10.0, -6.0), "drums": (-8.0, -3.0)}  # dB below the lead (RMS)
    for part, name, channel in (("chords", plan["chords"], 1), ("bass", plan["bass"], 2), ("drums", "drum kit", 9)):
        if part not in parts:
            continue
        kit = KIT_PRESETS[plan["kit"]] if part == "drums" else None
        sound = ri.render_part(synth, sfid, name, parts[part], channel=channel, kit=kit)
        if not ri.silent(sound):
            mix = mix + sound * (ri.rms(lead) / ri.rms(sound) * 10 ** (rng.uniform(*levels[part]) / 20))
    if plan["drive"] > 1.0:  # waveshaping distortion of the whole mix
        mix = np.tanh(plan["drive"] * mix / np.max(np.abs(mix))) / np.tanh(plan["drive"])
    mix = ri.room(mix, rng, plan["room"])
    mix = mix * (10 ** (plan["loudness"] / 20) / ri.rms(mix))
    mix = mix * min(1.0, ri.PEAK_LIMIT / float(np.max(np.abs(mix))))
    key = f"{'C C# D D# E F F# G G# A A# B'.split()[plan['tonic']]} {plan['mode']}"
    extras = (["drums"] if "drums" in parts else []) + ([f"drive {plan['drive']:.1f}"] if plan["drive"] > 1 else [])
    title = ", ".join([f"{plan['quadrant']}: {plan['lead']} over {plan['chords']}", key, f"{plan['tempo']:.0f} bpm",
                       *extras, plan["room"]])
    return mix.astype(np.float32), title


def build_rendered(out: Path, set_name: str, per_quadrant: int, log=print) -> Path:
    import soundfile
    from build_music_sets import Entry, package_version, write_manifest

    import build_rendered_instruments as ri
    from zstag.paths import atomic_write

    try:
        import tinysoundfont
    except ImportError:
        raise SystemExit("build_mood_sets: the renderer is missing: pip install --no-deps tinysoundfont") from None
    sf_path, package, licence = ri.find_soundfont(None)
    seed = SEEDS[set_name]
    folder = out / set_name
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    synth = tinysoundfont.Synth(samplerate=ri.RATE)
    sfid = synth.sfload(sf_path)
    rows, dropped, started = [], [], time.time()
    for quadrant in QUADRANTS:
        for index in range(per_quadrant):
            clip, title = render_clip(synth, sfid, clip_plan(seed, quadrant, index), ri)
            if clip is None:
                dropped.append(f"{quadrant} {index} ({title})")
                continue
            relative = f"audio/{quadrant}-{index:03d}.ogg"
            buffer = io.BytesIO()
            soundfile.write(buffer, clip, ri.RATE, format="OGG", subtype="VORBIS")
            atomic_write(folder / relative, buffer.getvalue())
            rows.append(Entry(relative, quadrant, f"tinysoundfont moods seed {seed}", title, package, licence))
    manifest = write_manifest(folder, rows)
    info = {"set": set_name, "seed": seed, "soundfont": sf_path, "package": package, "version": package_version(package),
            "soundfont_sha256": hashlib.sha256(Path(sf_path).read_bytes()).hexdigest(), "per_quadrant": per_quadrant,
            "clips": len(rows), "dropped_silent": dropped, "rate": ri.RATE, "clip_seconds": ri.CLIP_SECONDS,
            "renderer": "tinysoundfont " + getattr(tinysoundfont, "__version__", "")}
    atomic_write(folder / "source.json", json.dumps(info, indent=2).encode())
    log(f"{set_name}: {len(rows)} clips ({len(dropped)} silent dropped) in {time.time() - started:.0f} s → {manifest}")
    return manifest


def title_quadrant(title: str) -> str | None:
    """The quadrant TITLE_WORDS gives a title, or None (no match, or matches in two quadrants)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", title).lower()
    words = [w for w in re.split(r"[^a-z]+", spaced) if w]
    text = " ".join(words)
    found = {q for q, keys in TITLE_WORDS.items()
             for key in keys if (" " in key and key in text) or any(w.startswith(key) for w in words)}
    return found.pop() if len(found) == 1 else None


def build_titles(out: Path, log=print) -> Path:
    from build_music_sets import Entry, write_manifest

    from zstag.paths import atomic_write

    rows, counts = [], {q: 0 for q in QUADRANTS}
    for name in GAME_SETS:
        manifest = out / name / "manifest.csv"
        if not manifest.is_file():
            log(f"{TITLE_SET}: {name}: no manifest (run recipes/build_music_sets.py): skipped")
            continue
        with open(manifest, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                quadrant = title_quadrant(row["title"])
                if quadrant is None:
                    continue
                path = row["path"] if Path(row["path"]).is_absolute() else str((manifest.parent / row["path"]).resolve())
                rows.append(Entry(path, quadrant, row["artist"], f"{name}: {row['title']}", row["package"], row["licence"]))
                counts[quadrant] += 1
    folder = out / TITLE_SET
    folder.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(folder, rows)
    atomic_write(folder / "source.json", json.dumps({"set": TITLE_SET, "title_words": TITLE_WORDS, "counts": counts},
                                                    indent=2).encode())
    log(f"{TITLE_SET}: {len(rows)} titled clips {counts} → {manifest}")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the mood development sets (valence–arousal quadrants).")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <zstag cache>/sets)")
    parser.add_argument("--per-quadrant", type=int, default=PER_QUADRANT, help=f"rendered clips per quadrant (default {PER_QUADRANT})")
    names = [*SEEDS, TITLE_SET]
    parser.add_argument("--sets", default=",".join(names), help=f"comma-separated, of {', '.join(names)}")
    parser.add_argument("--list", action="store_true", help="print the quadrant specs and the title-word table")
    args = parser.parse_args(argv)
    if args.list:
        for q, spec in QUADRANTS.items():
            print(q, json.dumps(spec))
        for q, keys in TITLE_WORDS.items():
            print(f"title words → {q}: {', '.join(keys)}")
        return 0
    chosen = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in names]
    if unknown or args.per_quadrant < 1:
        print(f"build_mood_sets: {'unknown set(s) ' + ', '.join(unknown) if unknown else '--per-quadrant must be ≥ 1'}",
              file=sys.stderr)
        return 2
    if args.out is None:
        from zstag.paths import cache_dir

        args.out = cache_dir() / "sets"
    try:
        for name in chosen:
            build_titles(args.out) if name == TITLE_SET else build_rendered(args.out, name, args.per_quadrant)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
