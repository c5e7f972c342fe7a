"""One vocabulary across commands, read from the command tree click builds (new commands are covered too).

README, "Errors and output conventions", documents the rules checked here, with the short-flag table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from curate.cli.app import main
from curate.cli.conventions import apply_conventions, walk
from curate.cli.root import app

REPO = Path(__file__).resolve().parents[1]


def _tree() -> list[tuple[tuple[str, ...], Any]]:
    root = typer.main.get_command(app)
    apply_conventions(root)
    return list(walk(root))


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    """Commands that do something (leaves, and groups that run without a subcommand, like bootstrap)."""
    return [(p, c) for p, c in _tree() if p and (not hasattr(c, "commands") or c.invoke_without_command)]


def _options(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "option"]


def _short_flags() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for _, cmd in _tree():
        for p in _options(cmd):
            longs = [o for o in p.opts if o.startswith("--")]
            for o in p.opts:
                if not o.startswith("--"):
                    flags.setdefault(o, set()).update(longs)
    return flags


def test_a_short_flag_means_one_thing_everywhere() -> None:
    flags = _short_flags()
    assert {k: v for k, v in flags.items() if len(v) != 1} == {}
    assert flags["-m"] == {"--method"} and flags["-n"] == {"--count"} and flags["-r"] == {"--run"}


def test_readme_lists_every_short_flag() -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Errors and output conventions"):]
    rows = dict(re.findall(r"^\| `(-\w)` \| `(--[\w-]+)", section, flags=re.M))
    want = {k: next(iter(v)) for k, v in _short_flags().items()}
    assert rows == {**want, "-h": "--help"}


def test_the_run_is_run_everywhere() -> None:
    with_run = [(p, o) for p, c in _tree() for o in _options(c) if o.name == "run"]
    assert len(with_run) >= 7
    for path, opt in with_run:
        assert set(opt.opts) == {"--run", "-r"}, path
    for path, cmd in _commands():  # no other spelling of a run folder
        assert not [o for o in _options(cmd) if o.name != "run" and (o.help or "").startswith("Run folder")], path


def test_quiet_on_every_command_and_dry_run_where_it_writes() -> None:
    dry = set()
    for path, cmd in _commands():
        opts = {o for p in _options(cmd) for o in p.opts}
        assert {"--quiet", "-q"} <= opts, path
        if "--dry-run" in opts:
            dry.add(" ".join(path))
    assert dry == {"embed", "select", "reshard", "bootstrap"}


def test_force_not_overwrite() -> None:
    for path, cmd in _commands():
        visible = {o for p in _options(cmd) if not p.hidden for o in p.opts}
        assert "--overwrite" not in visible, path
    forced = {" ".join(p) for p, c in _commands() if any("--force" in o.opts for o in _options(c))}
    assert {"select", "reshard", "merge", "losses"} <= forced


# --- help -------------------------------------------------------------------------------------------
def _help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main([*path, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("path", [p for p, _ in _tree()], ids=lambda p: " ".join(p) or "curate")
def test_help_shows_no_bool_type_on_flags(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(path, capsys)
    assert "<bool>" not in text
    assert re.search(r"--help +-h +Show this message", text), text


def test_version_has_no_metavar(capsys: pytest.CaptureFixture[str]) -> None:
    assert re.search(r"--version +Print the version and exit", _help((), capsys))


def test_fixed_choices_are_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """The values are listed in --help, and any other value is refused in one line before any work."""
    text = _help(("bootstrap",), capsys)
    for shown in ("<path|urls>", "<batch|global>", "<infobatch|none|scan>"):
        assert shown in text, shown
    assert "<both|redundant|ill_match" in text
    for args in (["--print", "json"], ["--rank-scope", "local"], ["--prune-mode", "red"], ["--method", "magic"]):
        assert main(["bootstrap", "--run", "nowhere", "--round", "0", *args]) == 2
        err = capsys.readouterr().err
        assert "is not one of" in err and err.count("\n") == 1, err
    assert "<auto|fp32|fp16|bf16>" in _help(("embed",), capsys)
    assert "<auto|required|ignore>" in _help(("embed",), capsys)


def test_bootstrap_help_groups_knobs_by_method(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(("bootstrap",), capsys)
    scan = text.index("SCAN knobs")
    infobatch = text.index("InfoBatch knobs (--method infobatch; --total-rounds required)")
    for knob in ("--rho-max", "--rho-min", "--t-cos", "--prune-td", "--warmup-rounds", "--rank-scope", "--prune-mode"):
        assert scan < text.index(knob) < infobatch, knob
    for knob in ("--total-rounds", "--prune-ratio", "--delta", "--init-score"):
        assert text.index(knob) > infobatch, knob
    assert "[scan]" not in text and "[infobatch]" not in text


# --- what help and docs cite ------------------------------------------------------------------------
_UNSHIPPED = re.compile(r"specs?/\w+\.md|\bspec §|\bspec\b.{0,3}§|DESIGN\.md|shared/specs|\bspec's\b|quirk §")


def _shipped_text() -> list[Path]:
    files = [REPO / "README.md", REPO / "BENCHMARKS.md", *REPO.glob("docs/*.md"), *REPO.glob("examples/*"),
             *REPO.glob("curate/**/*.py"), *REPO.glob("tests/**/*.py")]
    return [f for f in files if f.is_file() and f.resolve() != Path(__file__).resolve()]


def test_shipped_text_cites_only_what_ships() -> None:
    bad = [f"{f.relative_to(REPO)}:{i}: {line.strip()}" for f in _shipped_text()
           for i, line in enumerate(f.read_text().splitlines(), 1) if _UNSHIPPED.search(line)]
    assert bad == []
    for f in [*REPO.glob("curate/**/*.py"), REPO / "README.md"]:  # the project's own docs they point to exist
        for doc in re.findall(r"(?<![\w`/])docs/[\w-]+\.md", f.read_text()):
            assert (REPO / doc).is_file(), (f, doc)


@pytest.mark.parametrize("path", [p for p, _ in _tree()], ids=lambda p: " ".join(p) or "curate")
def test_help_cites_only_what_ships(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(path, capsys)
    assert not _UNSHIPPED.search(text), text
    for doc in re.findall(r"\bdocs/[\w-]+\.md", text):
        assert (REPO / doc).is_file(), doc
