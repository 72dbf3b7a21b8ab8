"""A small genre check on real recordings: the ten GTZAN genre words scored together (#16).

No genre-labelled audio can be installed here, so the check is built from what is: the team's dance songs whose
artist's genre is common knowledge (the written table below: mostly country, some jazz, pop, rock, hip-hop and
disco), and the Frets on Fire song packs from Debian (`fretsonfire-songs-muldjord`, a Danish metal band, CC-BY-SA-3.0;
`fretsonfire-songs-sectoid`, heavy guitar instrumentals, MIT-style licence: metal or rock). Labels come from the
artist, never from listening or from a model's output. It is small and skewed towards country and metal: a check
that a scoring change does not break genres, not a figure of genre accuracy.

Used by experiments/teacher_hybrid.py (`--genres`); nothing ships from here.
"""
from __future__ import annotations

from pathlib import Path

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")

# artist (as in ../shared/data/dance/manifest.csv) → the genre words it counts as right
ARTIST_GENRES = {
    **{a: "country" for a in (
        "Blake Shelton", "Diamond Rio", "George Strait", "Hank Williams, Jr.", "Olivia Lane", "Jon Pardi",
        "Josh Turner", "Kenny Chesney", "Thomas Rhett", "Big & Rich", "Joe Nichols", "Luke Bryan",
        "Shelly Fairchild", "Sugarland", "Tim McGraw", "Toby Keith", "Vince Gill", "Zach Bryan", "Collin Raye",
        "Jennifer Nettles", "Greg Bates", "Midland", "Alan Jackson", "Shania Twain", "Brooks & Dunn",
        "Tracy Lawrence", "Zac Brown Band, Jimmy Buffett")},
    **{a: "jazz" for a in (
        "Frank Sinatra", "Lou Rawls", "Peggy Lee", "BBC Big Band", "George Gee And The Jump Jivin' Wailers",
        "The Speakeasy Three", "Big Bad Voodoo Daddy", "Henry Mancini", "Scott Bradlee's Postmodern Jukebox")},
    **{a: "rock" for a in ("Queen", "Stray Cats", "Little Richard")},
    **{a: "pop" for a in ("Christina Aguilera", "Whitney Houston", "Billie Eilish", "Paulina Rubio")},
    "Tinie Tempah, Zara Larsson": "hiphop;pop",
    "Tkay Maidza": "hiphop",
    "Earth, Wind & Fire": "disco",
}

FOF_ROOT = Path("/usr/share/games/fretsonfire/data/songs")
FOF_PACKS = {"muldjord": "metal", "sectoid": "metal;rock"}


def dance_rows(rows: list[dict]) -> list[dict]:
    """The dance manifest rows whose artist is in the table, relabelled with its genre words."""
    return [{**r, "labels": ARTIST_GENRES[r["artist"]].split(";")} for r in rows if r["artist"] in ARTIST_GENRES]


def fof_rows() -> list[dict]:
    """One row per installed Frets on Fire song (its mixed song.ogg), labelled by its pack; [] when absent."""
    rows = []
    for pack, labels in FOF_PACKS.items():
        for song in sorted((FOF_ROOT / pack).glob("*/song.ogg")):
            rows.append({"id": f"{pack}/{song.parent.name}", "path": str(song), "labels": labels.split(";"),
                         "artist": pack, "title": song.parent.name, "kind": ""})
    return rows
