"""The two bases of zstag's exceptions, which the CLI maps to exit codes.

``ZstagError``: the run failed (exit 1). ``UsageError``: bad options or inputs given by the user: labels,
a model, word vectors, a device, an output that would replace an input (exit 2). Every exception the library
raises on purpose derives from one of them, so a caller (the CLI, a script using the Python API) catches two
classes, not one per module; str(e) is always one line naming the file or option and the cause.
AudioError lives here too: both decoding (audio.py) and the front end (frontend.py) raise it.

Notices: what a run that goes on should still tell its user (a damaged embedding cache moved aside, decoding
in this process because decoder processes cannot start) reaches the caller's ``notice(text)`` callback, passed
down like ``progress``; the CLI prints each as "zstag: warning: …". Without a callback (the Python API) it is a
``ZstagWarning`` through the warnings module, which a script may show, filter or turn into an error.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

Notice = Callable[[str], None]  # notice(text): one line, without "zstag: warning: "


class ZstagError(Exception):
    """A run that cannot go on (exit code 1)."""


class UsageError(ZstagError):
    """Bad options or inputs (exit code 2)."""


class AudioError(ZstagError):
    """A file that cannot be turned into audio; str(e) is one line, "PATH: cause"."""


class ContentError(AudioError):
    """An AudioError that the file's bytes alone cause (empty, not audio, corrupt, truncated, no samples in
    the span): the same bytes fail the same way every time, so the embedding cache may remember it. A
    missing file, a missing ffmpeg or a killed ffmpeg are plain AudioErrors: the next run may succeed."""


class ZstagWarning(UserWarning):
    """A notice of a run that went on (see the module docstring); str(w) is one line."""


def notify(notice: Optional[Notice], text: str) -> None:
    """text to the caller's notice callback, or, without one, as a ZstagWarning."""
    if notice is not None:
        notice(text)
    else:
        warnings.warn(text, ZstagWarning, stacklevel=3)
