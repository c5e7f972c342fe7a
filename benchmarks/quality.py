"""Does curation pay off in training? Zero-shot accuracy of a tiny CLIP trained from scratch on each subset.

In the synthetic world (``curate.world``: 30 Zipf-sized classes, 20% mismatched captions, 8%
exact/near duplicates, 5% uninformative captions, a clean class-balanced test split) the pool is
embedded with a *proxy* model (the built-in ``sample`` tiny CLIP, trained on a different world, seed 0),
the static selections are made from those embeddings (random, clip-score, semdedup, clipcov, negcliploss,
normsim at the same budgets; DataComp's image-based filter; intersections of those; metaclip from the
captions, with the class names and their words as metadata; filter-then-sample, the recommended recipe:
an even draw within negCLIPLoss's top √f), and a tiny CLIP is
trained from random init on each arm with the reference trainer's round protocol (``curate.trainer.cached``:
the pool is decoded once into memory). Dynamic arms (SCAN,
InfoBatch, ClipCov + SCAN) get each round's manifest from ``bootstrap_round`` and hand back per-sample
losses with ``LossRecorder``. Every arm uses the same optimiser, learning-rate schedule and number of
epochs, so compute (sample-epochs seen) is proportional to what the arm keeps. Two controls: ``oracle-clean``
(a random subset of the samples the ground truth calls clean: what perfect defect filtering would give) and
``scan-matched-random`` (each round as many uniformly random samples as SCAN kept with the same seed).

Reported: zero-shot top-1 on the clean test split (mean ± std over seeds; a seed drives model init,
shuffling and the random subsets), sample-epochs seen (and % of full data), the ground-truth
composition of every static subset and of the sample-epochs each arm trained on.

    python benchmarks/quality.py --quick                   # < 20 min on 2 cores: 1 seed, 6 arms, small pool
    python benchmarks/quality.py                           # the BENCHMARKS table: 3 seeds, the FULL_ARMS (hours)
    python benchmarks/quality.py --jobs 2                  # two single-threaded training processes
    python benchmarks/quality.py --no-train                # only regenerate the markdown from the finished runs

Finished runs are kept in the results JSON, so a rerun (after a crash, or with more --seeds) only
trains what is missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import metric, write_summary  # noqa: E402

ARCH = "curate-quality-tiny"
#: The target set of normsim and image-filter: the clean, class-balanced test split of another world
#: (seed ``world_seed + TARGET_WORLD_OFFSET``, the same 30 classes, ``n_test`` images) embedded with the
#: proxy: the downstream task's own training images, disjoint from the images the arms are scored on.
TARGET_WORLD_OFFSET = 1000
#: Everything from this line on in the results markdown is kept when the tables are regenerated.
ANALYSIS_MARKER = "<!-- analysis (kept when the tables are regenerated) -->"


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Arm:
    """One training arm: a static selection, or a bootstrap method (optionally started from a selection)."""

    name: str
    kind: str  # "static" | "bootstrap" | "matched" (random samples, as many per round as arm ``selection``)
    selection: str | None = None  # static: selection name ("{seed}" is replaced); bootstrap: --init
    method: str | None = None  # bootstrap method
    knobs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    epochs_scale: float = 1.0  # > 1: train this many times the setup's epochs (equal-compute diagnostics)


@dataclass
class Setup:
    """Everything that decides the numbers (hashed into the results file; a change starts afresh)."""

    world_seed: int = 1
    n_train: int = 20000
    n_test: int = 3000
    image_size: int = 64  # of the generated JPEGs
    train_image_size: int = 32  # input size of the model trained from scratch (same for every arm)
    proxy: str = "sample"
    fractions: tuple[float, ...] = (0.3, 0.5)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    lr_warmup: float = 1.0
    threads: int = 1
    arms: tuple[str, ...] = ()

    def key(self) -> str:
        d = asdict(self)
        d.pop("arms")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def pct(f: float) -> str:
    return f"{round(f * 100)}"


def all_arms(setup: Setup) -> dict[str, Arm]:
    """Every arm the benchmark knows, by name."""
    arms = [Arm("full", "bootstrap", method="none", label="full data (bootstrap --method none)")]
    for f in setup.fractions:
        p = pct(f)
        arms += [
            Arm(f"random{p}", "static", selection=f"random{p}-s{{seed}}", label=f"random {p}%"),
            Arm(f"clip-score{p}", "static", selection=f"clip-score{p}", label=f"clip-score {p}%"),
            Arm(f"semdedup{p}", "static", selection=f"semdedup{p}", label=f"semdedup {p}%"),
            Arm(f"clipcov{p}", "static", selection=f"clipcov{p}", label=f"clipcov {p}% (world class names)"),
            Arm(f"clipcov-kmeans{p}", "static", selection=f"clipcov-kmeans{p}", label=f"clipcov {p}% (kmeans:30)"),
            Arm(f"negcliploss{p}", "static", selection=f"negcliploss{p}", label=f"negCLIPLoss {p}%"),
            Arm(f"normsim{p}", "static", selection=f"normsim{p}", label=f"NormSim-∞ {p}% (target: another world's "
                "test split)"),
            Arm(f"clipcov-and-negcliploss{p}", "static", selection=f"clipcov{p}-intersect-negcliploss{p}",
                label=f"clipcov {p}% ∩ negCLIPLoss {p}%"),
            Arm(f"image-filter-and-clip-score{p}", "static", selection=f"image-filter-intersect-clip-score{p}",
                label=f"DataComp image-based ∩ clip-score {p}%"),
            Arm(f"metaclip{p}", "static", selection=f"metaclip{p}",
                label=f"metaclip {p}% (class names and their words as metadata)"),
            # budgets per partition (sqrt over the zero-shot classes of the world's class names) and the recipes
            Arm(f"clipcov{p}-sqrt", "static", selection=f"clipcov{p}-sqrt",
                label=f"clipcov {p}%, --per-partition sqrt (class names)"),
            Arm(f"clip-score{p}-sqrt", "static", selection=f"clip-score{p}-sqrt",
                label=f"clip-score {p}%, --per-partition sqrt (class names)"),
            Arm(f"negcliploss{p}-sqrt", "static", selection=f"negcliploss{p}-sqrt",
                label=f"R1 = negCLIPLoss {p}%, --per-partition sqrt (class names)"),
            Arm(f"recipe-r2-{p}", "static", selection=f"recipe-r2-{p}",
                label=f"R2: z(negCLIPLoss) + 0.5·z(semdedup) {p}%, sqrt (class names)"),
            Arm(f"recipe-r3-{p}", "static", selection=f"recipe-r3-{p}",
                label=f"R3: z(ClipCov utility) + z(negCLIPLoss) {p}%, sqrt (class names)"),
            Arm(f"recipe-r1-km{p}", "static", selection=f"recipe-r1-km{p}",
                label=f"R1 with kmeans:30 partitions, {p}%"),
            Arm(f"recipe-r2-km{p}", "static", selection=f"recipe-r2-km{p}",
                label=f"R2 with kmeans:30 partitions, {p}%"),
            Arm(f"recipe-r3-km{p}", "static", selection=f"recipe-r3-km{p}",
                label=f"R3 with kmeans:30 partitions (ClipCov on kmeans:30 too), {p}%"),
            # filter, then sample (the README's recipe): negCLIPLoss keeps the top √f of the pool, then an even
            # draw of f of the pool among those (the draw follows the training seed, as random{p} does)
            Arm(f"fs{p}", "static", selection=f"fs{p}-s{{seed}}",
                label=f"filter-then-sample {p}%: random within negCLIPLoss top {pct(cut_of(f))}%"),
        ]
    if 0.3 in setup.fractions:  # the recipe's checks at 30%: another cut, and draws with budgets per partition
        arms += [
            Arm("fs30-cut70", "static", selection="fs30-cut70-s{seed}",
                label="filter-then-sample 30%, a wider cut: random within negCLIPLoss top 70%"),
            Arm("fs30-cls-sqrt", "static", selection="fs30-cls-sqrt-s{seed}",
                label="filter-then-sample 30%, the draw with --per-partition sqrt (class names)"),
            Arm("fs30-km-sqrt", "static", selection="fs30-km-sqrt-s{seed}",
                label="filter-then-sample 30%, the draw with --per-partition sqrt (kmeans:30)"),
            # diagnostic: the recipe's filter with its true defects removed, then the same even draw
            Arm("oracle-fs30", "static", selection="oracle-fs30-s{seed}",
                label="oracle filter on filter-then-sample: random 30% of the pool among the truly clean samples "
                      "of negCLIPLoss's top 55%"),
        ]
    arms += [
        Arm("image-filter", "static", selection="image-filter", label="DataComp image-based filter (no budget)"),
        Arm("scan", "bootstrap", method="scan", label="SCAN (ρ 0.3/0.3, plateau warm-up)"),
        Arm("scan-rho0.4", "bootstrap", method="scan", knobs={"rho_max": 0.4, "rho_min": 0.4},
            label="SCAN (ρ 0.4/0.4, plateau warm-up)"),
        Arm("infobatch", "bootstrap", method="infobatch", knobs={"total_rounds": setup.epochs},
            label="InfoBatch (prune 0.5, δ 0.875)"),
    ]
    for f in setup.fractions:  # ground truth as the selector: what perfect defect filtering would give
        p = pct(f)
        arms.append(Arm(f"oracle-clean{p}", "static", selection=f"oracle-clean{p}-s{{seed}}",
                        label=f"oracle: random {p}% of the truly clean samples"))
    if 0.3 in setup.fractions and 0.5 in setup.fractions:  # diagnostics: a method's order, defects removed by truth
        for m, what in (("clipcov", "ClipCov's (class names)"), ("clip-score", "CLIP-score's")):
            arms.append(Arm(f"oracle-{m}30", "static", selection=f"oracle-{m}30",
                            label=f"oracle filter on {what} order: its first 30% of truly clean samples"))
    for f in setup.fractions:  # equal compute: a subset trained for epochs / fraction (as many steps as full)
        p = pct(f)
        for m in ("random", "clip-score", "clipcov"):
            sel = f"{m}{p}-s{{seed}}" if m == "random" else f"{m}{p}"
            arms.append(Arm(f"{m}{p}-eqc", "static", selection=sel, epochs_scale=1 / f,
                            label=f"{m} {p}%, {round(setup.epochs / f)} epochs (equal compute)"))
    arms.append(Arm("scan-matched-random", "matched", selection="scan",
                    label="control: per round as many random samples as SCAN kept"))
    arms.append(Arm("scan-rho0.4-matched-random", "matched", selection="scan-rho0.4",
                    label="control: per round as many random samples as SCAN (ρ 0.4) kept"))
    if 0.5 in setup.fractions:
        arms.append(Arm("clipcov50+scan", "bootstrap", selection="clipcov50", method="scan",
                        label="clipcov 50% start + SCAN"))
    return {a.name: a for a in arms}


#: In the order they are trained (arm-major, so the arms the claims rest on get every seed first).
#: ``scan-matched-random`` needs the ``scan`` run of the same seed (it is trained after it); the same for
#: ``scan-rho0.4-matched-random`` and ``scan-rho0.4``.
FULL_ARMS = ("full", "random30", "clip-score30", "clipcov30", "scan", "semdedup30", "random50", "clip-score50",
             "clipcov50", "semdedup50", "infobatch", "scan-matched-random", "clipcov50+scan", "oracle-clean30",
             "oracle-clean50", "random30-eqc", "clipcov30-eqc", "clip-score30-eqc", "scan-rho0.4",
             "scan-rho0.4-matched-random", "clipcov-kmeans30", "clipcov-kmeans50", "random50-eqc", "clipcov50-eqc",
             "negcliploss30", "normsim30", "clipcov-and-negcliploss30", "metaclip30", "metaclip50",
             # issue 16: per-partition budgets, the three recipe candidates (R1 = negcliploss-sqrt), the new
             # methods at 50%, and the recipes with k-means partitions
             "clipcov30-sqrt", "clip-score30-sqrt", "negcliploss30-sqrt", "recipe-r2-30", "recipe-r3-30",
             "clipcov50-sqrt", "clip-score50-sqrt", "negcliploss50-sqrt", "recipe-r2-50", "recipe-r3-50",
             "negcliploss50", "normsim50", "recipe-r1-km30", "recipe-r2-km30", "recipe-r3-km30",
             # what the gap to the oracle is made of: a method's own order with the true defects taken out
             "oracle-clipcov30", "oracle-clip-score30",
             # filter-then-sample (the recommended recipe), then its checks: another cut, budgets per partition
             "fs30", "fs50", "fs30-cut70", "fs30-cls-sqrt", "fs30-km-sqrt", "oracle-fs30")
# Not in FULL_ARMS (run them with --arms): in this world the target (another world's test split) holds all
# 30 classes, every k-means cluster of the pool is a target cluster, and DataComp's image-based filter keeps
# the whole pool; so "image-filter" trains on the full pool and "image-filter-and-clip-score30" on exactly
# clip-score30's subset (same uids, same order), whose training is deterministic: they would repeat those arms.
QUICK_ARMS = ("full", "random30", "clip-score30", "clipcov30", "scan", "fs30")


def cut_of(fraction: float) -> float:
    """The recipe's filter: the share of the pool negCLIPLoss keeps before the even draw of ``fraction``, √f
    (two decimals): the filter and the draw each keep the same share (0.3 → 0.55, 0.5 → 0.71)."""
    return round(math.sqrt(fraction), 2)


def selection_plans(
    setup: Setup, seeds: list[int], classes: Path, target: Path
) -> list[tuple[str, str, float | None, dict[str, Any], int]]:
    """(name, method, fraction, options, seed) of every static selection an arm may need; a set operation
    comes after the selections it combines (its ``of``)."""
    plans: list[tuple[str, str, float | None, dict[str, Any], int]] = [
        ("image-filter", "image-filter", None, {"target": str(target)}, 0),
    ]
    for f in setup.fractions:
        p = pct(f)
        plans += [(f"random{p}-s{s}", "random", f, {}, s) for s in seeds]
        plans += [(f"oracle-clean{p}-s{s}", "oracle-clean", f, {}, s) for s in seeds]
        plans += [
            (f"clip-score{p}", "clip-score", f, {}, 0),
            (f"semdedup{p}", "semdedup", f, {}, 0),
            (f"clipcov{p}", "clipcov", f, {"classes": str(classes)}, 0),
            (f"clipcov-kmeans{p}", "clipcov", f, {"partition": "kmeans:30"}, 0),
            (f"negcliploss{p}", "negcliploss", f, {}, 0),
            (f"normsim{p}", "normsim", f, {"target": str(target), "norm": "inf"}, 0),
            (f"clipcov{p}-intersect-negcliploss{p}", "intersect", None, {"of": (f"clipcov{p}", f"negcliploss{p}")}, 0),
            (f"image-filter-intersect-clip-score{p}", "intersect", None, {"of": ("image-filter", f"clip-score{p}")},
             0),
            (f"metaclip{p}", "metaclip", f, {"metadata": str(metadata_file(classes))}, 0),
        ]
        # per-partition budgets: "per_partition" is run_selection's argument, the rest the method's options
        by_class = {"classes": str(classes), "per_partition": "sqrt"}
        by_km = {"partition": "kmeans:30", "per_partition": "sqrt"}
        r2 = {"of": (f"negcliploss{p}", f"semdedup{p}"), "weights": "1,0.5", "normalize": "z"}
        plans += [
            (f"clipcov{p}-sqrt", "clipcov", f, by_class, 0),
            (f"clip-score{p}-sqrt", "clip-score", f, by_class, 0),
            (f"negcliploss{p}-sqrt", "negcliploss", f, by_class, 0),
            (f"recipe-r2-{p}", "combine", f, {**r2, **by_class}, 0),
            (f"recipe-r3-{p}", "combine", f, {"of": (f"clipcov{p}", f"negcliploss{p}"), "weights": "1,1",
                                              "normalize": "z", **by_class}, 0),
            (f"recipe-r1-km{p}", "negcliploss", f, by_km, 0),
            (f"recipe-r2-km{p}", "combine", f, {**r2, **by_km}, 0),
            (f"recipe-r3-km{p}", "combine", f, {"of": (f"clipcov-kmeans{p}", f"negcliploss{p}"), "weights": "1,1",
                                                "normalize": "z", **by_km}, 0),
        ]
        cut = f"negcliploss-keep{pct(cut_of(f))}"  # filter, then sample
        plans.append((cut, "negcliploss", cut_of(f), {}, 0))
        plans += [(f"fs{p}-s{s}", "random", f, {"within": cut}, s) for s in seeds]
    if 0.3 in setup.fractions:
        cut = f"negcliploss-keep{pct(cut_of(0.3))}"
        plans.append(("negcliploss-keep70", "negcliploss", 0.7, {}, 0))
        plans += [(f"fs30-cut70-s{s}", "random", 0.3, {"within": "negcliploss-keep70"}, s) for s in seeds]
        plans += [(f"fs30-cls-sqrt-s{s}", "random", 0.3, {"within": cut, "classes": str(classes),
                                                           "per_partition": "sqrt"}, s) for s in seeds]
        plans += [(f"fs30-km-sqrt-s{s}", "random", 0.3, {"within": cut, "partition": "kmeans:30",
                                                          "per_partition": "sqrt"}, s) for s in seeds]
        plans += [(f"oracle-fs30-s{s}", "oracle-clean", 0.3, {"within": cut}, s) for s in seeds]
    if 0.3 in setup.fractions and 0.5 in setup.fractions:  # after the 50% selections they take their order from
        plans += [(f"oracle-{m}30", "oracle-order", 0.3, {"of": (f"{m}50",)}, 0) for m in ("clipcov", "clip-score")]
    # --compositions: subsets only scored against the ground truth (no arm trains on them)
    plans += [("semdedup-eps0.002", "semdedup", None, {"eps": 0.002}, 0),
              ("clipcov30-proportional", "clipcov", 0.3, {"classes": str(classes), "per_partition": "proportional"}, 0),
              # the recipe with CLIP-score as its filter: does the filter keep the class mix?
              ("clip-score-keep55", "clip-score", 0.55, {}, 0),
              ("fs30-clip-score-s0", "random", 0.3, {"within": "clip-score-keep55"}, 0)]
    return plans


#: What ``--compositions`` adds to the ground-truth table: can the proxy see duplicates (SemDeDup with a tiny
#: eps and no budget), and does a budget proportional to the zero-shot classes keep the pool's class mix?
COMPOSITIONS = ("semdedup-eps0.002", "clipcov30-proportional", "clip-score-keep55", "fs30-clip-score-s0")


def metadata_file(classes: Path) -> Path:
    """metaclip's metadata for the world: each class name and each word of one (``red``, ``circle``,
    ``red circle``), what a user who knows the class list would write; nothing from the caption
    templates. Written next to the class list, one entry per line."""
    path = classes.with_name("metaclip-metadata.txt")
    names = [n.strip() for n in classes.read_text().splitlines() if n.strip()]
    words = sorted({w for n in names for w in n.split()})
    text = "".join(f"{e}\n" for e in [*names, *words])
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def needed_selections(arms: list[Arm], plans: list[tuple[str, str, float | None, dict[str, Any], int]],
                      seeds: list[int]) -> set[str]:
    """The selections the arms train on, and the selections those are made from (set operations)."""
    need = {a.selection.replace("{seed}", str(s)) for a in arms if a.selection for s in seeds}
    for name, _, _, opts, _ in reversed(plans):  # a set operation comes after its parents
        if name in need and "of" in opts:
            need |= set(opts["of"])
        if name in need and "within" in opts:
            need.add(opts["within"])
    return need


def prepare_target(setup: Setup, work: Path) -> Path:
    """The target run of normsim and image-filter (see ``TARGET_WORLD_OFFSET``), made when missing."""
    from curate.embed import EmbedConfig, run_embed
    from curate.io.shards import expand_shards
    from curate.world import make_sample

    world, run = work / "target-world", work / "target-run"
    seed = setup.world_seed + TARGET_WORLD_OFFSET
    wj = world / "world.json"
    have = json.loads(wj.read_text()) if wj.exists() else None
    if have is None or have.get("seed") != seed or have["params"]["n_test"] != setup.n_test or \
            have["params"]["image_size"] != setup.image_size:
        log(f"generating the target world (seed {seed}, {setup.n_test} test images) in {world}")
        make_sample(world, seed=seed, n_train=1, n_test=setup.n_test, shard_size=2000, image_size=setup.image_size)
        shutil.rmtree(run, ignore_errors=True)
    run_embed(EmbedConfig(shards=expand_shards(str(world / "test")), run=str(run), model=setup.proxy, device="cpu",
                          workers=0))
    return run


# --------------------------------------------------------------------------------------------------
# Setup: world, proxy embeddings, selections, caches


def changed_selections(before: dict[str, Any], now: dict[str, Any]) -> set[str]:
    """Selections whose subset differs from the one recorded with the finished runs: another content hash,
    or, for records without one, other ground-truth figures."""
    out = set()
    for name, m in now.items():
        old = before.get(name)
        if old is None:
            continue
        if old.get("content_hash") and m.get("content_hash"):
            if old["content_hash"] != m["content_hash"]:
                out.add(name)
        elif any(old[k] != m[k] for k in old if k in m and k != "content_hash"):
            out.add(name)
    return out


def selection_path(work: Path, name: str) -> Path:
    """Manifest of a static subset: a ``curate select`` selection of the proxy run, or an oracle subset."""
    if name.startswith("oracle-"):
        return work / "oracle" / f"{name}.parquet"
    return work / "run" / "selections" / name / "manifest.parquet"


def write_oracle(run: Path, truth: Any, fraction: float, seed: int, path: Path, within: str | None = None) -> None:
    """A random ``fraction`` of the pool drawn only from samples the ground truth calls clean (an upper bound
    for defect filtering: no mismatched or uninformative caption, no duplicate); ``within``: only among
    those that selection ``within`` of the run kept too (what its filter would give without its defects)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from curate.bootstrap.data import load_round_pool
    from curate.io.manifest import build_manifest, write_manifest

    pool = load_round_pool(run).table
    n = int(pool.num_rows * fraction)
    ids = clean_uids(truth)
    if within is not None:
        from curate.io.manifest import read_manifest

        kept = read_manifest(selection_path(run.parent, within)).table.column("uid")
        ids = pc.filter(ids, pc.is_in(ids, value_set=kept.combine_chunks()))
    ids = ids.to_numpy(zero_copy_only=False)
    if n > len(ids):
        raise SystemExit(f"oracle subset of {n} samples needs more than the {len(ids)} clean samples")
    pick = np.sort(np.random.default_rng(seed).choice(len(ids), n, replace=False))
    rows = pool.filter(pc.is_in(pool.column("uid"), value_set=pa.array(ids[pick])))
    write_manifest(path, build_manifest(rows, kind="selection", command="benchmarks/quality.py (oracle-clean)",
                                        params={"fraction": fraction}, seed=seed, pool_size=pool.num_rows))


def clean_uids(truth: Any) -> Any:
    """The uids the ground truth calls clean: no mismatched or uninformative caption, no duplicate."""
    import pyarrow.compute as pc

    ok = pc.and_(pc.invert(truth.column("mismatched")), pc.invert(truth.column("uninformative")))
    return truth.filter(pc.and_(ok, pc.is_null(truth.column("duplicate_of")))).column("uid")


def write_oracle_order(run: Path, truth: Any, fraction: float, order: str, path: Path) -> None:
    """The first ``fraction`` of the pool, in the kept order of selection ``order`` (its ``rank``), among
    the samples the ground truth calls clean: the method's own choice with perfect defect filtering."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curate.bootstrap.data import load_round_pool
    from curate.io.manifest import build_manifest, write_manifest

    scores = pq.read_table(run / "selections" / order / "scores.parquet", columns=["uid", "selected", "rank"])
    clean = pc.is_in(scores.column("uid"), value_set=clean_uids(truth))
    kept = scores.filter(pc.and_(scores.column("selected"), clean))
    kept = kept.sort_by("rank")
    pool = load_round_pool(run).table
    n = int(pool.num_rows * fraction)
    if n > kept.num_rows:
        raise SystemExit(f"{order} keeps {kept.num_rows} clean samples, fewer than the {n} of the subset")
    ids = kept.column("uid").slice(0, n)
    rows = pool.filter(pc.is_in(pool.column("uid"), value_set=ids))
    write_manifest(path, build_manifest(rows, kind="selection", command=f"benchmarks/quality.py (oracle order {order})",
                                        params={"fraction": fraction, "order": order}, seed=0,
                                        pool_size=pool.num_rows))


def model_config(setup: Setup) -> dict[str, Any]:
    """The built-in tiny CLIP architecture (``shards/tiny-clip/curate-tiny.json``) at the training image size."""
    from curate.models import sample_model_paths

    cfg = json.loads(sample_model_paths()[0].read_text())
    cfg["vision_cfg"]["image_size"] = setup.train_image_size
    return cfg


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(setup: Setup, seeds: list[int], work: Path, arms: list[Arm],
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """World → proxy embeddings → selections → training/test caches, each skipped when already there."""
    from curate.embed import EmbedConfig, run_embed
    from curate.io.manifest import read_manifest
    from curate.io.shards import expand_shards
    from curate.models import load_model, register_model_config
    from curate.select import run_selection
    from curate.trainer.cached import SampleCache
    from curate.world import load_labelled_split, make_sample, read_truth, subset_truth_metrics

    timings: dict[str, float] = {}
    world = work / "world"
    params = {"seed": setup.world_seed, "n_train": setup.n_train, "n_test": setup.n_test,
              "image_size": setup.image_size}
    t0 = time.perf_counter()
    wj = world / "world.json"
    have = json.loads(wj.read_text()) if wj.exists() else None
    if have is None or {k: have["params"].get(k, have.get(k)) for k in params} != params:
        log(f"generating the world {params} in {world}")
        make_sample(world, seed=setup.world_seed, n_train=setup.n_train, n_test=setup.n_test,
                    shard_size=2000, image_size=setup.image_size)
        shutil.rmtree(work / "run", ignore_errors=True)  # embeddings of another world
        for stale in work.glob("cache-*.npz"):
            stale.unlink()
    timings["world"] = time.perf_counter() - t0
    train_shards = expand_shards(str(world / "train"))
    classes = world / "classnames.txt"

    t0 = time.perf_counter()
    run = work / "run"
    emb = run_embed(EmbedConfig(shards=train_shards, run=str(run), model=setup.proxy, device="cpu", workers=0))
    timings["embed"] = time.perf_counter() - t0
    log(f"proxy embeddings: {emb.samples_written} new rows ({emb.seconds:.0f}s)")

    target = work / "target-run"
    plans = selection_plans(setup, seeds, classes, target)
    needed = needed_selections(arms, plans, seeds) | set(extra)
    if any(name in needed and "target" in opts for name, _, _, opts, _ in plans):
        prepare_target(setup, work)
    truth = read_truth(train_shards)
    selections: dict[str, Any] = {"pool": subset_truth_metrics(truth.column("uid").combine_chunks(), truth)}
    t0 = time.perf_counter()
    for name, method, fraction, opts, seed in plans:
        if name not in needed:
            continue
        path = selection_path(work, name)
        if not path.exists() and method == "oracle-clean":
            write_oracle(run, truth, fraction, seed, path, opts.get("within"))
        elif not path.exists() and method == "oracle-order":
            write_oracle_order(run, truth, fraction, opts["of"][0], path)
        elif not path.exists():
            ts = time.perf_counter()
            opts = dict(opts)
            per_partition = opts.pop("per_partition", None)
            run_selection(run, method, fraction=fraction, name=name, seed=seed, options=opts, device="cpu",
                          force=True, per_partition=per_partition, command=f"benchmarks/quality.py ({method})")
            log(f"selection {name}: {time.perf_counter() - ts:.1f}s")
        manifest = read_manifest(path)
        selections[name] = {**subset_truth_metrics(manifest.table.column("uid").combine_chunks(), truth),
                            "content_hash": manifest.header.get("content_hash")}
    timings["select"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    register_model_config(ARCH, model_config(setup))
    loaded = load_model(ARCH, None, device="cpu", precision="fp32")
    cache_path = work / f"cache-train-{setup.train_image_size}.npz"
    if not cache_path.exists():
        log("decoding the pool into the training cache")
        SampleCache.build(train_shards, loaded).save(cache_path)
    test_path = work / f"cache-test-{setup.train_image_size}.npz"
    if not test_path.exists():
        names = classes.read_text().splitlines()
        images, labels = load_labelled_split(loaded, str(world / "test"), names)
        np.savez(test_path, images=images.numpy(), labels=labels)
    truth_path = work / "truth.npz"
    if not truth_path.exists():
        cache = SampleCache.load(cache_path)
        row = cache.rows(truth.column("uid").to_numpy(zero_copy_only=False))
        n = len(cache)
        mism, dup, unin = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        mism[row] = truth.column("mismatched").to_numpy(zero_copy_only=False)
        dup[row] = truth.column("duplicate_of").is_valid().to_numpy(zero_copy_only=False)
        unin[row] = truth.column("uninformative").to_numpy(zero_copy_only=False)
        np.savez(truth_path, mismatched=mism, duplicate=dup, uninformative=unin)
    timings["cache"] = time.perf_counter() - t0
    return {"selections": selections, "timings": timings, "world": params}


# --------------------------------------------------------------------------------------------------
# One training run (in a worker process)


_CACHE: dict[str, Any] = {}


def _arm_run_dir(work: Path, arm: Arm, seed: int) -> Path:
    """A fresh bootstrap run folder sharing the main run's proxy embeddings (a crashed run restarts)."""
    d = work / "arms" / f"{arm.name}-s{seed}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shutil.copy(work / "run" / "run.json", d / "run.json")
    (d / "embeddings").symlink_to((work / "run" / "embeddings").resolve(), target_is_directory=True)
    return d


def train_arm(setup_d: dict[str, Any], arm_d: dict[str, Any], seed: int, work_s: str) -> dict[str, Any]:
    """Train one arm with one seed from random init; zero-shot accuracy and what it trained on."""
    import torch

    torch.set_num_threads(setup_d["threads"])
    from curate.io.manifest import read_manifest
    from curate.models import load_model, register_model_config
    from curate.trainer.cached import CachedTrainConfig, SampleCache, bootstrap_plan, static_plan, train_cached
    from curate.world import zero_shot_accuracy

    setup = Setup(**{**setup_d, "fractions": tuple(setup_d["fractions"]), "arms": tuple(setup_d["arms"])})
    arm = Arm(**arm_d)
    work = Path(work_s)
    t0 = time.perf_counter()
    if "train" not in _CACHE:
        _CACHE["train"] = SampleCache.load(work / f"cache-train-{setup.train_image_size}.npz")
        with np.load(work / f"cache-test-{setup.train_image_size}.npz") as z:
            _CACHE["test"] = (torch.from_numpy(z["images"]), z["labels"])
        with np.load(work / "truth.npz") as z:
            _CACHE["truth"] = {k: z[k] for k in z.files}
    cache, (test_x, test_y), truth = _CACHE["train"], _CACHE["test"], _CACHE["truth"]
    world = work / "world"
    names = (world / "classnames.txt").read_text().splitlines()
    templates = [t for t in (world / "templates.txt").read_text().splitlines() if t.strip()]

    register_model_config(ARCH, model_config(setup))
    torch.manual_seed(seed)
    loaded = load_model(ARCH, None, device="cpu", precision="fp32")
    run_dir = None
    if arm.kind == "static":
        sel = (arm.selection or "").replace("{seed}", str(seed))
        plan = static_plan(read_manifest(selection_path(work, sel)))
    elif arm.kind == "matched":
        plan = matched_random_plan(work, str(arm.selection), seed, cache, round(setup.epochs * arm.epochs_scale))
    else:
        run_dir = _arm_run_dir(work, arm, seed)
        init = str(work / "run" / "selections" / arm.selection / "manifest.parquet") if arm.selection else None
        plan = bootstrap_plan(run_dir, arm.method or "none", dict(arm.knobs), seed=seed, init=init,
                              command=f"benchmarks/quality.py ({arm.name})")
    cfg = CachedTrainConfig(rounds=round(setup.epochs * arm.epochs_scale), batch_size=setup.batch_size, lr=setup.lr,
                            weight_decay=setup.weight_decay, warmup=setup.lr_warmup, seed=seed)

    rounds: list[dict[str, Any]] = []
    defect = {"mismatched": 0, "duplicate": 0, "uninformative": 0}

    def plan_and_count(r: int) -> Any:
        p = plan(r)
        rows = cache.rows(p.manifest.table.column("uid").to_numpy(zero_copy_only=False))
        for k in defect:
            defect[k] += int(truth[k][rows].sum())
        rounds.append({"round": r, "phase": p.phase, "kept": len(rows),
                       "rho_cur": p.summary.get("rho_cur"), "candidates": (p.summary.get("candidates") or {})})
        return p

    logs = train_cached(loaded, cache, cfg, plan_and_count, run=run_dir)
    for rd, lg in zip(rounds, logs, strict=True):
        rd.update(samples=lg.samples, mean_loss=round(lg.mean_loss, 4))
    acc = zero_shot_accuracy(loaded, test_x, test_y, names, templates)
    seen = sum(lg.samples for lg in logs)
    out: dict[str, Any] = {
        "arm": arm.name, "seed": seed, "zero_shot": acc, **error_breakdown(loaded, test_x, test_y, names, templates,
                                                                           work), "sample_epochs": seen,
        "full_sample_epochs": len(cache) * setup.epochs, "epochs": cfg.rounds,
        "defect_share": {k: v / max(seen, 1) for k, v in defect.items()},
        "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1),
    }
    if run_dir is not None and arm.method == "scan":
        from curate.bootstrap import load_state

        st = load_state(run_dir) or {}
        out["warmup_end"] = (st.get("method_state") or {}).get("warmup_end")
        out["candidate_truth"] = candidate_truth(run_dir, cache, truth)
    if run_dir is not None:
        shutil.rmtree(run_dir / "losses", ignore_errors=True)  # the bulk; manifests and state stay for inspection
    return out


def matched_random_plan(work: Path, ref: str, seed: int, cache: Any, rounds: int) -> Any:
    """Each round, as many samples as arm ``ref`` (same seed) trained on, drawn uniformly from the pool.

    The control for a dynamic method: the same steps and learning-rate schedule, only the choice of
    samples differs (random instead of the method's).
    """
    import pyarrow as pa

    from curate.io.manifest import Manifest, read_manifest
    from curate.trainer.cached import RoundPlan

    ref_dir = work / "arms" / f"{ref}-s{seed}" / "manifests"
    counts = [len(read_manifest(p)) for p in sorted(ref_dir.glob("round-*.parquet"))]
    if len(counts) != rounds:
        raise SystemExit(f"arm {ref} seed {seed} has {len(counts)} round manifests in {ref_dir}, not {rounds}; "
                         "train it (to the end) first")
    uids = cache.uids

    def plan(r: int) -> RoundPlan:
        k = counts[r]
        pick = np.sort(np.random.default_rng([seed, r, 7]).choice(len(uids), k, replace=False))
        table = pa.table({"uid": pa.array(uids[pick].tolist()), "weight": pa.array(np.ones(k, np.float32))})
        return RoundPlan(Manifest(table), phase="random" if k < len(uids) else "full")

    return plan


def error_breakdown(
    loaded: Any, images: Any, labels: np.ndarray, names: list[str], templates: list[str], work: Path
) -> dict[str, float]:
    """Colour and shape accuracy of the zero-shot predictions, and top-1 on the head and tail classes.

    A class is ``"<colour> <shape>"``; head = the 10 most frequent classes of the training pool, tail = the
    10 rarest (Zipf ranks from world.json). The test split is balanced, so the tail weighs as much as the head.
    """
    import torch

    with torch.no_grad():
        cls = loaded.zeroshot_classifier(names, templates)
        feats = torch.cat([loaded.encode_images(images[i : i + 512]) for i in range(0, len(images), 512)])
        pred = (feats @ cls.T).argmax(1).numpy()
    colour = np.array([n.split()[0] for n in names])
    shape = np.array([n.split()[-1] for n in names])
    ranks = {c["class_id"]: c["zipf_rank"] for c in json.loads((work / "world" / "world.json").read_text())["classes"]}
    rank = np.array([ranks[int(y)] for y in labels])
    head, tail = rank < 10, rank >= len(names) - 10
    ok = pred == labels
    return {
        "colour_acc": float((colour[pred] == colour[labels]).mean()),
        "shape_acc": float((shape[pred] == shape[labels]).mean()),
        "head_acc": float(ok[head].mean()),
        "tail_acc": float(ok[tail].mean()),
    }


def candidate_truth(run_dir: Path, cache: Any, truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """Ground truth of SCAN's candidates over every scored preparation round."""
    import pyarrow.compute as pc

    from curate.bootstrap import history

    h = history(run_dir)
    h = h.filter(pc.is_valid(h.column("candidate")))
    if h.num_rows == 0:
        return {}
    # history lists candidates once per mutation round; keep each preparation round's set once
    h = h.filter(pc.equal(h.column("round"), pc.min(h.column("round"))))
    rows = cache.rows(h.column("uid").to_numpy(zero_copy_only=False))
    kind = h.column("candidate").cast("string").to_numpy(zero_copy_only=False)
    ill = np.isin(kind, ["ill_matched", "both"])
    red = np.isin(kind, ["redundant", "both"])
    m, d = truth["mismatched"][rows], truth["duplicate"][rows]
    return {
        "candidates": len(rows),
        "ill_matched": int(ill.sum()),
        "ill_matched_mismatched": float(m[ill].mean()) if ill.any() else None,
        "ill_matched_recall_of_mismatched": float(m[ill].sum() / max(truth["mismatched"].sum(), 1)),
        "redundant": int(red.sum()),
        "redundant_duplicate": float(d[red].mean()) if red.any() else None,
        "redundant_mismatched": float(m[red].mean()) if red.any() else None,
    }


# --------------------------------------------------------------------------------------------------
# Results file and report


def load_results(path: Path, setup: Setup, fresh: bool) -> dict[str, Any]:
    """The finished runs of this setup in ``path`` (a file of another setup is replaced only with --fresh)."""
    if path.exists() and not fresh:
        res = json.loads(path.read_text())
        if res.get("setup_key") != setup.key():
            sys.exit(f"{path} holds results of another setup (key {res.get('setup_key')}, this one {setup.key()}); "
                     "pass --fresh to replace them or --out elsewhere")
        if "invocations" not in res and "wall_seconds" in res:  # written before invocations were listed
            res["invocations"] = [{k: res[k] for k in ("date", "wall_seconds", "jobs", "load_start", "load_end")}
                                  | {"trained": len(res["runs"])}]
        return res
    return {"setup_key": setup.key(), "setup": asdict(setup), "runs": {}}


def save_results(path: Path, res: dict[str, Any]) -> None:
    from curate.fs import write_json

    write_json(path, res)


def stats(values: list[float]) -> tuple[float, float, int]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan"), len(a)


def fmt_pm(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    m, s, n = stats(values)
    return f"{m * scale:.1f} ± {s * scale:.1f}" if n > 1 else f"{m * scale:.1f}"


def arm_runs(res: dict[str, Any], arm: str, seeds: list[int]) -> list[dict[str, Any]]:
    return [res["runs"][k] for s in seeds if (k := f"{arm}/s{s}") in res["runs"]]


def paired(res: dict[str, Any], a: str, b: str, seeds: list[int]) -> list[float]:
    """Per-seed differences a - b (same seed: same init and shuffling seeds)."""
    out = []
    for s in seeds:
        ra, rb = res["runs"].get(f"{a}/s{s}"), res["runs"].get(f"{b}/s{s}")
        if ra and rb:
            out.append(ra["zero_shot"] - rb["zero_shot"])
    return out


def render(res: dict[str, Any], setup: Setup, seeds: list[int], arms: dict[str, Arm], cmd: str) -> str:
    full = arm_runs(res, "full", seeds)
    full_acc = [r["zero_shot"] for r in full]
    inv = res.get("invocations", [])
    unrecorded = len(res["runs"]) - sum(i["trained"] for i in inv)
    invocations = "; ".join(
        f"{i['date']}: {i['wall_seconds'] / 60:.1f} min wall, {i['trained']} runs trained, {i['jobs']} process(es), "
        f"load average {i['load_start']} → {i['load_end']}" for i in inv
    ) or "none recorded"
    if unrecorded > 0:
        invocations += f"; {unrecorded} runs by invocations that did not record themselves (interrupted or older)"
    lines = [
        "# Quality benchmark: training from scratch on curated data",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {res.get('date', '?')}; machine: {res.get('machine', '?')}, shared with other work; "
        f"{setup.threads} torch thread per training process. Invocations that produced these results: "
        f"{invocations}.",
        "",
        f"World: `make_sample(seed={setup.world_seed}, n_train={setup.n_train}, n_test={setup.n_test}, "
        f"image_size={setup.image_size})`, 30 classes. Proxy for static selection: `--model {setup.proxy}` "
        f"({proxy_note(setup.proxy)}). Trained model: the same tiny CLIP architecture "
        f"from random init at {setup.train_image_size} px; AdamW lr {setup.lr:g} (wd {setup.weight_decay:g}), "
        f"{setup.lr_warmup:g}-epoch linear warm-up then cosine (indexed by epoch fraction), batch {setup.batch_size}, "
        f"{setup.epochs} epochs for every arm. Seeds: {', '.join(map(str, seeds))}.",
        "",
        "## Zero-shot top-1 on the clean test split",
        "",
        "| arm | zero-shot top-1 % (mean ± std) | Δ vs full (paired) | sample-epochs (% of full) "
        "| mismatched / duplicate / uninformative share of sample-epochs |",
        "|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        runs = arm_runs(res, name, seeds)
        if not runs:
            continue
        acc = [r["zero_shot"] for r in runs]
        se = [r["sample_epochs"] / r["full_sample_epochs"] for r in runs]
        d = paired(res, name, "full", seeds) if name != "full" else []
        ds = {k: np.mean([r["defect_share"][k] for r in runs]) for k in ("mismatched", "duplicate", "uninformative")}
        lines.append(
            f"| {arm.label} | {fmt_pm(acc)} (n={len(acc)}) | {fmt_pm(d) if d else '–'} | "
            f"{np.mean([r['sample_epochs'] for r in runs]):,.0f} ({np.mean(se) * 100:.1f}%) | "
            f"{ds['mismatched'] * 100:.1f} / {ds['duplicate'] * 100:.1f} / {ds['uninformative'] * 100:.1f} % |"
        )
    lines += ["", f"Chance: {100 / 30:.1f}%. Full data mean: {fmt_pm(full_acc)}.", ""]

    lines += ["## Where the errors are (means over seeds)", "",
              "Colour / shape: share of test images whose predicted class has the right colour / shape. Head / "
              "tail: top-1 on the 10 most / least frequent classes of the (Zipf) training pool; the test split "
              "is balanced.", "",
              "| arm | colour % | shape % | head top-1 % | tail top-1 % |", "|---|---|---|---|---|"]
    for name, arm in arms.items():
        runs = [r for r in arm_runs(res, name, seeds) if "shape_acc" in r]
        if runs:
            m = {k: np.mean([r[k] for r in runs]) * 100 for k in ("colour_acc", "shape_acc", "head_acc", "tail_acc")}
            lines.append(f"| {arm.label} | {m['colour_acc']:.1f} | {m['shape_acc']:.1f} | {m['head_acc']:.1f} | "
                         f"{m['tail_acc']:.1f} |")
    lines.append("")

    lines += ["## Paired differences (per seed, same init and shuffling seeds)", "",
              "| comparison | Δ top-1 points (mean ± std over seeds) | per seed |", "|---|---|---|"]
    for f in setup.fractions:
        p = pct(f)
        for a, b in ((f"clipcov{p}", f"random{p}"), (f"clip-score{p}", f"random{p}"), (f"semdedup{p}", f"random{p}"),
                     (f"oracle-clean{p}", f"random{p}"), (f"clipcov{p}", f"clip-score{p}"),
                     (f"clipcov{p}", f"semdedup{p}"), (f"clipcov{p}", f"oracle-clean{p}"),
                     (f"clipcov-kmeans{p}", f"random{p}"), (f"clipcov-kmeans{p}", f"clipcov{p}"),
                     (f"negcliploss{p}", f"clip-score{p}"), (f"negcliploss{p}", f"random{p}"),
                     (f"clipcov{p}", f"negcliploss{p}"), (f"normsim{p}", f"random{p}"),
                     (f"normsim{p}", f"clip-score{p}"), (f"clipcov-and-negcliploss{p}", f"clipcov{p}"),
                     (f"clipcov-and-negcliploss{p}", f"negcliploss{p}"),
                     (f"image-filter-and-clip-score{p}", f"clip-score{p}"), ("image-filter", "full")):
            d = paired(res, a, b, seeds)
            if d:
                lines.append(f"| {a} − {b} | {fmt_pm(d)} | {', '.join(f'{x * 100:+.1f}' for x in d)} |")
    for f in setup.fractions:
        p = pct(f)
        for a, b in ((f"clipcov{p}-eqc", f"random{p}-eqc"), (f"clipcov{p}-eqc", f"clip-score{p}-eqc"),
                     (f"clipcov{p}-eqc", f"clipcov{p}"), (f"clip-score{p}-eqc", f"clip-score{p}"),
                     (f"random{p}-eqc", f"random{p}")):
            d = paired(res, a, b, seeds)
            if d:
                lines.append(f"| {a} − {b} | {fmt_pm(d)} | {', '.join(f'{x * 100:+.1f}' for x in d)} |")
    for a, b in (("oracle-clipcov30", "oracle-clean30"), ("oracle-clipcov30", "clipcov30"),
                 ("oracle-clip-score30", "oracle-clean30"), ("oracle-clip-score30", "clip-score30"),
                 ("oracle-clipcov30", "oracle-clip-score30")):
        d = paired(res, a, b, seeds)
        if d:
            lines.append(f"| {a} − {b} | {fmt_pm(d)} | {', '.join(f'{x * 100:+.1f}' for x in d)} |")
    eqc = [f"{m}{pct(f)}-eqc" for f in setup.fractions for m in ("random", "clip-score", "clipcov")]
    for a, b in (("scan", "scan-matched-random"), ("scan-rho0.4", "scan-rho0.4-matched-random"),
                 ("clipcov50+scan", "scan"), ("clipcov50+scan", "clipcov50")):
        d = paired(res, a, b, seeds)
        if d:
            lines.append(f"| {a} − {b} | {fmt_pm(d)} | {', '.join(f'{x * 100:+.1f}' for x in d)} |")
    for a in ("scan", "scan-rho0.4", "scan-matched-random", "scan-rho0.4-matched-random", "infobatch",
              "clipcov50+scan", "clipcov50", "random50", "oracle-clean30", "oracle-clean50", *eqc):
        d = paired(res, a, "full", seeds)
        if d:
            lines.append(f"| {a} − full | {fmt_pm(d)} | {', '.join(f'{x * 100:+.1f}' for x in d)} |")
    lines.append("")

    lines += new_method_tables(res, setup, seeds, arms)

    sels = res.get("selections", {})
    if sels:
        lines += ["## Ground truth of the static subsets (proxy embeddings)", "",
                  "| subset | kept | mismatched % | duplicates % | uninformative % | class entropy | "
                  "min / max class share % |", "|---|---|---|---|---|---|---|"]
        for name, m in sels.items():
            lines.append(f"| {name} | {m['kept']:,} | {m['mismatched'] * 100:.1f} | {m['duplicates'] * 100:.1f} | "
                         f"{m['uninformative'] * 100:.1f} | {m['entropy']:.3f} | "
                         f"{m['min_share'] * 100:.2f} / {m['max_share'] * 100:.1f} |")
        lines.append("")

    dyn = [(n, r) for n in arms for r in arm_runs(res, n, seeds) if arms[n].kind == "bootstrap" and n != "full"]
    if dyn:
        lines += ["## Dynamic arms, round by round (first seed)", ""]
        shown = set()
        for n, r in dyn:
            if n in shown:
                continue
            shown.add(n)
            kept = " ".join(f"{rd['kept'] / (r['full_sample_epochs'] / setup.epochs) * 100:.0f}" for rd in r["rounds"])
            extra = f"; warm-up ended before round {r.get('warmup_end')}" if "warmup_end" in r else ""
            lines.append(f"- **{n}** (seed {r['seed']}): % of the pool kept per round: {kept}{extra}.")
            ct = r.get("candidate_truth") or {}
            if ct:
                lines.append(
                    f"  First scored preparation round: {ct['ill_matched']:,} ill-matched candidates, "
                    f"{(ct['ill_matched_mismatched'] or 0) * 100:.0f}% of them truly mismatched "
                    f"(recall of all mismatched samples {ct['ill_matched_recall_of_mismatched'] * 100:.0f}%); "
                    f"{ct['redundant']:,} redundant candidates, "
                    f"{(ct['redundant_duplicate'] or 0) * 100:.0f}% duplicates, "
                    f"{(ct['redundant_mismatched'] or 0) * 100:.0f}% mismatched."
                )
        lines.append("")
    t = res.get("timings", {})
    if t:
        lines += ["## Timing", "",
                  "Setup (s, this invocation; 0 when reused): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + ".",
                  "Training seconds per run (mean over seeds): " + ", ".join(
                      f"{n} {np.mean([r['seconds'] for r in arm_runs(res, n, seeds)]):.0f}"
                      for n in arms if arm_runs(res, n, seeds)) + ".", ""]
    return "\n".join(lines) + "\n"


#: The single methods each recipe is made of (issue 16: a recipe should beat every one of them).
RECIPE_PARTS = {
    "negcliploss{p}-sqrt": ("negcliploss{p}",),
    "recipe-r2-{p}": ("negcliploss{p}", "semdedup{p}", "negcliploss{p}-sqrt"),
    "recipe-r3-{p}": ("clipcov{p}", "negcliploss{p}", "clipcov{p}-sqrt"),
    "recipe-r1-km{p}": ("negcliploss{p}", "negcliploss{p}-sqrt"),
    "recipe-r2-km{p}": ("negcliploss{p}", "semdedup{p}", "recipe-r2-{p}"),
    "recipe-r3-km{p}": ("clipcov-kmeans{p}", "negcliploss{p}", "recipe-r3-{p}"),
    # filter-then-sample: its two parts, then every other single method at its budget
    "fs{p}": ("negcliploss{p}", "random{p}", "semdedup{p}", "clipcov-kmeans{p}", "normsim{p}", "metaclip{p}"),
    "fs{p}-cut70": ("fs{p}",),
    "fs{p}-cls-sqrt": ("fs{p}",),
    "fs{p}-km-sqrt": ("fs{p}",),
    "oracle-fs{p}": ("fs{p}", "oracle-clean{p}"),
}
NEW_ARMS = ("negcliploss{p}", "normsim{p}", "metaclip{p}", "clipcov-and-negcliploss{p}",
            "image-filter-and-clip-score{p}", "clipcov{p}-sqrt", "clip-score{p}-sqrt", "negcliploss{p}-sqrt",
            "recipe-r2-{p}", "recipe-r3-{p}", "recipe-r1-km{p}", "recipe-r2-km{p}", "recipe-r3-km{p}",
            "fs{p}", "fs{p}-cut70", "fs{p}-cls-sqrt", "fs{p}-km-sqrt")


def proxy_note(proxy: str) -> str:
    """What the proxy is, for the results header (a ``benchmarks/proxy.py`` folder says how it was trained)."""
    if proxy == "sample":
        return "the built-in tiny CLIP, trained on the seed-0 world's 3,000 noisy samples, about 25% zero-shot"
    info = Path(proxy.removeprefix("local-dir:")) / "proxy.json"
    if not info.exists():
        return "a user model"
    d = json.loads(info.read_text())
    return (f"benchmarks/proxy.py: the trained model's 32 px architecture, {d['epochs']} epochs on the "
            f"{d['clean_samples']:,} truly clean samples of the seed-{d['world_seed']} world, "
            f"{d['zero_shot_top1'] * 100:.1f}% zero-shot on that world's test split")


def new_method_tables(res: dict[str, Any], setup: Setup, seeds: list[int], arms: dict[str, Arm]) -> list[str]:
    """Paired differences of the issue-16 arms: each against random, clip-score, ClipCov and the oracle at
    its budget, and each recipe against every single method in it."""

    def cell(a: str, b: str) -> str:
        d = paired(res, a, b, seeds)
        return f"{fmt_pm(d)} ({', '.join(f'{x * 100:+.1f}' for x in d)})" if d else "–"

    lines: list[str] = []
    rows = []
    for f in setup.fractions:
        p = pct(f)
        for t in NEW_ARMS:
            a = t.format(p=p)
            if a in arms and arm_runs(res, a, seeds):
                rows.append(f"| {arms[a].label} | {fmt_pm([r['zero_shot'] for r in arm_runs(res, a, seeds)])} | "
                            + " | ".join(cell(a, b) for b in (f"random{p}", f"clip-score{p}", f"clipcov{p}",
                                                               f"oracle-clean{p}")) + " |")
    if "image-filter" in arms and arm_runs(res, "image-filter", seeds):
        rows.append(f"| {arms['image-filter'].label} | "
                    f"{fmt_pm([r['zero_shot'] for r in arm_runs(res, 'image-filter', seeds)])} | "
                    + " | ".join(cell("image-filter", b) for b in ("random30", "clip-score30", "clipcov30",
                                                                    "oracle-clean30")) + " |")
    if rows:
        lines += ["## New methods, per-partition budgets and recipes (issue 16): paired differences", "",
                  "Δ top-1 points, mean ± std over seeds (per seed in brackets), against the arm of the same budget "
                  "(image-filter, which has no budget: against the 30% arms).", "",
                  "| arm | top-1 % | − random | − clip-score | − ClipCov (class names) | − oracle (clean random) |",
                  "|---|---|---|---|---|---|", *rows, ""]
    rows = []
    for f in setup.fractions:
        p = pct(f)
        for recipe, parts in RECIPE_PARTS.items():
            a = recipe.format(p=p)
            if a not in arms or not arm_runs(res, a, seeds):
                continue
            for b in parts:
                b = b.format(p=p)
                if arm_runs(res, b, seeds):
                    rows.append(f"| {a} | {b} | {cell(a, b)} |")
    if rows:
        lines += ["### Each recipe against the single methods (and variants) it is made of", "",
                  "| recipe | against | Δ top-1 points (per seed) |", "|---|---|---|", *rows, ""]
    return lines


# --------------------------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 seed, arms full/random30/clip-score30/clipcov30/scan/fs30, 6k pool, 8 epochs (< 20 min)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; quick: 0)")
    ap.add_argument("--arms", nargs="+", default=None, help="arm names (default: all; see the results file)")
    ap.add_argument("--world-seed", type=int, default=None,
                    help="seed of the synthetic world (default 1; another world needs its own --workdir and --out)")
    ap.add_argument("--proxy", default=None,
                    help="model the pool is embedded with for the static selections (default: sample; e.g. "
                         "local-dir:/tmp/curate-proxy from benchmarks/proxy.py; needs its own --workdir and --out)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="parallel training processes (1 torch thread each)")
    ap.add_argument("--workdir", default=None, help="world, embeddings, caches (default /tmp/curate-quality[-quick])")
    ap.add_argument("--out", default=None, help="results markdown (default benchmarks/results/quality.md; "
                    "quick: WORKDIR/quality.md); the JSON goes next to it")
    ap.add_argument("--fresh", action="store_true", help="discard finished runs in the results JSON")
    ap.add_argument("--compositions", action="store_true",
                    help=f"also score {', '.join(COMPOSITIONS)} against the ground truth (no training)")
    ap.add_argument("--no-train", action="store_true",
                    help="train nothing: only regenerate the markdown from the finished runs of the chosen arms")
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    load_start = load_average()
    quick = args.quick
    setup = Setup(
        world_seed=1 if args.world_seed is None else args.world_seed,
        n_train=args.n_train or (6000 if quick else 20000),
        n_test=args.n_test or (1500 if quick else 3000),
        epochs=args.epochs or (8 if quick else 10),
        fractions=(0.3,) if quick else (0.3, 0.5),
        proxy=args.proxy or "sample",
    )
    seeds = args.seeds if args.seeds is not None else ([0] if quick else [0, 1, 2])
    if setup.proxy != "sample":  # a wrong model spec fails here, in one line, not after making the world
        from curate.errors import CurateError
        from curate.models import load_model

        try:
            load_model(setup.proxy, None, device="cpu", precision="fp32")
        except CurateError as e:
            sys.exit(f"--proxy {setup.proxy}: {e}")
    known = all_arms(setup)
    chosen = args.arms or list(QUICK_ARMS if quick else FULL_ARMS)
    bad = [a for a in chosen if a not in known]
    if bad:
        sys.exit(f"unknown arm(s) {', '.join(bad)}; known: {', '.join(known)}")
    setup.arms = tuple(chosen)
    arms = {n: known[n] for n in known if n in chosen}
    work = Path(args.workdir or ("/tmp/curate-quality-quick" if quick else "/tmp/curate-quality"))
    work.mkdir(parents=True, exist_ok=True)
    out_md = Path(args.out) if args.out else (work / "quality.md" if quick else ROOT / "benchmarks/results/quality.md")
    out_json = out_md.with_suffix(".json")

    res = load_results(out_json, setup, args.fresh)
    prep = prepare(setup, seeds, work, list(arms.values()), COMPOSITIONS if args.compositions else ())
    stale = changed_selections(res.get("selections", {}), prep["selections"])
    res["selections"] = {**res.get("selections", {}), **prep["selections"]}
    res["world"] = prep["world"]
    outdated = []  # runs trained on a selection that has changed since (e.g. by a change of curate)
    for n in chosen:
        for s in seeds:
            sel = (arms[n].selection or "").replace("{seed}", str(s))
            if sel in stale and f"{n}/s{s}" in res["runs"]:
                outdated.append(f"{n}/s{s}")
    if args.no_train:  # rendering only: keep them in the tables, and say so
        for key in outdated:
            log(f"{key}: its selection has changed since it was trained; kept (--no-train), marked in the tables")
    else:  # redone
        for key in outdated:
            res["runs"].pop(key)
            log(f"{key}: its selection has changed since it was trained; training it again")
    todo = [(n, s) for n in chosen for s in seeds if f"{n}/s{s}" not in res["runs"]]
    log(f"{len(todo)} training runs to do ({len(arms) * len(seeds) - len(todo)} cached in {out_json})")
    if args.no_train:
        log("--no-train: the missing runs are left out of the tables")
        todo = []
    # a matched control reads its reference arm's manifests: train it only once every other run has finished
    waves = [[t for t in todo if arms[t[0]].kind != "matched"], [t for t in todo if arms[t[0]].kind == "matched"]]
    t_train = time.perf_counter()
    setup_d = asdict(setup)
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        for wave in waves:
            futs = {pool.submit(train_arm, setup_d, asdict(arms[n]), s, str(work)): (n, s) for n, s in wave}
            for fut in as_completed(futs):
                n, s = futs[fut]
                r = fut.result()
                res["runs"][f"{n}/s{s}"] = r
                save_results(out_json, res)
                log(f"{n} seed {s}: zero-shot {r['zero_shot'] * 100:.1f}%, "
                    f"{r['sample_epochs'] / r['full_sample_epochs'] * 100:.0f}% of full sample-epochs, "
                    f"{r['seconds']:.0f}s")
    if not args.no_train:  # a render-only call leaves the record of the training invocations as it is
        res["timings"] = {**prep["timings"], "training": time.perf_counter() - t_train}
        res["wall_seconds"] = time.perf_counter() - t_start
        res["jobs"] = args.jobs
        res["load_start"], res["load_end"] = load_start, load_average()
        res["date"] = dt.date.today().isoformat()
        res["machine"] = f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} CPUs, " \
                         f"{platform.python_implementation()} {platform.python_version()}"
        res.setdefault("invocations", []).append(
            {k: res[k] for k in ("date", "wall_seconds", "jobs", "load_start", "load_end")} | {"trained": len(todo)}
        )
        save_results(out_json, res)
    cmd = "python benchmarks/quality.py " + " ".join(a for a in sys.argv[1:] if a != "--no-train")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    kept = ""  # hand-written analysis below the marker survives a rerun
    if out_md.exists() and ANALYSIS_MARKER in (text := out_md.read_text()):
        kept = text[text.index(ANALYSIS_MARKER):]
    warn = ""
    if args.no_train and outdated:
        warn = ("\n> Trained on an earlier selection (their selections have changed since; rerun without "
                f"`--no-train` to train them again): {', '.join(outdated)}\n")
    out_md.write_text(render(res, setup, seeds, arms, cmd.strip()) + warn + ("\n" + kept if kept else ""))
    log(f"wrote {out_md} and {out_json} ({(time.perf_counter() - t_start) / 60:.1f} min)")

    def mean_acc(name: str) -> float | None:
        runs = arm_runs(res, name, seeds)
        return float(np.mean([r["zero_shot"] for r in runs])) if runs else None

    figures = []
    for name in ("full", "random30", "clip-score30", "clipcov30", "scan"):
        v = mean_acc(name)
        if v is not None:
            figures.append(metric(f"zero_shot_{name.replace('-', '_')}", v * 100, "%", "higher"))
    scan = arm_runs(res, "scan", seeds)
    if scan:
        share = 100 * np.mean([r["sample_epochs"] / r["full_sample_epochs"] for r in scan])
        figures.append(metric("scan_sample_epoch_share", share, "%", "lower"))
    figures.append(metric("wall_time", res.get("wall_seconds", time.perf_counter() - t_start), "s", "lower"))
    write_summary(args.summary_json, "quality", figures)


if __name__ == "__main__":
    main()
