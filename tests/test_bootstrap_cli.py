"""``curate bootstrap`` from the command line: output, the multi-round loop, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bootstrap_helpers import make_pool_run, manifest_uids, record_random_losses, uid_of, write_losses

from curate.cli.app import main
from curate.rundir import RunDir


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "run.json"}


def test_cli_loop_prints_manifest_path_urls_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_pool_run(tmp_path / "run", 100)
    r = str(run.root)
    for n in range(6):
        if n > 0:
            record_random_losses(run, n - 1)
        knobs = ["--warmup-rounds", "1", "--seed", "5"] if n == 0 else []
        args = ["bootstrap", "--run", r, "--round", str(n), *knobs]
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert out.strip() == str(run.manifest_file(n))
        assert f"bootstrap round {n}" in err
    assert main(["bootstrap", "--run", r, "--round", "5", "--print", "urls"]) == 0
    out, _ = capsys.readouterr()
    assert out.split() == [f"/data/{i:05d}.tar" for i in range(2)]
    assert main(["bootstrap", "--run", r, "--round", "5", "--json"]) == 0  # rerun of the latest round
    s = json.loads(capsys.readouterr().out)
    assert s["phase"] == "prepare" and s["kept"] == 100 and s["manifest"].endswith("round-0005.parquet")
    assert RunDir(r).load()["bootstrap"]["params"]["warmup_rounds"] == 1
    assert main(["bootstrap", "coreset", "--run", r, "--fraction", "0.5", "--name", "core"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == str(run.selection_dir("core") / "manifest.parquet")


def _expect_error(args: list[str], code: int, needle: str, capsys: pytest.CaptureFixture[str], root: Path) -> None:
    before = _files(root)
    assert main(args) == code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert out == ""
    assert _files(root) == before  # nothing written


@pytest.fixture
def run0(tmp_path: Path) -> RunDir:
    run = make_pool_run(tmp_path / "run", 40)
    assert main(["bootstrap", "--run", str(run.root), "--round", "0", "--warmup-rounds", "0"]) == 0
    return run


def test_bad_rounds(run0: RunDir, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    capsys.readouterr()
    r = str(run0.root)
    _expect_error(["bootstrap", "--run", r, "--round", "2"], 3, "skips round 1", capsys, run0.root)
    _expect_error(["bootstrap", "--run", r, "--round", "1"], 3, "no loss table for round 0", capsys, run0.root)
    fresh = make_pool_run(tmp_path / "fresh", 10)
    _expect_error(["bootstrap", "--run", str(fresh.root), "--round", "1"], 3, "start with", capsys, fresh.root)
    _expect_error(["bootstrap", "--run", str(tmp_path / "nope"), "--round", "0"], 3, "not a curate run", capsys,
                  tmp_path)
    _expect_error(["bootstrap", "--run", r, "--round", "1", "--rho-max", "0.5"], 2, "fixed per run", capsys,
                  run0.root)
    _expect_error(["bootstrap", "--run", r, "--round", "0", "--method", "bogus"], 2, "'bogus' is not one of",
                  capsys, run0.root)
    _expect_error(["bootstrap", "--run", r, "--round", "0", "--rho-max", "1.5"], 2, "--rho-max", capsys, run0.root)
    _expect_error(["bootstrap", "--run", r, "--round", "0", "--method", "infobatch"], 2, "--total-rounds", capsys,
                  run0.root)


def test_out_of_order_round(run0: RunDir, capsys: pytest.CaptureFixture[str]) -> None:
    r = str(run0.root)
    for n in (1, 2):
        record_random_losses(run0, n - 1)
        assert main(["bootstrap", "--run", r, "--round", str(n)]) == 0
    capsys.readouterr()
    _expect_error(["bootstrap", "--run", r, "--round", "1"], 3, "before the latest round 2", capsys, run0.root)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        ("unknown", "not in round 0's manifest"),
        ("duplicate", "duplicate uids"),
        ("nan", "NaN or infinite loss_a"),
        ("inf_b", "NaN or infinite loss_b"),
        ("columns", "lacks columns"),
    ],
)
def test_bad_loss_tables(run0: RunDir, capsys: pytest.CaptureFixture[str], mutate: str, needle: str) -> None:
    capsys.readouterr()
    uids = manifest_uids(run0, 0)
    a = np.linspace(0.1, 2, 40)
    b = a.copy()
    batch = np.arange(40) // 10
    if mutate == "unknown":
        uids[3] = uid_of(10_000)
    elif mutate == "duplicate":
        uids[3] = uids[4]
    elif mutate == "nan":
        a[7] = np.nan
    elif mutate == "inf_b":
        b[7] = np.inf
    if mutate == "columns":
        import pyarrow as pa

        from curate.io.tables import write_table

        write_table(run0.losses_dir(0) / "part-00000.parquet", pa.table({"uid": uids, "loss": a}))
    else:
        write_losses(run0, 0, uids, batch, a, b)
    _expect_error(["bootstrap", "--run", str(run0.root), "--round", "1"], 3, needle, capsys, run0.root)


def test_losses_for_pruned_samples_are_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_pool_run(tmp_path / "run", 40)
    r = str(run.root)
    assert main(["bootstrap", "--run", r, "--round", "0", "--method", "infobatch", "--total-rounds", "9"]) == 0
    write_losses(run, 0, manifest_uids(run, 0), np.arange(40) // 10, np.arange(40.0), None)
    assert main(["bootstrap", "--run", r, "--round", "1"]) == 0
    capsys.readouterr()
    everyone = manifest_uids(run, 0)  # round 1 pruned some: a loss for one of them is an error
    assert len(manifest_uids(run, 1)) < 40
    write_losses(run, 1, everyone, np.arange(40) // 10, np.ones(40), np.ones(40))
    _expect_error(["bootstrap", "--run", r, "--round", "2"], 3, "not in round 1's manifest", capsys, run.root)


def test_reset_starts_the_rounds_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--reset removes what bootstrap wrote (SCAN and InfoBatch tables, round manifests and the trainer kit's filter
    indexes, the run.json record) and nothing else; before, the error told users to delete folders by hand."""
    from curate.trainer.manifest_filter import build_index

    run = make_pool_run(tmp_path / "run", 100)
    r = str(run.root)
    for n in range(4):  # SCAN: warm-up, preparation, mutation rounds (candidates written)
        if n:
            record_random_losses(run, n - 1)
        assert main(["bootstrap", "--run", r, "--round", str(n), *(["--warmup-rounds", "1"] if n == 0 else [])]) == 0
    assert main(["bootstrap", "coreset", "--run", r, "--fraction", "0.5", "--name", "core"]) == 0
    assert (run.bootstrap_dir / "candidates").is_dir()
    index = build_index(run.manifest_file(3))
    (run.root / "manifests" / "notes.txt").write_text("mine")
    keep = {k: v for k, v in _files(run.root).items() if k.startswith(("embeddings", "losses", "selections"))}
    capsys.readouterr()
    assert main(["bootstrap", "--run", r, "--round", "0", "--rho-max", "0.4"]) == 3  # round 0 is done
    assert "--reset" in capsys.readouterr().err
    assert main(["bootstrap", "--run", r, "--reset"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "removed" in err and "kept" in err and "notes.txt" in err and "losses" in err
    assert not run.bootstrap_dir.exists() and not index.exists()
    assert sorted(p.name for p in (run.root / "manifests").iterdir()) == ["notes.txt"]
    assert "bootstrap" not in RunDir(r).load() and "core" in RunDir(r).load()["selections"]
    assert {k: v for k, v in _files(run.root).items() if k in keep} == keep  # embeddings, losses, selections
    assert main(["bootstrap", "--run", r, "--reset", "--json"]) == 0  # nothing left to remove
    assert json.loads(capsys.readouterr().out)["removed"] == []
    # a new schedule with other knobs: InfoBatch, started in the same call as the reset
    assert main(["bootstrap", "--run", r, "--reset", "--round", "0", "--method", "infobatch", "--total-rounds", "3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "infobatch"
    for n in (1, 2):
        record_random_losses(run, n - 1)
        assert main(["bootstrap", "--run", r, "--round", str(n)]) == 0
    assert list((run.bootstrap_dir / "infobatch").iterdir())
    capsys.readouterr()
    assert main(["bootstrap", "--run", r, "--reset", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["removed"]) > 10 and res["kept"] == [str(run.root / "manifests" / "notes.txt")]
    assert len(res["losses_kept"]) == 3 and not run.bootstrap_dir.exists()  # rounds 0-2, recorded again
    _expect_error(["bootstrap", "--run", r, "--reset", "--round", "1"], 2, "--reset", capsys, run.root)


def test_workers_write_the_files_of_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--workers 2`` runs the passes over the loss table in two processes: the same files."""
    runs = [make_pool_run(tmp_path / name, 300, per_shard=70) for name in ("one", "two")]
    for run, extra in zip(runs, ([], ["--workers", "2"]), strict=True):
        for n in range(3):
            if n:
                record_random_losses(run, n - 1, batch_size=7)
            knobs = ["--warmup-rounds", "1"] if n == 0 else []
            assert main(["bootstrap", "--run", str(run.root), "--round", str(n), *knobs, *extra, "--json"]) == 0
            capsys.readouterr()
    one, two = (_files(r.root) for r in runs)
    for files in (one, two):  # the pool cache records the inputs' mtimes
        files.pop("bootstrap/pool-index.arrow")
    assert one == two
    assert main(["bootstrap", "--run", str(runs[0].root), "--round", "2", "--engine", "local", "--ray-address",
                 "auto"]) == 2
    assert "--ray-address does not apply to --engine local" in capsys.readouterr().err
