"""The command tree of the CLI as click builds it: walk it, find a command, apply help conventions.

Only public click attributes are used (``commands``, ``params``, ``opts``, ``is_flag``, ``nargs``,
``metavar``), so this works with typer on top of click and with typer's vendored click alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

Command = Any  # a click (or typer-vendored click) Command or Group


def walk(root: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Command]]:
    """Every command under ``root`` (``root`` first) with its path of subcommand names."""
    yield path, root
    for name, sub in sorted(getattr(root, "commands", {}).items()):
        yield from walk(sub, (*path, name))


def find(root: Command, path: Sequence[str]) -> Command:
    """The command at ``path`` (names of subcommands below ``root``)."""
    cmd = root
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def command_path(root: Command, args: Sequence[str]) -> tuple[str, ...]:
    """The subcommand names that ``args`` select, read left to right (for errors that carry no context)."""
    path: list[str] = []
    cmd = root
    for arg in args:
        sub = getattr(cmd, "commands", {}).get(arg)
        if sub is not None:
            path.append(arg)
            cmd = sub
    return tuple(path)


def option(cmd: Command, opt: str) -> Any | None:
    """The option of ``cmd`` that ``opt`` (``--name`` or ``-x``) names, or None."""
    for p in cmd.params:
        if opt in (*p.opts, *getattr(p, "secondary_opts", ())):
            return p
    return None


def apply_conventions(root: Command) -> None:
    """Help conventions that hold for every command, whoever added it: a flag shows no value type.

    The help option itself is made on demand and cached by click; it is made here, with the names the
    real contexts inherit from the root, so that the cached one is the one fixed.
    """
    help_names = root.context_settings.get("help_option_names", ["--help"])
    for path, cmd in walk(root):
        ctx = cmd.context_class(cmd, info_name=path[-1] if path else "curate", help_option_names=help_names)
        for p in [*cmd.params, cmd.get_help_option(ctx)]:
            if p is not None and getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""  # typer would show '<bool>' for an option that takes no value
