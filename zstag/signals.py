"""SIGTERM (kill PID, timeout, systemd stopping a service) handled as Ctrl-C is: raised in the main thread as a
KeyboardInterrupt, so that what an interrupted run cleans up is cleaned up too (a tagged copy beside a user's
file, an output's temporary file, preprocess's tracks done so far kept as a part), and the process then still
ends by SIGTERM, as its caller expects. Without it the process died at once and left those files behind.
Only the CLI installs it (cli.main): the Python API leaves the host program's signals alone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_received = False


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; a KeyboardInterrupt, so every cleanup that Ctrl-C runs runs for it too."""


def _on_sigterm(signum, frame) -> None:
    global _received
    _received = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def install() -> None:
    """SIGTERM raises Terminated in the main thread; left alone where it is ignored (SIG_IGN, nohup-like
    launchers) or where this is no main thread (signals can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)


def end_if_terminated() -> None:
    """After the run unwound: if SIGTERM ended it, end the process by SIGTERM (exit status 143 / -15)."""
    if not _received:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)  # not reached where the signal ends the process, as it does on POSIX
