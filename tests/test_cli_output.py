"""The CLI's output conventions on a real small run: stdout is the result, stderr is for people.

One world (the synthetic sample, embedded with the built-in tiny CLIP) serves every test; each test works
on its own copy. README, "Errors and output conventions", states the rules checked here.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from curate.cli.app import main
from curate.embed import EmbedConfig, run_embed
from curate.models import sample_model_paths
from curate.world import make_sample

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class World:
    root: Path  # holds world/, a/ (run of world/train/00000), b/ (run of b-shards/00001: another world)

    @property
    def shards_a(self) -> Path:
        return self.root / "world" / "train"

    @property
    def shards_b(self) -> Path:
        return self.root / "b-shards"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("cli-output")
    make_sample(root / "world", seed=0, n_train=60, n_test=10, shard_size=60)
    # another world under another shard name: the two runs are disjoint sub-pools (for merge)
    make_sample(root / "world-b", seed=1, n_train=60, n_test=10, shard_size=60)
    (root / "b-shards").mkdir()
    shutil.move(root / "world-b" / "train" / "00000.tar", root / "b-shards" / "00001.tar")
    for run, shards in (("a", root / "world" / "train"), ("b", root / "b-shards")):
        run_embed(EmbedConfig(shards=[str(shards)], run=str(root / run), model="sample", workers=0))
    return World(root)


@pytest.fixture
def copy(world: World, tmp_path: Path) -> World:
    shutil.copytree(world.root, tmp_path / "w", symlinks=True)
    return World(tmp_path / "w")


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (folders included, hidden ones too) with the bytes of each file."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# --- stdout is the result -------------------------------------------------------------------------------
def _steps(w: World) -> list[tuple[str, list[object], Callable[[World], Path]]]:
    a, b = w.root / "a", w.root / "b"
    sel, ckpt = a / "selections" / "random-f0.5", sample_model_paths()[1]
    return [
        ("make-sample", ["shards", "make-sample", "--out", w.root / "w2", "--n-train", "8"], lambda w: w.root / "w2"),
        ("embed", ["embed", w.shards_a, "--run", a], lambda w: a),
        ("select", ["select", "-r", a, "-m", "random", "-f", "0.5"], lambda w: sel),
        ("export", ["export", "--manifest", sel, "--format", "keys"], lambda w: sel / "keys.txt"),
        ("reshard", ["reshard", "--manifest", sel, "-o", w.root / "rs", "--shard-size", "16"], lambda w: w.root / "rs"),
        ("select b", ["select", "-r", b, "-m", "random", "-f", "0.5"], lambda w: b / "selections" / "random-f0.5"),
        ("merge", ["merge", sel, b / "selections" / "random-f0.5", "-o", w.root / "m.parquet"],
         lambda w: w.root / "m.parquet"),
        ("bootstrap", ["bootstrap", "-r", a, "--round", "0", "--warmup-rounds", "0"],
         lambda w: a / "manifests" / "round-0000.parquet"),
        ("losses", ["losses", "-r", a, "--round", "0", "--checkpoint", ckpt, "--batch-size", "16"],
         lambda w: a / "losses" / "round-0000" / "part-00000.parquet"),
        ("bootstrap 1", ["bootstrap", "-r", a, "--round", "1"], lambda w: a / "manifests" / "round-0001.parquet"),
        ("coreset", ["bootstrap", "coreset", "-r", a, "-f", "0.5"],
         lambda w: a / "selections" / "scan-coreset" / "manifest.parquet"),
        ("report", ["report", "-r", a, "--thumbs", "2", "--max-shards", "1"], lambda w: a / "reports" / "report.html"),
    ]


def test_stdout_is_the_path_of_what_each_command_wrote(copy: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command, in the order of a real job: stdout is exactly the path written, nothing else."""
    for name, args, expect in _steps(copy):
        out, err = _run(args, capsys)  # type: ignore[arg-type]
        path = expect(copy)
        assert out == f"{path}\n", (name, out, err[-500:])
        assert path.exists(), name
        assert "Traceback" not in err
    out, _ = _run(["select", "-r", copy.root / "a", "-m", "random", "-n", "9", "--json"], capsys)  # JSON instead
    assert json.loads(out)["path"] == str(copy.root / "a" / "selections" / "random-n9")


def test_dollar_paren_captures_the_selection_folder(copy: World) -> None:
    """``S=$(curate select ...)`` in a shell: the captured text is the folder, the table went to stderr."""
    run = copy.root / "a"
    proc = subprocess.run(
        ["bash", "-c", 'S=$("$@"); printf "%s" "$S"', "bash", sys.executable, "-m", "curate.cli.app",
         "select", "--run", str(run), "--method", "random", "--count", "7"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout == str(run / "selections" / "random-n7")
    assert "curate select --method random" in proc.stderr  # the summary table


def test_inspect_takes_the_run_as_argument_or_option(copy: World, capsys: pytest.CaptureFixture[str]) -> None:
    run = str(copy.root / "a")
    by_arg, _ = _run(["inspect", run, "--json"], capsys)
    by_opt, _ = _run(["inspect", "--run", run, "--json"], capsys)
    by_short, _ = _run(["inspect", "-r", run, "--json"], capsys)
    assert json.loads(by_arg) == json.loads(by_opt) == json.loads(by_short)
    assert main(["inspect", run, "--run", str(copy.root / "b")]) == 2
    assert "two run folders" in capsys.readouterr().err
    assert main(["inspect"]) == 2
    assert "needs a run folder" in capsys.readouterr().err


# --- --quiet ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step", ["embed", "select", "export", "reshard", "bootstrap"])
def test_quiet_leaves_stderr_empty_and_stdout_unchanged(copy: World, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    monkeypatch.setenv("CURATE_PROGRESS_INTERVAL", "0")  # progress would print a line per update
    steps = {name: (args, expect) for name, args, expect in _steps(copy)}
    for name in ("select", "export") if step in ("export", "reshard") else ():
        _run(steps[name][0], capsys)  # type: ignore[arg-type]
    args, expect = steps[step]
    out, err = _run([*args, "--quiet"], capsys)  # type: ignore[list-item]
    assert err == "" and out == f"{expect(copy)}\n"


def test_quiet_keeps_warnings(copy: World, capsys: pytest.CaptureFixture[str]) -> None:
    shard = copy.shards_a / "00000.tar"
    os.utime(shard, ns=(shard.stat().st_mtime_ns + 10**9,) * 2)  # changed since it was embedded
    out, err = _run(["embed", copy.shards_a, "--run", copy.root / "a", "-q"], capsys)
    assert err.startswith("warning: 1 shard(s) changed since they were embedded") and err.count("\n") == 1
    assert out == f"{copy.root / 'a'}\n"


# --- --dry-run ----------------------------------------------------------------------------------------
def test_dry_runs_write_nothing(copy: World, capsys: pytest.CaptureFixture[str]) -> None:
    """embed (a new run and an existing one), select, reshard and bootstrap: the folder is byte-identical."""
    a = copy.root / "a"
    _run(["select", "-r", a, "-m", "random", "-n", "12", "--name", "twelve"], capsys)
    before = _tree(copy.root)
    cases = [
        (["embed", copy.shards_b, "--run", copy.root / "new"], "would embed 1 of 1 shards into a new run folder"),
        (["embed", copy.shards_b, copy.shards_a, "--run", a], "would embed 1 of 2 shards into the existing run"),
        (["select", "-r", a, "-m", "clipcov", "-f", "0.5", "--partition", "kmeans:3"],
         f"keep 30, and write {a / 'selections' / 'clipcov-km3-f0.5'}"),
        (["select", "-r", a, "-m", "random", "-n", "12", "--name", "twelve"], "exists with the same parameters"),
        (["reshard", "--manifest", a / "selections" / "twelve", "-o", copy.root / "rs", "--shard-size", "5"],
         f"would write 12 samples in 3 shards to {copy.root / 'rs'}"),
        (["bootstrap", "-r", a, "--round", "0"], f"would write {a / 'manifests' / 'round-0000.parquet'}"),
    ]
    for args, says in cases:
        out, err = _run([*args, "--dry-run"], capsys)
        assert out == "" and "dry run" in err and says in err, (args, err)
    assert _tree(copy.root) == before
    out, _ = _run(["bootstrap", "-r", a, "--round", "0", "--dry-run", "--json"], capsys)
    assert json.loads(out)["dry_run"] is True and json.loads(out)["kept"] == 60
    assert _tree(copy.root) == before


def test_dry_run_reports_the_errors_of_the_real_run(copy: World, capsys: pytest.CaptureFixture[str]) -> None:
    a = copy.root / "a"
    before = _tree(copy.root)
    assert main(["select", "-r", str(a), "-m", "random", "-n", "999", "--dry-run"]) == 2
    assert main(["bootstrap", "-r", str(a), "--round", "1", "--dry-run"]) == 3  # no round 0 yet
    assert main(["embed", str(copy.root / "nope.tar"), "--run", str(a), "--dry-run"]) == 3
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and all(e.startswith("error: ") for e in errs), errs
    assert _tree(copy.root) == before


# --- tables are never cut ----------------------------------------------------------------------------------
NAME = "a-selection-name-the-user-just-made-and-wants-to-read-in-full-" + "x" * 40


def test_tables_in_a_log_are_as_wide_as_their_content(copy: World, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = _run(["select", "-r", copy.root / "a", "-m", "random", "-n", "5", "--name", NAME], capsys)
    path = str(copy.root / "a" / "selections" / NAME)
    assert out == f"{path}\n"
    assert any(path in line for line in err.splitlines()), err  # the whole path on one line of the table
    assert "…" not in err


def test_tables_in_a_narrow_terminal_wrap_instead_of_cutting(copy: World, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.cli import ui

    buf = io.StringIO()
    monkeypatch.setattr(ui, "console", lambda stderr=True: Console(file=buf, force_terminal=True, width=60,
                                                                         color_system=None))
    _run(["select", "-r", copy.root / "a", "-m", "random", "-n", "5", "--name", NAME], capsys)
    shown = buf.getvalue()
    assert "…" not in shown
    # the folded cell, read back: drop the table's borders, spaces and line ends
    assert str(copy.root / "a" / "selections" / NAME) in re.sub(r"[\s│┃|]", "", shown)


# --- progress when stderr is not a terminal ------------------------------------------------------------
LINE = re.compile(r"^(?P<task>[^:]+(?:: [^:]+)?): (?P<done>[\d,]+) of (?P<total>[\d,]+) (?P<unit>\w+) \(\d+%\), "
                  r"[\d,.]+ (?P=unit)/s, elapsed \d+[smh]\S*, (ETA \S+|done)$")


def _progress_lines(err: str) -> list[re.Match[str]]:
    return [m for m in map(LINE.match, err.splitlines()) if m]


def test_progress_lines_in_logs(copy: World, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """embed, select (clipcov, semdedup), reshard and losses print done/total, rate and ETA lines."""
    monkeypatch.setenv("CURATE_PROGRESS_INTERVAL", "0")
    a, ckpt = copy.root / "a", sample_model_paths()[1]
    make_sample(copy.root / "three", seed=2, n_train=30, n_test=5, shard_size=10)  # embed estimates its total
    runs = {                                                                        # from the shards done
        "embed": ["embed", copy.root / "three" / "train", "--run", copy.root / "c", "--workers", "0",
                  "--batch-size", "4"],
        "clipcov": ["select", "-r", a, "-m", "clipcov", "-f", "0.5", "--partition", "kmeans:3"],
        "semdedup": ["select", "-r", a, "-m", "semdedup", "--eps", "0.05"],
        "reshard": ["reshard", "--manifest", a / "selections" / "clipcov-km3-f0.5", "-o", copy.root / "rs"],
        "losses round 0": ["bootstrap", "-r", a, "--round", "0", "--warmup-rounds", "0"],
    }
    for task, args in runs.items():
        _, err = _run(args, capsys)
        if task.startswith("losses"):
            _, err = _run(["losses", "-r", a, "--round", "0", "--checkpoint", ckpt, "--batch-size", "16"], capsys)
        lines = [m for m in _progress_lines(err) if m["task"].startswith(task)]
        assert len(lines) >= 2, (task, err)
        assert lines[-1].group(0).endswith("done") and any("ETA" in m.group(0) for m in lines), err
        assert int(lines[-1]["done"].replace(",", "")) == int(lines[-1]["total"].replace(",", "")), err


def test_no_progress_lines_within_the_interval(copy: World, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_PROGRESS_INTERVAL", "3600")
    _, err = _run(["select", "-r", copy.root / "a", "-m", "clipcov", "-f", "0.5", "--partition", "kmeans:3"], capsys)
    assert not _progress_lines(err) and "curate select --method clipcov" in err


# --- --force everywhere ------------------------------------------------------------------------------------
def test_force_replaces_and_the_old_overwrite_spelling(copy: World, capsys: pytest.CaptureFixture[str]) -> None:
    a, ckpt = copy.root / "a", str(sample_model_paths()[1])
    _run(["bootstrap", "-r", a, "--round", "0", "--warmup-rounds", "0", "-q"], capsys)
    args = ["losses", "-r", str(a), "--round", "0", "--checkpoint", ckpt, "--batch-size", "16", "-q"]
    _run(args, capsys)
    assert main(args) != 0  # the parts exist
    assert "--force" in capsys.readouterr().err
    out, err = _run([*args, "--force"], capsys)
    assert err == "" and out.endswith("part-00000.parquet\n")
    out, err = _run([*args, "--overwrite"], capsys)
    assert err == "warning: --overwrite is deprecated; use --force\n" and out.endswith("part-00000.parquet\n")
    # bootstrap coreset replaces a selection made otherwise only with --force
    _run(["bootstrap", "-r", a, "--round", "1", "-q"], capsys)
    _run(["select", "-r", a, "-m", "random", "-f", "0.5", "-q"], capsys)
    before = _tree(a / "selections")
    assert main(["bootstrap", "coreset", "-r", str(a), "-f", "0.5", "--name", "random-f0.5"]) == 2
    assert "selection 'random-f0.5' exists (method random" in capsys.readouterr().err
    assert main(["bootstrap", "coreset", "-r", str(a), "-f", "0.5", "--name", "../../outside"]) == 2
    assert _tree(a / "selections") == before
    _run(["bootstrap", "coreset", "-r", a, "-f", "0.5", "--name", "random-f0.5", "--force"], capsys)
    _run(["bootstrap", "coreset", "-r", a, "-f", "0.5", "--name", "random-f0.5"], capsys)  # the same coreset again


def test_ctrl_c_in_a_command_says_interrupted_and_exits_130(copy: World, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt inside a command's work (what Ctrl-C raises) ends it with one line and 130."""
    from curate.cli import select_cmd

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(select_cmd, "run_selection", interrupted)
    capsys.readouterr()
    assert main(["select", "--run", str(copy.root / "a"), "--method", "random", "--fraction", "0.5"]) == 130
    out, err = capsys.readouterr()
    assert err == "interrupted\n" and out == ""
