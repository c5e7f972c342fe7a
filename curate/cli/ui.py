"""The CLI's output conventions, shared by every command.

- stdout carries the result a script captures: the path of what the command wrote (one per line), or
  JSON with ``--json``; inspect and ``shards validate``, whose result is a report, print it there.
- stderr carries everything else: tables, notes, progress and warnings. ``--quiet`` drops tables,
  notes and progress; warnings and errors still print.
- Tables are never cut: in a terminal their cells wrap, and in a file or a pipe (batch and Slurm logs)
  they are as wide as their content.
- Progress: a live bar in a terminal; elsewhere one line every ``CURATE_PROGRESS_INTERVAL`` seconds
  (default 30) with done/total, rate and ETA (:class:`curate.progress.LineProgress`).

Options that mean the same on every command are made here (``run_option``, ``quiet_option``, ...), so
that a flag and its short form are the same everywhere (README, "Errors and output conventions").
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterable
from typing import Any

import typer
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichBar
from rich.table import Table

from curate.progress import LineProgress, NullProgress, Progress

#: Width of a console that is not a terminal: wide enough that no table is ever cut or wrapped.
LOG_WIDTH = 4096


class _State:
    quiet: bool = False


state = _State()


def reset() -> None:
    """Forget the options of an earlier invocation (``main`` runs many in one process in tests)."""
    state.quiet = False


# --- consoles ------------------------------------------------------------------------------------
def console(stderr: bool = True) -> Console:
    """A Rich console on stderr (or stdout): the terminal's width, or ``LOG_WIDTH`` in a file or pipe."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=LOG_WIDTH)


def _uncut(renderable: RenderableType) -> RenderableType:
    """A table whose cells wrap (fold) instead of ending in '…' when the terminal is narrow."""
    if isinstance(renderable, Table):
        for col in renderable.columns:
            col.overflow = "fold"
    return renderable


def result(*lines: str) -> None:
    """The command's result on stdout, one line each (paths a script captures with ``$(...)``)."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def report(*renderables: RenderableType) -> None:
    """A report that is the command's result (inspect, shards validate) on stdout, never cut."""
    c = console(stderr=False)
    for r in renderables:
        if isinstance(r, str):
            c.print(r, markup=False, highlight=False)
        else:
            c.print(_uncut(r))


def show(*renderables: RenderableType) -> None:
    """Tables and notes on stderr, unless ``--quiet``; strings are printed as they are (no markup)."""
    if state.quiet:
        return
    c = console()
    for r in renderables:
        if isinstance(r, str):
            c.print(r, markup=False, highlight=False)
        else:
            c.print(_uncut(r))


def warn(message: str) -> None:
    """``warning: ...`` on stderr, also with ``--quiet``."""
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def progress() -> Progress:
    """Where long steps report: a bar in a terminal, a line every ~30 s elsewhere, nothing with --quiet."""
    if state.quiet:
        return NullProgress()
    c = console()
    return RichProgress(c) if c.is_terminal else LineProgress()


class RichProgress:
    """A ``curate.progress.Progress`` rendered as a Rich bar with a rate column (in a terminal)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bar: _RichBar | None = None
        self._task: Any = None
        self._unit = "samples"

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        self.finish()
        self._bar = _RichBar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )
        self._bar.start()
        self._unit = unit
        self._task = self._bar.add_task(task, total=total, rate="")

    def set_total(self, total: float | None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def advance(self, n: float = 1) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._task, n)
        t = self._bar.tasks[0]
        speed = t.finished_speed or t.speed
        if speed:
            self._bar.update(self._task, rate=f"{speed:,.0f} {self._unit}/s")

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# --- options every command spells the same way ------------------------------------------------------
def _set_quiet(value: bool) -> bool:
    state.quiet = bool(value)
    return value


def quiet_option() -> Any:
    """``--quiet/-q`` (every command)."""
    return typer.Option(False, "--quiet", "-q", callback=_set_quiet, is_eager=True,
                        help="No tables, notes or progress on stderr (warnings and errors still print).")


def json_option(help: str = "Print the result as JSON on stdout.") -> Any:
    return typer.Option(False, "--json", help=help)


def run_option(help: str, required: bool = True) -> Any:
    """``--run/-r RUN`` (every command that works on a run folder)."""
    return typer.Option(... if required else None, "--run", "-r", help=help)


def out_option(help: str, required: bool = False, default: str | None = None) -> Any:
    """``--out/-o PATH`` (every command that writes a file or folder the user names)."""
    return typer.Option(... if required else default, "--out", "-o", help=help)


def force_option(help: str) -> Any:
    """``--force`` (every command that can replace an earlier output)."""
    return typer.Option(False, "--force", help=help)


def dry_run_option() -> Any:
    """``--dry-run`` (embed, select, reshard, bootstrap)."""
    return typer.Option(False, "--dry-run", help="Check the inputs and say what would be done; write nothing.")


def choices(name: str, values: Iterable[str]) -> Any:
    """An Enum of fixed string choices: ``--help`` lists them and any other value is refused in one line."""
    return enum.Enum(name, {v: v for v in values}, type=str)  # type: ignore[misc]
