"""Build extra real-audio training sets from installed Debian packages (never by hand).

    python recipes/build_music_sets.py [--out FOLDER] [--sets wesnoth,nexuiz,...] [--animal-labels species|coarse] [--list]

Each set reads the files of one installed package, extracts what is packed (``.pk3`` = zip, GCompris
``.rcc`` = Qt resource archive) or assembles what is too short (KLettres syllables) into
``FOLDER/<set>/audio/``, and writes ``FOLDER/<set>/manifest.csv`` with the columns
path,labels,artist,title,package,licence (labels separated by ``;``; paths relative to the manifest,
or absolute for files used in place under /usr/share). FOLDER defaults to ``zstag.paths.cache_dir()/sets``.
Nothing is installed here: a missing package is reported with the apt-get command that installs it,
and the other sets are still built. Reruns rewrite the manifests and reuse extracted files.

Labels are coarse and defensible at package or track level (a game soundtrack is "soundtrack"; one
made with trackers is also "electronic"; Wesnoth's is orchestral); the backbones' own tag predictions
(teacher labels, zstag.teacher) do the fine work. ``artist`` is the composer where the package names
one, else the package, so that development splits keep a composer's tracks together. The animal
recordings (tuxpaint-animals) are labelled with their species (``--animal-labels species``) or only with class
words and words another set already has (``coarse``); source.json records which. Licences come
from each package's /usr/share/doc/<package>/copyright (and the files it points to).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from zstag.paths import atomic_write

MIN_MUSIC_SECONDS = 20.0  # shorter music files are jingles/stingers (victory, defeat, silence)
SPEECH_CLIP_SECONDS = 12.0  # KLettres items are ~1.7 s: concatenate them into utterance-like clips
SPEECH_GAP_SECONDS = 0.12
SPEECH_CLIPS_PER_FOLDER = 2
SPEECH_RATE = 22050
MANIFEST_COLUMNS = ("path", "labels", "artist", "title", "package", "licence")
SEED = 0


@dataclass(frozen=True)
class Entry:
    path: str  # absolute, or relative to the set folder
    labels: str  # ";"-separated
    artist: str
    title: str
    package: str
    licence: str


class SetUnavailable(Exception):
    """A package that is not installed (message: the apt-get command)."""


def installed(package: str, probe: Path) -> None:
    if not probe.exists():
        raise SetUnavailable(f"{package} is not installed: sudo apt-get install {package}")


def audio_seconds(path: Path) -> float | None:
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except Exception:
        return None


def title_of(name: str) -> str:
    return Path(name).stem.replace("_", " ").replace("-", " ").strip()


def music_files(package: str, folder: Path, pattern: str = "*.ogg", recursive: bool = False) -> Iterator[Path]:
    """The package's files under folder matching pattern, sorted, that last at least MIN_MUSIC_SECONDS."""
    installed(package, folder)
    for path in sorted(folder.rglob(pattern) if recursive else folder.glob(pattern)):
        if (audio_seconds(path) or 0) >= MIN_MUSIC_SECONDS:
            yield path


# --- plain files used in place -------------------------------------------------------------------


def wesnoth(out: Path) -> Iterator[Entry]:
    package, folder = "wesnoth-1.16-music", Path("/usr/share/games/wesnoth/1.16/data/core/music")
    for path in music_files(package, folder):
        yield Entry(str(path), "soundtrack;orchestral", "wesnoth", title_of(path.name), package, "GPL-2+")


def warzone2100(out: Path) -> Iterator[Entry]:
    package, folder = "warzone2100-music", Path("/usr/share/games/warzone2100/music/albums")
    installed(package, folder)
    for album in sorted(folder.glob("*/album.json")):
        meta = json.loads(album.read_text(encoding="utf-8"))
        licence = "CC-BY-SA-3.0+ or GPL-2+" if (album.parent / "license.txt").exists() else "GPL-2+"
        for track in meta.get("tracks", []):
            path = album.parent / track["filename"]
            if path.exists() and (audio_seconds(path) or 0) >= MIN_MUSIC_SECONDS:
                artist = track.get("author") or meta.get("author") or package
                # track3_enhanced is derived from the GPL original soundtrack (license.txt says so)
                this = "GPL-2+" if "enhanced" in path.stem and "track3" in path.stem else licence
                yield Entry(str(path), "soundtrack", artist, track.get("title") or title_of(path.name), package, this)


def singularity(out: Path) -> Iterator[Entry]:
    package, folder = "singularity-music", Path("/usr/share/games/singularity/music")
    for path in music_files(package, folder, "*.ogg", recursive=True):
        # README: composed in the trackers Psycle and Renoise
        yield Entry(str(path), "soundtrack;electronic", "Max McCracken", title_of(path.name), package, "CC-BY-SA-3.0")


def asc(out: Path) -> Iterator[Entry]:
    package, folder = "asc-music", Path("/usr/share/games/asc/music")
    installed(package, folder)
    for path in sorted(folder.glob("*.mp3")):
        yield Entry(str(path), "soundtrack", "Michael Kievernagel", title_of(path.name), package, "GPL-2+")


HYPERROGUE_COMPOSERS = {"hr3-": "Shawn Parrotte", "hr-savino-": "Will Savino", "hr-domina-": "Lincoln Domina"}


def hyperrogue(out: Path) -> Iterator[Entry]:
    package, folder = "hyperrogue-music", Path("/usr/share/hyperrogue/music")
    for path in music_files(package, folder):
        composer = next((c for prefix, c in HYPERROGUE_COMPOSERS.items() if path.name.startswith(prefix)), package)
        yield Entry(str(path), "soundtrack", composer, title_of(path.name), package, "CC-BY-SA-3.0")


def lincity(out: Path) -> Iterator[Entry]:
    package, folder = "lincity-ng-data", Path("/usr/share/games/lincity-ng/music")
    for path in music_files(package, folder, "*.ogg", recursive=True):  # "NN - Composer - Title.ogg"
        parts = [x.strip() for x in path.stem.split(" - ")]
        composer, title = (parts[1], " - ".join(parts[2:])) if len(parts) >= 3 else (package, title_of(path.name))
        yield Entry(str(path), "soundtrack", composer, title, package, "GPL-2+")


def drascula(out: Path) -> Iterator[Entry]:
    # the CD soundtrack of the adventure game (recorded music); the language folders hold the same files
    package, folder = "drascula-music", Path("/usr/share/scummvm/drascula/audio")
    for path in music_files(package, folder):
        yield Entry(str(path), "soundtrack", "Alcachofa Soft", title_of(path.name), package,
                    "Drascula-License (freeware, BSD-like; debian/copyright)")


def planetblupi(out: Path) -> Iterator[Entry]:
    package, folder = "planetblupi-music-ogg", Path("/usr/share/planetblupi/music")
    for path in music_files(package, folder):
        yield Entry(str(path), "soundtrack", "planetblupi", title_of(path.name), package, "GPL-3+")


# Tux Paint stamp sounds: real animal recordings (0.3-8 s), one per stamp; file stem → labels. Every file of
# animals/birds is a bird; the species word is kept where GloVe has it ("tucan" → toucan, "nandou" → rhea).
TUXPAINT_ANIMALS = {
    "birds/blackbird": "blackbird;bird;animal", "birds/crow": "crow;bird;animal", "birds/cuckoo": "cuckoo;bird;animal",
    "birds/drake": "duck;bird;animal", "birds/duck": "duck;bird;animal", "birds/gander": "goose;bird;animal",
    "birds/hen": "chicken;bird;animal", "birds/heron_greatblue_flying": "heron;bird;animal",
    "birds/lark": "lark;bird;animal", "birds/nandou": "rhea;bird;animal", "birds/owl": "owl;bird;animal",
    "birds/penguin": "penguin;bird;animal", "birds/quetzal": "quetzal;bird;animal",
    "birds/rooster": "rooster;chicken;bird;animal", "birds/seagull": "seagull;bird;animal",
    "birds/tucan": "toucan;bird;animal", "birds/turkey": "turkey;bird;animal", "birds/vulture": "vulture;bird;animal",
    "insects/bee": "bee;insect;animal", "insects/grasshopper": "grasshopper;insect;animal",
    "insects/hornet": "hornet;insect;animal", "insects/mosquito": "mosquito;insect;animal",
    "amphibians/frog": "frog;animal", "lizards/iguana": "iguana;lizard;animal",
    "mammals/apes/chimp": "chimpanzee;animal", "mammals/apes/gorilla": "gorilla;animal",
    "mammals/aquatic/dolphin": "dolphin;animal", "mammals/aquatic/orca": "orca;whale;animal",
    "mammals/aquatic/sea_lion": "seal;animal", "mammals/aquatic/whale": "whale;animal",
    "mammals/badger": "badger;animal", "mammals/bears/bear": "bear;animal", "mammals/bovines/bison": "bison;animal",
    "mammals/bovines/bull": "bull;cow;animal", "mammals/bovines/cow": "cow;animal", "mammals/bovines/cow_white": "cow;animal",
    "mammals/bovines/goat": "goat;animal", "mammals/bovines/mountaingoat": "goat;animal",
    "mammals/bovines/ram": "sheep;animal", "mammals/bovines/sheep": "sheep;animal",
    "mammals/bovines/sheep_lamb": "lamb;sheep;animal", "mammals/camel/camel": "camel;animal",
    "mammals/camel/dromedary": "camel;animal", "mammals/cats/lion": "lion;animal", "mammals/cats/tiger": "tiger;animal",
    "mammals/deer/caribou": "caribou;deer;animal", "mammals/deer/deer": "deer;animal", "mammals/deer/doe": "deer;animal",
    "mammals/dogs/dog": "dog;bark;animal", "mammals/dogs/fox": "fox;animal", "mammals/elephant": "elephant;animal",
    "mammals/equines/donkey": "donkey;animal", "mammals/equines/horse": "horse;animal", "mammals/equines/zebra": "zebra;animal",
    "mammals/ferret": "ferret;animal", "mammals/giraffe": "giraffe;animal", "mammals/hippopotamus": "hippopotamus;animal",
    "mammals/pig": "pig;animal", "mammals/rodents/beaver": "beaver;animal", "mammals/rodents/mouse": "mouse;animal",
    "mammals/rodents/rabbit": "rabbit;animal", "mammals/rodents/squirrel": "squirrel;animal",
    "marsupials/koala": "koala;animal", "marsupials/wombat": "wombat;animal",
}


# Labellings of tuxpaint-animals (--animal-labels). "species": the TUXPAINT_ANIMALS labels as they are (51 species
# words that no other set has). "coarse": only the class words ANIMAL_CLASS_WORDS and the words that the
# gcompris-sounds set already labels (dog, bark, cat, cow, horse, sheep, pig, duck, owl, chicken, frog): no other
# species name (the species stays in the title, the file's stem).
ANIMAL_LABELLINGS = ("species", "coarse")
ANIMAL_LABELLING = "coarse"  # the default model's (species words lowered the dev ROC-AUC; MODEL_CARD.md)
ANIMAL_CLASS_WORDS = ("bird", "insect", "animal")


def coarse_animal_labels(labels: str) -> str:
    """The labels of a TUXPAINT_ANIMALS entry kept by the coarse labelling, in their order."""
    known = set(ANIMAL_CLASS_WORDS) | {w for wanted in GCOMPRIS_SOUNDS.values() for x in wanted.values() for w in x.split(";")}
    return ";".join(w for w in labels.split(";") if w in known)


def tuxpaint_animals(out: Path, labelling: str | None = None) -> Iterator[Entry]:
    """The stamps' own sound effects of animals (not the spoken ``*_desc_*`` descriptions)."""
    labelling = labelling or ANIMAL_LABELLING
    if labelling not in ANIMAL_LABELLINGS:
        raise ValueError(f"unknown animal labelling {labelling!r} (choose from {', '.join(ANIMAL_LABELLINGS)})")
    package, folder = "tuxpaint-stamps-default", Path("/usr/share/tuxpaint/stamps/animals")
    installed(package, folder)
    for stem, labels in TUXPAINT_ANIMALS.items():
        path = folder / f"{stem}.ogg"
        if path.is_file() and audio_seconds(path):
            labels = coarse_animal_labels(labels) if labelling == "coarse" else labels
            yield Entry(str(path), labels, package, title_of(path.name), package, "GPL-2+")


# --- zip archives (.pk3) -------------------------------------------------------------------------


def extract_zip_members(archive: Path, target: Path, suffix: str = ".ogg") -> list[Path]:
    """Unpack the audio members of a zip into target (flat), once; returns the extracted paths."""
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.lower().endswith(suffix):
                continue
            path = target / Path(info.filename).name
            if not path.exists() or path.stat().st_size != info.file_size:
                atomic_write(path, z.read(info))
            paths.append(path)
    return sorted(paths)


def nexuiz(out: Path) -> Iterator[Entry]:
    package, archive = "nexuiz-music", Path("/usr/share/games/nexuiz/data/music.pk3")
    installed(package, archive)
    for path in extract_zip_members(archive, out / "audio"):
        if (audio_seconds(path) or 0) >= MIN_MUSIC_SECONDS:
            yield Entry(f"audio/{path.name}", "soundtrack;electronic", "nexuiz", title_of(path.name), package, "GPL-2+")


# Composer by file-name prefix, from /usr/share/doc/ufoai-music/copyright (other files: the UFO:AI Team)
UFOAI_COMPOSERS = (
    ("Crystan-", "Crystan"), ("David0", "David Reeves"), ("van_", "Manuel Marino"), ("azrael1", "azrael1322"),
    ("karlmacklin", "Karl Macklin"), ("Marine", "ufoai-marine"), ("Psymong", "ufoai-psymong"),
)


def ufoai(out: Path) -> Iterator[Entry]:
    package, archive = "ufoai-music", Path("/usr/share/games/ufoai/base/0music.pk3")
    installed(package, archive)
    licences = _debian_file_licences(package)
    for path in extract_zip_members(archive, out / "audio"):
        if path.name.startswith("dynamictest") or (audio_seconds(path) or 0) < MIN_MUSIC_SECONDS:
            continue
        composer = next((c for prefix, c in UFOAI_COMPOSERS if path.name.startswith(prefix)), "ufoai")
        licence = licences.get(f"base/music/{path.name}", licences.get("*", "GPL-2+"))
        yield Entry(f"audio/{path.name}", "soundtrack", composer, title_of(path.name), package, licence)


def _debian_file_licences(package: str) -> dict[str, str]:
    """File → licence from a machine-readable debian/copyright (stanzas of Files: / License:)."""
    text = Path(f"/usr/share/doc/{package}/copyright").read_text(encoding="utf-8", errors="replace")
    result = {}
    for stanza in text.split("\n\n"):
        files, licence, in_files = [], None, False
        for line in stanza.splitlines():
            if line.startswith("Files:"):
                files, in_files = line[6:].split(), True
            elif line.startswith("License:"):
                licence, in_files = line[8:].strip(), False
            elif in_files and line.startswith(" "):
                files += line.split()
            elif not line.startswith(" "):
                in_files = False
        for name in files:
            if licence:
                result[name] = licence
    return result


# --- GCompris sounds (Qt .rcc resource archives) -------------------------------------------------


def rcc_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(resource path, bytes) of every file in a Qt binary resource (.rcc, format versions 1-3)."""
    data = path.read_bytes()
    if data[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource file")
    version, tree, payload, names = struct.unpack(">4I", data[4:20])
    node = 22 if version >= 2 else 14

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        at = tree + index * node
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        here = name(name_offset) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            for child in range(count):
                yield from walk(first + child, f"{prefix}{here}/")
            return
        (offset,) = struct.unpack(">I", data[at + 10 : at + 14])
        (size,) = struct.unpack(">I", data[payload + offset : payload + offset + 4])
        blob = data[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 1:  # qCompress: 4-byte length, then zlib
            blob = zlib.decompress(blob[4:])
        elif flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not supported")
        yield prefix + here, blob

    yield from walk(0, "")


# file name → labels. Only these activities: the team's dev set (../shared/data/gcompris) comes from
# instruments.rcc and explore_world_music.rcc, which are never read here.
GCOMPRIS_SOUNDS = {
    "explore_farm_animals.rcc": {
        "owl.ogg": "owl;bird;animal", "chickens.ogg": "chicken;bird;animal", "duck.ogg": "duck;bird;animal",
        "dog.ogg": "dog;bark;animal", "cat.ogg": "cat;animal", "cow.ogg": "cow;animal", "horse.ogg": "horse;animal",
        "pig.ogg": "pig;animal", "sheep.ogg": "sheep;animal",
    },
    "memory-sound.rcc": {
        "LRBark_1_LA_cut.ogg": "dog;bark;animal", "LRBark_3_LA_cut.ogg": "dog;bark;animal",
        "LRFrogsInPondDuringStormLACut.ogg": "frog;rain;nature", "LRRain_in_garden_01_LA_cut.ogg": "rain;nature",
        "LRApplauses_1_LA_cut.ogg": "applause;crowd", "LRTrain_slowing_down_01_LA_cut.ogg": "train;noise",
        "LRStartAndStopCarEngine1LACut.ogg": "car;engine;noise", "LRHeart_beat_01_LA.ogg": "heartbeat",
    },
}


def licence_of(path: str, licences: dict[str, str]) -> str:
    """The licence of the most specific debian/copyright Files: pattern that matches path."""
    import fnmatch

    matches = [pattern for pattern in licences if fnmatch.fnmatch(path, pattern)]
    return licences[max(matches, key=len)] if matches else "unknown"


def gcompris_sounds(out: Path) -> Iterator[Entry]:
    package, folder = "gcompris-qt-data", Path("/usr/share/gcompris-qt/rcc")
    installed(package, folder)
    licences = _debian_file_licences(package)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for archive, wanted in GCOMPRIS_SOUNDS.items():
        for resource, blob in rcc_files(folder / archive):
            base = resource.rsplit("/", 1)[-1]
            if base not in wanted:
                continue
            target = out / "audio" / f"{Path(archive).stem}-{base}"
            if not target.exists() or target.stat().st_size != len(blob):
                atomic_write(target, blob)
            activity = Path(archive).stem
            licence = licence_of(resource.removeprefix("/gcompris/"), licences)
            yield Entry(f"audio/{target.name}", wanted[base], f"gcompris-{activity}", title_of(base), package, licence)


# --- KLettres: spoken letters and syllables → utterance-like clips --------------------------------


def klettres_speech(out: Path) -> Iterator[Entry]:
    """Per language and kind (alphabet / syllables), SPEECH_CLIPS_PER_FOLDER clips of ~12 s, each the
    items of that folder (one speaker, real recordings) in a seeded random order with short gaps."""
    import numpy as np
    import soundfile
    import soxr

    package, root = "klettres-data", Path("/usr/share/klettres")
    installed(package, root)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    gap = np.zeros(int(SPEECH_GAP_SECONDS * SPEECH_RATE), np.float32)
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        items = sorted(folder.glob("*.ogg"))
        if len(items) < 5:
            continue
        rng = random.Random(f"{SEED}/{folder.parent.name}/{folder.name}")
        for k in range(SPEECH_CLIPS_PER_FOLDER):
            name = f"{folder.parent.name}-{folder.name}-{k}.wav"
            target = out / "audio" / name
            if not target.exists():
                order = items[:]
                rng.shuffle(order)
                parts, total = [], 0.0
                for item in order:
                    try:
                        signal, rate = soundfile.read(str(item), dtype="float32", always_2d=True)
                    except Exception:
                        continue
                    mono = soxr.resample(signal.mean(axis=1), rate, SPEECH_RATE) if rate != SPEECH_RATE else signal.mean(axis=1)
                    parts += [mono.astype(np.float32), gap]
                    total += len(mono) / SPEECH_RATE + SPEECH_GAP_SECONDS
                    if total >= SPEECH_CLIP_SECONDS:
                        break
                if not parts:
                    continue
                buffer = io.BytesIO()
                soundfile.write(buffer, np.concatenate(parts), SPEECH_RATE, format="WAV", subtype="PCM_16")
                atomic_write(target, buffer.getvalue())
            language = folder.parent.name
            yield Entry(f"audio/{name}", "speech", f"klettres-{language}", f"{language} {folder.name} {k}", package, "GPL-2+")


# --- Asterisk voice prompts: whole spoken sentences (8 kHz telephone recordings) ------------------

ASTERISK_VOICES = {
    "asterisk-core-sounds-en-wav": "en_US_f_Allison",
    "asterisk-core-sounds-fr-wav": "fr_CA_f_June",
    "asterisk-core-sounds-es-wav": "es_MX_f_Allison",
}
ASTERISK_MIN_SECONDS = 4.0  # whole sentences, not single words
ASTERISK_PER_VOICE = 25


def asterisk_speech(out: Path) -> Iterator[Entry]:
    """Per installed voice, ASTERISK_PER_VOICE prompts of at least ASTERISK_MIN_SECONDS (seeded choice)."""
    found = False
    for package, voice in ASTERISK_VOICES.items():
        folder = Path("/usr/share/asterisk/sounds") / voice
        if not folder.is_dir():
            continue
        found = True
        long_enough = [p for p in sorted(folder.rglob("*.wav")) if (audio_seconds(p) or 0) >= ASTERISK_MIN_SECONDS]
        random.Random(f"{SEED}/{voice}").shuffle(long_enough)
        for path in sorted(long_enough[:ASTERISK_PER_VOICE]):
            yield Entry(str(path), "speech", voice, title_of(path.name), package, "CC-BY-SA-3.0")
    if not found:
        raise SetUnavailable(f"no Asterisk voice is installed: sudo apt-get install {' '.join(ASTERISK_VOICES)}")


SETS: dict[str, Callable[[Path], Iterator[Entry]]] = {
    "wesnoth": wesnoth,
    "warzone2100": warzone2100,
    "singularity": singularity,
    "asc": asc,
    "nexuiz": nexuiz,
    "ufoai": ufoai,
    "hyperrogue": hyperrogue,
    "gcompris-sounds": gcompris_sounds,
    "klettres-speech": klettres_speech,
    "asterisk-speech": asterisk_speech,
    "lincity": lincity,
    "drascula": drascula,
    "planetblupi": planetblupi,
    "tuxpaint-animals": tuxpaint_animals,
}
PACKAGES = {
    "wesnoth": "wesnoth-1.16-music", "warzone2100": "warzone2100-music", "singularity": "singularity-music",
    "asc": "asc-music", "nexuiz": "nexuiz-music", "ufoai": "ufoai-music", "hyperrogue": "hyperrogue-music",
    "gcompris-sounds": "gcompris-qt-data", "klettres-speech": "klettres-data",
    "asterisk-speech": "asterisk-core-sounds-en-wav",
    "lincity": "lincity-ng-data", "drascula": "drascula-music", "planetblupi": "planetblupi-music-ogg",
    "tuxpaint-animals": "tuxpaint-stamps-default",
}


def default_out() -> Path:
    from zstag.paths import cache_dir

    return cache_dir() / "sets"


def write_manifest(folder: Path, entries: list[Entry]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows([e.path, e.labels, e.artist, e.title, e.package, e.licence] for e in entries)
    path = folder / "manifest.csv"
    atomic_write(path, buffer.getvalue().encode("utf-8"))
    return path


def package_version(package: str) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout.strip() or None


def build(out: Path, names: list[str], log=print, animal_labels: str | None = None) -> dict[str, Path]:
    """Build the named sets under out; returns set → manifest path for the sets that could be built.
    animal_labels: the labelling of tuxpaint-animals (ANIMAL_LABELLINGS; default ANIMAL_LABELLING)."""
    built = {}
    options = {"tuxpaint-animals": {"labelling": animal_labels or ANIMAL_LABELLING}}
    for name in names:
        folder = out / name
        try:
            entries = list(SETS[name](folder, **options.get(name, {})))
        except SetUnavailable as exc:
            log(f"{name}: skipped: {exc}")
            continue
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            log(f"{name}: skipped: {' '.join(str(exc).split())}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        built[name] = write_manifest(folder, entries)
        info = {"set": name, "package": PACKAGES[name], "version": package_version(PACKAGES[name]),
                "tracks": len(entries), "copyright": f"/usr/share/doc/{PACKAGES[name]}/copyright", **options.get(name, {})}
        atomic_write(folder / "source.json", json.dumps(info, indent=2).encode())
        log(f"{name}: {len(entries)} files → {built[name]}")
    return built


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build training sets from installed Debian packages.")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <zstag cache>/sets)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, from: {', '.join(SETS)}")
    parser.add_argument("--animal-labels", choices=ANIMAL_LABELLINGS, default=ANIMAL_LABELLING,
                        help="tuxpaint-animals: species words, or coarse (class words and words gcompris-sounds has)")
    parser.add_argument("--list", action="store_true", help="list the sets and their packages, build nothing")
    args = parser.parse_args(argv)
    if args.list:
        for name, package in PACKAGES.items():
            print(f"{name}\t{package}\t{'installed' if package_version(package) else 'missing'}")
        return 0
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        print(f"build_music_sets: unknown set(s) {', '.join(unknown)} (choose from {', '.join(SETS)})", file=sys.stderr)
        return 2
    out = args.out or default_out()
    built = build(out, names, animal_labels=args.animal_labels)
    missing = [n for n in names if n not in built]
    if missing:
        packages = " ".join(PACKAGES[n] for n in missing)
        print(f"build_music_sets: not built: {', '.join(missing)}; to build them: sudo apt-get install {packages}",
              file=sys.stderr)
    return 0 if built else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
