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
from curate.fs import atomic_path, check_replace, output_file, run_folder_of
from curate.report import html as h
from curate.report import plots
from curate.report.data import (
    SCORE_LABELS,
    SCORE_LOG,
    SCORE_SENTINELS,
    SCORE_SHORT,
    RunData,
    load_run,
    round_samples,
)
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

MAX_THUMBS = 48
MAX_PANELS = 12  # selections drawn in each small-multiples plot (the others are named on the page)
EXTREMES = 5  # partitions drawn at each end of the kept-share ranking (the others are folded)


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

    def plot(self, png: bytes, alt: str, plot_id: str, data: dict[str, str] | None = None) -> str:
        self.plots += 1
        return h.png_img(png, alt, plot_id, data)

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
def _left_out(what: str, items: list[tuple[str, str]]) -> str:
    """A note naming the selections a plot leaves out, grouped by why."""
    by_why: dict[str, list[str]] = {}
    for name, why in items:
        by_why.setdefault(why, []).append(name)
    return "".join(h.note(f"{what}: not shown ({why}): {', '.join(names)}") for why, names in by_why.items())


def _too_many() -> str:
    return f"more than {MAX_PANELS} selections; choose them with --selection"


@register
def score_distributions(ctx: Context) -> Section:
    d = ctx.data
    emb = d.embeddings
    colors = {sel.name: plots.series_color(i) for i, sel in enumerate(d.selections)}
    has_clip = bool(len(emb)) and bool(np.isfinite(emb.clip_score).any())
    body = "<h3>CLIP score</h3>"
    has = False
    if has_clip:
        shown = d.selections[:MAX_PANELS]
        kept = []
        for sel in shown:
            uids = sel.table.column("uid").filter(pa.array(sel.selected))
            kept.append((sel.name, emb.lookup(uids), colors[sel.name]))
        body += ctx.plot(plots.clip_score_panels(emb.clip_score, kept), "CLIP score of the pool and of what each "
                         "selection keeps", "plot-clip-score", {"selections": " ".join(s.name for s in shown)})
        if shown:
            body += ('<p class="legend">One panel per selection, all on the same bins and scale: the pool in grey, '
                     "the samples the selection keeps in colour on top (never more than the pool), so no "
                     "selection hides another. The title gives the kept count and share of the pool.</p>")
        body += _left_out("CLIP score", [(s.name, _too_many()) for s in d.selections[MAX_PANELS:]])
        has = True
    else:
        body += h.no_data("No CLIP scores yet: run 'curate embed SHARDS --run RUN' (samples need captions).")
    body += "<h3>Selection scores: kept vs pruned</h3>"
    panels, fallback, left = [], [], []
    for sel in d.selections:
        panel = {"name": sel.name, "method": sel.method, "selected": sel.selected, "reason": sel.reasons}
        score = sel.column("score")
        if score is not None and np.isfinite(score).any():
            panel.update(score=score, label=SCORE_LABELS.get(sel.method, "score"),
                         sentinel=SCORE_SENTINELS.get(sel.method), cut=sel.cut, log=sel.method in SCORE_LOG)
        elif has_clip:  # set algebra, SCAN's coreset...: no score of their own, the CLIP score is shared
            panel.update(score=emb.lookup(sel.table.column("uid")).astype(np.float64),
                         label="CLIP score (no score of its own)")
            fallback.append(sel.name)
        else:
            left.append((sel.name, "no score column, and the run has no CLIP scores"))
            continue
        panels.append(panel)
    left += [(p["name"], _too_many()) for p in panels[MAX_PANELS:]]
    panels = panels[:MAX_PANELS]
    if panels:
        body += ctx.plot(plots.selection_scores(panels), "selection score histograms", "plot-selection-scores",
                         {"selections": " ".join(p["name"] for p in panels)})
        over = [p["name"] for p in panels if p["name"] in fallback]
        sentinel = any(p.get("sentinel") is not None for p in panels)
        body += ('<p class="legend">Each selection over its own score, kept (green) and pruned stacked by drop '
                 "reason; the dashed line is the cut where the method has one (clip-score's threshold, "
                 "semdedup's eps)."
                 + (" Semdedup's score is drawn on a log axis, and the first member of each cluster (score 2: no "
                    "earlier member to compare with) is counted in the title instead of drawn." if sentinel else "")
                 + (f" Drawn over the CLIP score, having no score of their own: {h.e(', '.join(over))}." if over
                    else "") + "</p>")
        has = True
    elif not left:
        body += h.no_data("No selection yet: run 'curate select'.")
    body += _left_out("kept vs pruned", left)
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
def _pct(v: float) -> str:
    return f"{v:.0%}"


def _partition_block(ctx: Context, sel: Any) -> tuple[tuple[str, ...], str] | None:
    """A selection's summary row and its block (top/bottom plot, folded full table); None without partitions."""
    part = sel.column("partition")
    if part is None or not np.isfinite(part).any():
        return None
    ok = np.isfinite(part)
    labels = part[ok].astype(np.int64)
    size = np.bincount(labels)
    kept = np.bincount(labels[sel.selected[ok]], minlength=len(size))
    nonempty = np.flatnonzero(size)
    share = kept[nonempty] / size[nonempty]
    names = sel.partition_names(len(size))
    overall = float(kept.sum() / size.sum())
    n = len(nonempty)
    # ranked by kept share; ties: the larger partition first (its share says more), then the index
    high = nonempty[np.lexsort((nonempty, -size[nonempty], -share))]
    low = nonempty[np.lexsort((nonempty, -size[nonempty], share))]
    if n <= EXTREMES:
        picks = [(f"all {n} partitions, highest kept share first", high)]
    else:  # the top and the bottom side by side; with up to 2 * EXTREMES partitions, all of them
        k_high = min(EXTREMES, -(-n // 2))
        k_low = min(EXTREMES, n - k_high)
        picks = [(f"highest kept share ({k_high} of {n})", high[:k_high]),
                 (f"lowest kept share ({k_low} of {n})", low[:k_low])]
    groups = [(title, [names[k] for k in ks], size[ks], kept[ks]) for title, ks in picks]
    zero = int(np.sum(kept[nonempty] == 0))
    row = (sel.name, sel.method, f"{n:,}", f"{zero:,}", _pct(share.min()), _pct(float(np.median(share))),
           _pct(share.max()), _pct(overall))
    by_size = nonempty[np.lexsort((nonempty, -size[nonempty]))]
    table = h.table(["partition", "pool", "kept", "kept share"],
                    [(names[k], f"{size[k]:,}", f"{kept[k]:,}", _pct(kept[k] / size[k])) for k in by_size],
                    [False, True, True, True], table_id=f"partitions-table-{sel.name}")
    html = (f'<h3 id="partitions-{h.e(sel.name)}">{h.e(sel.name)} ({h.e(sel.method)})</h3>'
            + ctx.plot(plots.partition_extremes(groups, overall), f"kept share per partition, {sel.name}",
                       f"plot-partitions-{sel.name}", {"partitions": str(sum(len(ks) for _, ks in picks))})
            + h.details(f"All {n:,} partitions of {sel.name}: pool, kept and kept share, largest first", table,
                        f"partitions-all-{sel.name}"))
    return row, html


@register
def partitions(ctx: Context) -> Section:
    blocks = [b for b in (_partition_block(ctx, sel) for sel in ctx.data.selections) if b is not None]
    if not blocks:
        body = h.no_data("No selection with partitions yet (clipcov and semdedup assign one per sample): "
                         "run 'curate select --method clipcov'.")
    else:
        body = (h.table(["selection", "method", "partitions", "kept none", "lowest share", "median share",
                         "highest share", "overall"], [row for row, _ in blocks],
                        [False, False, True, True, True, True, True, True], table_id="partitions-summary")
                + f'<p class="legend">Kept share of each selection\'s partitions (pseudo-classes, clusters). Below, '
                  f"per selection: the {EXTREMES} partitions with the highest and the {EXTREMES} with the lowest "
                  "kept share (ties: larger partitions first), then every partition in a folded table.</p>"
                + "".join(html for _, html in blocks))
    return Section("partitions", "Kept share per partition", body, has_data=bool(blocks),
                   counts={"selections": len(blocks)})


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
