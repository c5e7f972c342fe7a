"""The ray engine on a local Ray (2 CPUs, one session for the module): tasks, actors, Ray Data over items,
errors, and ``curate select --engine ray`` giving exactly the local engine's tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'curate[ray]')")

import test_engines  # noqa: E402
from test_engines import ITEMS, Events, FileWorker, failing, scaled  # noqa: E402

from curate.cli.app import main  # noqa: E402
from curate.engines import make_engine  # noqa: E402
from curate.errors import InputError, UsageError  # noqa: E402
from curate.select import run_selection  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own
ray.cloudpickle.register_pickle_by_value(test_engines)  # Ray workers can't import the tests folder
_spec = importlib.util.spec_from_file_location("select_fixtures", Path(__file__).parent / "select" / "conftest.py")
_select = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_select)
normalise, write_run = _select.normalise, _select.write_run


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the whole module (its start-up takes seconds); engines reuse it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def engine():
    with make_engine("ray", device="cpu") as eng:
        yield eng


def test_ray_engine_map_and_items(engine, tmp_path: Path) -> None:
    assert engine.distributed and engine.worker_device() == "cpu" and engine.parallelism() == 2
    assert engine.map(scaled, list(range(5)), {"factor": np.int64(3)}) == [0, 3, 6, 9, 12]
    ev = Events()
    res = engine.run_items(FileWorker(str(tmp_path)), ITEMS, ev)
    assert [r["item"] for r in res] == ITEMS and {r["device"] for r in res} == {"cpu"}
    assert len({r["pid"] for r in res}) == 2  # two actors, each opened the worker once
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(ITEMS)
    assert ev.started == ["files"]


def test_ray_engine_errors_keep_their_one_line_message(engine, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^bad item item4$"):
        engine.run_items(FileWorker(str(tmp_path), fail_on="item4"), ITEMS)
    with pytest.raises(InputError, match=r"^no such item: 3$"):
        engine.map(failing, [1, 2, 3])
    with pytest.raises(UsageError, match="--device cuda:1 with --engine ray"):
        make_engine("ray", device="cuda:1")
    with pytest.raises(UsageError, match="--ray-num-cpus only applies to a local Ray"):
        make_engine("ray", address="auto", num_cpus=2)


# --- select: the same tables with --engine ray ------------------------------------------------------


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    """A Zipf-sized 12-class pool with near-duplicates, so that every per-class path has work."""
    rng = np.random.default_rng(0)
    n, d, c = 2400, 16, 12
    centres = normalise(rng.normal(size=(c, d)))
    p = 1 / np.arange(1, c + 1)
    labels = rng.choice(c, n, p=p / p.sum())
    img = normalise(centres[labels] + 0.4 * rng.normal(size=(n, d)))
    txt = normalise(centres[labels] + 0.4 * rng.normal(size=(n, d)))
    img[100:160] = normalise(img[40:100] + 0.01 * rng.normal(size=(60, d)))  # near-duplicates
    return write_run(tmp_path_factory.mktemp("pool") / "run", img, txt, n_shards=3), centres


def _tables(sel: Path) -> tuple[object, object]:
    return pq.read_table(sel / "scores.parquet"), pq.read_table(sel / "manifest.parquet")


@pytest.mark.parametrize(
    ("method", "options", "budget"),
    [
        ("clipcov", {"variant": "reference"}, {"fraction": 0.4}),
        ("clipcov", {"variant": "greedy"}, {"fraction": 0.4}),
        ("clipcov", {"variant": "greedy", "partition": "kmeans:7"}, {"count": 700}),
        ("semdedup", {}, {"fraction": 0.5}),
        ("semdedup", {"keep": "random", "clusters": 5}, {"count": 900}),
    ],
)
def test_select_with_ray_gives_the_local_tables_bit_for_bit(engine, pool_run, monkeypatch, method, options, budget):
    """Every column of scores.parquet and the manifest are identical (floats compared bit for bit).

    Small chunk sizes make the big classes and clusters split into several tasks, as at scale.
    """
    import curate.select.baselines as bl
    import curate.select.clipcov as cc
    import curate.select.partition as part

    monkeypatch.setattr(cc, "CROSS_CHUNK_ELEMENTS", 1 << 14)
    monkeypatch.setattr(bl, "PRIOR_CHUNK_ELEMENTS", 1 << 12)
    monkeypatch.setattr(part, "_BLOCK_ROWS", 512)  # zero-shot argmax in 5 blocks
    root, centres = pool_run
    ct = centres if "partition" not in options else None
    name = f"{method}-{abs(hash(str(options))) % 10**6}"
    local = run_selection(root, method, name=f"{name}-local", options=options, class_text=ct, **budget)
    dist = run_selection(root, method, name=f"{name}-ray", options=options, class_text=ct, engine=engine, **budget)
    (ls, lm), (rs, rm) = _tables(local.path), _tables(dist.path)
    assert ls.column_names == rs.column_names
    for col in ls.column_names:
        assert ls.column(col).equals(rs.column(col)), col
    assert lm.equals(rm)
    assert local.manifest.header["content_hash"] == dist.manifest.header["content_hash"]
    assert 0 < local.kept < local.pool_size


def test_select_cli_engine_ray(pool_run, tmp_path: Path, capsys) -> None:
    root, _ = pool_run
    classes = tmp_path / "classes.txt"
    args = ["select", "--run", str(root), "--method", "semdedup", "--fraction", "0.3", "--json"]
    assert main([*args, "--name", "cli-local"]) == 0
    assert main([*args, "--name", "cli-ray", "--engine", "ray"]) == 0
    a, b = (pq.read_table(root / "selections" / n / "scores.parquet") for n in ("cli-local", "cli-ray"))
    assert a.equals(b)
    capsys.readouterr()
    assert main([*args, "--engine", "spark"]) == 2
    assert "Invalid value for '--engine'" in capsys.readouterr().err
    assert main([*args, "--ray-address", "auto"]) == 2
    assert capsys.readouterr().err.strip() == "error: --ray-address does not apply to --engine local"
    del classes
