"""The CLI's rich progress bars, driven by the callback the library accepts.

Library code (embeddings.embed_files, features.preprocess, train.train) never draws: it takes
``progress``, a callable ``progress(task, done, total, **fields)`` called as work is done (None: nothing).
``Bar`` is that callable: it starts the bar on the first call, one row per task, and stops it when its
``with`` block ends. Its kinds keep each command's look: "embedding" (tag, search, eval: files/s and ETA,
on stderr, gone when done, only on a terminal), "preprocess" (files/s, failures, elapsed and remaining
time) and "train" (epochs and batches with a loss or best-loss note; ``Bar.log`` prints lines above it).
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

Callback = Callable[..., None]  # progress(task: str, done: int, total: int | None, **fields)


class Bar:
    """A progress callback showing a rich progress bar of one kind; disabled: it draws nothing."""

    def __init__(self, kind: str, enabled: bool = True):
        if kind not in ("embedding", "preprocess", "train"):
            raise ValueError(f"unknown progress bar kind {kind!r}")
        self.kind = kind
        # The embedding bar shows on a terminal only; the others leave their last state on stdout as before.
        self.enabled = enabled and (kind != "embedding" or sys.stderr.isatty())
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, task: str, done: int, total: Optional[int] = None, **fields) -> None:
        if not self.enabled or (self.kind == "embedding" and not total):
            return
        if self.progress is None:
            self.progress = _make(self.kind)
            self.progress.start()
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total, completed=done, **_fields(self.kind, fields))
            return
        task_id = self.tasks[task]
        if done == 0:  # a new round (train's batches each epoch)
            self.progress.reset(task_id, total=total, **_fields(self.kind, fields))
            return
        self.progress.update(task_id, completed=done, total=total, **fields)
        if self.kind == "embedding":
            speed = self.progress.tasks[task_id].speed
            self.progress.update(task_id, rate=f"{speed:.1f} files/s" if speed else "")

    def log(self, line: str) -> None:
        """A line on stdout; above the bars while they are shown."""
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            print(line)


def _fields(kind: str, fields: dict) -> dict:
    defaults = {"embedding": {"rate": ""}, "preprocess": {"failed": 0}, "train": {"info": ""}}[kind]
    return {**defaults, **fields}


def _make(kind: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    if kind == "embedding":
        from rich.console import Console

        return Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                        TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    if kind == "train":
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    from rich.text import Text

    class FilesPerSecond(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} files/s" if task.speed else "– files/s")

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), FilesPerSecond(),
                    TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=False)
