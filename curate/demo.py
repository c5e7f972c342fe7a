"""``curate demo``: the whole job on the embedded sample world and tiny model, offline, in a few minutes.

embed → select (clipcov and the baselines, same budget) → export → SCAN bootstrap rounds with the
reference trainer → coreset byproduct → report. Because the sample world records its defects as ground
truth, the demo also says how well each step found them (mismatched captions, duplicates, class
coverage) and what training did to zero-shot accuracy on the clean held-out split.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import UsageError
from curate.fs import write_json
from curate.io.manifest import manifest_path_of
from curate.progress import NullProgress, Progress

MARKER = "demo.json"


@dataclass
class DemoConfig:
    """Options of ``curate demo`` (see its ``--help``)."""

    out: str = "demo-run"
    sample: str | None = None  # folder with train/, test/, classnames.txt, templates.txt (default shards/sample)
    model: str = "sample"
    fraction: float = 0.3  # budget of every static selection
    rounds: int = 6  # bootstrap rounds (epochs) of the reference trainer
    warmup_rounds: int = 1
    batch_size: int = 128
    lr: float = 5e-5
    workers: int = 2
    seed: int = 0
    report: bool = True

    def validate(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.rounds < 0 or self.warmup_rounds < 0:
            raise UsageError("--rounds and --warmup-rounds must be >= 0")
        if self.batch_size < 2:
            raise UsageError("--batch-size must be >= 2 (contrastive batches)")


@dataclass
class DemoResult:
    """What the demo did; ``summary()`` is what ``--json`` prints."""

    run: str
    steps: list[dict[str, Any]] = field(default_factory=list)  # name, seconds, detail
    selections: list[dict[str, Any]] = field(default_factory=list)  # name + truth metrics
    rounds: list[dict[str, Any]] = field(default_factory=list)
    candidates: dict[str, Any] = field(default_factory=dict)
    zero_shot: dict[str, float] = field(default_factory=dict)
    report: str | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("run", "steps", "selections", "rounds", "candidates", "zero_shot",
                                              "report", "seconds")}


def _prepare_out(out: Path) -> None:
    """Start from an empty folder; only a previous demo's folder is ever removed."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UsageError(f"{out} exists and is not a curate demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MARKER, {"status": "running"})


def _selected_uids(selection: Path) -> Any:
    t = pq.read_table(manifest_path_of(selection), columns=["uid"])
    return t.column("uid").combine_chunks()


def _candidate_truth(run: Path, truth: Any) -> dict[str, Any]:
    """Ground truth of SCAN's candidates in every preparation round: are ill-matched ones mismatched?"""
    from curate.bootstrap import history

    h = history(run)
    h = h.filter(pc.is_valid(h.column("candidate")))
    if h.num_rows == 0:
        return {}
    t = truth.select(["uid", "mismatched", "duplicate_of"])
    joined = h.select(["round", "uid", "candidate"]).join(t, "uid")
    kind = joined.column("candidate").cast("string").to_numpy(zero_copy_only=False)
    mism = joined.column("mismatched").to_numpy(zero_copy_only=False)
    dup = pc.is_valid(joined.column("duplicate_of")).to_numpy(zero_copy_only=False)
    ill = np.isin(kind, ["ill_matched", "both"])
    red = np.isin(kind, ["redundant", "both"])
    base_m = float(truth.column("mismatched").to_numpy(zero_copy_only=False).mean())
    base_d = float(pc.is_valid(truth.column("duplicate_of")).to_numpy(zero_copy_only=False).mean())
    return {
        "rounds": sorted({int(r) for r in joined.column("round").to_pylist()}),
        "ill_matched": int(ill.sum()),
        "ill_matched_mismatched_share": float(mism[ill].mean()) if ill.any() else None,
        "redundant": int(red.sum()),
        "redundant_mismatched_share": float(mism[red].mean()) if red.any() else None,
        "redundant_duplicate_share": float(dup[red].mean()) if red.any() else None,
        "pool_mismatched_share": base_m,
        "pool_duplicate_share": base_d,
    }


@dataclass
class _Demo:
    """One demo in progress: its options, the sample world's files, the output folder and what was done so far."""

    cfg: DemoConfig
    progress: Progress
    say: Callable[[str], None]
    sample: Path
    train_shards: list[str]
    test_shards: str
    classnames: list[str]
    templates: list[str]
    out: Path
    res: DemoResult

    def step(self, name: str, detail: dict[str, Any], t0: float) -> None:
        """Record step ``name`` (started at ``t0``) in the result and say it."""
        self.res.steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 2), **detail})
        self.say(f"{name}: {json.dumps(detail, default=str)} ({time.perf_counter() - t0:.1f}s)")


def _start(cfg: DemoConfig, progress: Progress | None, log: Callable[[str], None] | None) -> _Demo:
    """Check the options, read the sample world's class files and prepare the output folder."""
    from curate.io.shards import expand_shards
    from curate.models import sample_dir

    cfg.validate()
    sample = Path(cfg.sample) if cfg.sample else sample_dir() / "sample"
    train_shards = expand_shards(str(sample / "train"))
    classnames = (sample / "classnames.txt").read_text().splitlines()
    templates = [t for t in (sample / "templates.txt").read_text().splitlines() if t.strip()]
    out = Path(cfg.out)
    _prepare_out(out)
    return _Demo(cfg, progress or NullProgress(), log or (lambda _msg: None), sample, train_shards,
                 str(sample / "test"), classnames, templates, out, DemoResult(run=str(out)))


def _embed(demo: _Demo) -> None:
    """Embed the training pool with the demo's model."""
    from curate.embed import EmbedConfig, run_embed

    t0 = time.perf_counter()
    cfg = demo.cfg
    emb = run_embed(
        EmbedConfig(shards=demo.train_shards, run=str(demo.out), model=cfg.model, device="cpu", workers=cfg.workers),
        demo.progress,
    )
    demo.step("embed", {"shards": emb.shards_total, "samples": emb.samples_written,
                        "dropped": {k: v for k, v in emb.stats.items() if k.startswith("dropped_")}}, t0)


def _pool_truth(demo: _Demo) -> tuple[Any, dict[str, Any]]:
    """The training pool's ground truth, and its quality (recorded as the selection ``pool``)."""
    from curate.world import read_truth, subset_truth_metrics

    truth = read_truth(demo.train_shards)
    pool = subset_truth_metrics(truth.column("uid").combine_chunks(), truth)
    demo.res.selections.append({"name": "pool", **pool})
    return truth, pool


def _select(demo: _Demo, truth: Any) -> None:
    """Run every static selection at the demo's budget and their intersection; record what each keeps."""
    from curate.select import run_selection
    from curate.world import subset_truth_metrics

    cfg, out = demo.cfg, demo.out
    plans: list[tuple[str, str, dict[str, Any]]] = [
        ("random", "random", {}),
        ("clip-score", "clip-score", {}),
        ("semdedup", "semdedup", {}),
        ("clipcov", "clipcov", {"classes": str(demo.sample / "classnames.txt")}),
    ]
    for name, method, opts in plans:
        t0 = time.perf_counter()
        sel = run_selection(out, method, fraction=cfg.fraction, name=name, seed=cfg.seed, options=opts,
                            device="cpu", force=True, progress=demo.progress, command=f"curate demo ({method})")
        metrics = subset_truth_metrics(_selected_uids(sel.path), truth)
        demo.res.selections.append({"name": name, **metrics})
        demo.step(f"select {name}", {"kept": sel.kept, "pool": sel.pool_size}, t0)
    t0 = time.perf_counter()
    both = run_selection(out, "intersect", name="clip-score+clipcov", options={"of": ("clip-score", "clipcov")},
                         force=True, command="curate demo (intersect)")
    demo.res.selections.append({"name": "clip-score ∩ clipcov",
                                **subset_truth_metrics(_selected_uids(both.path), truth)})
    demo.step("select clip-score ∩ clipcov", {"kept": both.kept}, t0)


def _export(demo: _Demo) -> None:
    """Export the clipcov selection in the datacomp and urls formats."""
    from curate.io.export import export_manifest

    t0 = time.perf_counter()
    exports = {fmt: str(export_manifest(demo.out / "selections" / "clipcov", fmt)[0]) for fmt in ("datacomp", "urls")}
    demo.step("export clipcov", exports, t0)


def _zero_shot_before(demo: _Demo) -> tuple[Any, np.ndarray]:
    """Load the held-out split; record the untrained model's zero-shot accuracy and chance level."""
    from curate.models import load_model
    from curate.world import load_labelled_split, zero_shot_accuracy

    eval_model = load_model(demo.cfg.model, device="cpu", precision="fp32")
    images, labels = load_labelled_split(eval_model, demo.test_shards, demo.classnames)
    demo.res.zero_shot["before"] = zero_shot_accuracy(eval_model, images, labels, demo.classnames, demo.templates)
    demo.res.zero_shot["chance"] = 1.0 / len(demo.classnames)
    return images, labels


def _train_rounds(demo: _Demo, pool_size: int) -> list[Any]:
    """SCAN bootstrap rounds with the reference trainer; record each round and the compute used."""
    from curate.trainer import TrainConfig, train_rounds

    cfg = demo.cfg
    t0 = time.perf_counter()
    tcfg = TrainConfig(run=str(demo.out), rounds=cfg.rounds, model=cfg.model, method="scan",
                       knobs={"warmup_rounds": cfg.warmup_rounds}, seed=cfg.seed, batch_size=cfg.batch_size,
                       lr=cfg.lr, shards=demo.train_shards)

    def on_round(r: Any) -> None:
        row = {"round": r.round, "phase": r.phase, "kept": r.kept, "samples": r.samples,
               "mean_loss": round(r.mean_loss, 4), "seconds": round(r.seconds, 1)}
        demo.res.rounds.append(row)
        demo.say(f"  round {r.round} ({r.phase}): trained on {r.kept:,} samples, mean loss {r.mean_loss:.3f}")

    logs = train_rounds(tcfg, demo.progress, on_round=on_round)
    demo.step("bootstrap + train", {"rounds": len(logs),
                                    "sample_epochs": sum(r.samples for r in logs),
                                    "full_data_sample_epochs": len(logs) * pool_size}, t0)
    return logs


def _zero_shot_after(demo: _Demo, checkpoint: str | None, images: Any, labels: np.ndarray) -> None:
    """Record the trained model's zero-shot accuracy (when the last round left a checkpoint)."""
    from curate.models import load_model
    from curate.world import zero_shot_accuracy

    if checkpoint:
        trained = load_model(demo.cfg.model, checkpoint, device="cpu", precision="fp32")
        demo.res.zero_shot["after"] = zero_shot_accuracy(trained, images, labels, demo.classnames, demo.templates)


def _coreset(demo: _Demo, truth: Any) -> None:
    """Derive the coreset byproduct of the bootstrap rounds; record what it keeps."""
    from curate.bootstrap import derive_coreset
    from curate.world import subset_truth_metrics

    t0 = time.perf_counter()
    core = derive_coreset(demo.out, demo.cfg.fraction, command="curate demo (coreset)")
    demo.res.selections.append({"name": "scan coreset",
                                **subset_truth_metrics(core.manifest.table.column("uid"), truth)})
    demo.step("bootstrap coreset", {"kept": len(core.manifest)}, t0)


def _report(demo: _Demo) -> None:
    """Build the HTML report of the run."""
    from curate.report import build_report

    t0 = time.perf_counter()
    rep = build_report(demo.out)
    demo.res.report = str(rep.path)
    demo.step("report", {"path": demo.res.report}, t0)


def run_demo(
    cfg: DemoConfig,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo into ``cfg.out`` (a previous demo there is replaced) and return what it did."""
    demo = _start(cfg, progress, log)
    t_all = time.perf_counter()
    _embed(demo)
    truth, pool = _pool_truth(demo)
    _select(demo, truth)
    _export(demo)
    images, labels = _zero_shot_before(demo)
    if cfg.rounds > 0:
        logs = _train_rounds(demo, pool["kept"])
        demo.res.candidates = _candidate_truth(demo.out, truth)
        _zero_shot_after(demo, logs[-1].checkpoint, images, labels)
        if demo.res.candidates:
            _coreset(demo, truth)
    if cfg.report:
        _report(demo)
    demo.res.seconds = round(time.perf_counter() - t_all, 1)
    write_json(demo.out / MARKER, {"status": "done", **demo.res.summary()})
    return demo.res
