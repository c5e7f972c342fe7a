"""End to end: rounds of training on real (tiny) shards with a tiny open_clip model on CPU.

The run is embedded once per module with ``curate embed``; each test works on a copy of it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch

from curate.bootstrap import load_state
from curate.bootstrap.data import read_losses
from curate.cli.app import main
from curate.io.manifest import read_manifest
from curate.models import register_model_config
from curate.rundir import RunDir
from curate.trainer import TrainConfig, train_rounds

TINY = "curate-test-tiny-boot"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
N_TRAIN = 60


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curate.world import make_sample

    register_model_config(TINY, TINY_CFG)
    root = tmp_path_factory.mktemp("boot")
    make_sample(root / "world", seed=0, n_train=N_TRAIN, n_test=4, shard_size=20, image_size=32)
    run = root / "run"
    ckpt = root / "tiny-random.pt"  # curate embed wants weights; random ones are fine for plumbing tests
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY, pretrained=None).state_dict(), ckpt)
    assert main(["embed", str(root / "world" / "train"), "--run", str(run), "--model", TINY, "--pretrained",
                 str(ckpt), "--workers", "0", "--json"]) == 0
    return run


@pytest.fixture
def run(embedded: Path, tmp_path: Path) -> RunDir:
    dst = tmp_path / "run"
    shutil.copytree(embedded, dst)
    return RunDir(dst)


def _loss_uids(run: RunDir, round_: int) -> list[str]:
    return sorted(read_losses(run, round_)[0]["uid"].to_pylist())


def _manifest_uids(run: RunDir, round_: int) -> list[str]:
    return sorted(read_manifest(run.manifest_file(round_)).table["uid"].to_pylist())


def test_train_rounds_library(run: RunDir) -> None:
    cfg = TrainConfig(run=str(run.root), rounds=4, model=TINY, knobs={"warmup_rounds": 1, "t_cos": 2},
                      batch_size=10, lr=1e-3)
    logs = train_rounds(cfg)
    assert [lg.phase for lg in logs] == ["warmup", "prepare", "mutate", "mutate"]
    assert logs[0].kept == logs[1].kept == N_TRAIN
    assert logs[2].kept < N_TRAIN and logs[3].kept < logs[2].kept  # ρ_cur 0.5 then 1.0
    for lg in logs:
        # the trainer saw exactly the manifest's samples, each once, and recorded both losses
        assert _loss_uids(run, lg.round) == _manifest_uids(run, lg.round)
        assert lg.samples == lg.kept and lg.steps == -(-lg.kept // 10)
        assert Path(lg.checkpoint).exists()
    table, _ = read_losses(run, 1)
    assert table["loss_b"].null_count == 0 and len(set(table["batch"].to_pylist())) == 6
    # resuming continues at the next round from the latest checkpoint
    more = train_rounds(TrainConfig(run=str(run.root), rounds=1, model=TINY, batch_size=10))
    assert more[0].round == 4 and more[0].phase == "prepare"
    assert load_state(run.root)["round"] == 4


def test_example_reference_trainer(run: RunDir, capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "reference_trainer.py"
    spec = importlib.util.spec_from_file_location("reference_trainer_example", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    assert mod.main(["--run", str(run.root), "--rounds", "3", "--model", TINY, "--warmup-rounds", "0",
                     "--t-cos", "1", "--batch-size", "12"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in out] == ["prepare", "mutate", "prepare"]
    assert _loss_uids(run, 1) == _manifest_uids(run, 1) and len(_manifest_uids(run, 1)) < N_TRAIN


def test_no_hook_trainer_with_curate_losses(run: RunDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trainer without a loss hook: train on the manifest, save a checkpoint, `curate losses`, next round."""
    from curate.models import load_model

    r = str(run.root)
    model = load_model(TINY, device="cpu").model
    for n in range(3):
        args = ["bootstrap", "--run", r, "--round", str(n)] + (["--warmup-rounds", "0", "--t-cos", "1"] if n == 0
                                                                else [])
        assert main(args) == 0
        # ... an external trainer trains round n here; it saves an open_clip_train-style checkpoint:
        ckpt = tmp_path / f"epoch_{n + 1}.pt"
        torch.save({"epoch": n + 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
        capsys.readouterr()
        assert main(["losses", "--run", r, "--round", str(n), "--checkpoint", str(ckpt), "--batch-size", "8"]) == 0
        out = capsys.readouterr().out.strip()
        assert out == str(run.losses_dir(n) / "part-00000.parquet")
        assert _loss_uids(run, n) == _manifest_uids(run, n)
    table, _ = read_losses(run, 0)
    batches = table["batch"].to_pylist()
    assert batches == sorted(batches) and max(batches) == (N_TRAIN - 1) // 8  # manifest order, fixed size
    # a rerun needs --force; the result is the same
    assert main(["losses", "--run", r, "--round", "0", "--checkpoint", str(ckpt)]) == 3
    assert "pass --force" in capsys.readouterr().err
    assert main(["losses", "--run", r, "--round", "0", "--checkpoint", str(tmp_path / "missing.pt")]) == 3
    assert main(["losses", "--run", r, "--round", "7", "--checkpoint", str(ckpt)]) == 3


def _tiny_local_dir(folder: Path) -> Path:
    """The tiny architecture as an open_clip ``local-dir:`` folder (config + random weights, seed 0)."""
    import json

    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY, pretrained=None).state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.mark.slow
def test_open_clip_rounds_script_with_stand_in_trainer(run: RunDir, tmp_path: Path) -> None:
    """examples/open_clip_rounds.sh drives rounds through the CLI, resharding each round's manifest."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    tiny = _tiny_local_dir(tmp_path / "tiny")
    env = {
        **os.environ, "RUN": str(run.root), "MODEL": f"local-dir:{tiny}", "ROUNDS": "2", "NAME": "t",
        "LOGS": str(tmp_path / "logs"), "KNOBS": "--warmup-rounds 0 --t-cos 1", "DATA_MODE": "reshard",
        "PYTHON": sys.executable, "CURATE": f"{sys.executable} -m curate.cli.app",
        "TRAIN": f"{sys.executable} {repo / 'tests' / 'fake_open_clip_train.py'}", "EXTRA": "--batch-size 12",
        "LOSS_ARGS": "--batch-size 12",
    }
    proc = subprocess.run(["bash", str(repo / "examples" / "open_clip_rounds.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = [json.loads(line) for line in (tmp_path / "logs" / "t" / "calls.jsonl").read_text().splitlines()]
    assert [c["start"] for c in calls] == [0, 1]  # one epoch per call, resumed
    kept = [len(_manifest_uids(run, n)) for n in range(2)]
    assert [c["num_samples"] for c in calls] == kept and kept[1] < kept[0] == N_TRAIN
    assert [c["seen"] for c in calls] == kept  # the trainer read exactly the kept samples
    # losses only where the next round needs them (SCAN: after the preparation round 0, not mutation round 1)
    assert _loss_uids(run, 0) == _manifest_uids(run, 0)
    assert not run.losses_dir(1).exists()


#: webdataset 0.2.86 for open_clip_train, installed apart by ``make env`` (or pointed to by the variable)
OPEN_CLIP_TRAIN_DEPS = Path(os.environ.get("CURATE_OPEN_CLIP_TRAIN_DEPS")
                            or Path(__file__).resolve().parents[1] / ".venv" / "open_clip_train-deps")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("open_clip_train") is None, reason="open_clip_train is not installed")
@pytest.mark.skipif(not (OPEN_CLIP_TRAIN_DEPS / "webdataset").is_dir(),
                    reason=f"no webdataset<=0.2.86 for open_clip_train in {OPEN_CLIP_TRAIN_DEPS} (see make env)")
def test_open_clip_rounds_script_with_open_clip_train(run: RunDir, tmp_path: Path) -> None:
    """The same recipe with open_clip's real trainer (``python -m open_clip_train.main``), unchanged, on CPU:
    two rounds, one epoch each, resumed from its own checkpoints; curate losses after the preparation round."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    tiny = _tiny_local_dir(tmp_path / "tiny")
    logs = tmp_path / "logs"
    env = {
        **os.environ, "RUN": str(run.root), "MODEL": f"local-dir:{tiny}", "ROUNDS": "2", "NAME": "real",
        "LOGS": str(logs), "KNOBS": "--warmup-rounds 0 --t-cos 1", "DATA_MODE": "reshard",
        "PYTHON": sys.executable, "CURATE": f"{sys.executable} -m curate.cli.app",
        "EXTRA": "--batch-size 12 --workers 1 --lr 1e-4 --warmup 0", "LOSS_ARGS": "--batch-size 12",
        # open_clip_train's own environment: its data pipeline needs webdataset <= 0.2.86 (with 1.x it fails with
        # KeyError: 'fname'); make env installs that version apart, for the trainer only
        "TRAIN": f"env PYTHONPATH={OPEN_CLIP_TRAIN_DEPS} {sys.executable} -m open_clip_train.main",
    }
    proc = subprocess.run(["bash", str(repo / "examples" / "open_clip_rounds.sh")], env=env, capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = logs / "real" / "checkpoints"
    assert (ckpts / "epoch_1.pt").exists() and (ckpts / "epoch_2.pt").exists()
    state = [torch.load(ckpts / f"epoch_{e}.pt", map_location="cpu", weights_only=True) for e in (1, 2)]
    assert [s["epoch"] for s in state] == [1, 2]  # the second call resumed the first one's run
    w = "text_projection"
    keys = [k for k in state[0]["state_dict"] if k.endswith(w)]
    assert keys and not torch.equal(state[0]["state_dict"][keys[0]], state[1]["state_dict"][keys[0]])  # trained on
    kept = [len(_manifest_uids(run, n)) for n in range(2)]
    assert kept[1] < kept[0] == N_TRAIN
    assert _loss_uids(run, 0) == _manifest_uids(run, 0)  # losses of the real trainer's checkpoint, every sample
    assert not run.losses_dir(1).exists()


# --- interrupted and resumed --------------------------------------------------------------------------
def _trainer_args(run: Path, model: str) -> list[str]:
    return ["--run", str(run), "--rounds", "4", "--model", model, "--warmup-rounds", "1", "--t-cos", "2",
            "--batch-size", "10", "--lr", "1e-3"]


def _trainer_cmd(run: Path, model: str) -> list[str]:
    import sys

    example = Path(__file__).resolve().parents[1] / "examples" / "reference_trainer.py"
    return [sys.executable, str(example), *_trainer_args(run, model)]


def _env() -> dict[str, str]:
    # one thread: CPU kernels then give the same bits in every process (the comparison is byte for byte)
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _outputs(run: Path) -> dict[str, bytes]:
    """Everything the rounds wrote (manifests, losses, checkpoints, bootstrap state), hidden files included."""
    return {str(p.relative_to(run)): p.read_bytes() for d in ("manifests", "losses", "checkpoints", "bootstrap")
            for p in sorted((run / d).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_example_killed_mid_round_resumes_to_the_same_run(run: RunDir, tmp_path: Path) -> None:
    """The example trainer SIGKILLed in the middle of round 2 (a real process), then the same command again:
    it resumes at round 2 from round 1's checkpoint and ends with the files of an uninterrupted run, byte for
    byte (manifests, losses, weights, optimizer state, bootstrap state)."""
    import signal
    import subprocess
    import sys

    model = f"local-dir:{_tiny_local_dir(tmp_path / 'tiny')}"
    whole = tmp_path / "whole"
    shutil.copytree(run.root, whole)
    ref = subprocess.run(_trainer_cmd(whole, model), capture_output=True, text=True, env=_env(), timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert [line.split()[:3] for line in ref.stdout.splitlines()] == [
        ["round", "0:", "warmup"], ["round", "1:", "prepare"], ["round", "2:", "mutate"], ["round", "3:", "mutate"]]

    # the same command, Ctrl-C in round 1: one line, exit 130; the interrupted round's losses are not published
    hook = Path(__file__).resolve().parent / "trainer_killed_at.py"
    stopped = subprocess.run([sys.executable, str(hook), "INT", "1", "20", *_trainer_args(run.root, model)],
                             capture_output=True, text=True, env=_env(), timeout=600)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == "interrupted: round 0 is done; rerun the same command to resume"
    assert "Traceback" not in stopped.stderr
    assert not run.losses_dir(1).exists() and not (run.root / "checkpoints" / "round-0001.safetensors").exists()
    # again, SIGKILLed right after the second batch of round 2 (20 of its samples): a crash
    killed = subprocess.run([sys.executable, str(hook), "KILL", "2", "20", *_trainer_args(run.root, model)],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [line.split()[:2] for line in killed.stdout.splitlines()] == [["round", "1:"]]
    assert not (run.root / "checkpoints" / "round-0002.safetensors").exists()
    assert load_state(run.root)["round"] == 2  # round 2 was decided, its training was cut off

    args = _trainer_cmd(run.root, model)
    again = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert "resuming" in again.stderr and "at round 2 (rounds 0-1 are done)" in again.stderr
    assert [line.split()[:3] for line in again.stdout.splitlines()] == [["round", "2:", "mutate"],
                                                                       ["round", "3:", "mutate"]]
    assert _outputs(run.root) == _outputs(whole)
    # done: the same command says so and trains nothing
    last = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert last.returncode == 0 and last.stdout == "" and "all 4 rounds" in last.stderr
    assert _outputs(run.root) == _outputs(whole)


def test_round_progress_is_a_line_every_30_seconds_or_k_batches() -> None:
    from curate.trainer.reference import RoundProgress

    now = [0.0]
    lines: list[str] = []
    prog = RoundProgress(lines.append, every_s=30.0, clock=lambda: now[0])
    prog.start("round 3 (mutate)", total=100)
    for _ in range(9):  # 9 batches in 27 s: nothing yet
        now[0] += 3.0
        prog.advance(10)
    assert lines == []
    now[0] += 3.0
    prog.advance(10)  # 30 s: one line, with done/total, rate and ETA
    assert lines == ["round 3 (mutate): 100/100 samples, 3.3 samples/s, ETA 0s"]
    prog.start("round 4 (mutate)", total=1000)
    for _ in range(7):
        now[0] += 1.0
        prog.advance(10)
    assert lines[1:] == []
    batches = RoundProgress(lines.append, every_s=3600.0, every_batches=3, clock=lambda: now[0])
    batches.start("round 5 (prepare)", total=2100)
    for _ in range(7):
        now[0] += 2.0
        batches.advance(100)
    assert lines[1:] == ["round 5 (prepare): 300/2,100 samples, 50.0 samples/s, ETA 36s",
                         "round 5 (prepare): 600/2,100 samples, 50.0 samples/s, ETA 30s"]


def _example() -> Any:
    path = Path(__file__).resolve().parents[1] / "examples" / "reference_trainer.py"
    spec = importlib.util.spec_from_file_location("reference_trainer_example", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_start_and_checkpoints_are_checked_with_one_line(run: RunDir, capsys: pytest.CaptureFixture[str]) -> None:
    """``--start`` must follow a finished round and not go behind the bootstrap; a checkpoint that cannot be
    loaded weights-only is one line (exit 3), never torch's advice to load it unsafely."""
    mod = _example()
    args = ["--run", str(run.root), "--model", TINY, "--warmup-rounds", "0", "--t-cos", "1", "--batch-size", "12"]
    assert mod.main([*args, "--rounds", "2"]) == 0
    capsys.readouterr()
    for start, code, message in ((5, 3, "cannot start at round 5: round 4 has no checkpoint"),
                                 (0, 3, "cannot start at round 0: the run's bootstrap is at round 1"),
                                 (-1, 2, "--start must be >= 0")):
        assert mod.main([*args, "--rounds", "3", "--start", str(start)]) == code
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    state = load_state(run.root)
    for name, data in (("round-0001.safetensors", b"# not weights\n"), ("round-0001.optimizer.pt", b"# nor this\n")):
        path = run.root / "checkpoints" / name
        good = path.read_bytes()
        path.write_bytes(data)
        assert mod.main([*args, "--rounds", "3"]) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0].startswith("resuming") and len(err) == 2, err
        assert err[1].startswith(f"error: not a checkpoint curate can load safely: {path}"), err
        assert "weights_only" not in err[1] and "trusted" not in err[1]
        path.write_bytes(good)
    assert load_state(run.root) == state  # nothing was decided or trained
    assert mod.main([*args, "--rounds", "3"]) == 0  # with good files it resumes at round 2
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["2:"]
