"""The two bases of zstag's exceptions, which the CLI maps to exit codes.

``ZstagError``: the run failed (exit 1). ``UsageError``: bad options or inputs given by the user: labels,
a model, word vectors, a device, an output that would replace an input (exit 2). Every exception the library
raises on purpose derives from one of them, so a caller (the CLI, a script using the Python API) catches two
classes, not one per module; str(e) is always one line naming the file or option and the cause.
AudioError lives here too: both decoding (audio.py) and the front end (frontend.py) raise it.
"""

from __future__ import annotations


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
