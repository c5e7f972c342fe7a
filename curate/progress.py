"""Progress reporting hook: the library reports, the CLI renders (Rich); no UI imports here."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress events from long-running library calls."""

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None: ...

    def advance(self, n: float = 1) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Discards progress events (library default)."""

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        return None

    def advance(self, n: float = 1) -> None:
        return None

    def finish(self) -> None:
        return None
