"""HTML building blocks of the report: one self-contained page (inline CSS, images as data: URIs, no script)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

CSS = """
:root { --fg: #212529; --muted: #6c757d; --line: #dee2e6; --kept: #2f9e44; --pruned: #c92a2a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: #f8f9fa; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 24px 48px; }
header.top { border-bottom: 1px solid var(--line); margin-bottom: 8px; }
h1 { font-size: 24px; margin: 8px 0 2px; }
h2 { font-size: 19px; margin: 0 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 0 0 10px; }
nav { margin: 8px 0 16px; display: flex; flex-wrap: wrap; gap: 6px; }
nav a { text-decoration: none; color: #1c7ed6; border: 1px solid #d0ebff; background: #fff;
        border-radius: 12px; padding: 2px 10px; font-size: 13px; }
nav a.empty { color: var(--muted); border-color: var(--line); }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px;
          margin: 14px 0; }
section.gallery { border-left: 4px solid #74c0fc; }
p.no-data { color: var(--muted); font-style: italic; background: #f1f3f5; border-radius: 6px;
            padding: 8px 12px; margin: 6px 0; }
p.note { color: #845ef7; margin: 6px 0; }
img.plot { display: block; max-width: 100%; height: auto; margin: 8px 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; padding-left: 10px; font-variant-numeric: tabular-nums; }
code { background: #f1f3f5; border-radius: 4px; padding: 0 4px; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(6, 1fr); gap: 10px; margin: 4px 0 12px; }
@media (max-width: 900px) { .grid { grid-template-columns: repeat(3, 1fr); } }
p.group { font-weight: 600; margin: 10px 0 2px; }
p.group.kept { color: var(--kept); }
p.group.pruned { color: var(--pruned); }
figure.thumb { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fff; }
figure.thumb.kept { border-top: 4px solid var(--kept); }
figure.thumb.pruned { border-top: 4px solid var(--pruned); }
figure.thumb img { display: block; width: 100%; aspect-ratio: 1; object-fit: contain; background: #f1f3f5;
                   border-radius: 4px; }
figure.thumb .missing { display: flex; align-items: center; justify-content: center; aspect-ratio: 1;
                        background: #f1f3f5; color: var(--muted); font-size: 12px; border-radius: 4px; }
figcaption { font-size: 12px; margin-top: 4px; }
figcaption .cap { display: block; margin: 2px 0; overflow-wrap: anywhere; }
figcaption .info { display: block; color: var(--muted); font-size: 11px; }
.badge { display: inline-block; border-radius: 8px; padding: 0 6px; font-size: 11px; font-weight: 600;
         margin: 1px 2px 1px 0; white-space: nowrap; }
.badge.kept { background: #d3f9d8; color: #2b8a3e; }
.badge.reason { background: #ffe3e3; color: #c92a2a; }
.badge.truth { background: #e7f5ff; color: #1864ab; }
.badge.truth.defect { background: #fff3bf; color: #e67700; }
.legend { color: var(--muted); font-size: 12px; }
details { margin: 2px 0 12px; }
details > summary { cursor: pointer; color: #1c7ed6; font-size: 13px; }
"""


def e(value: Any) -> str:
    """Escape text for HTML."""
    return escape(str(value), quote=True)


def png_img(png: bytes, alt: str, plot_id: str, data: dict[str, str] | None = None) -> str:
    """An inlined PNG plot; ``data`` becomes ``data-*`` attributes (e.g. the selections it draws)."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    extra = "".join(f' data-{e(k)}="{e(v)}"' for k, v in (data or {}).items())
    return f'<img class="plot" id="{e(plot_id)}" alt="{e(alt)}"{extra} src="{uri}">'


def details(summary: str, body: str, details_id: str | None = None) -> str:
    """A folded block: ``summary`` is always visible, ``body`` opens on a click."""
    did = f' id="{e(details_id)}"' if details_id else ""
    return f"<details{did}><summary>{e(summary)}</summary>{body}</details>"


def no_data(text: str) -> str:
    return f'<p class="no-data">{e(text)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None,
          table_id: str | None = None) -> str:
    """A plain table (no header row when every header is empty); ``numeric`` marks right-aligned columns."""
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    cls = [' class="num"' if n else "" for n in numeric]
    head = "".join(f"<th{c}>{e(h)}</th>" for h, c in zip(header, cls, strict=True)) if any(header) else ""
    body = "".join(
        "<tr>" + "".join(f"<td{c}>{e(v)}</td>" for v, c in zip(row, cls, strict=True)) + "</tr>" for row in rows
    )
    tid = f' id="{e(table_id)}"' if table_id else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table{tid}>{thead}<tbody>{body}</tbody></table>"


def thumb_figure(t: Any) -> str:
    """One gallery sample: image, caption, kept/drop reason, truth, scores."""
    kind = "kept" if t.kept else "pruned"
    img = (f'<img alt="{e(t.key)}" src="{t.image}">' if t.image
           else f'<div class="missing">image unavailable: {e(t.missing or "?")}</div>')
    badge = '<span class="badge kept">kept</span>' if t.kept else f'<span class="badge reason">{e(t.reason)}</span>'
    if t.truth:
        defect = "" if t.truth == "clean" else " defect"
        badge += f'<span class="badge truth{defect}">truth: {e(t.truth)}</span>'
    cap = e(t.caption) if t.caption is not None else "<i>(no caption)</i>"
    extra = [t.info] if t.info else []
    if t.truth_class:
        extra.append(f"class: {t.truth_class}")
    extra.append(f"{t.shard}/{t.key}")
    info = "".join(f'<span class="info">{e(x)}</span>' for x in extra)
    return (f'<figure class="thumb {kind}" data-uid="{e(t.uid)}" data-shard="{e(t.shard)}" data-key="{e(t.key)}" '
            f'data-reason="{e(t.reason)}">{img}'
            f'<figcaption>{badge}<span class="cap">{cap}</span>{info}</figcaption></figure>')


def section(sid: str, title: str, body: str, has_data: bool, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (f'<section id="{e(sid)}"{cls} data-has-data="{str(has_data).lower()}">'
            f"<h2>{e(title)}</h2>{body}</section>")


#: Marks a page as written by ``curate report`` (an existing --out file with it may be replaced).
GENERATOR = '<meta name="generator" content="curate report">'


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str, bool]], sections: Sequence[str]) -> str:
    empty = ' class="empty"'
    links = "".join(f'<a href="#{e(i)}"{"" if ok else empty}>{e(t)}</a>' for i, t, ok in nav)
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{GENERATOR}"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header class="top"><h1>{e(title)}</h1><p class="sub">{e(subtitle)}</p>'
        f"<nav>{links}</nav></header>" + "\n".join(sections) + "</main></body></html>\n"
    )
