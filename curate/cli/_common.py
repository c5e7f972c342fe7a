"""Shared CLI helpers: consoles, JSON output, Rich progress."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

out = Console()  # results (stdout)
err = Console(stderr=True)  # progress, messages (stderr)


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class RichProgress:
    """A ``curate.progress.Progress`` rendered as a Rich bar with a rate column on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled and err.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        self.finish()
        if not self._enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._progress.start()
        self._unit = unit
        self._task = self._progress.add_task(task, total=total, rate="")

    def advance(self, n: float = 1) -> None:
        if self._progress is None:
            return
        self._progress.advance(self._task, n)
        t = self._progress.tasks[0]
        speed = t.finished_speed or t.speed
        if speed:
            self._progress.update(self._task, rate=f"{speed:,.0f} {self._unit}/s")

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
