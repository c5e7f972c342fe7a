"""Exception types. The CLI turns a ``CurateError`` into one line on stderr and a non-zero exit."""

from __future__ import annotations


class CurateError(Exception):
    """An error the user can fix (bad input, bad option, missing file). Message is one line."""

    exit_code: int = 1


class UsageError(CurateError):
    """A bad option or option combination."""

    exit_code = 2


class InputError(CurateError):
    """Bad input data: missing/empty shard list, corrupt table, unknown uids, ..."""

    exit_code = 3


class StrictModeError(InputError):
    """A bad sample or shard met while running with ``strict=True``."""


class Interrupted(CurateError):
    """The user interrupted a command (Ctrl-C, SIGINT). The message says what was done and how to go on;
    the CLI prints it as is (``interrupted: ...``), not as an error, and exits 130."""

    exit_code = 130
