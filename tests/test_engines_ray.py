"""The ray engine on a local Ray (2 CPUs, one session for the module): tasks, actors, Ray Data over items,
errors, and ``curate select --engine ray`` giving exactly the local engine's tables."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'curate[ray]')")

import test_engines  # noqa: E402
from test_engines import ITEMS, Events, FileWorker, failing, scaled  # noqa: E402
from test_engines_embed import assert_same_run, kill_world, reference_world  # noqa: E402

from curate.cli.app import main  # noqa: E402
from curate.engines import make_engine  # noqa: E402
from curate.errors import InputError, UsageError  # noqa: E402
from curate.select import run_selection  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own
ray.cloudpickle.register_pickle_by_value(test_engines)  # Ray workers can't import the tests folder
_spec = importlib.util.spec_from_file_location("select_fixtures", Path(__file__).parent / "select" / "conftest.py")
_select = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_select)
normalise, write_run, write_caption_run = _select.normalise, _select.write_run, _select.write_caption_run


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
    # in Ray's worker processes, at most one per CPU; how many of them got items is Ray's scheduling (on a
    # loaded machine one actor may take all five before the second has started)
    pids = {r["pid"] for r in res}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
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
        ("negcliploss", {"temperature": 0.05, "batch_size": 300, "repeats": 3}, {"fraction": 0.3}),
        ("normsim", {"target": "{pool}"}, {"fraction": 0.3}),  # the pool as its own target
    ],
)
def test_select_with_ray_gives_the_local_tables_bit_for_bit(engine, pool_run, monkeypatch, method, options, budget):
    """Every column of scores.parquet and the manifest are identical (floats compared bit for bit).

    Small blocks make pass 1 several tasks and every partition span several blocks, as at scale.
    """
    import curate.select.source as source

    monkeypatch.setattr(source, "BLOCK_ROWS", 512)  # pass 1 in 5 blocks
    root, centres = pool_run
    options = {k: (str(root) if v == "{pool}" else v) for k, v in options.items()}
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


@pytest.mark.parametrize("budget", [{"options": {"cap": 30}}, {"fraction": 0.3, "options": {}}])
def test_metaclip_with_ray_gives_the_local_tables_bit_for_bit(engine, tmp_path: Path, monkeypatch, budget) -> None:
    """Ray tasks read the captions back from the shards, match them and rescan: the same bytes."""
    import curate.select.source as source

    monkeypatch.setattr(source, "BLOCK_ROWS", 128)
    rng = np.random.default_rng(1)
    words = ["cat", "dog", "red", "sky", "tree", "a", "big", "boat"]
    caps = [" ".join(rng.choice(words, int(rng.integers(1, 5)))) for _ in range(700)]
    root = write_caption_run(tmp_path, caps, n_shards=3)
    meta = tmp_path / "meta.txt"
    meta.write_text("cat\ndog\nred dog\nsky\ntree\nbig boat\n")
    kw = {**budget, "options": {"metadata": str(meta), **budget["options"]}}
    local = run_selection(root, "metaclip", name="local", seed=4, **kw)
    dist = run_selection(root, "metaclip", name="ray", seed=4, engine=engine, **kw)
    (ls, lm), (rs, rm) = _tables(local.path), _tables(dist.path)
    assert ls.equals(rs) and lm.equals(rm)
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


# --- embed: the same tables with --engine ray; a killed driver, then a rerun --------------------------


@pytest.fixture(scope="module")
def embed_world(tmp_path_factory):
    return reference_world(tmp_path_factory.mktemp("embed"), seed=5)


def test_embed_with_ray_resumes_a_run_to_the_local_tables(embed_world, tmp_path: Path) -> None:
    """Three shards embedded in this process, the rest by Ray Data actors: the same tables and stats."""
    from curate.embed import EmbedConfig, run_embed

    run = tmp_path / "run"
    cfg = EmbedConfig(shards=embed_world["shards"], run=str(run), model=embed_world["model"], batch_size=4,
                      workers=1)
    run_embed(dataclasses.replace(cfg, shards=embed_world["shards"][:3], device="cpu"))
    res = run_embed(dataclasses.replace(cfg, engine="ray"))
    n = len(embed_world["shards"])
    assert res.shards_done == n - 3 and res.shards_skipped == 3 and res.failed == []
    rest = [embed_world["ref"] / "embeddings" / f"{Path(s).stem}.parquet" for s in embed_world["shards"][3:]]
    assert res.samples_written == sum(pq.read_metadata(p).num_rows for p in rest)
    assert_same_run(embed_world["ref"], run)
    assert run_embed(dataclasses.replace(cfg, engine="ray")).shards_done == 0


@pytest.mark.slow
def test_embed_ray_driver_killed_then_rerun(embed_world, tmp_path: Path) -> None:
    """kill -9 of a ``curate embed --engine ray`` driver mid-run: Ray ends its actors; a rerun with the ray
    engine skips the finished shards and ends with the tables of an uninterrupted run."""
    from curate.embed import EmbedConfig, run_embed
    from tests.embed_helpers import CURATE, REPO

    shards = kill_world(tmp_path / "shards")
    ref, run = tmp_path / "ref", tmp_path / "run"
    model = embed_world["model"]
    run_embed(EmbedConfig(shards=shards, run=str(ref), model=model, device="cpu", batch_size=4, workers=1))
    address = ray.get_runtime_context().gcs_address  # the driver joins this module's Ray as a second job
    args = ["embed", *shards, "--run", str(run), "--model", model, "--batch-size", "4", "--workers", "1",
            "--engine", "ray", "--ray-address", address]
    proc = subprocess.Popen([*CURATE, *args], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "embeddings").exists() or not list((run / "embeddings").glob("*.parquet")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(3.0)  # Ray ends the dead driver's actors
    done = sorted(p.name for p in (run / "embeddings").glob("*.parquet"))
    assert 0 < len(done) < len(shards)
    res = run_embed(EmbedConfig(shards=shards, run=str(run), model=model, batch_size=4, workers=1, engine="ray"))
    assert res.shards_skipped >= len(done) and res.shards_done == len(shards) - res.shards_skipped
    assert_same_run(ref, run)
    assert not [p for p in (run / "embeddings").iterdir() if p.name.startswith(".")]
