"""Entry point of the ``curate`` console script.

Errors a user can fix are printed as one line on stderr with a non-zero exit code:
1 = runtime failure, 2 = bad usage (option or argument), 3 = bad input data, 130 = interrupted.
Where everything else goes (stdout: the result; stderr: tables, progress, warnings): ``curate.cli.ui``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

try:  # typer >= 0.2x vendors click under typer._click
    from typer._click import exceptions as _cx
    from typer.exceptions import Abort as _Abort
    from typer.exceptions import Exit as _Exit
except ImportError:  # older typer on top of click
    from click import exceptions as _cx
    from click.exceptions import Abort as _Abort
    from click.exceptions import Exit as _Exit

from curate import __version__
from curate.cli import (  # noqa: F401  (registers commands)
    bootstrap_cmd,
    demo_cmd,
    embed_cmd,
    export_cmd,
    inspect_cmd,
    losses_cmd,
    report_cmd,
    select_cmd,
    selections_cmd,
    shards_cmd,
    ui,
)
from curate.cli.conventions import apply_conventions, command_path, find, option
from curate.cli.root import app
from curate.errors import CurateError, Interrupted
from curate.logs import one_line_logs


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"curate {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Offline dataset curation for contrastive pre-training over WebDataset shards."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return (and, as a script, exit with) the process exit code."""
    command = typer.main.get_command(app)
    apply_conventions(command)
    ui.reset()
    args = sys.argv[1:] if argv is None else argv
    try:
        with one_line_logs():  # the library's warnings as curate's own lines ('warning: ...')
            rv = command.main(args=args, prog_name="curate", standalone_mode=False)
    except _cx.NoArgsIsHelpError:  # typer has printed the help already
        code = 0
    except _cx.UsageError as exc:
        sys.stderr.write(f"error: {_usage_message(exc, command, args)}\n")
        code = 2
    except _Exit as exc:
        code = exc.exit_code
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer turns Ctrl-C into Exit(130)
            sys.stderr.write("interrupted\n")
    except _Abort as exc:  # click turns KeyboardInterrupt and EOFError (a bug here: no command reads stdin) into this
        if isinstance(exc.__cause__, EOFError) and not os.environ.get("CURATE_DEBUG"):
            code = _internal_error(exc.__cause__)
        elif isinstance(exc.__cause__, EOFError):
            raise exc.__cause__ from None
        else:
            sys.stderr.write("interrupted\n")
            code = 130
    except _cx.ClickException as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        code = exc.exit_code
    except CurateError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.stderr.write(f"{msg}\n" if isinstance(exc, Interrupted) else f"error: {msg}\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except Exception as exc:  # a bug: one line here, the traceback in a file (CURATE_DEBUG=1 raises it)
        if os.environ.get("CURATE_DEBUG"):
            raise
        code = _internal_error(exc)
    else:
        code = rv if isinstance(rv, int) else 0
        if code == 130:  # Ctrl-C: typer's Exit(130), which click returns (not raises) outside standalone mode
            sys.stderr.write("interrupted\n")
    if argv is None:
        sys.exit(code)
    return code


def _internal_error(exc: BaseException) -> int:
    """Write the traceback of an unexpected error to a file and say so in one line; exit code 1."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="curate-error-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"curate {__version__}: {' '.join(sys.argv)}\n")
        traceback.print_exception(exc, file=fh)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    sys.stderr.write(f"error: internal error ({type(exc).__name__}{': ' + first if first else ''}); the traceback "
                     f"is in {path} (please report it)\n")
    return 1


def _usage_message(exc: _cx.UsageError, root: Any, args: list[str]) -> str:
    """Click's usage error as one line, with the help command of the subcommand it concerns.

    The option parser raises its errors (an option without its value, a value given to a flag) without
    a context, so the subcommand is then found from ``args``.
    """
    path = tuple(exc.ctx.command_path.split()[1:]) if exc.ctx is not None else command_path(root, args)
    # one line (click lists choices on lines of their own); typer's value checks prefix "Value error, "
    msg = " ".join(exc.format_message().split()).replace(": Value error, ", ": ")
    if isinstance(exc, _cx.BadOptionUsage) and exc.ctx is None:
        opt = option(find(root, path), exc.option_name)
        if opt is not None and getattr(opt, "is_flag", False):
            msg = f"option {exc.option_name!r} takes no value"
        elif opt is not None:
            msg = f"option {exc.option_name!r} requires {'a value' if opt.nargs == 1 else f'{opt.nargs} values'}"
    return f"{msg} (see '{' '.join(['curate', *path, '--help'])}')"


if __name__ == "__main__":
    main()
