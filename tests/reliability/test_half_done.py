"""Half-finished steps are said, never built on silently.

* Ctrl-C during ``curate embed`` (a real SIGINT to the process group, as a terminal sends it) exits 130
  with one line saying how many shards are done and how to resume; the rerun finishes the run.
* A file that is not a tar is ``not_tar``, its warning is curate's own one-line ``warning: ...``, and a
  command that embedded nothing at all exits 3.
* ``select`` and ``bootstrap --round 0`` refuse a run whose embed has pending shards unless
  ``--allow-partial``; the pool (size, digest, partial) is recorded, and a selection made on another
  pool is not replaced without ``--force``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.cli.app import main
from tests.embed_helpers import CURATE, REPO, SAMPLE, cli, sample_model_ready, terminal_sigint
from tests.reliability.runs import clustered_run

needs_sample = pytest.mark.skipif(not sample_model_ready(), reason="the sample model's weights are missing")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "CURATE_OFFLINE": "1"}


def _interrupt_embed(run: Path, *extra: str) -> tuple[int, str, str]:
    """Start ``curate embed`` on the sample, send SIGINT to its process group once a shard is done
    (SIGINT handled as in a terminal's foreground job, whatever the test suite inherited)."""
    args = [*CURATE, "embed", str(SAMPLE / "train"), "--run", str(run), "--model", "sample", "--batch-size", "32",
            *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env(),
                            start_new_session=True, preexec_fn=terminal_sigint)
    deadline = time.monotonic() + 240
    try:
        while not list((run / "embeddings").glob("*.parquet")):
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate()
                pytest.fail(f"embed ended before a shard was done: {proc.returncode} {err[-2000:]}")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


def _check_interrupted(run: Path, code: int, out: str, err: str, *extra: str) -> None:
    done = len(list((run / "embeddings").glob("*.parquet")))
    assert code == 130, err
    assert 1 <= done < 6, f"{done} shards done: the interrupt came too late to test anything"
    assert out == "" and "Traceback" not in err
    assert err.strip().splitlines() == [f"interrupted: {done} of 6 shards done; rerun the same command to resume"]
    res = cli("embed", str(SAMPLE / "train"), "--run", str(run), "--model", "sample", "--json", *extra)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["shards_skipped"] == done and summary["shards_embedded"] == 6 - done
    assert len(list((run / "embeddings").glob("*.parquet"))) == 6


@needs_sample
def test_ctrl_c_during_embed_says_what_is_done(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, out, err = _interrupt_embed(run, "--workers", "0")
    _check_interrupted(run, code, out, err, "--workers", "0")


@pytest.mark.slow
@needs_sample
def test_ctrl_c_during_embed_with_device_processes(tmp_path: Path) -> None:
    """The same with one process per device: the children's KeyboardInterrupt is reported by the parent."""
    run = tmp_path / "run"
    code, out, err = _interrupt_embed(run, "--devices", "cpu,cpu", "--workers", "0")
    _check_interrupted(run, code, out, err, "--devices", "cpu,cpu", "--workers", "0")


@needs_sample
def test_text_file_as_a_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a tar: ``not_tar`` in curate's one-line warning style, and exit 3 because nothing was embedded."""
    notes = tmp_path / "notes.tar"
    notes.write_text("# my notes\n" + "this is text, not a tar archive\n" * 100)
    res = cli("embed", str(notes), "--run", str(tmp_path / "run"), "--model", "sample", "--json")
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("warning: shard notes: not_tar (not a tar archive: no tar header in its "), lines
    assert lines[-1].startswith("error: nothing embedded: the 1 shard(s) to do gave no sample"), lines
    assert "WARNING:" not in res.stderr and "truncated_tar" not in res.stderr and "Traceback" not in res.stderr
    assert json.loads(res.stdout)["stats"]["shard_not_tar"] == 1
    # a call that did embed samples exits 0, with the bad shard's warning beside it (in-process this time)
    good = sorted((SAMPLE / "train").glob("*.tar"))[0]
    capsys.readouterr()
    assert main(["embed", f"{good}::{notes}", "--run", str(tmp_path / "run2"), "--model", "sample", "--workers", "0",
                 "--json"]) == 0
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")] == lines[:1]


# --- a partial pool -------------------------------------------------------------------------------------
N = 400


def _partial_run(root: Path) -> tuple[Path, Path, bytes]:
    """A run of N samples in 2 shards whose second shard is not embedded yet (run.json plans it)."""
    run = clustered_run(root / "run", N, dim=16, n_shards=2, k=3)
    table = run / "embeddings" / "00001.parquet"
    data = table.read_bytes()
    table.unlink()
    return run, table, data


def test_select_on_a_partial_pool_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, table, data = _partial_run(tmp_path)
    args = ["select", "-r", str(run), "-m", "random", "-f", "0.5"]
    assert main(args) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "1 of 2 shards are pending (00001)" in err and "--allow-partial" in err
    assert not (run / "selections").exists()
    # asked for: the manifest and run.json say the pool was partial, and how large it was
    assert main([*args, "--allow-partial"]) == 0
    sel = run / "selections" / "random-f0.5"
    header = json.loads((sel / "manifest.json").read_text())
    assert header["pool"]["partial"] is True and header["pool"]["samples"] == N // 2
    assert header["pool"]["pending_shards"] == 1 and header["counts"]["pool"] == N // 2
    assert json.loads((run / "run.json").read_text())["selections"]["random-f0.5"]["pool_partial"] is True
    before = {p.name: p.read_bytes() for p in sel.iterdir()}
    capsys.readouterr()
    # the embed finishes: the same command no longer names the same selection, so it is not replaced silently
    table.write_bytes(data)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: selection 'random-f0.5' was made on a pool of {N // 2:,} samples; the run's pool now "
                   f"has {N:,} samples: pass --force to replace it, or choose --name")
    assert {p.name: p.read_bytes() for p in sel.iterdir()} == before
    assert main([*args, "--force"]) == 0
    header = json.loads((sel / "manifest.json").read_text())
    assert header["pool"]["partial"] is False and header["pool"]["samples"] == header["counts"]["pool"] == N
    # the same pool and parameters: an idempotent rerun, no --force needed
    assert main(args) == 0
    assert json.loads((sel / "manifest.json").read_text()) == header


def test_a_pool_of_the_same_size_but_other_samples_is_another_pool(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = clustered_run(tmp_path / "run", N, dim=16, n_shards=2, k=3)
    args = ["select", "-r", str(run), "-m", "random", "-n", "10"]
    assert main(args) == 0
    # shard 00001 re-embedded from other data (e.g. with --refresh): as many samples, other uids
    path = run / "embeddings" / "00001.parquet"
    t = pq.read_table(path)
    pq.write_table(t.set_column(0, "uid", pa.array([f"{i:032x}" for i in range(10**6, 10**6 + t.num_rows)])), path)
    capsys.readouterr()
    assert main(args) == 2
    assert "was made on another pool of the same size" in capsys.readouterr().err


def test_bootstrap_round_0_on_a_partial_pool_only_when_asked(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run, table, data = _partial_run(tmp_path)
    assert main(["bootstrap", "-r", str(run), "--round", "0"]) == 3
    assert "1 of 2 shards are pending (00001)" in capsys.readouterr().err
    assert not (run / "bootstrap").exists() and not (run / "manifests").exists()
    assert main(["bootstrap", "-r", str(run), "--round", "0", "--allow-partial", "--json"]) == 0
    state = json.loads((run / "bootstrap" / "state.json").read_text())
    assert state["pool"]["partial"] is True and state["pool"]["size"] == N // 2
    header = json.loads((run / "manifests" / "round-0000.json").read_text())
    assert header["bootstrap"]["pool_partial"] is True and header["counts"]["pool"] == N // 2
    # once the embed has finished, the run's pool is no longer the one fixed at round 0: said, not ignored
    table.write_bytes(data)
    capsys.readouterr()
    assert main(["bootstrap", "-r", str(run), "--round", "0"]) == 3
    assert f"round 0 of {run} was decided on a pool of {N // 2:,} samples, the pool now has {N:,}" in \
        capsys.readouterr().err
    assert json.loads((run / "bootstrap" / "state.json").read_text()) == state
