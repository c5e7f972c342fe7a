"""``curate embed`` / ``curate inspect`` from the command line: errors, progress, kill-and-resume, end to end."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from curate.cli.app import main
from curate.io.tarwrite import write_tar
from curate.world import read_truth
from tests.conftest import COLORS, jpeg_bytes
from tests.embed_helpers import (
    CURATE,
    REPO,
    SAMPLE,
    TINY_ARCH,
    cli,
    cli_in_new_session,
    make_local_dir,
    run_tables,
    save_tiny_checkpoint,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=0))


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


TINY = ["--model", TINY_ARCH, "--pretrained", "{ckpt}"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "ViT-Nope-1", "--pretrained", "x.pt"], 2, "unknown model 'ViT-Nope-1'"),
        (["--model", TINY_ARCH, "--pretrained", "missing.safetensors"], 2, "checkpoint file not found"),
        (["--model", TINY_ARCH], 2, "needs --pretrained"),
        ([*TINY, "--batch-size", "0"], 2, "--batch-size must be >= 1"),
        ([*TINY, "--batch-size", "many"], 2, "Invalid value for '--batch-size'"),
        ([*TINY, "--workers", "-2"], 2, "--workers must be >= 0"),
        ([*TINY, "--threads", "0"], 2, "--threads must be >= 1"),
        ([*TINY, "--precision", "fp8"], 2, "'fp8' is not one of 'auto', 'fp32', 'fp16', 'bf16'"),
        ([*TINY, "--captions", "sometimes"], 2, "'sometimes' is not one of 'auto', 'required', 'ignore'"),
        ([*TINY, "--max-pixels", "0"], 2, "--max-pixels must be >= 1"),
        ([*TINY, "--device", "quantum"], 2, "device 'quantum'"),
    ],
)
def test_bad_options_one_line(tmp_path, make_shards, ckpt, capsys, args, code, message):
    args = [a.format(ckpt=ckpt) for a in args]
    assert main(["embed", *make_shards(1, 2), "--run", str(tmp_path / "run"), *args]) == code
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run" / "embeddings").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_on_a_cpu_machine(tmp_path, make_shards, ckpt, capsys):
    args = ["embed", *make_shards(1, 2), "--run", str(tmp_path / "r"), "--model", TINY_ARCH, "--pretrained", ckpt]
    assert main([*args, "--device", "cuda"]) == 2
    assert "CUDA is not available" in _one_error_line(capsys.readouterr().err)


def test_bad_inputs_one_line(tmp_path, make_shards, ckpt, capsys):
    shards = make_shards(2, 2)
    model = ["--model", TINY_ARCH, "--pretrained", ckpt]
    run = str(tmp_path / "run")
    assert main(["embed", str(tmp_path / "nope.tar"), "--run", run, *model]) == 3
    assert "shard not found" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "empty"), "--run", run, *model]) == 3
    assert "no .tar shards in folder" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "list.txt").write_text("# nothing here\n")
    assert main(["embed", f"@{tmp_path / 'list.txt'}", "--run", run, *model]) == 3
    assert "the shard list is empty" in _one_error_line(capsys.readouterr().err)
    assert main(["embed", str(tmp_path / "shards" / "*.zip"), "--run", run, *model]) == 3
    assert "no shards match" in _one_error_line(capsys.readouterr().err)
    assert main(["embed"]) == 2
    assert "Missing argument" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
    # a run embedded with another model
    assert main(["embed", shards[0], "--run", run, *model, "--json"]) == 0
    other = str(save_tiny_checkpoint(tmp_path / "other.pt", seed=2))
    capsys.readouterr()
    assert main(["embed", *shards, "--run", run, "--model", TINY_ARCH, "--pretrained", other]) == 2
    assert "was embedded with model" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "run" / "embeddings").iterdir()) == ["00000.parquet"]
    # inspect of a folder that is not a run
    assert main(["inspect", str(tmp_path / "empty")]) == 3
    assert "is not a curate run" in _one_error_line(capsys.readouterr().err)


def test_errors_from_a_subprocess_have_no_traceback(tmp_path, make_shards):
    folder = make_local_dir(tmp_path / "m")
    proc = cli("embed", str(tmp_path / "missing.tar"), "--run", str(tmp_path / "r"), "--model", f"local-dir:{folder}")
    assert proc.returncode == 3
    assert "shard not found" in _one_error_line(proc.stderr)
    proc = cli("embed", *make_shards(1, 1), "--run", str(tmp_path / "r"), "--model", "ViT-B-32",
               "--pretrained", "laion2b_s34b_b79k")
    assert proc.returncode == 1
    assert "could not be downloaded" in _one_error_line(proc.stderr)


def test_progress_bar_shows_images_per_second(tmp_path, make_shards, ckpt, monkeypatch, capsys):
    from curate.cli import ui

    buf = io.StringIO()
    monkeypatch.setattr(ui, "console", lambda stderr=True: Console(file=buf, force_terminal=True, width=120))
    args = ["embed", *make_shards(3, 6), "--run", str(tmp_path / "r"), "--model", TINY_ARCH, "--pretrained", ckpt,
            "--batch-size", "2", "--workers", "1"]
    assert main(args) == 0
    shown = buf.getvalue()
    assert "embed" in shown and "img/s" in shown and "18" in shown
    assert capsys.readouterr().out == f"{tmp_path / 'r'}\n"  # stdout: the run folder
    assert main([*args, "--json"]) == 0  # --json: a JSON summary on stdout
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_skipped"] == 3 and summary["stats"]["written"] == 18


def _changed(path: str) -> None:
    old = os.stat(path).st_mtime_ns
    write_tar(path, [(f"z{i}", {"jpg": jpeg_bytes("white"), "txt": b"white"}) for i in range(2)])
    os.utime(path, ns=(old + 10**9, old + 10**9))


def test_changed_shards_from_the_cli(tmp_path, make_shards, ckpt, capsys):
    shards = make_shards(3, 3)
    args = ["embed", *shards, "--run", str(tmp_path / "r"), "--model", TINY_ARCH, "--pretrained", ckpt]
    assert main(args) == 0
    _changed(shards[2])
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 shard(s) changed since they were embedded: 00002" in err and "--refresh" in err
    assert main(["inspect", str(tmp_path / "r"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"]["changed"] == ["00002"]
    assert main(["inspect", str(tmp_path / "r")]) == 0
    assert "changed since embedding" in capsys.readouterr().out
    assert main([*args, "--refresh", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shards_refreshed"] == ["00002"] and out["shards_changed"] == [] and out["samples_written"] == 2
    assert main(["inspect", str(tmp_path / "r"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shards"]["changed"] == [] and info["samples"]["embedded"] == 8


# --- kill -9 at random points, then resume -----------------------------------------------------
def _kill_world(root: Path) -> list[str]:
    """36 small shards (8 samples, 32 px), one with defects; distinct content so that any mix-up shows."""
    out = []
    for s in range(36):
        samples = []
        for i in range(8):
            c = COLORS[(s + i) % len(COLORS)]
            members = {"jpg": jpeg_bytes(c, 24 + (s + 3 * i) % 17), "txt": f"shard {s} sample {i} {c}".encode()}
            if i % 3 == 0:
                members["json"] = json.dumps({"uid": f"{s:016x}{i:016x}"}).encode()
            samples.append((f"{s:03d}_{i:02d}", members))
        if s == 17:
            samples[4] = ("017_04", {"jpg": b"broken", "txt": b"broken"})
        p = root / f"part-{s:03d}.tar"
        write_tar(p, samples)
        out.append(str(p))
    return out


def _check_visible_tables(run: Path, expected: dict[str, dict]) -> None:
    """Every table under its final name is complete and equal to the uninterrupted run's."""
    for p in (run / "embeddings").glob("*.parquet"):
        if p.name.startswith("."):
            continue
        got = pq.read_table(p).select(list(expected[p.stem])).to_pydict()
        assert got == expected[p.stem], p
    if (run / "run.json").exists():
        json.loads((run / "run.json").read_text())


def _check_finished(run: Path, ref: dict[str, dict], ref_totals: dict, exitcode: int | None) -> None:
    """A run that ended by itself: exit 0, the reference's tables and totals, no temporary file left."""
    assert exitcode == 0
    assert run_tables(run) == ref  # resumed to the same content: no duplicated or missing uid
    assert not [p for p in (run / "embeddings").iterdir() if p.name.startswith(".")]
    assert json.loads((run / "stats" / "embed.json").read_text())["totals"] == ref_totals


def _finished(run: Path) -> int:
    """How many embedding tables of a run are under their final name."""
    return sum(1 for p in (run / "embeddings").glob("*.parquet") if not p.name.startswith("."))


def _commands(run: Path) -> int:
    """How many commands run.json records (0 while it does not exist)."""
    try:
        return len(json.loads((run / "run.json").read_text())["commands"])
    except FileNotFoundError:
        return 0


def _start(args: list[str], env: dict[str, str], run: Path) -> tuple[subprocess.Popen, float]:
    """Start ``curate ARGS``; return it once it has loaded the model and begun work (run.json updated)."""
    before = _commands(run)
    proc = subprocess.Popen([*CURATE, *args, "--run", str(run)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    while proc.poll() is None and _commands(run) == before:
        time.sleep(0.005)
    return proc, time.monotonic()


def _fork(ctx: mp.context.BaseContext, args: list[str], run: Path) -> mp.process.BaseProcess:
    """``curate ARGS`` forked from a server that has imported curate (no interpreter start-up per attempt)."""
    before = _commands(run)
    proc = ctx.Process(target=cli_in_new_session, args=([*args, "--run", str(run)],))
    proc.start()
    while proc.is_alive() and _commands(run) == before:
        time.sleep(0.005)
    return proc


def _killpg(pid: int) -> bool:
    """SIGKILL a process group; False when it had ended already (the fork server reaps its children, so a
    process that ends between ``is_alive`` and the kill is gone, not a zombie)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_identical_tables(tmp_path):
    """kill -9 of ``curate embed`` (with its decode workers) at random points of its work, then resume.

    The reference is an ordinary ``curate embed`` subprocess. The killed runs are the same CLI entry point
    in processes forked from a forkserver that has imported curate, so that each of the many attempts
    costs no interpreter start-up; each is its own process, killed with SIGKILL.
    """
    _kill_world(tmp_path / "shards")
    model = f"local-dir:{make_local_dir(tmp_path / 'model', seed=11)}"
    base = ["embed", str(tmp_path / "shards"), "--model", model, "--batch-size", "3", "--device", "cpu", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    # uninterrupted reference with one decode worker; its work phase sets the range of kill delays
    ref_proc, t0 = _start([*base, "--workers", "1"], env, tmp_path / "ref")
    assert ref_proc.wait() == 0, ref_proc.stderr.read()
    work = time.monotonic() - t0
    ref = run_tables(tmp_path / "ref")
    assert len(ref) == 36 and sum(len(t["uid"]) for t in ref.values()) == 36 * 8 - 1
    ref_totals = json.loads((tmp_path / "ref" / "stats" / "embed.json").read_text())["totals"]

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["curate.cli.app", "open_clip", "tests.embed_helpers"])
    rng = random.Random(20240607)
    kills, rounds, attempts, partial = 0, 0, 0, 0
    run = tmp_path / "run0"
    while kills < 10 and attempts < 120:  # the bound only guards against a machine too fast to kill
        attempts += 1
        done = _finished(run)
        proc = _fork(ctx, [*base, "--workers", str(rng.choice([0, 1, 2]))], run)
        if done < len(ref) - 1 and rng.random() < 0.7:
            # most kills follow the work, not the clock: after a random number of further shards is written,
            # plus a few ms, so they land mid-work whatever a resume's start-up costs on this machine
            target = rng.randint(done + 1, len(ref) - 1)
            while proc.is_alive() and _finished(run) < target:
                time.sleep(0.002)
            proc.join(timeout=rng.uniform(0.0, 0.05))
        else:  # the others at a random time of a whole run's work (some runs finish first)
            proc.join(timeout=rng.uniform(0.0, work))
        if proc.is_alive() and _killpg(proc.pid):  # the embed process and its decode workers die mid-work
            proc.join()
            kills += 1
            _check_visible_tables(run, ref)
            done = len(run_tables(run))
            partial += 0 < done < len(ref)
            continue
        proc.join()
        _check_finished(run, ref, ref_totals, proc.exitcode)
        rounds += 1
        run = tmp_path / f"run{rounds}"
    assert kills >= 10, (kills, rounds, attempts)
    proc = _fork(ctx, [*base, "--workers", "2"], run)  # the loop ended on a kill: that run resumes to the end
    proc.join()
    _check_finished(run, ref, ref_totals, proc.exitcode)
    assert partial >= 3, partial  # kills landed in the middle of the work, between shards being written
    uids = [u for t in ref.values() for u in t["uid"]]
    assert len(uids) == len(set(uids))


# --- the built-in tiny model end to end ---------------------------------------------------------
@pytest.mark.slow
def test_sample_end_to_end_embed_and_inspect(tmp_path):
    run = tmp_path / "run"
    proc = cli("embed", "shards/sample", "--run", str(run), "--model", "sample")
    assert proc.returncode == 0, proc.stderr
    assert "samples written" in proc.stderr

    proc = cli("inspect", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["shards"] == {"total": 6, "embedded": 6, "pending": [], "changed": [], "missing": []}
    assert info["samples"] == {"seen": 3000, "embedded": 3000, "with_text": 3000, "dropped": 0}
    assert info["dropped_by_reason"] == {}
    assert info["model"]["model"] == "sample" and info["model"]["arch"] == "curate-tiny" and info["dim"] == 64
    assert sum(info["clip_score"]["histogram"]["counts"]) == 3000

    proc = cli("inspect", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "sample (curate-tiny)" in proc.stdout and "dim=64" in proc.stdout
    assert "CLIP score histogram" in proc.stdout

    # the trained tiny model scores ground-truth mismatched captions lower than matched ones
    truth = read_truth(sorted((SAMPLE / "train").glob("*.tar"))).to_pydict()
    bad = dict(zip(truth["uid"], truth["mismatched"], strict=True))
    tables = run_tables(run)
    uids = [u for t in tables.values() for u in t["uid"]]
    scores = np.array([s for t in tables.values() for s in t["clip_score"]], dtype=np.float32)
    mism = np.array([bad[u] for u in uids])
    assert sorted(uids) == sorted(truth["uid"])
    assert mism.sum() == 600
    lo, hi = scores[mism], scores[~mism]
    se = np.sqrt(lo.var() / len(lo) + hi.var() / len(hi))
    assert lo.mean() < hi.mean() - 5 * se, (lo.mean(), hi.mean(), se)
    assert (lo[:, None] < hi[None, :]).mean() > 0.6  # P(a mismatched pair scores below a matched one)
