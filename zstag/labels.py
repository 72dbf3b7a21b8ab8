"""Label text: the labels a user gives (--labels, --labels-file) and their canonical spelling.

`normalise_label`: Unicode NFKC, lower case, `_` and runs of whitespace → one space, spaces around `-`
removed; `&`, `+`, a lone `n` and `'n'` between words → "and" (but `&` between two single letters stays:
"r&b", "q&a"); decades "1980s", "1980's", "'80s", "80's" → "80s" (1920s-1990s only; "2000s", "2010s"
stay, since "00s"/"10s" are rare and ambiguous). Labels that normalise the same are one label. Function
words (left out of a composed label's vector) and negation words ("no vocals") are named here; how a
label becomes a vector is words.WordVectors.phrase.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from pathlib import Path
from typing import Callable

from zstag.errors import UsageError

FUNCTION_WORDS = frozenset({"and", "of", "the", "a", "an", "in", "on", "with", "for", "to", "or"})
NEGATIONS = frozenset({"no", "not", "without"})  # "no vocals" denies "vocals" (WordVectors.negated)
# "not not sad" is "sad"; a longer run of negations is not language, and each one read costs a pass over the label.
MAX_DENIALS = 4


class LabelsError(UsageError, ValueError):
    """No labels given, or an unreadable labels file (one line)."""


_DECADE = re.compile(r"^(?:19|')?([2-9]0)'?s$")
_SPLIT = re.compile(r"[\s\-/]+")  # words of a composed label: "pop/rock" → pop, rock


def normalise_label(label: str) -> str:
    """Canonical spelling of a label (see the module docstring for the rules)."""
    s = unicodedata.normalize("NFKC", label).casefold()
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("_", " ")
    s = re.sub(r"\s*-\s*", "-", s)
    s = re.sub(r"(?<=\w)\s*'n'?\s*(?=\w)", " and ", s)  # rock'n'roll, rock 'n' roll
    s = re.sub(r"(?<=\w)(\s+|-)n\1(?=\w)", r"\1and\1", s)  # drum n bass, drum-n-bass
    s = re.sub(r"(?<=\w)\s*\+\s*(?=\w)", " and ", s)  # rock + roll (but "c++" stays)
    s = _normalise_ampersand(s)
    tokens = []
    for token in s.split():
        parts = [_DECADE.sub(r"\1s", part) for part in token.split("-")]
        tokens.append("-".join(p for p in parts if p))
    return " ".join(t for t in tokens if t)


def _normalise_ampersand(s: str) -> str:
    # "&" between two single letters is an abbreviation (r&b, q&a, b&w): keep it.
    out = []
    for token in s.split():
        if re.fullmatch(r"[^\W\d_]&[^\W\d_]", token):
            out.append(token)
        else:
            out.append(token.replace("&", " and "))
    return " ".join(out)


def parse_labels(values: list[str] | None, labels_file: str | os.PathLike | None = None) -> list[str]:
    """Labels from comma-separated --labels values (CSV quoting allowed) and a one-per-line file.

    In a --labels value a line break separates labels as a comma does (each line is its own CSV row,
    so a quoted label cannot span lines). The file is UTF-8, a leading byte-order mark ignored; "#"
    starts a comment. Labels that normalise the same ("Hip-Hop", "hip - hop "; "Hip Hop", "hip_hop") are
    kept once, first spelling wins. "hip hop" and "hip-hop" do not normalise the same and are both kept:
    word vectors give them the same vector, the random-label baseline (and `zstag eval`) two labels.
    LabelsError when a value cannot be parsed or is not UTF-8, the file cannot be read or no label is left.
    """
    labels = []
    for value in values or []:
        try:
            for row in csv.reader(value.splitlines(), skipinitialspace=True):
                labels += [field.strip() for field in row]
        except csv.Error as exc:  # a field over csv's size limit
            raise LabelsError(f"--labels: {exc}") from None
    if labels_file is not None:
        try:
            text = Path(labels_file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            cause = getattr(exc, "strerror", None) or exc
            raise LabelsError(f"{labels_file}: cannot read labels file: {cause}") from None
        labels += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    unique, seen = [], set()
    for label in labels:
        try:
            label.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes in an argument (os.fsdecode's lone surrogates)
            shown = label.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise LabelsError(f'--labels: "{shown}" is not UTF-8 text') from None
        key = normalise_label(label) if label else ""
        if key and key not in seen:
            seen.add(key)
            unique.append(label)
    if not unique:
        raise LabelsError("no labels: give --labels a,b,... and/or --labels-file FILE")
    return unique


def undenied(label: str, negated: Callable[[str], str | None], trained: Callable[[str], bool]) -> tuple[int, str]:
    """(sign, what): the label stands for sign × the label ``what``. negated(label): what a label denies, or
    None (WordVectors.negated); trained(label): the model knows the label itself, so it is not undone ("no
    vocals" as a training label). "no vocals" → (-1, "vocals"), "not not sad" → (1, "sad"). At most MAX_DENIALS
    negations are undone: "not " * 1000 + "sad" would cost 1000 passes over 1000 words."""
    sign = 1
    for _ in range(MAX_DENIALS):
        denied = negated(label)
        if denied is None or trained(label):
            break
        sign, label = -sign, denied
    return sign, label


def training_spellings(train_labels: list[str], labels: list[str]) -> dict[str, tuple[str, str, str]]:
    """label → (its untrained word, the training label that is its singular or plural, the label to type
    instead), compared as normalised spellings: "vocal" → ("vocal", "vocals", "vocals"), "female vocal" →
    ("female vocal", "female vocals", "female vocals"), and for a negation the word it denies: "no vocal" →
    ("vocal", "vocals", "no vocals"). Only for labels not among train_labels (a model's: modelfile.train_labels).
    A hint for the user (zstag tag prints it), never a substitution: "blue" is not "blues". The trained map
    places such pairs far apart although their word vectors are close (MODEL_CARD.md: "vocal" and "vocals"
    have cosine 0.80 in GloVe, 0.04 in the default model's joint space)."""
    trained = {normalise_label(label): label for label in train_labels}
    sizes = {len(norm.split()) for norm in trained}  # an inflection has as many words as the label
    given = {label: normalise_label(label) for label in labels}
    hints = {}
    for label, norm in given.items():
        words = norm.split()
        negation = len(words) > 1 and words[0] in NEGATIONS and norm not in trained
        head, rest = (words[0] + " ", " ".join(words[1:])) if negation else ("", norm)
        if rest in trained or len(rest.split()) not in sizes:  # and a 20k-word label made 40k copies of itself
            continue
        variant = next((v for v in inflections(rest) if v in trained), None)
        if variant is not None and head + variant not in given.values():  # "vocal" beside "vocals": both given
            hints[label] = (rest, trained[variant], head + variant)
    return hints


def inflections(label: str) -> list[str]:
    """The label with one of its words in the other number: "vocal" ↔ "vocals", "box" ↔ "boxes", "melody" ↔
    "melodies" (English plural only; good enough for a hint)."""
    words = label.split()
    out = []
    for i, word in enumerate(words):
        forms = [word + "s", word + "es"]
        if word.endswith("ies"):
            forms.append(word[:-3] + "y")
        if word.endswith("es"):
            forms.append(word[:-2])
        if word.endswith("s") and not word.endswith("ss"):
            forms.append(word[:-1])
        if word.endswith("y"):
            forms.append(word[:-1] + "ies")
        out += [" ".join(words[:i] + [form] + words[i + 1:]) for form in forms if form]
    return out
