"""The report's plots: matplotlib figures (Agg canvas, no pyplot state) rendered to PNG bytes.

matplotlib comes with the ``report`` extra and is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from curate.errors import CurateError

KEPT_COLOR = "#2f9e44"
POOL_COLOR = "#adb5bd"
#: Colours of known drop reasons; other reasons take the next colour of ``_REASON_CYCLE``.
REASON_COLORS: dict[str, str] = {
    "budget": "#868e96",
    "duplicate": "#f08c00",
    "below_threshold": "#e8590c",
    "redundant": "#1971c2",
    "ill_matched": "#e03131",
    "both": "#9c36b5",
    "well_learned": "#0c8599",
    "frequent_candidate": "#e64980",
    "pruned": "#868e96",
}
_CYCLE = ("#5c7cfa", "#f783ac", "#94d82d", "#ffa94d", "#66d9e8", "#b197fc", "#ffd43b", "#a9e34b")
_REASON_CYCLE = ("#5c7cfa", "#f783ac", "#ffa94d", "#66d9e8", "#b197fc", "#ffd43b", "#e64980", "#495057")  # no green
PHASE_COLORS: dict[str, str] = {
    "warmup": "#fff3bf",
    "prepare": "#d3f9d8",
    "mutate": "#ffe3e3",
    "prune": "#ffe3e3",
    "full": "#e7f5ff",
}
DPI = 100


def reason_color(reason: str, others: list[str]) -> str:
    if reason in REASON_COLORS:
        return REASON_COLORS[reason]
    if reason not in others:
        others.append(reason)
    return _REASON_CYCLE[others.index(reason) % len(_REASON_CYCLE)]


def require_matplotlib() -> None:
    """Fail early, with the install hint, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CurateError("the report needs matplotlib: pip install 'curate[report]'") from None


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#e9ecef", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def series_color(i: int) -> str:
    """The colour of the i-th selection of a report (the same in every plot)."""
    return _CYCLE[i % len(_CYCLE)]


def _grid(n: int, ncols: int, row_height: float) -> tuple[Any, Any]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = _figure(10, row_height * nrows, ncols, nrows)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes


def clip_score_panels(pool: np.ndarray, kept: Sequence[tuple[str, np.ndarray, str]], bins: int = 40) -> bytes:
    """Small multiples: per selection ``(name, kept CLIP scores, colour)``, the pool (grey) and what it keeps.

    Every selection has its own panel on the same bins and axes, so none hides another: the kept
    histogram is filled on top of the pool's and never exceeds it.
    """
    pool = pool[np.isfinite(pool)]
    if not kept:  # no selection yet: the pool alone
        fig, axes = _figure(10, 2.6)
        axes[0, 0].hist(pool, bins=bins, color=POOL_COLOR)
        axes[0, 0].set_title(f"pool: {len(pool):,} samples with a CLIP score", fontsize=9)
        axes[0, 0].set_xlabel("CLIP score (cosine of image and caption embeddings)", fontsize=9)
        return _png(fig)
    fig, axes = _grid(len(kept), 4, 2.1)
    edges = np.histogram_bin_edges(pool, bins=bins) if len(pool) else np.linspace(0, 1, bins + 1)
    top = max(1, int(np.histogram(pool, bins=edges)[0].max())) if len(pool) else 1
    mean = float(pool.mean()) if len(pool) else float("nan")
    for ax, (name, values, color) in zip(axes.flat, kept, strict=False):
        values = values[np.isfinite(values)]
        ax.hist(pool, bins=edges, color="#dee2e6")
        ax.hist(values, bins=edges, color=color)
        ax.set_ylim(0, top * 1.08)
        if len(values):
            ax.axvline(float(values.mean()), color="#212529", linewidth=1)
        ax.axvline(mean, color="#868e96", linewidth=1, linestyle="--")
        share = f"{len(values) / len(pool):.0%}" if len(pool) else "-"
        ax.set_title(f"{name}: {len(values):,} ({share})", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.supxlabel("CLIP score (cosine of image and caption embeddings); grey: pool; colour: kept; "
                  "lines: mean of kept (solid) and pool (dashed)", fontsize=9)
    return _png(fig)


def selection_scores(panels: Sequence[dict[str, Any]], bins: int = 30) -> bytes:
    """One panel per selection: a score, kept vs pruned (stacked by drop reason).

    A panel is ``name``, ``method``, ``score``, ``selected``, ``reason``, ``label`` (x axis) and optionally
    ``sentinel`` (a value that marks "not comparable", left out of the bins and counted in the title),
    ``cut`` (the score that separates kept from pruned, drawn as a line) and ``log`` (log-spaced bins).
    """
    fig, axes = _grid(len(panels), 3, 2.9)
    others: list[str] = []
    for ax, p in zip(axes.flat, panels, strict=False):
        score, sel, reason = p["score"], p["selected"], p["reason"]
        ok = np.isfinite(score)
        title = f"{p['name']} ({p['method']})"
        sentinel = p.get("sentinel")
        if sentinel is not None:
            at = ok & (score == sentinel)
            ok &= ~at
            if at.any():
                title += f"\n+ {int(at.sum()):,} at {sentinel:g} ({int((at & sel).sum()):,} kept), not drawn"
        edges = np.histogram_bin_edges(score[ok], bins=bins) if ok.any() else np.linspace(0, 1, bins + 1)
        if p.get("log") and ok.any() and score[ok].max() > 0:
            # scores spread over decades (semdedup's cosine distances): log bins, values below the
            # smallest positive one (exact duplicates, 0) in the first bin
            pos = score[ok & (score > 0)]
            lo = max(float(pos.min()), float(pos.max()) * 1e-6)
            edges = np.geomspace(lo, max(float(pos.max()), lo * 10), bins + 1)
            score = np.where(ok, np.clip(score, lo, None), score)
            ax.set_xscale("log")
        groups = [("kept", KEPT_COLOR, ok & sel)]
        for r in sorted(set(reason[~sel & ok])):
            groups.append((f"pruned: {r}", reason_color(r, others), ok & ~sel & (reason == r)))
        ax.hist([score[m] for _, _, m in groups], bins=edges, stacked=True, color=[c for _, c, _ in groups],
                label=[g for g, _, _ in groups])
        cut = p.get("cut")
        if cut is not None and np.isfinite(cut) and edges[0] <= cut <= edges[-1]:
            ax.axvline(cut, color="#212529", linewidth=1, linestyle="--", label=f"cut {cut:.3g}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(p["label"], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.35)  # headroom for the legend
        ax.legend(frameon=False, fontsize=7, loc="upper left", ncols=2)
    return _png(fig)


def gain_curves(curves: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """ClipCov: the gain of each pick against its pick order (rank), and the distribution of gains."""
    fig, axes = _figure(10, 3.2, ncols=2)
    for i, (name, gain) in enumerate(curves):
        c = _CYCLE[i % len(_CYCLE)]
        axes[0, 0].plot(np.arange(len(gain)), gain, color=c, linewidth=1.2, label=name)
        ok = gain[np.isfinite(gain)]
        axes[0, 1].hist(ok, bins=30, histtype="step", linewidth=1.6, color=c, label=name)
    axes[0, 0].set_xlabel("pick order (rank)")
    axes[0, 0].set_ylabel("gain at pick")
    axes[0, 1].set_xlabel("gain at pick")
    axes[0, 1].set_ylabel("picked samples")
    axes[0, 0].legend(frameon=False, fontsize=8)
    return _png(fig)


def partition_extremes(groups: Sequence[tuple[str, Sequence[str], np.ndarray, np.ndarray]], overall: float) -> bytes:
    """Kept share of a few partitions: one panel per group ``(title, labels, pool, kept)`` side by side.

    Bars are kept share (green) over the rest (grey), ``kept / pool`` on the right, the overall kept
    share as a dashed line.
    """
    n = max(len(g[1]) for g in groups)
    fig, axes = _figure(10, max(1.6, 0.25 * n + 0.85), ncols=len(groups))
    for ax, (title, labels, pool, kept) in zip(axes.flat, groups, strict=True):
        k = len(labels)
        ax.grid(axis="y", visible=False)
        ax.grid(axis="x", color="#e9ecef", linewidth=0.8)
        y = np.arange(n)[::-1][:k]
        share = np.divide(kept, pool, out=np.zeros(k), where=pool > 0)
        ax.barh(y, share, color=KEPT_COLOR, height=0.7)
        ax.barh(y, 1 - share, left=share, color="#e9ecef", height=0.7)
        for yi, kk, pp in zip(y, kept, pool, strict=True):
            ax.text(1.02, yi, f"{int(kk):,} / {int(pp):,}", va="center", fontsize=8, color="#495057")
        ax.axvline(overall, color="#212529", linestyle="--", linewidth=1)
        ax.set_yticks(y, [str(lab)[:28] for lab in labels], fontsize=8)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_xlim(0, 1.3)
        ax.set_xticks([0, 0.5, 1.0], ["0%", "50%", "100%"], fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.supxlabel(f"kept share per partition (kept / pool on the right; dashed: overall {overall:.0%})", fontsize=9)
    return _png(fig)


def round_curves(rounds: Sequence[Any]) -> bytes:
    """Bootstrap rounds: kept and pruned-by-reason samples per round; mean loss and ρ per round."""
    fig, axes = _figure(10, 4.0, ncols=2)
    x = np.array([r.round for r in rounds])
    for ax in axes.flat:
        for r in rounds:
            ax.axvspan(r.round - 0.5, r.round + 0.5, color=PHASE_COLORS.get(r.phase, "#f8f9fa"), linewidth=0)
    ax = axes[0, 0]
    kept = np.array([r.kept for r in rounds], float)
    ax.bar(x, kept, color=KEPT_COLOR, width=0.6, label="kept")
    bottom = kept.copy()
    others: list[str] = []
    reasons = sorted({k for r in rounds for k in r.pruned_by_reason})
    for reason in reasons:
        v = np.array([r.pruned_by_reason.get(reason, 0) for r in rounds], float)
        ax.bar(x, v, bottom=bottom, color=reason_color(reason, others), width=0.6, label=f"pruned: {reason}")
        bottom += v
    ax.set_xlabel("round")
    ax.set_ylabel("samples")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncols=2)
    ax = axes[0, 1]
    loss = np.array([np.nan if r.mean_loss is None else r.mean_loss for r in rounds])
    if np.isfinite(loss).any():
        ax.plot(x, loss, marker="o", color="#343a40", label="mean training loss")
    else:
        ax.text(0.5, 0.5, "no loss tables recorded", transform=ax.transAxes, ha="center", color="#868e96")
    ax.set_xlabel("round")
    ax.set_ylabel("mean per-sample loss")
    rho = np.array([np.nan if r.rho_cur is None else r.rho_cur for r in rounds])
    if np.isfinite(rho).any():
        ax2 = ax.twinx()
        ax2.spines[["top"]].set_visible(False)
        ax2.plot(x, rho, marker="s", linestyle="--", color="#e03131", label="ρ (share of candidates dropped)")
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_ylabel("ρ", color="#e03131")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.2),
                  ncols=2)
    for a in axes.flat:
        a.set_xticks(x)
        a.set_xlim(x.min() - 0.5, x.max() + 0.5)
    from matplotlib.patches import Patch

    phases = list(dict.fromkeys(r.phase for r in rounds))
    fig.legend([Patch(color=PHASE_COLORS.get(p, "#f8f9fa")) for p in phases], [f"phase: {p}" for p in phases],
               loc="outside upper center", ncols=len(phases), frameon=False, fontsize=8)
    return _png(fig)
