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
#: Colours of known drop reasons; other reasons take the next colour of ``_CYCLE``.
REASON_COLORS: dict[str, str] = {
    "budget": "#868e96",
    "duplicate": "#f08c00",
    "below_threshold": "#e8590c",
    "redundant": "#1971c2",
    "ill_matched": "#e03131",
    "both": "#9c36b5",
    "well_learned": "#0c8599",
    "pruned": "#868e96",
}
_CYCLE = ("#5c7cfa", "#f783ac", "#94d82d", "#ffa94d", "#66d9e8", "#b197fc", "#ffd43b", "#a9e34b")
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
    return _CYCLE[others.index(reason) % len(_CYCLE)]


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


def clip_score_histogram(pool: np.ndarray, kept: Sequence[tuple[str, np.ndarray]], bins: int = 40) -> bytes:
    """CLIP score of the pool (filled) and of the samples each selection keeps (outlines)."""
    fig, axes = _figure(10, 3.4)
    ax = axes[0, 0]
    pool = pool[np.isfinite(pool)]
    edges = np.histogram_bin_edges(pool, bins=bins) if len(pool) else np.linspace(0, 1, bins + 1)
    ax.hist(pool, bins=edges, color=POOL_COLOR, label=f"pool ({len(pool):,})")
    for i, (name, values) in enumerate(kept):
        values = values[np.isfinite(values)]
        ax.hist(values, bins=edges, histtype="step", linewidth=1.8, color=_CYCLE[i % len(_CYCLE)],
                label=f"kept by {name} ({len(values):,})")
    ax.set_xlabel("CLIP score (cosine of image and caption embeddings)")
    ax.set_ylabel("samples")
    ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def selection_scores(panels: Sequence[dict[str, Any]], bins: int = 30) -> bytes:
    """One panel per selection: its own score, kept vs pruned (stacked by drop reason)."""
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _figure(10, 2.9 * nrows, ncols, nrows)
    others: list[str] = []
    for ax, p in zip(axes.flat, panels, strict=False):
        score, sel, reason = p["score"], p["selected"], p["reason"]
        ok = np.isfinite(score)
        edges = np.histogram_bin_edges(score[ok], bins=bins) if ok.any() else np.linspace(0, 1, bins + 1)
        groups = [("kept", KEPT_COLOR, ok & sel)]
        for r in sorted(set(reason[~sel & ok])):
            groups.append((f"pruned: {r}", reason_color(r, others), ok & ~sel & (reason == r)))
        ax.hist([score[m] for _, _, m in groups], bins=edges, stacked=True, color=[c for _, c, _ in groups],
                label=[g for g, _, _ in groups])
        ax.set_title(f"{p['name']} ({p['method']})", fontsize=10)
        ax.set_xlabel(p["label"], fontsize=9)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # headroom for the legend
        ax.legend(frameon=False, fontsize=8, loc="upper left", ncols=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
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


def partition_shares(labels: Sequence[str], pool: np.ndarray, kept: np.ndarray, overall: float,
                     total: int) -> bytes:
    """Kept share per partition (largest partitions), with the overall kept share as a line."""
    n = len(labels)
    fig, axes = _figure(10, max(2.2, 0.24 * n + 0.9))
    ax = axes[0, 0]
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e9ecef", linewidth=0.8)
    y = np.arange(n)[::-1]
    share = np.divide(kept, pool, out=np.zeros(n), where=pool > 0)
    ax.barh(y, share, color=KEPT_COLOR, height=0.7)
    ax.barh(y, 1 - share, left=share, color="#e9ecef", height=0.7)
    for yi, k, p in zip(y, kept, pool, strict=True):
        ax.text(1.01, yi, f"{int(k):,} / {int(p):,}", va="center", fontsize=8, color="#495057")
    ax.axvline(overall, color="#212529", linestyle="--", linewidth=1)
    ax.text(overall, n - 0.35, f" overall {overall:.0%}", fontsize=8, va="bottom")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1.16)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_xlabel(f"kept share ({n} largest of {total} partitions; kept / pool on the right)")
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
