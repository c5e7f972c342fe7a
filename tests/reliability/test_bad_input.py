"""Bad options and bad data, as a table: one line on stderr, a non-zero exit, no traceback, nothing written.

Each case runs ``curate ...`` in-process on a fresh copy of a small run and compares every file under
the folder (names and bytes, hidden files included) before and after.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.bootstrap import bootstrap_round
from curate.cli.app import main
from curate.io.manifest import build_manifest, write_manifest
from curate.io.tables import write_table
from curate.select import run_selection
from tests.bootstrap_helpers import make_pool_run, manifest_uids, uid_of, write_losses
from tests.reliability.runs import clustered_run, snapshot, source_shards

N = 400


@dataclass(frozen=True)
class Case:
    args: list[str]  # RUN, ROOT are replaced by the run folder and the test folder
    code: int
    message: str  # must appear in the one stderr line
    setup: Callable[[Path], None] | None = None  # damages the run copy before the command


# --- damage ---------------------------------------------------------------------------------------
def _garbage(rel: str, data: bytes = b"PAR1 this is not parquet PAR1") -> Callable[[Path], None]:
    def f(run: Path) -> None:
        (run / rel).write_bytes(data)

    return f


def _truncate(rel: str) -> Callable[[Path], None]:
    def f(run: Path) -> None:
        data = (run / rel).read_bytes()
        (run / rel).write_bytes(data[: len(data) // 2])

    return f


def _drop_column(rel: str, column: str) -> Callable[[Path], None]:
    def f(run: Path) -> None:
        import pyarrow.parquet as pq

        t = pq.read_table(run / rel)
        pq.write_table(t.drop_columns([column]), run / rel)

    return f


def _losses(kind: str) -> Callable[[Path], None]:
    """Round-1 losses of the bootstrap run (round 2 is the first to read losses) with one kind of defect."""

    def f(run: Path) -> None:
        from curate.rundir import RunDir

        rd = RunDir(run)
        uids = manifest_uids(rd, 1)
        n = len(uids)
        batch = np.arange(n) // 10
        loss = np.linspace(0.1, 2.0, n)
        if kind == "unknown":
            uids = [*uids[:-1], uid_of(10**6)]
        elif kind == "duplicate":
            uids = [*uids[:-1], uids[0]]
        elif kind == "nan":
            loss = loss.copy()
            loss[3] = np.nan
        write_losses(rd, 1, uids, batch, loss, loss)
        part = rd.losses_dir(1) / "part-00000.parquet"
        if kind == "corrupt":
            part.write_bytes(b"not parquet at all")
        elif kind == "columns":
            write_table(part, pa.table({"uid": uids, "loss": loss}))
        elif kind == "types":
            write_table(part,
                        pa.table({"uid": uids, "batch": batch, "loss_a": [f"x{i}" for i in range(n)]}))

    return f


def _foreign_manifest(run: Path) -> None:
    """A selection manifest from another run (other uids), placed where --init finds it."""
    rows = pa.table({"uid": [f"{i + 10**6:032x}" for i in range(50)], "shard": ["00000"] * 50,
                     "key": [f"{i:09d}" for i in range(50)], "position": pa.array(np.arange(50), pa.int32())})
    write_manifest(run / "foreign.parquet", build_manifest(rows, kind="selection", command="elsewhere"))


def _corrupt_json(rel: str) -> Callable[[Path], None]:
    return _garbage(rel, b'{"format_version": 1, "commands": [')


def _beside(rel: str, data: bytes = b"the user's own file") -> Callable[[Path], None]:
    """A file of the user's next to the run (``rel`` is relative to the folder that holds the run)."""

    def f(run: Path) -> None:
        path = run.parent / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return f


def _pending(rel: str) -> Callable[[Path], None]:
    """An embed that did not finish: run.json plans the shard, its table is not there (yet)."""

    def f(run: Path) -> None:
        (run / rel).unlink()

    return f


def _earlier_reshard_with_a_user_file(run: Path) -> None:
    """A real earlier reshard output beside the run, into which the user has put a file of their own."""
    from curate.io.reshard import reshard

    reshard(run / "selections" / "rand", run.parent / "prev", shard_size=50)
    (run.parent / "prev" / "notes.txt").write_text("mine")


def _forged_reshard_info(run: Path) -> None:
    """A folder whose reshard.json claims to be curate's and lists a file outside it."""
    folder = run.parent / "prev"
    folder.mkdir()
    (folder / "000000.tar").write_bytes(b"not mine to delete")
    info = {"written_by": "curate reshard", "shards": [{"name": "../run/run.json", "samples": 1}]}
    (folder / "reshard.json").write_text(json.dumps(info))


def _selection_of_both(run: Path) -> None:
    run_selection(run, "intersect", name="both", options={"of": ("rand", "rand2")})


# --- the table --------------------------------------------------------------------------------------
SELECT = "RUN"
SELECT_CASES: dict[str, Case] = {
    "fraction negative": Case(["select", "-r", SELECT, "-m", "random", "-f", "-0.5"], 2, "must be in (0, 1]"),
    "fraction above one": Case(["select", "-r", SELECT, "-m", "random", "-f", "1.5"], 2, "must be in (0, 1]"),
    "fraction zero": Case(["select", "-r", SELECT, "-m", "clipcov", "-f", "0", "--partition", "kmeans:3"], 2,
                          "--fraction must be in (0, 1]"),
    "fraction not a number": Case(["select", "-r", SELECT, "-m", "random", "-f", "half"], 2, "Invalid value"),
    "count above pool": Case(["select", "-r", SELECT, "-m", "semdedup", "-n", str(N + 1)], 2, f"pool of {N}"),
    "count negative": Case(["select", "-r", SELECT, "-m", "random", "-n", "-3"], 2, "--count"),
    "unknown method": Case(["select", "-r", SELECT, "-m", "magic", "-n", "3"], 2, "magic"),
    "both fraction and count": Case(["select", "-r", SELECT, "-m", "random", "-f", "0.5", "-n", "3"], 2, "--count"),
    "hostile selection name": Case(["select", "-r", SELECT, "-m", "random", "-n", "3", "--name", "../../escape"], 2,
                                   "bad selection name"),
    "missing run": Case(["select", "-r", "ROOT/nope", "-m", "random", "-n", "3"], 3, "not a curate run"),
    "corrupt run.json": Case(["select", "-r", SELECT, "-m", "random", "-n", "3"], 3, "corrupt JSON",
                             _corrupt_json("run.json")),
    "corrupt embeddings": Case(["select", "-r", SELECT, "-m", "clipcov", "-f", "0.5", "--partition", "kmeans:3"], 3,
                               "00001.parquet", _garbage("embeddings/00001.parquet")),
    "truncated embeddings": Case(["select", "-r", SELECT, "-m", "semdedup", "--eps", "0.1"], 3, "00000.parquet",
                                 _truncate("embeddings/00000.parquet")),
    "embeddings without image_emb": Case(["select", "-r", SELECT, "-m", "clipcov", "-f", "0.5", "--partition",
                                          "kmeans:3"], 3, "image_emb",
                                         _drop_column("embeddings/00000.parquet", "image_emb")),
    "pool with a pending shard": Case(["select", "-r", SELECT, "-m", "random", "-f", "0.5"], 3,
                                      "1 of 2 shards are pending (00001)", _pending("embeddings/00001.parquet")),
    "set algebra on a missing selection": Case(["select", "-r", SELECT, "-m", "union", "--of", "rand", "nope"], 3,
                                               "nope"),
    "set algebra on a corrupt manifest": Case(["select", "-r", SELECT, "-m", "intersect", "--of", "rand", "rand2"], 3,
                                              "manifest.parquet", _garbage("selections/rand2/manifest.parquet")),
    "export a corrupt manifest": Case(["export", "--manifest", "RUN/selections/rand", "--format", "datacomp", "-o",
                                       "RUN/subset.npy"], 3, "manifest.parquet",
                                      _truncate("selections/rand/manifest.parquet")),
    "export unknown format": Case(["export", "--manifest", "RUN/selections/rand", "--format", "pickle"], 2, "pickle"),
    "reshard a corrupt manifest": Case(["reshard", "--manifest", "RUN/selections/rand", "-o", "ROOT/out"], 3,
                                       "manifest.parquet", _garbage("selections/rand/manifest.parquet")),
    "reshard a manifest without keys": Case(["reshard", "--manifest", "RUN/selections/rand", "-o", "ROOT/out"], 3,
                                            "not a curate manifest",
                                            _drop_column("selections/rand/manifest.parquet", "key")),
    "reshard shard size zero": Case(["reshard", "--manifest", "RUN/selections/rand", "-o", "ROOT/out",
                                     "--shard-size", "0"],
                                    2, "--shard-size"),
    "make-sample into a folder of other files": Case(["shards", "make-sample", "--out", "RUN", "--n-train", "4"], 2,
                                                     "holds no synthetic world"),
    "reshard into a non-empty folder": Case(["reshard", "--manifest", "RUN/selections/rand", "-o", "ROOT/src"], 2,
                                            "is not empty"),
    # reshard --force replaces only an earlier reshard output, and never writes in or around a run or the shards
    "reshard --force into the run folder": Case(["reshard", "--manifest", "RUN/selections/rand", "--out", "RUN",
                                                 "--force"], 2, "is a curate run folder"),
    "reshard into a folder inside the run": Case(["reshard", "--manifest", "RUN/selections/rand", "--out",
                                                  "RUN/subset"], 2, "which is a curate run folder"),
    "reshard into a run's own folders": Case(["reshard", "--manifest", "RUN/selections/rand", "--out",
                                              "RUN/embeddings", "--force"], 2, "which is a curate run folder"),
    "reshard --force into a folder holding a run": Case(["reshard", "--manifest", "RUN/selections/rand", "--out",
                                                         "ROOT", "--force"], 2, "contains a curate run folder"),
    "reshard --force into an unrelated folder": Case(["reshard", "--manifest", "RUN/selections/rand", "--out",
                                                      "ROOT/other", "--force"], 2, "not the output of an earlier",
                                                     _beside("other/projects/main.py", b"print('mine')\n")),
    "reshard --force into the source shards' folder": Case(["reshard", "--manifest", "RUN/selections/rand",
                                                            "--shards", "ROOT/src", "--out", "ROOT/src", "--force"],
                                                           2, "is the folder of the source shards"),
    "reshard inside the source shards' folder": Case(["reshard", "--manifest", "RUN/selections/rand", "--shards",
                                                      "ROOT/src", "--out", "ROOT/src/subset"], 2,
                                                     "is inside the folder of the source"),
    "reshard --force over a user's file in an earlier output": Case(
        ["reshard", "--manifest", "RUN/selections/rand", "--out", "ROOT/prev", "--force", "--shard-size", "7"], 2,
        "holds files reshard did not write (notes.txt)", _earlier_reshard_with_a_user_file),
    "reshard --force with a forged reshard.json": Case(["reshard", "--manifest", "RUN/selections/rand", "--out",
                                                        "ROOT/prev", "--force"], 2, "not the output of an earlier",
                                                       _forged_reshard_info),
    "reshard --out a file": Case(["reshard", "--manifest", "RUN/selections/rand", "--out", "ROOT/file.txt", "--force"],
                                 2, "not a folder", _beside("file.txt")),
    # export and report never replace a file curate did not write without --force, nor a run's files at all
    "export datacomp over a user's file": Case(["export", "--manifest", "RUN/selections/rand", "--format", "datacomp",
                                                "--out", "ROOT/subset.npy"], 2, "curate did not write it",
                                               _beside("subset.npy")),
    "export keys over a user's file": Case(["export", "--manifest", "RUN/selections/rand", "--format", "keys",
                                            "--out", "ROOT/keys.txt"], 2, "curate did not write it",
                                           _beside("keys.txt")),
    "export urls over a user's file": Case(["export", "--manifest", "RUN/selections/rand", "--format", "urls",
                                            "--out", "ROOT/urls.txt"], 2, "curate did not write it",
                                           _beside("urls.txt")),
    "export into a folder over a user's file": Case(["export", "--manifest", "RUN/selections/rand", "--format",
                                                     "datacomp", "--out", "ROOT/exports/"], 2,
                                                    "rand.npy exists and curate did not write it",
                                                    _beside("exports/rand.npy")),
    "export onto its own manifest": Case(["export", "--manifest", "RUN/selections/rand", "--format", "keys", "--out",
                                          "RUN/selections/rand/manifest.parquet", "--force"], 2,
                                         "is the manifest being exported"),
    "export over a file of the run": Case(["export", "--manifest", "RUN/selections/rand", "--format", "keys", "--out",
                                           "RUN/run.json", "--force"], 2, "is a file of the run"),
    "export into a folder that is a file": Case(["export", "--manifest", "RUN/selections/rand", "--format", "keys",
                                                 "--out", "ROOT/file.txt/"], 2, "is not one", _beside("file.txt")),
    "report over a user's file": Case(["report", "--run", "RUN", "--out", "ROOT/notes.html"], 2,
                                      "curate did not write it", _beside("notes.html", b"<p>my notes</p>")),
    "report over a file of the run": Case(["report", "--run", "RUN", "--out", "RUN/run.json", "--force"], 2,
                                          "is a file of the run"),
    # set algebra over two or more selections
    "set algebra of one selection": Case(["select", "--run", "RUN", "--method", "union", "--of", "rand"], 2,
                                         "two or more"),
    "set algebra naming a selection twice": Case(["select", "--run", "RUN", "--method", "union", "--of",
                                                  "rand,rand2,rand"], 2, "'rand' twice"),
    "set algebra with an empty name": Case(["select", "--run", "RUN", "--method", "intersect", "--of", "rand,,rand2"],
                                           2, "empty selection name"),
    "set algebra, comma form, missing selection": Case(["select", "--run", "RUN", "--method", "intersect", "--of",
                                                        "rand,nope"], 3, "no selection 'nope'"),
    "set algebra, three names, one missing": Case(["select", "--run", "RUN", "--method", "difference", "--of", "rand",
                                                   "rand2", "nope"], 3, "no selection 'nope'"),
    "a stray argument without --of": Case(["select", "--run", "RUN", "--method", "random", "--count", "3", "extra"], 2,
                                          "unexpected argument 'extra'"),
    # curate selections
    "selections of a missing run": Case(["selections", "ROOT/nope"], 3, "not a curate run"),
    "delete a missing selection": Case(["selections", "RUN", "--delete", "nope"], 3, "no selection 'nope'"),
    "delete with a hostile name": Case(["selections", "--run", "RUN", "--delete", "../embeddings"], 2,
                                       "bad selection name"),
    "delete a folder curate did not record": Case(["selections", "RUN", "--delete", "mine"], 2, "not recorded",
                                                  _beside("run/selections/mine/data.txt")),
    "delete a selection holding a user's file": Case(["selections", "RUN", "--delete", "rand2"], 2,
                                                     "holds files curate did not write (notes.txt)",
                                                     _beside("run/selections/rand2/notes.txt")),
    "delete a selection another was computed from": Case(["selections", "RUN", "--delete", "rand"], 2,
                                                          "is the source of selection 'both'", _selection_of_both),
}

BOOT = "RUN"
BOOT_CASES: dict[str, Case] = {
    "negative round": Case(["bootstrap", "-r", BOOT, "--round", "-1"], 2, "--round must be >= 0"),
    "skipped round": Case(["bootstrap", "-r", BOOT, "--round", "3"], 3, "skips round 2"),
    "round before the latest": Case(["bootstrap", "-r", BOOT, "--round", "0"], 3,
                                    "to start over: curate bootstrap --run"),
    "reset with a later round": Case(["bootstrap", "--run", BOOT, "--reset", "--round", "2"], 2,
                                     "takes no --round other than 0"),
    "unknown method": Case(["bootstrap", "-r", "RUN", "--round", "2", "--method", "magic"], 2, "magic"),
    "knob changed after round 0": Case(["bootstrap", "-r", BOOT, "--round", "2", "--seed", "9"], 2, "fixed per run",
                                       _losses("ok")),
    "knob of another method": Case(["bootstrap", "-r", BOOT, "--round", "2", "--prune-ratio", "0.5"], 2,
                                   "does not apply"),
    "no losses": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "no loss table for round 1"),
    "losses with unknown uids": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "uids that were not in round 1",
                                     _losses("unknown")),
    "losses with duplicate uids": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "duplicate uids",
                                       _losses("duplicate")),
    "losses with NaN": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "NaN", _losses("nan")),
    "corrupt loss parquet": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "corrupt Parquet", _losses("corrupt")),
    "loss table without loss_a": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "lacks columns",
                                      _losses("columns")),
    "loss table with text losses": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "wrong column types",
                                        _losses("types")),
    "corrupt state": Case(["bootstrap", "-r", BOOT, "--round", "2"], 3, "state.json",
                          _corrupt_json("bootstrap/state.json")),
    "round 0 on a pool with a pending shard": Case(["bootstrap", "-r", "ROOT/fresh", "--round", "0"], 3,
                                                   "--allow-partial", _pending("../fresh/embeddings/00001.parquet")),
    "manifest from another run as --init": Case(["bootstrap", "-r", "ROOT/fresh", "--round", "0", "--init",
                                                 "RUN/foreign.parquet"], 3, "foreign.parquet", _foreign_manifest),
    "corrupt manifest as --init": Case(["bootstrap", "-r", "ROOT/fresh", "--round", "0", "--init",
                                        "RUN/bad.parquet"], 3,
                                       "bad.parquet", _garbage("bad.parquet")),
    "missing --init": Case(["bootstrap", "-r", "ROOT/fresh", "--round", "0", "--init", "nothing-here"], 2,
                           "nothing-here"),
}


@pytest.fixture(scope="module")
def select_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("select-base")
    urls = source_shards(root / "src", N, 2, member_bytes=64)
    run = clustered_run(root / "run", N, dim=16, n_shards=2, k=3, shard_urls=urls)
    run_selection(run, "random", fraction=0.5, name="rand", seed=1)
    run_selection(run, "random", fraction=0.25, name="rand2", seed=2)
    return run


@pytest.fixture(scope="module")
def boot_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("boot-base")
    run = make_pool_run(root / "run", 120, per_shard=40)
    bootstrap_round(run.root, 0, knobs={"warmup_rounds": 1})  # warm-up
    bootstrap_round(run.root, 1)  # preparation: round 2 reads its losses
    fresh = make_pool_run(root / "fresh", 60, per_shard=30)
    assert fresh.root.exists()
    return run.root


def _run_case(base: Path, tmp_path: Path, case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "case"
    shutil.copytree(base.parent, root, symlinks=True)
    run = root / base.name
    if case.setup is not None:
        case.setup(run)
    args = [a.replace("ROOT", str(root)).replace("RUN", str(run)) if a.startswith(("ROOT", "RUN")) else a
            for a in case.args]
    before = snapshot(root)
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and case.message in lines[0], lines[0]
    assert code == case.code, (code, lines[0])
    assert out == ""
    after = snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files written or changed: {changed[:5]}"


@pytest.mark.parametrize("name", list(SELECT_CASES))
def test_bad_select_export_reshard_input(select_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         name: str) -> None:
    _run_case(select_base, tmp_path, SELECT_CASES[name], capsys)


@pytest.mark.parametrize("name", list(BOOT_CASES))
def test_bad_bootstrap_input(boot_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    _run_case(boot_base, tmp_path, BOOT_CASES[name], capsys)


def test_cases_are_not_vacuous(select_base: Path, boot_base: Path, tmp_path: Path) -> None:
    """The same commands without the damage succeed (so each case fails for its stated reason)."""
    root = tmp_path / "ok"
    shutil.copytree(select_base.parent, root / "s", symlinks=True)
    shutil.copytree(boot_base.parent, root / "b", symlinks=True)
    s, b = root / "s" / "run", root / "b" / "run"
    assert main(["select", "-r", str(s), "-m", "clipcov", "-f", "0.5", "--partition", "kmeans:3", "--json"]) == 0
    assert main(["select", "-r", str(s), "-m", "intersect", "--of", "rand", "rand2", "--json"]) == 0
    assert main(["reshard", "--manifest", str(s / "selections" / "rand"), "-o", str(root / "s" / "out"), "--json"]) == 0
    _earlier_reshard_with_a_user_file(s)
    (root / "s" / "prev" / "notes.txt").unlink()
    assert main(["reshard", "--manifest", str(s / "selections" / "rand"), "--out", str(root / "s" / "prev"), "--force",
                 "--shard-size", "7", "--json"]) == 0
    assert main(["export", "--manifest", str(s / "selections" / "rand"), "--format", "datacomp", "--out",
                 str(root / "s" / "exports") + "/"]) == 0
    assert (root / "s" / "exports" / "rand.npy").is_file()
    assert main(["export", "--manifest", str(s / "selections" / "rand"), "--format", "keys", "--out",
                 str(root / "s" / "keys.txt")]) == 0
    assert main(["select", "--run", str(s), "--method", "difference", "--of", "rand,rand2,rand-intersect-rand2"]) == 0
    assert main(["select", "--run", str(s), "--method", "union", "--of", "rand", "rand2", "clipcov-km3-f0.5"]) == 0
    assert main(["selections", str(s), "--delete", "rand-difference-rand2-difference-rand-intersect-rand2"]) == 0
    assert main(["selections", "--run", str(s), "--json"]) == 0
    _losses("ok")(b)
    assert main(["bootstrap", "-r", str(b), "--round", "2", "--json"]) == 0
    json.loads((b / "bootstrap" / "state.json").read_text())
    assert main(["bootstrap", "--run", str(b), "--reset", "--round", "0"]) == 0


# --- every option without its value -------------------------------------------------------------------
def _options_taking_values() -> list[tuple[tuple[str, ...], str, int]]:
    """(command path, option string, values it takes) for every option of every command and subcommand,
    read from the command tree click builds (a command added later is covered without editing this)."""
    import typer

    from curate.cli.conventions import walk
    from curate.cli.root import app

    cases = []
    for path, cmd in walk(typer.main.get_command(app)):
        for p in cmd.params:
            if p.param_type_name == "option" and not p.is_flag and not getattr(p, "hidden", False):
                cases.extend((path, opt, p.nargs) for opt in p.opts)
    return cases


MISSING_VALUE = _options_taking_values()


def test_the_option_table_is_complete() -> None:
    """The enumeration reaches every command, the subcommands and the short forms."""
    seen = {(path, opt) for path, opt, _ in MISSING_VALUE}
    for case in [(("select",), "--fraction"), (("select",), "-f"), (("embed",), "--run"), (("bootstrap",), "--round"),
                 (("bootstrap", "coreset"), "--fraction"), (("report",), "-s"), (("select",), "--of"),
                 (("shards", "validate"), "--workers"), (("losses",), "--checkpoint"), (("merge",), "--out")]:
        assert case in seen, case
    assert len({path for path, _, _ in MISSING_VALUE}) >= 12


@pytest.mark.parametrize(("path", "opt", "nargs"), MISSING_VALUE, ids=[" ".join([*p, o]) for p, o, _ in MISSING_VALUE])
def test_every_option_without_its_value_is_one_line(path: tuple[str, ...], opt: str, nargs: int,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main([*path, opt])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    values = "a value" if nargs == 1 else f"{nargs} values"
    assert lines[0] == f"error: option '{opt}' requires {values} (see 'curate {' '.join([*path, '--help'])}')"
    assert code == 2 and out == ""


@pytest.mark.parametrize("args", [["select", "--run", "x", "--json=yes"], ["bootstrap", "--dry-run=1"],
                                  ["--version=2"]])
def test_a_value_given_to_a_flag_is_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "takes no value" in err and out == "", err


def test_click_messages_on_several_lines_become_one(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["select", "--run", "x"]) == 2  # click lists the choices of the missing --method line by line
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Missing option '--method'" in err and "clipcov" in err, err


@pytest.mark.parametrize(("exc", "first"), [
    (ZeroDivisionError("division by zero\nsecond line"), "ZeroDivisionError: division by zero"),
    # click turns an EOFError into its Abort, which must not read as a Ctrl-C ("aborted"): a truncated file
    (EOFError("No data left in file"), "EOFError: No data left in file"),
])
def test_an_unexpected_error_is_one_line_and_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], exc: Exception,
                                                    first: str) -> None:
    """A bug (any exception that is not curate's own) is one line naming a file with the traceback, exit 1."""
    import curate.inspect as insp

    def broken(run: object) -> None:
        raise exc

    monkeypatch.setattr(insp, "inspect_run", broken)
    import curate.cli.inspect_cmd as cmd

    monkeypatch.setattr(cmd, "inspect_run", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("CURATE_DEBUG", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: internal error ({first})"), err
    files = list(tmp_path.glob("curate-error-*.txt"))
    assert len(files) == 1 and "Traceback" in files[0].read_text() and str(files[0]) in err[0]
