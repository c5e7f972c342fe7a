"""The GPU check kit (scripts/gpu_check.sh, docs/gpu_check.md): its CPU run, its report, its time limits,
and the random weights (``--pretrained none``) its throughput runs use."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curate.errors import UsageError
from curate.models import RANDOM_WEIGHTS, load_model
from tests.embed_helpers import make_local_dir

REPO = Path(__file__).resolve().parents[1]


def _load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gc = _load_check()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """``bash scripts/gpu_check.sh --cpu`` with OUT set, in this environment (no wheels needed)."""
    out = tmp_path_factory.mktemp("gpu-check-out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, out


def test_cpu_run_gives_every_step_a_result(cpu_run):
    proc, out = cpu_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(gc.OUT_FILES)
    doc = json.loads((out / "gpu.json").read_text())
    assert doc["mode"] == "cpu" and doc["wheels"].startswith("none")
    assert list(doc["steps"]) == list(gc.STEPS)
    for name, st in doc["steps"].items():
        step = gc.STEPS[name]
        want = "skipped" if step.cuda_only else "pass"  # --cpu hides any GPU from the steps
        assert st["status"] == want, (name, st)
        if step.cuda_only:
            assert st["note"] == step.cuda_only
    env = doc["steps"]["env"]["result"]
    assert env["cuda_available"] is False and Path(env["curate_from"]) == REPO / "curate"
    assert "no step failed" in proc.stdout


def test_cpu_run_measures_and_checks_what_the_gpu_run_does(cpu_run):
    _, out = cpu_run
    doc = json.loads((out / "gpu.json").read_text())
    steps, params = doc["steps"], doc["params"]
    world = steps["worlds"]["result"]["worlds"][str(params["world_sizes"][0])]
    assert world["samples"] == params["world_n"] and world["shards"] == params["world_n"] // params["shard_size"]
    runs = steps["embed"]["result"]["runs"]
    # the first model runs at each decode-worker count: curate's default (2 on a CPU) and 0
    assert [(r["workers"], r["workers_label"]) for r in runs] == [(2, "default"), (0, "0")]
    for r in runs:
        assert r["images"] == params["world_n"] and r["precision"] == "fp32" and r["images_per_s"] > 0
        assert r["decode_only_per_s"] > 0 and "gpu_busy" not in r
    pre = steps["preprocess"]["result"]
    assert pre["preprocess"] == {"fast": "curate-fast", "open_clip": "open_clip"}
    assert pre["cosine_mean"] >= 0.99 and pre["pixels"]["bit_identical"]
    cc = steps["clipcov"]["result"]
    assert list(cc["devices"]) == ["cpu"] and cc["devices"]["cpu"]["cross_rel_err_vs_float64"] < 1e-5
    assert cc["budget"] == int(params["clipcov_fraction"] * params["clipcov_n"])
    assert [v["diff"] for k, v in steps["devices"]["result"]["runs"].items() if k != "one process"] == [[]]
    md = (out / "gpu.md").read_text()
    assert "| embed | pass |" in md and "## embed throughput" in md and "## clipcov" in md
    log = (out / "gpu.log").read_text()
    assert "--- embed: embed throughput" in log and "decode-only" in log


def test_report_renders_the_gpu_figures():
    """What only a GPU run fills in (GPU busy, peak memory, both devices of clipcov) reaches gpu.md."""
    runs = [{"world": "256 px", "model": "ViT-B-32", "precision": "fp16", "workers": 15, "workers_label": "default",
             "images": 20000, "seconds": 4.0, "images_per_s": 5000.0, "decode_only_per_s": 6250.0, "ratio": 0.8,
             "gpu_busy": 0.314, "gpu_peak_gib": 1.25}]
    dev = {"cross_s": 0.5, "matmul_s": 0.25, "cross_vs_matmul": 2.0, "matmul_gflop_per_s": 4000.0,
           "select_s": 2.0, "select_float16_inputs_s": 1.5, "cross_rel_err_vs_float64": 3e-7}
    doc = {"mode": "gpu", "started": "2026-12-05T10:00:00", "commit": "abc1234", "seconds": 400.0, "wheels": "x",
           "params": {"budget_s": 480},
           "steps": {"env": {"status": "pass", "note": "", "seconds": 9, "result": {
                         "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2}], "driver": "580.1",
                         "torch": "2.11.0", "torch_cuda": "13.0", "python": "3.12.3", "cpus": 16,
                         "packages": {"open_clip_torch": "3.3.0"}}},
                     "embed": {"status": "pass", "note": "1 runs", "seconds": 100, "result": {"runs": runs}},
                     "clipcov": {"status": "pass", "note": "same selection", "seconds": 60, "result": {
                         "n": 200000, "d": 512, "classes": 1000, "largest_class": 26000, "budget": 20000,
                         "matmul_gflop": 1200.0, "devices": {"cpu": dev, "cuda": dev}, "same_order": True,
                         "same_set": True, "overlap": 1.0, "cross_max_rel_diff": 1e-7}},
                     "ray": {"status": "skipped", "note": "ray not installed", "seconds": 0, "result": {}}}}
    md = gc.render_md(doc)
    assert "card: NVIDIA H100 80GB HBM3 (79.2 GiB); driver 580.1" in md
    assert "| 256 px | ViT-B-32 | fp16 | 15 (default) | 20,000 | 5,000 | 6,250 | 80% | 31% | 1.25 |" in md
    assert "| cuda | 2.0 | 1.5 | 0.5 | 0.25 | 2.0 | 4,000.0 | 3.0e-07 |" in md
    assert "Same selection: order True, set True" in md and "**ray** (skipped): ray not installed" in md


def test_steps_that_cannot_run_are_decided_without_running():
    env_ok = {"env": {"status": "pass", "result": {"cuda_available": False}}}
    assert gc.precheck("worlds", {"env": {"status": "fail", "result": {}}}, math.inf)["status"] == "not run"
    assert "needs worlds" in gc.precheck("embed", {**env_ok, "worlds": {"status": "error"}}, math.inf)["note"]
    assert gc.precheck("ray", env_ok, math.inf) == {"status": "skipped", "note": gc.STEPS["ray"].cuda_only,
                                                    "result": {}}
    assert gc.precheck("clipcov", env_ok, 0.0)["note"] == "out of time (--budget)"
    assert gc.precheck("clipcov", env_ok, math.inf) is None


def test_a_step_past_its_limit_is_stopped_and_recorded(tmp_path):
    work, hang = tmp_path / "work", tmp_path / "hang"
    for d in (work / "results", work / "logs", hang):
        d.mkdir(parents=True)
    (work / "params.json").write_text(json.dumps(gc.PROFILES["cpu"]))
    (hang / "sitecustomize.py").write_text("import time\ntime.sleep(600)\n")  # the step's process hangs
    env = {**os.environ, "PYTHONPATH": f"{hang}{os.pathsep}{REPO}", "CUDA_VISIBLE_DEVICES": ""}
    res = gc._run_group(["env", "worlds"], work, True, 1.0, math.inf, env)
    assert res["env"]["status"] == "timeout" and res["env"]["note"] == "stopped after 1 s"
    assert res["worlds"]["status"] == "not run"


def test_gpu_utilisation_window_and_pytest_summary():
    win = gc._Window(samples=[(1.0, 100.0), (9.0, 20.0), (10.0, 40.0), (11.0, 100.0)])
    assert win.busy(8.5, 10.5) == 0.3 and win.count == 2
    assert win.busy(10.2, 10.4) is None
    assert gc._pytest_counts("x\n== 4 passed, 1 skipped, 90 deselected in 3.2s ==") == {
        "passed": 4, "skipped": 1, "deselected": 90}


def test_set_overrides_the_profile():
    params = json.loads(json.dumps(gc.PROFILES["gpu"]))
    gc._parse_set(["world_n=5000", 'models=["ViT-B-32"]', "timeouts.embed=300", "pixel_model=ViT-B-16"], params)
    assert (params["world_n"], params["models"], params["timeouts"]["embed"], params["pixel_model"]) == (
        5000, ["ViT-B-32"], 300.0, "ViT-B-16")
    with pytest.raises(SystemExit, match="unknown parameter 'world'"):
        gc._parse_set(["world=1"], params)


def test_pretrained_none_gives_seeded_random_weights(tmp_path):
    """``--pretrained none``: the architecture with random weights, the same in every load (and process)."""
    a, b = load_model("sample", RANDOM_WEIGHTS), load_model("sample", RANDOM_WEIGHTS)
    trained = load_model("sample")
    sa, sb, st = (m.model.state_dict() for m in (a, b, trained))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], st[k]) for k in sa)
    assert a.info["pretrained"] == "none" and a.info["pretrained_sha256"] is None
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    load_model("sample", RANDOM_WEIGHTS)
    assert torch.equal(torch.rand(3), before)  # the caller's random stream is left as it was
    with pytest.raises(UsageError, match="--pretrained is not used with local-dir"):
        load_model(f"local-dir:{make_local_dir(tmp_path / 'm', seed=1)}", RANDOM_WEIGHTS)
