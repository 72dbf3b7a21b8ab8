"""recipes/build_mood_sets.py: the title-word table, the harmony it composes, and (where the renderer and a General
MIDI SoundFont are installed; CI installs only pyproject's dependencies) a tiny render through the command line."""

from __future__ import annotations

import csv
import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SCRIPT = RECIPES / "build_mood_sets.py"


def recipe():
    sys.path.insert(0, str(RECIPES))
    spec = importlib.util.spec_from_file_location("build_mood_sets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_title_words_give_one_quadrant_or_none():
    m = recipe()
    assert m.title_quadrant("battle epic") == "angry"
    assert m.title_quadrant("Crystan WinGame") == "happy"  # camelCase split
    assert m.title_quadrant("Crystan IntroSad") == "sad"
    assert m.title_quadrant("silvan sanctuary") == "calm"
    assert m.title_quadrant("northern lights") == "calm"  # a two-word key
    assert m.title_quadrant("Broken Dreams") is None  # sad and calm: left out
    assert m.title_quadrant("wanderer") == "calm" and m.title_quadrant("warfare") == "angry"
    assert m.title_quadrant("main menu") is None


def test_quadrants_are_built_from_major_and_minor_harmony():
    m = recipe()
    major, minor = m.MODES["major"], m.MODES["minor"]
    assert [k % 12 for k in m.triad(0, major, 0, 48)] == [0, 4, 7]  # C major
    assert [k % 12 for k in m.triad(9, minor, 0, 48)] == [9, 0, 4]  # A minor
    assert all(m.QUADRANTS[q]["modes"] == ("major",) for q in ("happy", "calm"))
    assert all("major" not in m.QUADRANTS[q]["modes"] for q in ("sad", "angry"))
    # every chord of a clip is diatonic to its key (+ the angry quadrant's added clusters, none elsewhere)
    for quadrant in m.QUADRANTS:
        plan = m.clip_plan(0, quadrant, 3)
        spec = m.QUADRANTS[quadrant]
        parts = m.compose(random.Random(1), plan, spec, 48, 84, 10.0)
        scale = {(plan["tonic"] + s) % 12 for s in m.MODES[plan["mode"]]}
        off = {k % 12 for _, _, k, _ in parts["chords"]} - scale
        if spec["dissonance"] == 0:
            assert not off
        assert {k % 12 for _, _, k, _ in parts["lead"]} <= scale
        assert all(0 <= t < 10.0 for t, _, _, _ in parts["lead"])


def test_clip_plans_depend_only_on_their_own_seed():
    m = recipe()
    a, b = m.clip_plan(0, "sad", 5), m.clip_plan(0, "sad", 5)
    assert {k: v for k, v in a.items() if k != "rng"} == {k: v for k, v in b.items() if k != "rng"}
    assert m.clip_plan(1, "sad", 5)["lead"] != a["lead"] or m.clip_plan(1, "sad", 5)["tempo"] != a["tempo"]


def test_usage_errors():
    done = subprocess.run([sys.executable, str(SCRIPT), "--sets", "nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown set(s) nope" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("tinysoundfont") is None
                    or not Path("/usr/share/sounds/sf2/FluidR3_GM.sf2").is_file(), reason="no renderer or SoundFont")
def test_render_writes_a_labelled_manifest(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--sets", "moods-rendered",
                           "--per-quadrant", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "moods-rendered" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["labels"] for r in rows) == ["angry", "calm", "happy", "sad"]
    for r in rows:
        assert (tmp_path / "moods-rendered" / r["path"]).stat().st_size > 1000
        assert r["title"].startswith(r["labels"] + ":") and r["licence"]
