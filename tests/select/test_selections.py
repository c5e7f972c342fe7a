"""``curate selections``: list a run's selections; delete one safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MakeRun, normalise

from curate.bootstrap import bootstrap_round
from curate.cli.app import main
from curate.errors import InputError, UsageError
from curate.fs import read_json
from curate.io.export import export_manifest
from curate.rundir import RunDir
from curate.select import run_selection
from curate.select.manage import delete_selection, list_selections


@pytest.fixture
def run(make_run: MakeRun) -> Path:
    rng = np.random.default_rng(0)
    img = normalise(rng.normal(size=(200, 8)))
    root = make_run(img, normalise(img + 0.3 * rng.normal(size=img.shape)))
    run_selection(root, "random", fraction=0.5, seed=1, name="A")
    run_selection(root, "clip-score", fraction=0.25)
    run_selection(root, "intersect", options={"of": "A,clip-score-f0.25"})
    return root


def test_list(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "selections" / "mine").mkdir()  # a folder curate did not write is listed as such
    infos = {i.name: i for i in list_selections(run)}
    assert sorted(infos) == ["A", "A-intersect-clip-score-f0.25", "clip-score-f0.25", "mine"]
    a = infos["A"]
    assert (a.status, a.method, a.kept, a.pool, a.seed) == ("ok", "random", 100, 200, 1)
    assert a.params["fraction"] == 0.5 and a.created is not None and a.created.endswith("+00:00")
    assert infos["A-intersect-clip-score-f0.25"].parents == ["A", "clip-score-f0.25"]
    assert infos["mine"].status == "unrecorded"
    capsys.readouterr()
    assert main(["selections", str(run), "--json"]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["selections", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == positional
    assert [s["name"] for s in positional] == sorted(infos) and positional[0]["kept"] == 100
    assert main(["selections", str(run)]) == 0
    table = capsys.readouterr().out
    for text in ("random", "fraction=0.5", "100", "200", "intersect", "unrecorded"):
        assert text in table


def test_delete(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export_manifest(run / "selections" / "A", "datacomp")  # an export curate wrote into the folder goes with it
    with pytest.raises(UsageError, match=r"is the source of selection 'A-intersect-clip-score-f0\.25'"):
        delete_selection(run, "A")
    res = delete_selection(run, "A-intersect-clip-score-f0.25")
    assert sorted(p.name for p in res.removed) == ["manifest.json", "manifest.parquet", "scores.parquet"]
    assert sorted(p.name for p in (run / "selections").iterdir()) == ["A", "clip-score-f0.25"]  # nothing hidden left
    assert "A-intersect-clip-score-f0.25" not in read_json(run / "run.json")["selections"]
    assert read_json(run / "run.json")["commands"][-1]["command"].endswith("--delete A-intersect-clip-score-f0.25")
    capsys.readouterr()
    assert main(["selections", str(run), "--delete", "A", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deleted"] == "A" and len(out["removed"]) == 4  # with subset.npy
    assert sorted(read_json(run / "run.json")["selections"]) == ["clip-score-f0.25"]
    with pytest.raises(InputError, match="no selection 'A'"):
        delete_selection(run, "A")


def test_delete_refuses_what_it_must_not_touch(run: Path) -> None:
    sel = run / "selections"
    run_selection(run, "random", fraction=0.3, seed=2, name="C")
    with RunDir(run).selection_lock("C"), pytest.raises(UsageError, match="being written by another"):
        delete_selection(run, "C")  # a select writing that name holds its lock
    (sel / "C" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"holds files curate did not write \(notes.txt\)"):
        delete_selection(run, "C")
    (sel / "mine").mkdir()
    with pytest.raises(UsageError, match="not recorded"):
        delete_selection(run, "mine")
    with pytest.raises(UsageError, match="bad selection name"):
        delete_selection(run, "../embeddings")
    bootstrap_round(run, 0, init="A", knobs={"warmup_rounds": 1})
    (sel / "A-intersect-clip-score-f0.25").rename(sel / ".A-intersect-clip-score-f0.25.old-999999999")
    res = delete_selection(run, "A-intersect-clip-score-f0.25")  # after a killed delete: only the record is left
    assert res.record_only and not (sel / ".A-intersect-clip-score-f0.25.old-999999999").exists()
    with pytest.raises(UsageError, match="the bootstrap rounds"):
        delete_selection(run, "A")
    assert (sel / "A" / "manifest.parquet").exists() and (sel / "mine").is_dir()
    assert (sel / "C" / "notes.txt").read_text() == "mine"
