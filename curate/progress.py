"""Progress reporting hook: the library reports, a front end renders; no UI imports here.

:class:`LineProgress` is the plain-text renderer for logs (batch jobs, Slurm, CI): one line every
``CURATE_PROGRESS_INTERVAL`` seconds (default 30) with done/total, rate and ETA. The CLI uses it when
stderr is not a terminal; a script or trainer loop can use it as it is.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

#: Environment variable: seconds between two progress lines of :class:`LineProgress` (0: every update).
INTERVAL_ENV = "CURATE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


class Progress(Protocol):
    """Receives progress events from long-running library calls.

    A renderer may also have ``set_total(total)``, called through :func:`set_total` when the total of
    a task is only estimated while it runs (embed: from the shards finished so far).
    """

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None: ...

    def advance(self, n: float = 1) -> None: ...

    def finish(self) -> None: ...


def set_total(progress: Progress, total: float | None) -> None:
    """Update the expected total of ``progress``'s current task, where the renderer supports it."""
    update = getattr(progress, "set_total", None)
    if update is not None:
        update(total)


class NullProgress:
    """Discards progress events (library default)."""

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        return None

    def set_total(self, total: float | None) -> None:
        return None

    def advance(self, n: float = 1) -> None:
        return None

    def finish(self) -> None:
        return None


def interval_from_env(default: float = DEFAULT_INTERVAL_S) -> float:
    """``CURATE_PROGRESS_INTERVAL`` in seconds (a bad value gives the default)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value >= 0 else default


def format_duration(seconds: float) -> str:
    """``45s``, ``4m05s``, ``2h07m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() or x >= 100 else f"{x:,.1f}"


class LineProgress:
    """Progress as plain lines on a stream: one every ``interval`` seconds while a task advances.

    A line reads ``embed: 12,800 of 40,000 img (32%), 410 img/s, elapsed 31s, ETA 1m06s``. A task that
    printed at least one line also prints a last one when it finishes, so a log shows where it ended.
    """

    def __init__(self, stream: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self.interval = interval_from_env() if interval is None else interval
        self._clock = clock
        self._task: str | None = None
        self._total: float | None = None
        self._unit = "samples"
        self._done = 0.0
        self._t0 = self._last = 0.0
        self._printed = False

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        self.finish()
        self._task, self._total, self._unit, self._done = task, total, unit, 0.0
        self._t0 = self._last = self._clock()
        self._printed = False

    def set_total(self, total: float | None) -> None:
        self._total = total

    def advance(self, n: float = 1) -> None:
        if self._task is None:
            return
        self._done += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def finish(self) -> None:
        if self._task is not None and self._printed:
            self._emit(self._clock(), final=True)
        self._task = None

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at time ``now``."""
        elapsed = max(now - self._t0, 1e-9)
        rate = self._done / elapsed
        total = self._total
        parts = [f"{self._task}: {_count(self._done)}"]
        if total:
            parts[0] += f" of {_count(total)} {self._unit} ({min(self._done / total, 1.0):.0%})"
        else:
            parts[0] += f" {self._unit}"
        parts.append(f"{rate:,.1f} {self._unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if final:
            parts.append("done")
        elif total and rate > 0:
            parts.append(f"ETA {format_duration(max(total - self._done, 0.0) / rate)}")
        return ", ".join(parts)

    def _emit(self, now: float, final: bool = False) -> None:
        stream = self._stream or sys.stderr
        stream.write(self.line(now, final) + "\n")
        stream.flush()
        self._printed = True
