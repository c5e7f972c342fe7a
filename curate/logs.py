"""curate's one-line log style for command-line use: ``warning: shard 00003: not_tar (...)`` on stderr.

The library only logs (``logging.getLogger("curate.…")``); the CLI calls :func:`one_line_logs` so that
those records reach the user as curate's own lines instead of Python's ``WARNING:curate.io.shards:``
(the format of the root handler that some dependencies install). Processes that curate starts itself
(``--devices``) install the same handler when their parent had it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

LOGGER = "curate"


class OneLineHandler(logging.Handler):
    """Writes ``<level>: <message>`` to the current ``sys.stderr`` (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # a closed stream must not break the command
            self.handleError(record)


def installed() -> bool:
    """Whether curate's records currently go through :class:`OneLineHandler`."""
    return any(isinstance(h, OneLineHandler) for h in logging.getLogger(LOGGER).handlers)


def install() -> None:
    """Route records of the ``curate`` loggers (warnings and above) to :class:`OneLineHandler` only."""
    log = logging.getLogger(LOGGER)
    if not installed():
        log.addHandler(OneLineHandler(logging.WARNING))
    log.propagate = False


@contextlib.contextmanager
def one_line_logs() -> Iterator[None]:
    """:func:`install` for the duration of a block, then restore the logger as it was."""
    log = logging.getLogger(LOGGER)
    if installed():
        yield
        return
    handler = OneLineHandler(logging.WARNING)
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
