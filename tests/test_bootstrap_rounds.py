"""The bootstrap state machine over rounds: phases, ρ_cur, warm-up, determinism, InfoBatch, coreset."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from bootstrap_helpers import make_pool_run, manifest_uids, record_random_losses, uid_of, write_losses

from curate.bootstrap import bootstrap_round, derive_coreset, history, load_state
from curate.bootstrap.schedule import infobatch_prune_rounds, rho_cur
from curate.io.manifest import build_manifest, read_manifest, write_manifest
from curate.io.tables import read_parquet, write_table


def test_rho_cur_matches_spec_values() -> None:
    # the cosine ramp (docs/bootstrap.md) with T_cos = 3: e mod 4 = 0 -> 0, 1 -> 0.25, 2 -> 0.75, 3 -> 1.0
    assert [round(rho_cur(e, 3), 12) for e in range(8)] == [0, 0.25, 0.75, 1.0, 0, 0.25, 0.75, 1.0]
    assert rho_cur(1, 1) == 1.0
    assert rho_cur(1, 2) == pytest.approx(0.5) and rho_cur(2, 2) == pytest.approx(1.0)


def test_twelve_rounds_phases_rho_and_pruned_counts(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 200)
    phases, rhos = [], []
    for r in range(12):
        if r > 0:
            record_random_losses(run, r - 1, batch_size=20)
        res = bootstrap_round(run.root, r, knobs={"warmup_rounds": 2})
        s = res.summary
        phases.append(s["phase"])
        rhos.append(round(s["rho_cur"], 12))
        if s["phase"] == "mutate":
            cand = s["candidates"]["total"]
            assert s["pruned"] == int(cand * s["rho_cur"])
            # 10 batches of 20: 6 redundant + 6 ill-matched per batch, each in [0.9k, k] (k = 6)
            assert 10 * 2 * 6 * 0.9 - 20 <= cand <= 10 * 2 * 6
        else:
            assert s["kept"] == 200 and s["pruned"] == 0
    w, p, m = "warmup", "prepare", "mutate"
    assert phases == [w, w, p, m, m, m, p, m, m, m, p, m]
    assert rhos == [0, 0, 0, 0.25, 0.75, 1.0, 0, 0.25, 0.75, 1.0, 0, 0.25]
    st = load_state(run.root)
    assert st["round"] == 11 and st["method_state"]["candidates_round"] == 10
    assert [h["phase"] for h in st["history"]] == phases
    # candidates come from the losses of the preparation round before each cycle
    assert sorted(p.name for p in (run.bootstrap_dir / "candidates").glob("*.parquet")) == [
        "round-0002.parquet", "round-0006.parquet", "round-0010.parquet"]
    # the manifest header says what happened
    hdr = read_manifest(run.manifest_file(5)).header
    assert hdr["phase"] == "mutate" and hdr["bootstrap"]["rho_cur"] == 1.0
    assert hdr["counts"]["pruned"] == sum(hdr["counts"]["pruned_by_reason"].values())
    assert hdr["parent"] == "manifests/round-0004.parquet"
    # per-uid history: every pruned uid of round 5 is absent from its manifest
    h = history(run.root)
    pruned5 = set(h.filter(pa.compute.and_(pa.compute.equal(h["round"], 5), h["pruned"]))["uid"].to_pylist())
    assert pruned5 and not pruned5 & set(manifest_uids(run, 5))
    assert len(pruned5) == hdr["counts"]["pruned"]


def _constant_losses(run, round_: int, level: float, batch_size: int = 10) -> None:
    uids = manifest_uids(run, round_)
    n = len(uids)
    write_losses(run, round_, uids, np.arange(n) // batch_size, np.full(n, level), np.full(n, level))


def test_warmup_ends_on_loss_plateau(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 40)
    levels = [10.0, 6.0, 5.0, 4.9]  # epoch loss = 4 batches * level; rel. improvements: ~1, 0.4, 0.167
    phases = []
    for r in range(5):
        if r > 0:
            _constant_losses(run, r - 1, levels[r - 1])
        phases.append(bootstrap_round(run.root, r).summary["phase"])
    assert phases == ["warmup", "warmup", "warmup", "prepare", "mutate"]
    trace = load_state(run.root)["method_state"]["warmup_trace"]
    assert [t["round"] for t in trace] == [0, 1, 2]
    assert trace[0]["epoch_loss"] == pytest.approx(40.0)
    assert trace[1]["rel_improvement"] == pytest.approx(0.4)
    assert trace[2]["rel_improvement"] == pytest.approx(1 / 6)
    assert load_state(run.root)["method_state"]["warmup_end"] == 3


def test_rerun_is_idempotent_and_runs_are_deterministic(tmp_path: Path) -> None:
    def go(root: Path) -> list[bytes]:
        run = make_pool_run(root, 120)
        for r in range(5):
            if r > 0:
                record_random_losses(run, r - 1)
            bootstrap_round(run.root, r, knobs={"warmup_rounds": 1}, seed=3)
        return [run.manifest_file(r).read_bytes() for r in range(5)]

    a, b = go(tmp_path / "a"), go(tmp_path / "b")
    assert a == b
    run_a = tmp_path / "a"
    before = {p: p.read_bytes() for p in (run_a / "bootstrap").rglob("*") if p.is_file()}
    bootstrap_round(run_a, 4)  # rerun of the latest round
    assert run_a.joinpath("manifests/round-0004.parquet").read_bytes() == a[4]
    assert {p: p.read_bytes() for p in (run_a / "bootstrap").rglob("*") if p.is_file()} == before
    # another seed draws a different subset
    run_c = make_pool_run(tmp_path / "c", 120)
    for r in range(3):
        if r > 0:
            record_random_losses(run_c, r - 1)
        bootstrap_round(run_c.root, r, knobs={"warmup_rounds": 1}, seed=4)
    assert run_c.manifest_file(2).read_bytes() != a[2]


def test_global_rank_scope_and_prune_mode(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 100)
    bootstrap_round(run.root, 0, knobs={"warmup_rounds": 0, "rank_scope": "global", "prune_mode": "redundant",
                                        "t_cos": 1})
    uids = manifest_uids(run, 0)
    loss = np.arange(100, dtype=float)  # uid i has loss i: global extremes are uids 0..29 and 70..99
    write_losses(run, 0, uids, np.arange(100) // 10, loss, loss)
    s = bootstrap_round(run.root, 1).summary
    assert s["rho_cur"] == 1.0 and s["pruned_by_reason"] == {"redundant": 30}
    assert sorted(set(uids) - set(manifest_uids(run, 1))) == [uid_of(i) for i in range(30)]


def test_init_selection_restricts_the_pool(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 100)
    pool = read_parquet(run.embedding_file("00000"), ["uid", "shard", "key", "position"])
    write_manifest(run.selection_dir("half") / "manifest.parquet",
                   build_manifest(pool, kind="selection", command="test"))
    s = bootstrap_round(run.root, 0, init="half", knobs={"warmup_rounds": 0}).summary
    assert s["pool"] == 50 and s["kept"] == 50
    assert load_state(run.root)["init"] == "half"


def test_infobatch_keep_ratio_weights_and_full_tail(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 100)
    knobs = {"total_rounds": 4, "prune_ratio": 0.4, "delta": 0.75}  # prune in rounds < 3
    s0 = bootstrap_round(run.root, 0, method="infobatch", knobs=knobs).summary
    assert s0["phase"] == "prune" and s0["pruned"] == 0  # every score is 3.0: nothing below the mean
    uids = manifest_uids(run, 0)
    loss = np.where(np.arange(100) < 50, 0.1, 1.0)  # 50 well-learned samples
    write_losses(run, 0, uids, np.arange(100) // 10, loss, loss)
    s1 = bootstrap_round(run.root, 1).summary
    assert s1["pruned"] == 50 - int(0.6 * 50) == 20 and s1["pruned_by_reason"] == {"well_learned": 20}
    m = read_manifest(run.manifest_file(1))
    w = dict(zip(m.table["uid"].to_pylist(), m.table["weight"].to_pylist(), strict=True))
    low = {uid_of(i) for i in range(50)}
    assert sorted({round(v, 6) for u, v in w.items() if u in low}) == [round(1 / 0.6, 6)]
    assert all(v == 1.0 for u, v in w.items() if u not in low)
    assert m.header["weighted"] is True
    # round 1's losses exist only for kept samples; the pruned keep their old (low) score
    kept1 = manifest_uids(run, 1)
    write_losses(run, 1, kept1, np.arange(len(kept1)) // 10, np.full(len(kept1), 1.0), None)
    s2 = bootstrap_round(run.root, 2).summary
    assert s2["candidates"]["well_learned"] == 20 and s2["pruned"] == 20 - int(0.6 * 20)
    record_random_losses(run, 2)
    s3 = bootstrap_round(run.root, 3).summary
    assert s3["phase"] == "full" and s3["kept"] == 100
    assert set(read_manifest(run.manifest_file(3)).table["weight"].to_pylist()) == {1.0}


def _reference_pruned_epochs(delta: str, epochs: int) -> int:
    """InfoBatch's sampler, epoch by epoch: epoch e (from 0) prunes while e + 1 <= delta * epochs (exact)."""
    stop = Fraction(delta) * epochs
    return sum(1 for e in range(epochs) if e + 1 <= stop)


@pytest.mark.parametrize("delta", ["0.875", "0.5", "0.29", "0.7", "0.1", "0", "1"])
def test_infobatch_prunes_the_first_floor_delta_total_rounds(delta: str) -> None:
    for total in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 100, 200]:
        k = infobatch_prune_rounds(float(delta), total)
        assert k == _reference_pruned_epochs(delta, total), (delta, total)
        if float(delta) < 1:
            assert k < total  # at least the last round trains on full data
    assert [infobatch_prune_rounds(0.875, t) for t in (1, 2, 6, 8, 10, 16, 200)] == [0, 1, 5, 7, 8, 14, 175]
    assert infobatch_prune_rounds(0.29, 100) == 29  # not the 28 of 0.29 * 100 = 28.999... in floats


@pytest.mark.parametrize("total", [1, 2, 6, 8])
def test_infobatch_schedule_ends_with_full_data_rounds(tmp_path: Path, total: int) -> None:
    run = make_pool_run(tmp_path / "run", 40)
    phases = []
    for r in range(total):
        if r > 0:
            record_random_losses(run, r - 1, seed=r)
        s = bootstrap_round(run.root, r, method="infobatch" if r == 0 else None, knobs={"total_rounds": total}
                            if r == 0 else None).summary  # default --delta 0.875
        phases.append(s["phase"])
        header = read_manifest(run.manifest_file(r)).header
        assert header["bootstrap"]["full_from_round"] == math.floor(7 * total / 8)
        if s["phase"] == "full":
            assert s["kept"] == 40 and set(read_manifest(run.manifest_file(r)).table["weight"].to_pylist()) == {1.0}
    k = math.floor(7 * total / 8)
    assert phases == ["prune"] * k + ["full"] * (total - k)
    assert phases[-1] == "full"


def test_method_none_is_full_data(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 30)
    for r in range(3):
        s = bootstrap_round(run.root, r, method="none" if r == 0 else None).summary
        assert s["kept"] == 30 and s["phase"] == "full" and not s["record_losses"]


def test_coreset_prefers_rarely_pruned_samples(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 100)
    bootstrap_round(run.root, 0, knobs={"warmup_rounds": 0, "t_cos": 1})
    uids = manifest_uids(run, 0)
    loss = np.tile(np.arange(10, dtype=float), 10)  # in each batch of 10: 3 lowest, 3 highest are candidates
    write_losses(run, 0, uids, np.arange(100) // 10, loss, loss)
    bootstrap_round(run.root, 1)
    res = derive_coreset(run.root, 0.4, name="core")
    kept = set(read_manifest(res.manifest_path).table["uid"].to_pylist())
    assert res.prepare_rounds == [0]
    assert kept == {uids[i] for i in range(100) if 3 <= i % 10 <= 6}  # the never-candidate middle
    scores = read_parquet(run.selection_dir("core") / "scores.parquet")
    assert scores["selected"].to_pylist().count(True) == 40
    assert math.isclose(read_manifest(res.manifest_path).header["params"]["fraction"], 0.4)


def test_mutation_draw_is_uniform_over_candidates(tmp_path: Path) -> None:
    # 0.25 of the candidates pruned per round; over many seeds every candidate is pruned about equally
    counts: dict[str, int] = {}
    for seed in range(8):
        run = make_pool_run(tmp_path / f"s{seed}", 40)
        bootstrap_round(run.root, 0, knobs={"warmup_rounds": 0}, seed=seed)
        uids = manifest_uids(run, 0)
        loss = np.tile(np.arange(10, dtype=float), 4)
        write_losses(run, 0, uids, np.arange(40) // 10, loss, loss)
        bootstrap_round(run.root, 1)
        for u in set(uids) - set(manifest_uids(run, 1)):
            counts[u] = counts.get(u, 0) + 1
    assert len(counts) > 12  # different seeds prune different candidates (24 candidates, 6 pruned per seed)


def test_losses_written_with_pyarrow_types_are_cast(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 20)
    bootstrap_round(run.root, 0, knobs={"warmup_rounds": 0})
    t = pa.table({"uid": manifest_uids(run, 0), "batch": pa.array(np.zeros(20, np.int32)),
                  "loss_a": pa.array(np.linspace(0, 1, 20))})  # float64, int32, no loss_b
    write_table(run.losses_dir(0) / "part-00000.parquet", t)
    assert bootstrap_round(run.root, 1).summary["pruned"] == 3  # 0.25 * 12 candidates
