"""The cached trainer: the reference trainer's round protocol over an in-memory sample cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from curate.bootstrap.data import read_losses
from curate.cli.app import main
from curate.errors import InputError, UsageError
from curate.io.manifest import Manifest, read_manifest
from curate.io.shards import expand_shards
from curate.models import load_model, register_model_config
from curate.rundir import RunDir
from curate.trainer.cached import (
    CachedTrainConfig,
    RoundPlan,
    SampleCache,
    bootstrap_plan,
    static_plan,
    train_cached,
)

TINY = "curate-test-tiny-cached"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
N_TRAIN = 48


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curate.world import make_sample

    register_model_config(TINY, TINY_CFG)
    root = tmp_path_factory.mktemp("cached")
    make_sample(root / "world", seed=0, n_train=N_TRAIN, n_test=4, shard_size=16, image_size=32)
    from safetensors.torch import save_file

    weights = root / "tiny.safetensors"  # embed wants explicit weights; random ones serve for bootstrap pools
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in load_model(TINY, device="cpu").model.state_dict().items()}, str(weights))
    assert main(["embed", str(root / "world" / "train"), "--run", str(root / "run"), "--model", TINY,
                 "--pretrained", str(weights), "--workers", "0", "--json"]) == 0
    return root


@pytest.fixture(scope="module")
def cache(world: Path) -> SampleCache:
    return SampleCache.build(expand_shards(str(world / "world" / "train")), load_model(TINY, device="cpu"))


def _model() -> object:
    torch.manual_seed(0)
    return load_model(TINY, device="cpu", precision="fp32")


def test_cache_build_save_load(cache: SampleCache, tmp_path: Path) -> None:
    assert len(cache) == N_TRAIN and cache.images.shape == (N_TRAIN, 3, 32, 32) and cache.tokens.shape == (N_TRAIN, 16)
    back = SampleCache.load(cache.save(tmp_path / "c.npz"))
    assert list(back.uids) == list(cache.uids) and torch.equal(back.images, cache.images)
    assert list(back.rows(cache.uids[[5, 2]])) == [5, 2]
    with pytest.raises(InputError, match="not in the sample cache"):
        cache.rows(["0" * 32])


def test_static_plan_trains_exactly_the_manifest(cache: SampleCache) -> None:
    keep = cache.uids[::3]
    manifest = Manifest(pa.table({"uid": pa.array(keep.tolist()), "weight": pa.array(np.ones(len(keep), np.float32))}))
    seen: list[object] = []
    cfg = CachedTrainConfig(rounds=2, batch_size=5, lr=1e-3)
    logs = train_cached(_model(), cache, cfg, static_plan(manifest), on_round=seen.append)
    assert [lg.samples for lg in logs] == [len(keep)] * 2
    assert [lg.steps for lg in logs] == [math.ceil(len(keep) / 5)] * 2
    assert all(np.isfinite(lg.mean_loss) for lg in logs) and seen == logs


def test_same_seed_same_weights_other_seed_differs(cache: SampleCache) -> None:
    m = Manifest(pa.table({"uid": pa.array(cache.uids.tolist()), "weight": pa.array(np.ones(N_TRAIN, np.float32))}))

    def weights(seed: int) -> torch.Tensor:
        loaded = _model()
        train_cached(loaded, cache, CachedTrainConfig(rounds=1, batch_size=8, seed=seed), static_plan(m))
        return torch.cat([p.detach().flatten() for p in loaded.model.parameters()])

    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bootstrap_plan_records_losses_for_scan(world: Path, cache: SampleCache, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    plan = bootstrap_plan(run, "scan", {"warmup_rounds": 1, "t_cos": 1}, seed=3)
    logs = train_cached(_model(), cache, CachedTrainConfig(rounds=3, batch_size=8), plan, run=run)
    assert [lg.phase for lg in logs] == ["warmup", "prepare", "mutate"]
    assert logs[0].kept == logs[1].kept == N_TRAIN > logs[2].kept == logs[2].samples
    rd = RunDir(run)
    # losses only where the next round reads them: the preparation round, every sample of its manifest
    assert not rd.losses_dir(0).exists() and not rd.losses_dir(2).exists()
    got = sorted(read_losses(rd, 1)[0]["uid"].to_pylist())
    assert got == sorted(read_manifest(rd.manifest_file(1)).table["uid"].to_pylist())
    needs_run = RoundPlan(static_plan(read_manifest(rd.manifest_file(1)))(0).manifest, record_losses=True)
    with pytest.raises(UsageError, match="pass run="):
        train_cached(_model(), cache, CachedTrainConfig(rounds=1, batch_size=8), lambda r: needs_run)


def test_lr_schedule() -> None:
    cfg = CachedTrainConfig(rounds=10, lr=1.0, warmup=1.0)
    assert cfg.lr_at(0.5) == pytest.approx(0.5, abs=1e-2)
    assert cfg.lr_at(1.0) == pytest.approx(1.0) and cfg.lr_at(10.0) == pytest.approx(0.0, abs=1e-9)
    assert cfg.lr_at(5.5) == pytest.approx(0.5)
    assert CachedTrainConfig(rounds=3, lr=0.1, schedule="constant").lr_at(2.9) == 0.1
    with pytest.raises(UsageError):
        CachedTrainConfig(rounds=3, schedule="step").validate()
