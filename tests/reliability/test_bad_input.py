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
        from curate.run import RunDir

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


def _pending(rel: str) -> Callable[[Path], None]:
    """An embed that did not finish: run.json plans the shard, its table is not there (yet)."""

    def f(run: Path) -> None:
        (run / rel).unlink()

    return f


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
    "export a corrupt manifest": Case(["export", "-m", "RUN/selections/rand", "--format", "datacomp", "-o",
                                       "RUN/subset.npy"], 3, "manifest.parquet",
                                      _truncate("selections/rand/manifest.parquet")),
    "export unknown format": Case(["export", "-m", "RUN/selections/rand", "--format", "pickle"], 2, "pickle"),
    "reshard a corrupt manifest": Case(["reshard", "-m", "RUN/selections/rand", "-o", "RUN/out"], 3,
                                       "manifest.parquet", _garbage("selections/rand/manifest.parquet")),
    "reshard a manifest without keys": Case(["reshard", "-m", "RUN/selections/rand", "-o", "RUN/out"], 3,
                                            "not a curate manifest",
                                            _drop_column("selections/rand/manifest.parquet", "key")),
    "reshard shard size zero": Case(["reshard", "-m", "RUN/selections/rand", "-o", "RUN/out", "--shard-size", "0"],
                                    2, "--shard-size"),
    "reshard into a non-empty folder": Case(["reshard", "-m", "RUN/selections/rand", "-o", "RUN/embeddings"], 2,
                                            "not empty"),
}

BOOT = "RUN"
BOOT_CASES: dict[str, Case] = {
    "negative round": Case(["bootstrap", "-r", BOOT, "-n", "-1"], 2, "--round must be >= 0"),
    "skipped round": Case(["bootstrap", "-r", BOOT, "-n", "3"], 3, "skips round 2"),
    "round before the latest": Case(["bootstrap", "-r", BOOT, "-n", "0"], 3, "before the latest round"),
    "unknown method": Case(["bootstrap", "-r", "RUN", "-n", "2", "--method", "magic"], 2, "magic"),
    "knob changed after round 0": Case(["bootstrap", "-r", BOOT, "-n", "2", "--seed", "9"], 2, "fixed per run",
                                       _losses("ok")),
    "knob of another method": Case(["bootstrap", "-r", BOOT, "-n", "2", "--prune-ratio", "0.5"], 2,
                                   "does not apply"),
    "no losses": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "no loss table for round 1"),
    "losses with unknown uids": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "uids that were not in round 1",
                                     _losses("unknown")),
    "losses with duplicate uids": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "duplicate uids",
                                       _losses("duplicate")),
    "losses with NaN": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "NaN", _losses("nan")),
    "corrupt loss parquet": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "corrupt Parquet", _losses("corrupt")),
    "loss table without loss_a": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "lacks columns", _losses("columns")),
    "loss table with text losses": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "wrong column types",
                                        _losses("types")),
    "corrupt state": Case(["bootstrap", "-r", BOOT, "-n", "2"], 3, "state.json", _corrupt_json("bootstrap/state.json")),
    "round 0 on a pool with a pending shard": Case(["bootstrap", "-r", "ROOT/fresh", "-n", "0"], 3,
                                                   "--allow-partial", _pending("../fresh/embeddings/00001.parquet")),
    "manifest from another run as --init": Case(["bootstrap", "-r", "ROOT/fresh", "-n", "0", "--init",
                                                 "RUN/foreign.parquet"], 3, "foreign.parquet", _foreign_manifest),
    "corrupt manifest as --init": Case(["bootstrap", "-r", "ROOT/fresh", "-n", "0", "--init", "RUN/bad.parquet"], 3,
                                       "bad.parquet", _garbage("bad.parquet")),
    "missing --init": Case(["bootstrap", "-r", "ROOT/fresh", "-n", "0", "--init", "nothing-here"], 2,
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
    assert main(["reshard", "-m", str(s / "selections" / "rand"), "-o", str(s / "out"), "--json"]) == 0
    _losses("ok")(b)
    assert main(["bootstrap", "-r", str(b), "-n", "2", "--json"]) == 0
    json.loads((b / "bootstrap" / "state.json").read_text())
