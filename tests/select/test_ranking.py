"""The bounded ranking: many sorted runs merged in passes give the order of one stable global sort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import curate.select.ranking as rk


def _runs(tmp_path: Path, values: np.ndarray, run_rows: int) -> list[rk.FileRun]:
    runs = []
    for i, lo in enumerate(range(0, len(values), run_rows)):
        rows = np.arange(lo, min(len(values), lo + run_rows))
        path = tmp_path / f"r{i:04d}.bin"
        rk.save_key_run(path, values[rows], rows)
        runs.append(rk.FileRun(path))
    return runs


@pytest.mark.parametrize("memory", [1 << 30, 1 << 17, 1])
def test_ranked_runs_give_the_stable_descending_order(tmp_path: Path, memory: int) -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 50, size=20_000).astype(np.float64)  # many ties, settled by the lower row
    values[rng.choice(len(values), 30, replace=False)] = np.nan  # NaN goes last
    values[:5] = -0.0
    runs = _runs(tmp_path / "runs", values, 97)
    expect = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    got = np.concatenate([r for r, _ in rk.ranked(runs, None, memory, tmp_path / "merge")])
    assert got.tolist() == expect.tolist()
    merged = sorted((tmp_path / "merge").glob("*.bin")) if (tmp_path / "merge").exists() else []
    _, fan_in = rk.merge_shape(memory, len(runs))
    assert (len(merged) > 0) == (len(runs) > rk.merge_shape(memory, 1)[1])  # passes only when needed
    assert fan_in >= 2
    top = np.concatenate([r for r, _ in rk.ranked(runs, 1234, memory, tmp_path / "merge2")])
    assert top.tolist() == expect[:1234].tolist()


def test_a_small_budget_bounds_what_a_merge_reads_at_once() -> None:
    chunk, fan_in = rk.merge_shape(1 << 20, 10_000)
    assert chunk * min(10_000, fan_in) * rk.MERGE_ENTRY_BYTES <= 1 << 20
    chunk, fan_in = rk.merge_shape(1 << 30, 3)
    assert chunk == rk.MAX_CHUNK and fan_in > 3


def test_row_values_spill_within_the_budget(tmp_path: Path) -> None:
    values = rk.RowValues({"v": "f8"}, 1000, 100, 16 * 3 * 40, tmp_path / "spill")  # 40 entries held at most
    order = np.random.default_rng(0).permutation(1000)
    for lo in range(0, 1000, 30):
        rows = order[lo : lo + 30]
        values.append(rows, v=rows * 0.5)
        assert sum(len(r) for r, _ in values._mem) <= 40
    rows, cols = values.slice(300, 400)
    assert rows.tolist() == list(range(300, 400)) and cols["v"].tolist() == [r * 0.5 for r in range(300, 400)]
    values.close()
    assert not (tmp_path / "spill").exists()


@pytest.mark.parametrize("k", [1, 7, 1234, 19_999, 20_000, 25_000])
@pytest.mark.parametrize("threshold", [None, 30.0, 49.0, 51.0])
def test_top_k_with_a_budget_and_a_threshold_is_a_prefix_of_the_order(tmp_path: Path, k: int,
                                                                       threshold: float | None) -> None:
    """A budget smaller than what a merge step reads (only the best of the step are sorted) and a
    threshold on the value: the rows are the stable descending order cut at the threshold, then at k."""
    rng = np.random.default_rng(k)
    values = rng.integers(0, 50, size=20_000).astype(np.float64)
    runs = _runs(tmp_path, values, 1500)
    expect = np.argsort(-values, kind="stable")
    if threshold is not None:
        expect = expect[values[expect] >= threshold]
    max_key = rk.key_of(threshold) if threshold is not None else None
    got = [r for r, _ in rk.top_k(runs, k, chunk=4096, max_key=max_key)]
    assert np.concatenate(got or [np.zeros(0, np.int64)]).tolist() == expect[:k].tolist()
