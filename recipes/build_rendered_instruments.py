"""Build a labelled set of rendered instrument clips from a General MIDI SoundFont (issue #16, step 1).

    python recipes/build_rendered_instruments.py [--out FOLDER] [--per-class N] [--classes piano,drums,...] [--list]

Every class of INSTRUMENTS (54 GM programs, drum kits and 9 percussion instruments of the GM drum map, each with the label words users type) gets
--per-class clips of CLIP_SECONDS, mono, RATE Hz, Ogg Vorbis, in ``FOLDER/rendered-instruments/audio/``, and
``FOLDER/rendered-instruments/manifest.csv`` with the columns of recipes/build_music_sets.py
(path,labels,artist,title,package,licence; labels ``;``-separated, the instrument's main word first).
FOLDER defaults to ``zstag.paths.cache_dir()/sets``. Nothing is installed here: without the renderer or the
SoundFont the script prints the pip / apt-get command and exits 1.

Each clip is generated from its own seed (SEED, class, index), so a clip never depends on which other classes
or how many clips were asked for, and reruns give the same audio (not the same bytes: libsndfile
gives each Ogg stream a random serial number). A clip draws: a register (low / middle /
high third of the instrument's range), a phrase (scale, arpeggio, random-walk melody in a key, block chords
for polyphonic instruments; rhythms for percussion; beats with fills for kits), tempo, velocities (base and
per-note jitter), a room (dry; a small room or a hall: synthetic exponentially decaying noise reverb) and,
for half the clips, an accompaniment: another class from ACCOMPANIMENT in the same key, ACCOMP_DB_RANGE dB
below the instrument (RMS), so the label is learnt in context and not only from a bare tone. The labels
name the foreground instrument only; the accompaniment is named in the title.

Renderer: the PyPI package ``tinysoundfont`` (``pip install --no-deps tinysoundfont``: its pyaudio dependency
is for live playback only). SoundFont: Debian ``fluid-soundfont-gm`` (FluidR3, MIT) or
``musescore-general-soundfont`` (MIT, parts CC0 / public domain; see SOUNDFONTS for why it comes second). A fresh synth may sound its first note near-silent: each part is rendered
after a discarded warm-up note, every clip is loudness-normalised, and clips whose foreground is silent
(``silent``) are dropped and counted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

RATE = 22050
CLIP_SECONDS = 10.0
PER_CLASS = 24  # clips per class: 64 classes → 1536 clips, 4.3 h of audio
SEED = 0
SET_NAME = "rendered-instruments"
# (path, Debian package, licence), the first found is used. FluidR3 first: under tinysoundfont, MuseScore General
# 0.2.1's grand piano fades above middle C and has no pitch above B5 (-70 dBFS at velocity 100, against -30 for
# FluidR3), and its .sf3 takes ~18 s and 1.2 GB to decode (the .sf2: ~1.5 s).
SOUNDFONTS = (
    ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "fluid-soundfont-gm", "MIT"),
    ("/usr/share/sounds/sf3/MuseScore_General_Full.sf3", "musescore-general-soundfont", "MIT (parts CC0 / public domain)"),
    ("/usr/share/sounds/sf3/MuseScore_General.sf3", "musescore-general-soundfont", "MIT (parts CC0 / public domain)"),
)
ACCOMP_DB_RANGE = (10.0, 15.0)  # accompaniment this far below the foreground (RMS)
MIXED_FRACTION = 0.5  # clips with accompaniment
LOUDNESS_DB_RANGE = (-26.0, -16.0)  # clip RMS after normalisation (dBFS), drawn per clip
PEAK_LIMIT = 0.89  # -1 dBFS: headroom for the lossy Vorbis encoding, which overshoots peaks a little
ROOMS = {"dry": None, "room": ((0.25, 0.6), (0.15, 0.35)), "hall": ((1.2, 2.4), (0.3, 0.6))}  # RT60 s, wet/dry RMS
SILENCE_PEAK = 1e-4  # -80 dBFS: nothing there
SILENCE_ACTIVE_FRACTION = 0.3  # at least this share of 50 ms frames within 40 dB of the loudest frame
DRUM_CHANNEL = 9  # GM channel 10

# class → (labels, kind, bank, preset, low, high, polyphonic). kind "melodic": a GM program (bank 0);
# "kit": a drum kit (bank 128, preset = kit) playing beats; "perc": sounds of the standard kit, `low`..`high`
# replaced by the note list in PERCUSSION_NOTES. Ranges are the instrument's comfortable MIDI notes.
INSTRUMENTS: dict[str, tuple[str, str, int, int, int, int, bool]] = {
    "grand piano": ("piano;grand piano;keyboard", "melodic", 0, 0, 33, 96, True),
    "bright piano": ("piano;keyboard", "melodic", 0, 1, 36, 96, True),
    "electric piano": ("electric piano;keyboard", "melodic", 0, 4, 36, 88, True),
    "harpsichord": ("harpsichord;keyboard", "melodic", 0, 6, 36, 88, True),
    "celesta": ("celesta", "melodic", 0, 8, 60, 100, True),
    "glockenspiel": ("glockenspiel", "melodic", 0, 9, 72, 105, False),
    "vibraphone": ("vibraphone", "melodic", 0, 11, 53, 89, True),
    "marimba": ("marimba", "melodic", 0, 12, 45, 96, False),
    "xylophone": ("xylophone", "melodic", 0, 13, 65, 103, False),
    "tubular bells": ("bells;tubular bells", "melodic", 0, 14, 60, 77, False),
    "drawbar organ": ("organ;electric organ;keyboard", "melodic", 0, 16, 36, 90, True),
    "church organ": ("organ;church organ;keyboard", "melodic", 0, 19, 29, 90, True),
    "accordion": ("accordion", "melodic", 0, 21, 48, 84, True),
    "harmonica": ("harmonica", "melodic", 0, 22, 60, 84, False),
    "nylon guitar": ("acoustic guitar;guitar;classical guitar", "melodic", 0, 24, 40, 76, True),
    "steel guitar": ("acoustic guitar;guitar", "melodic", 0, 25, 40, 79, True),
    "jazz guitar": ("electric guitar;guitar;jazz guitar", "melodic", 0, 26, 40, 79, True),
    "clean guitar": ("electric guitar;guitar", "melodic", 0, 27, 40, 81, True),
    "overdriven guitar": ("distorted guitar;electric guitar;guitar", "melodic", 0, 29, 40, 81, True),
    "distortion guitar": ("distorted guitar;electric guitar;guitar", "melodic", 0, 30, 40, 81, True),
    "acoustic bass": ("bass;double bass", "melodic", 0, 32, 28, 55, False),
    "finger bass": ("bass;bass guitar;electric bass", "melodic", 0, 33, 28, 60, False),
    "pick bass": ("bass;bass guitar;electric bass", "melodic", 0, 34, 28, 60, False),
    "synth bass": ("synth bass;bass;synthesizer", "melodic", 0, 38, 28, 60, False),
    "violin": ("violin;strings", "melodic", 0, 40, 55, 93, False),
    "viola": ("viola;strings", "melodic", 0, 41, 48, 81, False),
    "cello": ("cello;strings", "melodic", 0, 42, 36, 72, False),
    "contrabass": ("double bass;bass;strings", "melodic", 0, 43, 28, 55, False),
    "pizzicato strings": ("pizzicato;strings", "melodic", 0, 45, 40, 84, True),
    "harp": ("harp", "melodic", 0, 46, 36, 91, True),
    "timpani": ("timpani;percussion", "melodic", 0, 47, 40, 57, False),
    "string ensemble": ("strings;string ensemble;orchestra", "melodic", 0, 48, 36, 88, True),
    "choir": ("choir;vocals", "melodic", 0, 52, 48, 79, True),
    "trumpet": ("trumpet;brass", "melodic", 0, 56, 55, 82, False),
    "trombone": ("trombone;brass", "melodic", 0, 57, 40, 72, False),
    "tuba": ("tuba;brass", "melodic", 0, 58, 28, 58, False),
    "french horn": ("horn;french horn;brass", "melodic", 0, 60, 41, 77, False),
    "brass section": ("brass;brass section", "melodic", 0, 61, 41, 82, True),
    "soprano sax": ("saxophone;soprano saxophone", "melodic", 0, 64, 56, 87, False),
    "alto sax": ("saxophone;alto saxophone", "melodic", 0, 65, 49, 81, False),
    "tenor sax": ("saxophone;tenor saxophone", "melodic", 0, 66, 44, 76, False),
    "oboe": ("oboe;woodwind", "melodic", 0, 68, 58, 89, False),
    "bassoon": ("bassoon;woodwind", "melodic", 0, 70, 34, 67, False),
    "clarinet": ("clarinet;woodwind", "melodic", 0, 71, 50, 86, False),
    "piccolo": ("piccolo;flute;woodwind", "melodic", 0, 72, 74, 103, False),
    "flute": ("flute;woodwind", "melodic", 0, 73, 60, 93, False),
    "pan flute": ("pan flute;flute", "melodic", 0, 75, 60, 89, False),
    "synth lead": ("synthesizer;synth lead", "melodic", 0, 81, 48, 84, False),
    "synth pad": ("synthesizer;synth pad", "melodic", 0, 89, 48, 84, True),
    "sitar": ("sitar", "melodic", 0, 104, 48, 77, False),
    "banjo": ("banjo", "melodic", 0, 105, 48, 81, True),
    "bagpipe": ("bagpipes", "melodic", 0, 109, 55, 74, False),
    "fiddle": ("fiddle;violin;strings", "melodic", 0, 110, 55, 93, False),
    "steel drums": ("steel drums", "melodic", 0, 114, 55, 84, False),
    "drum kit": ("drums;drum kit;percussion", "kit", 128, 0, 0, 0, True),
    "snare drum": ("snare drum;drums;percussion", "perc", 128, 0, 0, 0, False),
    "bongo": ("bongo;drums;percussion", "perc", 128, 0, 0, 0, False),
    "conga": ("conga;drums;percussion", "perc", 128, 0, 0, 0, False),
    "tambourine": ("tambourine;percussion", "perc", 128, 0, 0, 0, False),
    "maracas": ("maracas;percussion", "perc", 128, 0, 0, 0, False),
    "triangle": ("triangle;percussion", "perc", 128, 0, 0, 0, False),
    "cymbal": ("cymbal;percussion", "perc", 128, 0, 0, 0, False),
    "castanets": ("castanets;percussion", "perc", 128, 0, 0, 0, False),
    "cowbell": ("cowbell;percussion", "perc", 128, 0, 0, 0, False),
}
PERCUSSION_NOTES = {  # GM percussion key map
    "snare drum": (38, 40, 37), "bongo": (60, 61), "conga": (62, 63, 64), "tambourine": (54,), "maracas": (70,),
    "triangle": (80, 81), "cymbal": (49, 57, 51, 55, 52), "castanets": (85,), "cowbell": (56,),
}
KITS = (0, 8, 16, 32, 40)  # Standard, Room, Power, Jazz, Brush
ACCOMPANIMENT = ("grand piano", "string ensemble", "nylon guitar", "drawbar organ", "finger bass", "drum kit")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (5, 3, 0, 4))  # scale degrees of chord roots

Event = tuple[float, float, int, int]  # (start s, duration s, MIDI key, velocity)


# --- phrases (pure: numbers in, note events out) ---------------------------------------------------


def scale_keys(tonic: int, mode: str, low: int, high: int) -> list[int]:
    """Every key of the scale within [low, high]."""
    steps = SCALES[mode]
    return [k for k in range(low, high + 1) if (k - tonic) % 12 in steps]


def register(rng: random.Random, low: int, high: int) -> tuple[int, int]:
    """A low, middle or high part of the range, at least an octave wide."""
    span = max(12, (high - low) // 2)
    start = rng.choice((low, (low + high - span) // 2, high - span))
    return max(low, start), min(high, max(start, low) + span)


def melodic_phrase(rng: random.Random, low: int, high: int, poly: bool, tonic: int, mode: str) -> list[Event]:
    """A scale, arpeggio, random-walk melody or (polyphonic instruments) block chords filling the clip."""
    lo, hi = register(rng, low, high)
    keys = scale_keys(tonic, mode, lo, hi) or [lo]
    beat = 60.0 / rng.uniform(70, 150)
    base = rng.randint(50, 115)
    kinds = ["scale", "arpeggio", "melody", "melody"] + (["chords", "chords"] if poly else [])
    kind = rng.choice(kinds)
    events, t, i = [], rng.uniform(0.0, 0.3), rng.randrange(len(keys))
    legato = rng.uniform(0.6, 1.0)
    direction = rng.choice((-1, 1))
    while t < CLIP_SECONDS - 0.5:
        vel = max(20, min(127, base + rng.randint(-12, 12)))
        if kind == "chords":
            length = beat * rng.choice((2, 4))
            root = rng.randrange(max(1, len(keys) - 4))
            chord = [keys[min(root + s, len(keys) - 1)] for s in (0, 2, 4)] + ([keys[min(root + 7, len(keys) - 1)]] if rng.random() < 0.4 else [])
            events += [(t, length * legato, k, vel) for k in sorted(set(chord))]
        else:
            length = beat * (rng.choice((0.5, 1.0, 1.0, 1.5, 2.0)) if kind == "melody" else rng.choice((0.25, 0.5)))
            events.append((t, length * legato, keys[i], vel))
            step = {"scale": 1, "arpeggio": 2}.get(kind) or rng.choice((-2, -1, -1, 1, 1, 2, rng.randint(-4, 4)))
            step = step * direction if kind != "melody" else step
            if not 0 <= i + step < len(keys):
                direction, step = -direction, -step
            i = max(0, min(len(keys) - 1, i + step))
        t += length
    return events


def percussion_phrase(rng: random.Random, notes: tuple[int, ...]) -> list[Event]:
    """Rhythms on a 16th grid (with occasional rolls) using the instrument's sounds."""
    sixteenth = 60.0 / rng.uniform(80, 150) / 4
    density = rng.uniform(0.3, 0.8)
    base = rng.randint(55, 120)
    pattern = [rng.random() < density for _ in range(16)]
    pattern[0] = True
    events, step = [], 0
    while step * sixteenth < CLIP_SECONDS - 0.3:
        bar_roll = rng.random() < 0.1 and step % 16 == 0
        for s in range(16):
            t = (step + s) * sixteenth
            if t >= CLIP_SECONDS - 0.3:
                break
            if bar_roll or pattern[s]:
                accent = 15 if s % 4 == 0 else 0
                key = notes[0] if s % 4 == 0 or len(notes) == 1 else rng.choice(notes)
                events.append((t, sixteenth, key, max(20, min(127, base + accent + rng.randint(-15, 10)))))
        step += 16
    return events


def kit_phrase(rng: random.Random) -> list[Event]:
    """Kick / snare / hi-hat beats (rock, shuffle-ish, half-time, four-on-the-floor) with tom fills."""
    sixteenth = 60.0 / rng.uniform(75, 170) / 4
    style = rng.choice(("rock", "four", "half", "busy"))
    hat = rng.choice((42, 42, 44, 46, 51))  # closed / pedal / open hi-hat, ride
    kick = {"rock": (0, 8, 10), "four": (0, 4, 8, 12), "half": (0, 10), "busy": (0, 3, 8, 11, 14)}[style]
    snare = {"rock": (4, 12), "four": (4, 12), "half": (8,), "busy": (4, 12, 15)}[style]
    hats = range(0, 16, rng.choice((1, 2, 2, 4)))
    events, bar, base = [], 0, rng.randint(70, 115)
    while bar * 16 * sixteenth < CLIP_SECONDS - 0.3:
        fill = bar % 4 == 3 and rng.random() < 0.6
        for s in range(16):
            t = (bar * 16 + s) * sixteenth
            if t >= CLIP_SECONDS - 0.3:
                break
            v = lambda d=0: max(20, min(127, base + d + rng.randint(-10, 10)))  # noqa: E731
            if fill and s >= 8:
                events.append((t, sixteenth, rng.choice((50, 48, 47, 45, 43, 41)), v(5)))
                continue
            if s in kick:
                events.append((t, sixteenth, 36, v(10)))
            if s in snare:
                events.append((t, sixteenth, 38, v(5)))
            if s in hats:
                events.append((t, sixteenth, hat, v(-20 if s % 4 else -5)))
        if bar % 4 == 0:
            events.append((bar * 16 * sixteenth, sixteenth, 49, base))  # crash on the phrase
        bar += 1
    return events


def accompaniment_phrase(rng: random.Random, name: str, tonic: int, mode: str) -> list[Event]:
    """Chords of a common progression in the clip's key (bass: roots; kit: a beat)."""
    _, kind, _, _, low, high, _ = INSTRUMENTS[name]
    if kind == "kit":
        return kit_phrase(rng)
    steps, beat = SCALES[mode], 60.0 / rng.uniform(70, 130)
    progression, events, t, bar = rng.choice(PROGRESSIONS), [], 0.0, 0
    vel = rng.randint(50, 90)
    while t < CLIP_SECONDS - 0.5:
        degree = progression[bar % len(progression)]
        root = tonic + steps[degree]
        if name == "finger bass":
            base = low + (root - low) % 12
            events += [(t + b * beat, beat * 0.9, base + (7 if b == 2 else 0), vel) for b in range(4)]
        else:
            mid = (low + high) // 2
            base = mid - 6 + (root - (mid - 6)) % 12
            chord = [base + steps[(degree + s) % 7] - steps[degree] + (12 if degree + s >= 7 else 0) for s in (0, 2, 4)]
            if name == "nylon guitar":  # arpeggiated
                events += [(t + b * beat / 2, beat, chord[b % 3] + (12 if b >= 6 else 0), vel) for b in range(8)]
            else:
                events += [(t, beat * 3.8, k, vel) for k in chord]
        t, bar = t + 4 * beat, bar + 1
    return events


def phrase(rng: random.Random, name: str, tonic: int, mode: str) -> list[Event]:
    _, kind, _, _, low, high, poly = INSTRUMENTS[name]
    if kind == "kit":
        return kit_phrase(rng)
    if kind == "perc":
        return percussion_phrase(rng, PERCUSSION_NOTES[name])
    return melodic_phrase(rng, low, high, poly, tonic, mode)


# --- signal (numpy) ------------------------------------------------------------------------------


def silent(x: np.ndarray, rate: int = RATE) -> bool:
    """True when there is (almost) nothing to hear: peak below SILENCE_PEAK, or fewer than
    SILENCE_ACTIVE_FRACTION of 50 ms frames within 40 dB of the loudest frame."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or np.max(np.abs(x)) < SILENCE_PEAK:
        return True
    hop = max(1, rate // 20)
    frames = x[: len(x) // hop * hop].reshape(-1, hop) if len(x) >= hop else x[None, :]
    rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-12
    return float(np.mean(20 * np.log10(rms / rms.max()) > -40.0)) < SILENCE_ACTIVE_FRACTION


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-12


def room(x: np.ndarray, rng: random.Random, kind: str) -> np.ndarray:
    """x in a synthetic room: exponentially decaying noise (RT60 drawn from ROOMS) mixed at a drawn wet level."""
    if ROOMS[kind] is None:
        return x
    (rt_lo, rt_hi), (wet_lo, wet_hi) = ROOMS[kind]
    rt60 = rng.uniform(rt_lo, rt_hi)
    n = int(rt60 * RATE)
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(n)
    tail = noise * np.exp(-6.9 * np.arange(n) / n)  # -60 dB at RT60
    tail[: int(0.01 * RATE)] = 0.0  # 10 ms pre-delay
    size = 1 << (len(x) + n - 1).bit_length()  # linear (not circular) convolution by FFT
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(tail, size), size)[: len(x)]
    return x + wet * (rng.uniform(wet_lo, wet_hi) * rms(x) / rms(wet))


def render_part(synth, sfid: int, name: str, events: list[Event], channel: int, kit: int | None = None) -> np.ndarray:
    """One instrument's events → mono float32 of CLIP_SECONDS (a discarded warm-up note first); kit: another
    drum kit than the class's preset."""
    _, kind, bank, preset, *_ = INSTRUMENTS[name]
    drums = kind != "melodic"
    channel = DRUM_CHANNEL if drums else channel
    synth.program_select(channel, sfid, bank, preset if kit is None else kit, is_drums=drums)
    synth.noteon(channel, 60, 1)  # warm-up: a fresh synth may sound its first note near-silent
    synth.generate(RATE // 10)
    synth.sounds_off()
    synth.generate(RATE // 5)
    total = int(CLIP_SECONDS * RATE)
    timeline = sorted([(int(s * RATE), 1, k, v) for s, d, k, v in events]
                      + [(int((s + d) * RATE), 0, k, 0) for s, d, k, v in events])
    out, at = [], 0
    for when, on, key, vel in timeline:
        when = min(when, total)
        if when > at:
            out.append(np.frombuffer(synth.generate(when - at), dtype=np.float32))
            at = when
        if on and when < total:
            synth.noteon(channel, key, vel)
        elif not on and not drums:
            synth.noteoff(channel, key)
    if at < total:
        out.append(np.frombuffer(synth.generate(total - at), dtype=np.float32))
    synth.sounds_off()
    synth.generate(RATE // 5)  # let the voices end before the next part
    stereo = np.concatenate(out).reshape(-1, 2)
    return stereo.mean(axis=1).astype(np.float32)


# --- the set -------------------------------------------------------------------------------------


def clip_plan(name: str, index: int) -> dict:
    """Everything random about one clip, from its own seed."""
    rng = random.Random(f"{SEED}/{name}/{index}")
    plan = {"rng": rng, "tonic": rng.randrange(12), "mode": rng.choice(tuple(SCALES)),
            "room": rng.choice(tuple(ROOMS)), "loudness": rng.uniform(*LOUDNESS_DB_RANGE)}
    kind = INSTRUMENTS[name][1]
    others = [a for a in ACCOMPANIMENT if a != name and not (kind != "melodic" and a == "drum kit")]
    mixed = rng.random() < MIXED_FRACTION
    plan["accomp"] = rng.choice(others) if mixed else None
    plan["accomp_db"] = rng.uniform(*ACCOMP_DB_RANGE) if mixed else None
    if kind == "kit":
        plan["kit"] = rng.choice(KITS)
    return plan


def render_clip(synth, sfid: int, name: str, index: int) -> tuple[np.ndarray | None, str]:
    """(clip or None when silent, title) of one class's index-th clip."""
    plan = clip_plan(name, index)
    rng = plan["rng"]
    events = phrase(rng, name, plan["tonic"], plan["mode"])
    fg = render_part(synth, sfid, name, events, channel=0, kit=plan.get("kit"))
    key = f"{'C C# D D# E F F# G G# A A# B'.split()[plan['tonic']]} {plan['mode']}"
    title = f"{name}, {key}, {plan['room']}"
    if "kit" in plan:
        title = f"{name} ({synth.sfpreset_name(sfid, 128, plan['kit']) or plan['kit']}), {plan['room']}"
    if silent(fg):
        return None, title
    mix = fg
    if plan["accomp"]:
        bg = render_part(synth, sfid, plan["accomp"], accompaniment_phrase(rng, plan["accomp"], plan["tonic"], plan["mode"]), channel=1)
        if not silent(bg):
            mix = fg + bg * (rms(fg) / rms(bg) * 10 ** (-plan["accomp_db"] / 20))
            title += f", with {plan['accomp']} at -{plan['accomp_db']:.0f} dB"
    mix = room(mix, rng, plan["room"])
    mix = mix * (10 ** (plan["loudness"] / 20) / rms(mix))
    mix = mix * min(1.0, PEAK_LIMIT / float(np.max(np.abs(mix))))
    return mix.astype(np.float32), title


def find_soundfont(path: str | None) -> tuple[str, str, str]:
    """(path, package, licence) of the SoundFont to use; SystemExit with the install command when there is none."""
    if path:
        if not Path(path).is_file():
            raise SystemExit(f"build_rendered_instruments: {path}: no such SoundFont")
        known = {p: (pkg, lic) for p, pkg, lic in SOUNDFONTS}
        return (path, *known.get(path, (Path(path).name, "see the SoundFont's own licence")))
    for candidate in SOUNDFONTS:
        if Path(candidate[0]).is_file():
            return candidate
    raise SystemExit("build_rendered_instruments: no General MIDI SoundFont: sudo apt-get install fluid-soundfont-gm "
                     "(or musescore-general-soundfont)")


def build(out: Path, names: list[str], per_class: int, soundfont: str | None = None, log=print) -> Path:
    import soundfile
    from build_music_sets import Entry, package_version, write_manifest  # recipes/ (the manifest's one writer)

    from zstag.paths import atomic_write

    try:
        import tinysoundfont
    except ImportError:
        raise SystemExit("build_rendered_instruments: the renderer is missing: pip install --no-deps tinysoundfont") from None
    sf_path, package, licence = find_soundfont(soundfont)
    folder = out / SET_NAME
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    started = time.time()
    synth = tinysoundfont.Synth(samplerate=RATE)
    sfid = synth.sfload(sf_path)
    log(f"{SET_NAME}: {sf_path} loaded in {time.time() - started:.0f} s")
    rows, dropped, started = [], [], time.time()
    for name in names:
        try:
            synth.program_select(0, sfid, *INSTRUMENTS[name][2:4], is_drums=INSTRUMENTS[name][1] != "melodic")
        except RuntimeError as exc:  # a SoundFont without this preset: skip the class, keep the others
            log(f"{SET_NAME}: {name}: skipped: {exc}")
            continue
        preset = synth.sfpreset_name(sfid, *INSTRUMENTS[name][2:4]) or name
        for index in range(per_class):
            clip, title = render_clip(synth, sfid, name, index)
            if clip is None:
                dropped.append(f"{name} {index}")
                continue
            relative = f"audio/{name.replace(' ', '_')}-{index:03d}.ogg"
            buffer = io.BytesIO()
            soundfile.write(buffer, clip, RATE, format="OGG", subtype="VORBIS")
            atomic_write(folder / relative, buffer.getvalue())
            rows.append(Entry(relative, INSTRUMENTS[name][0], f"tinysoundfont {preset}", title, package, licence))
    manifest = write_manifest(folder, rows)
    info = {"set": SET_NAME, "soundfont": sf_path, "package": package, "version": package_version(package),
            "soundfont_sha256": hashlib.sha256(Path(sf_path).read_bytes()).hexdigest(),
            "renderer": f"tinysoundfont {getattr(tinysoundfont, '__version__', '')}".strip(), "seed": SEED,
            "per_class": per_class, "classes": names, "clips": len(rows), "dropped_silent": dropped,
            "rate": RATE, "clip_seconds": CLIP_SECONDS}
    atomic_write(folder / "source.json", json.dumps(info, indent=2).encode())
    log(f"{SET_NAME}: {len(rows)} clips ({len(dropped)} silent dropped) in {time.time() - started:.0f} s → {manifest}")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render labelled instrument clips from a General MIDI SoundFont.")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <zstag cache>/sets)")
    parser.add_argument("--per-class", type=int, default=PER_CLASS, help=f"clips per class (default {PER_CLASS})")
    parser.add_argument("--classes", default=None, help="comma-separated classes (default: all; see --list)")
    parser.add_argument("--soundfont", default=None, help="an .sf2/.sf3 file (default: the first installed of "
                        + ", ".join(p for p, *_ in SOUNDFONTS) + ")")
    parser.add_argument("--list", action="store_true", help="print class, GM bank:preset and labels; render nothing")
    args = parser.parse_args(argv)
    if args.list:
        for name, (labels, kind, bank, preset, *_) in INSTRUMENTS.items():
            notes = ",".join(map(str, PERCUSSION_NOTES.get(name, ())))
            print(f"{name}\t{kind}\t{bank}:{preset}{' keys ' + notes if notes else ''}\t{labels}")
        return 0
    names = [n.strip() for n in args.classes.split(",")] if args.classes else list(INSTRUMENTS)
    unknown = [n for n in names if n not in INSTRUMENTS]
    if unknown or args.per_class < 1:
        problem = f"unknown class(es) {', '.join(unknown)} (see --list)" if unknown else "--per-class must be ≥ 1"
        print(f"build_rendered_instruments: {problem}", file=sys.stderr)
        return 2
    if args.out is None:
        from zstag.paths import cache_dir

        args.out = cache_dir() / "sets"
    try:
        build(args.out, names, args.per_class, args.soundfont)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
