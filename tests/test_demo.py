"""``curate demo`` end to end on a small generated world with the built-in tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.cli.app import main as cli
from curate.world import make_sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("world")
    make_sample(d, seed=3, n_train=400, n_test=90, shard_size=100)
    return d


def test_demo_runs_every_step_and_finds_defects(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--sample", str(world), "--rounds", "5", "--batch-size", "32",
            "--workers", "0", "--json"]
    assert cli(args) == 0
    res = json.loads(capsys.readouterr().out)
    steps = [s["step"] for s in res["steps"]]
    assert steps[:1] == ["embed"] and "export clipcov" in steps and "bootstrap + train" in steps
    assert steps[-1] == "report" and Path(res["report"]).is_file()
    sel = {s["name"]: s for s in res["selections"]}
    assert set(sel) == {"pool", "random", "clip-score", "semdedup", "clipcov", "clip-score ∩ clipcov", "scan coreset"}
    assert sel["clipcov"]["kept"] == sel["random"]["kept"] == int(400 * 0.3)
    # the trained proxy ranks ill-matched pairs low: clipcov and clip-score keep fewer mismatched captions
    assert sel["clipcov"]["mismatched"] < sel["pool"]["mismatched"]
    assert sel["clip-score"]["mismatched"] < sel["pool"]["mismatched"]
    assert [r["phase"] for r in res["rounds"]] == ["warmup", "prepare", "mutate", "mutate", "mutate"]
    kept = [r["kept"] for r in res["rounds"]]
    assert kept[0] == kept[1] == 400 and kept[2] > kept[3] > kept[4]  # ρ_cur ramps 0.25 → 0.75 → 1
    assert res["candidates"]["ill_matched"] > 0 and res["candidates"]["pool_mismatched_share"] == pytest.approx(0.2)
    assert 0 < res["zero_shot"]["before"] <= 1 and "after" in res["zero_shot"]
    assert json.loads((out / "demo.json").read_text())["status"] == "done"
    assert (out / "selections" / "clipcov" / "subset.npy").is_file()

    # a rerun replaces the previous demo folder
    assert cli([*args[:-1], "--rounds", "0", "--no-report", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rounds"] == [] and not (out / "manifests").exists()


def test_demo_refuses_a_folder_it_did_not_make(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert cli(["demo", "--out", str(tmp_path), "--sample", str(world)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a curate demo folder" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["demo", "--out", str(tmp_path / "d"), "--fraction", "1.5"]) == 2
    assert "--fraction" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
