"""``build_report``: one self-contained HTML page about a run, written to ``RUN/reports/report.html``.

The page is a list of sections, each made by a function registered in :data:`SECTIONS` (in page
order). A section whose stage has not run yet says so in a ``no-data`` note; a stage whose files
cannot be read shows the error as a note and the rest of the report is still written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.errors import CurateError, UsageError
from curate.fs import check_replace, output_file, run_folder_of
from curate.report import html as h
from curate.report import plots
from curate.report.data import SCORE_LABELS, SCORE_SHORT, RunData, load_run, round_samples
from curate.report.samples import (
    TRUTH_LABELS,
    Gallery,
    Thumb,
    choose,
    pick_shards,
    read_samples,
    rows_in,
    truth_rates,
)
from curate.run import atomic_path

MAX_THUMBS = 48
MAX_PARTITIONS = 30


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of a report (all bounded so the page stays small)."""

    thumbs: int = 24  # samples per gallery (half kept, half pruned)
    thumb_size: int = 128  # longest side of a thumbnail, pixels
    max_shards: int = 4  # shards read for galleries
    max_galleries: int = 6  # selection galleries (plus one for the latest pruning round)
    seed: int = 0  # which samples the galleries show

    def validate(self) -> None:
        if not 1 <= self.thumbs <= MAX_THUMBS:
            raise UsageError(f"--thumbs must be in 1..{MAX_THUMBS}, got {self.thumbs}")
        if not 32 <= self.thumb_size <= 256:
            raise UsageError(f"--thumb-size must be in 32..256, got {self.thumb_size}")
        if self.max_shards < 1:
            raise UsageError(f"--max-shards must be >= 1, got {self.max_shards}")
        if self.max_galleries < 0:
            raise UsageError(f"--max-galleries must be >= 0, got {self.max_galleries}")


@dataclass
class Section:
    """One rendered section and what it holds."""

    id: str
    title: str
    body: str
    has_data: bool
    css: str = ""
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ReportResult:
    """What ``build_report`` wrote."""

    path: Path
    sections: list[dict[str, Any]]
    counts: dict[str, int]
    bytes: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (``--json``)."""
        return {"path": str(self.path), "sections": self.sections, "counts": self.counts, "bytes": self.bytes,
                "seconds": round(self.seconds, 3)}


@dataclass
class Context:
    data: RunData
    options: ReportOptions
    plots: int = 0

    def plot(self, png: bytes, alt: str, plot_id: str) -> str:
        self.plots += 1
        return h.png_img(png, alt, plot_id)

    @property
    def cmd_run(self) -> str:
        return str(self.data.run.root)


SectionFn = Callable[[Context], Section]
SECTIONS: list[SectionFn] = []


def register(fn: SectionFn) -> SectionFn:
    """Add a section builder; sections appear in registration order."""
    SECTIONS.append(fn)
    return fn


# --- overview -----------------------------------------------------------------------------------
@register
def overview(ctx: Context) -> Section:
    d = ctx.data
    s = d.summary
    rows: list[tuple[str, str]] = []
    m = s["model"]
    if m.get("model"):
        rows.append(("model", f"{m['model']} (dim {s.get('dim')}, pretrained: {m.get('pretrained') or 'none'})"))
    sh = s["shards"]
    pending = f", {len(sh['pending'])} pending" if sh["pending"] else ""
    rows.append(("shards", f"{sh['embedded']:,} embedded of {sh['total']:,}{pending}"))
    n = s["samples"]
    rows.append(("samples", f"{n['embedded']:,} embedded ({n['with_text']:,} with a caption) of {n['seen']:,} "
                            f"seen; {n['dropped']:,} dropped"))
    for k, v in s["dropped_by_reason"].items():
        rows.append((f"dropped: {k}", f"{v:,}"))
    cs = s["clip_score"]
    if cs["mean"] is not None:
        rows.append(("CLIP score", f"mean {cs['mean']:.3f} ± {cs['std']:.3f}, median {cs['p50']:.3f}, "
                                   f"range [{cs['min']:.3f}, {cs['max']:.3f}]"))
    if d.state is not None:
        rows.append(("bootstrap", f"method {d.state.get('method')}, rounds 0..{d.state.get('round')}, "
                                  f"seed {d.state.get('seed')}"))
    body = h.table(["", ""], rows, table_id="overview-table")
    if d.selections:
        sel_rows = []
        for sel in d.selections:
            c = sel.header.get("counts", {})
            pool, kept = c.get("pool") or 0, c.get("kept") or 0
            pruned = ", ".join(f"{k} {v:,}" for k, v in (c.get("pruned_by_reason") or {}).items())
            sel_rows.append((sel.name, sel.method, f"{pool:,}", f"{kept:,}", f"{kept / pool:.1%}" if pool else "-",
                             pruned or "-"))
        body += "<h3>Selections</h3>" + h.table(
            ["selection", "method", "pool", "kept", "kept %", "pruned by reason"], sel_rows,
            [False, False, True, True, True, False], table_id="selections-table")
    else:
        body += h.no_data(f"No selections yet: run 'curate select --run {ctx.cmd_run} --method clipcov "
                          "--fraction 0.3'.")
    for stage, msg in d.notes.items():
        body += h.note(f"{stage} could not be read: {msg}")
    commands = d.record.get("commands") or []
    if commands:
        last = commands[-1]
        body += f'<p class="legend">last change: {h.e(last.get("at"))} by <code>{h.e(last.get("command"))}</code></p>'
    return Section("overview", "Overview", body, has_data=n["embedded"] > 0)


# --- score distributions ------------------------------------------------------------------------
@register
def score_distributions(ctx: Context) -> Section:
    d = ctx.data
    emb = d.embeddings
    body = "<h3>CLIP score</h3>"
    has = False
    if len(emb) and np.isfinite(emb.clip_score).any():
        kept = []
        for sel in d.selections[: len(plots._CYCLE)]:
            uids = sel.table.column("uid").filter(pa.array(sel.selected))
            kept.append((sel.name, emb.lookup(uids)))
        body += ctx.plot(plots.clip_score_histogram(emb.clip_score, kept), "CLIP score histogram", "plot-clip-score")
        has = True
    else:
        body += h.no_data("No CLIP scores yet: run 'curate embed SHARDS --run RUN' (samples need captions).")
    body += "<h3>Selection scores: kept vs pruned</h3>"
    panels = []
    for sel in d.selections:
        score = sel.column("score")
        if score is None or not np.isfinite(score).any():
            continue
        panels.append({"name": sel.name, "method": sel.method, "score": score, "selected": sel.selected,
                       "reason": sel.reasons, "label": SCORE_LABELS.get(sel.method, "score")})
    if panels:
        body += ctx.plot(plots.selection_scores(panels[:9]), "selection score histograms", "plot-selection-scores")
        has = True
    else:
        body += h.no_data("No selection with a score column yet: run 'curate select'.")
    body += "<h3>ClipCov gain</h3>"
    curves = []
    for sel in d.selections:
        gain, rank = sel.column("gain"), sel.column("rank")
        if gain is None or rank is None or not np.isfinite(gain).any():
            continue
        ok = np.isfinite(gain) & np.isfinite(rank)
        curves.append((sel.name, gain[ok][np.argsort(rank[ok], kind="stable")]))
    if curves:
        body += ctx.plot(plots.gain_curves(curves), "ClipCov gain by pick order", "plot-clipcov-gain")
        body += ('<p class="legend">The score of each sample when ClipCov picked it: its marginal gain in the '
                 "cross-covariance objective, with the redundancy discount of its pseudo-class applied so far.</p>")
        has = True
    else:
        body += h.no_data("No ClipCov selection yet: run 'curate select --method clipcov'.")
    return Section("score-distributions", "Score distributions", body, has_data=has)


# --- partitions ---------------------------------------------------------------------------------
@register
def partitions(ctx: Context) -> Section:
    body = ""
    count = 0
    for sel in ctx.data.selections:
        part = sel.column("partition")
        if part is None or not np.isfinite(part).any():
            continue
        ok = np.isfinite(part)
        labels = part[ok].astype(np.int64)
        size = np.bincount(labels)
        kept = np.bincount(labels[sel.selected[ok]], minlength=len(size))
        nonempty = np.flatnonzero(size)
        top = nonempty[np.argsort(-size[nonempty], kind="stable")][:MAX_PARTITIONS]
        names = sel.partition_names(len(size))
        overall = float(kept.sum() / size.sum()) if size.sum() else 0.0
        png = plots.partition_shares([names[k] for k in top], size[top], kept[top], overall, len(nonempty))
        zero = int(np.sum((size > 0) & (kept == 0)))
        body += (f'<h3 id="partitions-{h.e(sel.name)}">{h.e(sel.name)} ({h.e(sel.method)})</h3>'
                 + ctx.plot(png, f"kept share per partition, {sel.name}", f"plot-partitions-{sel.name}")
                 + f'<p class="legend">{len(nonempty)} non-empty partitions; {zero} kept no sample; '
                   f"overall {overall:.1%} kept.</p>")
        count += 1
    if not count:
        body = h.no_data("No selection with partitions yet (clipcov and semdedup assign one per sample): "
                         "run 'curate select --method clipcov'.")
    return Section("partitions", "Kept share per partition", body, has_data=count > 0, counts={"selections": count})


# --- bootstrap rounds ---------------------------------------------------------------------------
@register
def bootstrap_rounds(ctx: Context) -> Section:
    rounds = ctx.data.rounds
    method = (ctx.data.state or {}).get("method", "scan")
    title = f"Bootstrap rounds ({method})" if rounds else "Bootstrap rounds"
    if not rounds:
        body = h.no_data(f"No bootstrap rounds yet: run 'curate bootstrap --run {ctx.cmd_run} --round 0' "
                         "(or the reference trainer).")
        return Section("bootstrap-rounds", title, body, has_data=False)
    body = ctx.plot(plots.round_curves(rounds), "kept and pruned samples, mean loss per round", "plot-rounds")
    reasons = sorted({k for r in rounds for k in r.pruned_by_reason})
    rows = []
    for r in rounds:
        rows.append([r.round, r.phase, "-" if r.rho_cur is None else f"{r.rho_cur:.2f}", f"{r.kept:,}",
                     *[f"{r.pruned_by_reason.get(k, 0):,}" for k in reasons],
                     "-" if r.mean_loss is None else f"{r.mean_loss:.4f}", f"{r.loss_rows:,}"])
    body += h.table(["round", "phase", "ρ", "kept", *[f"pruned: {k}" for k in reasons], "mean loss", "loss rows"],
                    rows, [True, False, True, True, *[True] * len(reasons), True, True], table_id="rounds-table")
    for r in rounds:
        if r.loss_note:
            body += h.note(f"round {r.round}: {r.loss_note}")
    return Section("bootstrap-rounds", title, body, has_data=True, counts={"rounds": len(rounds)})


# --- galleries ----------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.3f}" if np.isfinite(v) else "-"


def _selection_gallery(ctx: Context, sel: Any, shards: list[str]) -> Gallery:
    c = sel.header.get("counts", {})
    g = Gallery(f"gallery-{sel.name}", f"Selection {sel.name} ({sel.method})",
                f"{c.get('kept', 0):,} kept of {c.get('pool', 0):,}")
    cols = ["uid", "shard", "key", "selected", "reason"]
    t = sel.table.select(cols).append_column("i", pa.array(np.arange(sel.table.num_rows)))
    t = t.set_column(3, "selected", pa.array(sel.selected))
    g.rows = rows_in(t, shards)
    score, gain, rank = sel.column("score"), sel.column("gain"), sel.column("rank")
    clip = ctx.data.embeddings.lookup(g.rows.column("uid"))
    label = SCORE_SHORT.get(sel.method, "score")
    for j in choose(g.rows, ctx.options.thumbs, ctx.options.seed):
        r = {k: g.rows.column(k)[j].as_py() for k in ("uid", "shard", "key", "selected", "reason", "i")}
        i = r["i"]
        info = [f"CLIP {_fmt(clip[j])}"]
        if gain is not None and np.isfinite(gain[i]):
            info.append(f"gain {gain[i]:.3f}")
        elif score is not None and label:
            info.append(f"{label} {_fmt(score[i])}")
        if rank is not None and np.isfinite(rank[i]):
            info.append(f"rank {int(rank[i])}")
        g.thumbs.append(Thumb(r["uid"], r["shard"], r["key"], bool(r["selected"]), r["reason"], " · ".join(info)))
    return g


def _round_gallery(ctx: Context, shards: list[str]) -> Gallery | None:
    pruning = [r for r in ctx.data.rounds if r.pruned_by_reason]
    if not pruning:
        return None
    rnd = pruning[-1]
    rs = round_samples(ctx.data.run, rnd, ctx.data.state, shards)
    g = Gallery(f"gallery-round-{rnd.round:04d}", f"Bootstrap round {rnd.round} ({rnd.phase})",
                f"{rnd.kept:,} kept of {rnd.counts.get('pool', 0):,}; the latest round that pruned samples")
    g.rows = rs.table
    clip = ctx.data.embeddings.lookup(g.rows.column("uid"))
    loss = rs.loss
    for j in choose(g.rows, ctx.options.thumbs, ctx.options.seed):
        r = {k: g.rows.column(k)[j].as_py() for k in ("uid", "shard", "key", "selected", "reason")}
        info = [f"CLIP {_fmt(clip[j])}"]
        if np.isfinite(loss[j]):
            info.append(f"loss {loss[j]:.3f} (round {rs.loss_round})")
        g.thumbs.append(Thumb(r["uid"], r["shard"], r["key"], bool(r["selected"]), r["reason"], " · ".join(info)))
    return g


def _truth_html(g: Gallery, shards_read: int) -> str:
    if not g.truth_table:
        return ""
    rows = [[r["group"], f"{r['n']:,}", *[f"{r[lab]:.0%}" for lab in TRUTH_LABELS]] for r in g.truth_table]
    return (f'<p class="legend">Ground truth of the synthetic world (json <code>truth</code>) over the '
            f"{sum(r['n'] for r in g.truth_table):,} samples of the {shards_read} shard(s) read:</p>"
            + h.table(["", "samples", *TRUTH_LABELS], rows, [False, True, *[True] * len(TRUTH_LABELS)],
                      table_id=f"truth-{g.id}"))


@register
def galleries(ctx: Context) -> Section:
    d, o = ctx.data, ctx.options
    urls = d.shard_urls
    shards = pick_shards(d.embeddings.shards, o.max_shards, o.seed)
    gals: list[Gallery] = [_selection_gallery(ctx, s, shards) for s in d.selections[: o.max_galleries]]
    notes = []
    if len(d.selections) > o.max_galleries:
        rest = ", ".join(s.name for s in d.selections[o.max_galleries:])
        notes.append(f"not shown (raise --max-galleries or pass --selection NAME): {rest}")
    try:
        rg = _round_gallery(ctx, shards)
    except CurateError as exc:
        rg = None
        notes.append(f"bootstrap round gallery: {exc}")
    if rg is not None:
        gals.append(rg)
    if not gals:
        body = h.no_data("Nothing to compare yet: galleries of kept and pruned samples appear once a selection "
                         "('curate select') or a pruning bootstrap round exists.")
        body += "".join(h.note(n) for n in notes)
        return Section("galleries", "Kept vs pruned samples", body, has_data=False)
    wanted: dict[tuple[str, str], list[Thumb]] = {}
    for g in gals:
        for t in g.thumbs:
            wanted.setdefault((t.shard, t.key), []).append(t)
    read = read_samples(urls, shards, wanted, o.thumb_size)
    body = (f'<p class="legend">Samples drawn (seed {o.seed}) from {len(shards)} of {len(d.embeddings.shards)} '
            f"shard(s): {h.e(', '.join(shards))}. Green: kept; red: pruned, with the reason.</p>")
    if read.unreadable:
        body += h.note(f"could not read shard(s): {', '.join(read.unreadable)} (moved or deleted since embedding?)")
    body += "".join(h.note(n) for n in notes)
    thumbs = 0
    for g in gals:
        if g.rows is not None:
            g.truth_table = truth_rates(g.rows, read.truth)
        body += (f'<div class="gallery" id="{h.e(g.id)}"><h3>{h.e(g.title)}</h3>'
                 f'<p class="sub">{h.e(g.description)}; showing {len(g.thumbs)}</p>' + _truth_html(g, len(shards)))
        kept = [t for t in g.thumbs if t.kept]
        pruned = [t for t in g.thumbs if not t.kept]
        for label, group in (("kept", kept), ("pruned", pruned)):
            if group:
                body += (f'<p class="group {label}">{label} ({len(group)} shown)</p><div class="grid {label}">'
                         + "".join(h.thumb_figure(t) for t in group) + "</div>")
        if not g.thumbs:
            body += h.no_data("no samples of this gallery in the shards read")
        body += "</div>"
        thumbs += sum(1 for t in g.thumbs if t.image)
    return Section("galleries", "Kept vs pruned samples", body, has_data=True, css="gallery",
                   counts={"galleries": len(gals), "thumbnails": thumbs, "shards_read": len(shards)})


# --- the page -----------------------------------------------------------------------------------
def _run_section(fn: SectionFn, ctx: Context) -> Section:
    try:
        return fn(ctx)
    except CurateError as exc:  # one unreadable stage must not hide the others
        sid = fn.__name__.replace("_", "-")
        return Section(sid, fn.__name__.replace("_", " ").capitalize(), h.note(f"could not build: {exc}"), False)


def render(data: RunData, options: ReportOptions | None = None) -> tuple[str, list[Section], Context]:
    """The report page as a string, its sections, and the context (plot count)."""
    options = options or ReportOptions()
    options.validate()
    ctx = Context(data, options)
    sections = [_run_section(fn, ctx) for fn in SECTIONS]
    name = data.run.root.resolve().name
    sub = f"{data.run.root.resolve()} · curate run report"
    nav = [(s.id, s.title, s.has_data) for s in sections]
    page = h.page(f"curate report: {name}", sub, nav, [h.section(s.id, s.title, s.body, s.has_data, s.css)
                                                       for s in sections])
    return page, sections, ctx


def is_curate_report(path: Path) -> bool:
    """True when ``path`` is an HTML page that ``curate report`` wrote (its head carries the marker)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return head.startswith(b"<!DOCTYPE html>") and h.GENERATOR.encode() in head


def _check_report_target(target: Path, force: bool) -> None:
    """Refuse an ``--out`` that would replace a file curate did not write (see :func:`build_report`)."""
    check_replace(target, force=True)  # never a folder or a link
    run = run_folder_of(target.parent)
    if run is not None and os.path.lexists(target) and not is_curate_report(target):
        raise UsageError(f"--out {target} is a file of the run {run}, not a report; choose another --out")
    check_replace(target, force, is_curate_report)


def build_report(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    options: ReportOptions | None = None,
    selections: list[str] | None = None,
    force: bool = False,
) -> ReportResult:
    """Write the HTML report of a run (default ``RUN/reports/report.html``) atomically.

    Args:
        run: the run folder (needs ``run.json``; every later stage is optional).
        out: where to write the page: a file, or a folder (existing, or ending with ``/``) for
            ``report.html``. An existing file is replaced only if it is a curate report, or with ``force``
            (never a file of a run folder).
        options: gallery sizes and the seed of the samples shown (:class:`ReportOptions`).
        selections: the selections to show (default: all, in name order).
        force: replace an existing ``out`` file that curate did not write.
    """
    t0 = time.perf_counter()
    options = options or ReportOptions()
    options.validate()
    target = output_file(out, "report.html") if out is not None else None
    if target is not None:
        _check_report_target(target, force)
    plots.require_matplotlib()
    data = load_run(run, selections)
    page, sections, ctx = render(data, options)
    path = target if target is not None else data.run.reports_dir / "report.html"
    raw = page.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    counts: dict[str, int] = {"samples": len(data.embeddings), "selections": len(data.selections),
                              "rounds": len(data.rounds), "plots": ctx.plots, "galleries": 0, "thumbnails": 0,
                              "shards_read": 0}
    for s in sections:
        for k in ("galleries", "thumbnails", "shards_read"):
            counts[k] += s.counts.get(k, 0)
    return ReportResult(path, [{"id": s.id, "title": s.title, "has_data": s.has_data} for s in sections], counts,
                        len(raw), time.perf_counter() - t0)
