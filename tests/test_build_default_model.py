"""tools/build_default_model.py: the recipe refuses to run without one of its sets (no other sign would tell)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture()
def recipe(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(TOOLS))
    import build_default_model
    import build_music_sets

    adopted = [n for n in build_music_sets.SETS if n not in build_default_model.NOT_ADOPTED_SETS]
    found = {n: tmp_path / n / "manifest.csv" for n in build_default_model.SHARED_SETS + tuple(adopted)}
    monkeypatch.setattr(build_default_model, "find_sets", lambda music_sets=None: dict(found))
    return build_default_model, found, adopted


def test_a_missing_music_set_stops_the_recipe_and_the_side_checks(recipe, capsys, tmp_path):
    # Without the music sets (another ZSTAG_CACHE_DIR) --stage final built another model from a third of the
    # tracks, exit 0; tools/negation_check.py and convex_labels_check.py printed other figures.
    B, found, adopted = recipe
    assert B.missing_sets(found) == []
    del found[adopted[0]]
    assert B.missing_sets(found) == [adopted[0]]
    assert B.main(["--stage", "final", "--out", str(tmp_path / "models")]) == 2
    assert f"missing sets {adopted[0]}: run tools/build_music_sets.py" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
    with pytest.raises(SystemExit, match=f"missing sets {adopted[0]}"):
        next(B.shipped_dev_models(words=None))


def test_not_adopted_sets_are_not_required(recipe):
    B, found, _ = recipe
    assert not set(B.NOT_ADOPTED_SETS) & set(found) and B.missing_sets(found) == []
    del found["dance"]
    assert B.missing_sets(found) == ["dance"]
