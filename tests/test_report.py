"""``curate report``: the HTML page of a run, checked as a document and as rendered by headless Chromium.

One small synthetic world is embedded once per module with a tiny random model; runs at three stages are
copied from it: embed only, embed + selections, and embed + selections + SCAN rounds + coreset.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from bootstrap_helpers import record_random_losses
from PIL import Image

from curate.bootstrap import bootstrap_round, derive_coreset, history
from curate.cli.app import main
from curate.io.manifest import read_manifest
from curate.io.shards import iter_shards
from curate.io.tables import read_parquet
from curate.report import ReportOptions, build_report
from curate.report.samples import choose, truth_label
from curate.rundir import RunDir

pytest.importorskip("matplotlib")

TINY = "curate-test-tiny-report"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
N_TRAIN = 80
SECTIONS = ["overview", "score-distributions", "partitions", "bootstrap-rounds", "galleries"]
SELECTIONS = {
    "clipcov": ["--method", "clipcov", "--fraction", "0.3", "--partition", "kmeans:4"],
    "clip-score": ["--method", "clip-score", "--fraction", "0.5"],
    "semdedup": ["--method", "semdedup", "--fraction", "0.8"],
}


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from curate.models import load_model, register_model_config
    from curate.world import make_sample

    register_model_config(TINY, TINY_CFG)
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    ckpt = root / "tiny.pt"  # random weights, saved so that embed loads them like any checkpoint
    torch.save(load_model(TINY, device="cpu").model.state_dict(), ckpt)
    make_sample(root / "world", seed=0, n_train=N_TRAIN, n_test=4, shard_size=20, image_size=48)
    embed = root / "embed"
    assert main(["embed", str(root / "world" / "train"), "--run", str(embed), "--model", TINY, "--pretrained",
                 str(ckpt), "--workers", "0", "--json"]) == 0
    select = root / "select"
    shutil.copytree(embed, select)
    for name, args in SELECTIONS.items():
        assert main(["select", "--run", str(select), "--name", name, *args, "--json"]) == 0
    full = root / "full"
    shutil.copytree(select, full)
    run = RunDir(full)
    for r in range(4):  # prepare, mutate (ρ 0.5), mutate (ρ 1), prepare
        if r > 0:
            record_random_losses(run, r - 1, batch_size=10, seed=r)
        bootstrap_round(full, r, knobs={"warmup_rounds": 0, "t_cos": 2} if r == 0 else None)
    record_random_losses(run, 3, batch_size=10, seed=3)
    derive_coreset(full, 0.5)
    return {"embed": embed, "select": select, "full": full, "world": root / "world"}


#: Added to a copy of the full run: set algebra, two identical random subsets (one would hide the other
#: in an overlay), and a clipcov with more partitions than a page should draw.
MORE_SELECTIONS = {
    "both": ["--method", "intersect", "--of", "clip-score", "clipcov"],
    "rand-a": ["--method", "random", "--fraction", "0.4", "--seed", "5"],
    "rand-b": ["--method", "random", "--fraction", "0.4", "--seed", "5"],
    "clipcov-k40": ["--method", "clipcov", "--fraction", "0.3", "--partition", "kmeans:40"],
}


@pytest.fixture(scope="module")
def many(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full run plus MORE_SELECTIONS: 8 selections of every kind (scores, set algebra, coreset)."""
    run = tmp_path_factory.mktemp("many") / "run"
    shutil.copytree(runs["full"], run)
    for name, args in MORE_SELECTIONS.items():
        assert main(["select", "--run", str(run), "--name", name, *args, "--json"]) == 0
    return run


@pytest.fixture(scope="module")
def many_report(many: Path) -> tuple[Any, Dom]:
    res = build_report(many)
    return res, Dom(res.path.read_text())


@pytest.fixture(scope="module")
def full_report(runs: dict[str, Path]) -> tuple[Any, str]:
    res = build_report(runs["full"])
    return res, res.path.read_text()


# --- a small DOM ----------------------------------------------------------------------------------
class Dom(HTMLParser):
    """Elements of a page as (tag, attrs, text inside) with the ids and the images."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(el)
        if tag not in ("img", "meta", "br", "link", "input"):
            self._open.append(el)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for el in self._open:
            el["text"] += data

    def by_id(self, id_: str) -> dict[str, Any] | None:
        return next((el for el in self.elements if el["attrs"].get("id") == id_), None)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, Any]]:
        return [el for el in self.elements if el["tag"] == tag
                and (cls is None or cls in (el["attrs"].get("class") or "").split())]


def decode_data_uri(uri: str) -> Image.Image:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head[:40]
    img = Image.open(io.BytesIO(base64.b64decode(payload)))
    img.load()
    return img


def captions_and_truth(world: Path) -> dict[tuple[str, str], tuple[str, str]]:
    out = {}
    for s in iter_shards(sorted(str(p) for p in (world / "train").glob("*.tar"))):
        out[(s.shard, s.key)] = (s.caption, truth_label(s.meta["truth"]))
    return out


def check_page(page: str, expect_data: dict[str, bool]) -> Dom:
    """Checks every report must pass: sections with headings, inlined images, no external resources."""
    dom = Dom(page)
    for sid, has in expect_data.items():
        el = dom.by_id(sid)
        assert el is not None and el["tag"] == "section", sid
        assert el["attrs"]["data-has-data"] == str(has).lower(), sid
        heading = dom.elements[dom.elements.index(el) + 1]
        assert heading["tag"] == "h2" and heading["text"].strip() and heading["text"] in el["text"], sid
        assert f'href="#{sid}"' in page  # the navigation links to it
        if not has:
            assert any(p["text"] in el["text"] for p in dom.find("p", "no-data")), sid
    for img in dom.find("img"):
        decode_data_uri(img["attrs"]["src"])  # inlined and decodable
    for el in dom.elements:
        for attr in ("src", "href"):
            v = el["attrs"].get(attr)
            assert v is None or v.startswith(("data:", "#")), f"external {attr}: {v[:60]}"
    assert not dom.find("script")
    return dom


# --- library --------------------------------------------------------------------------------------
def test_full_report_sections_plots_and_size(full_report: tuple[Any, str], runs: dict[str, Path]) -> None:
    res, page = full_report
    assert res.path == runs["full"] / "reports" / "report.html"
    assert [s["id"] for s in res.sections] == SECTIONS and all(s["has_data"] for s in res.sections)
    dom = check_page(page, dict.fromkeys(SECTIONS, True))
    plots = {el["attrs"]["id"]: decode_data_uri(el["attrs"]["src"]) for el in dom.find("img", "plot")}
    assert set(plots) == {"plot-clip-score", "plot-selection-scores", "plot-clipcov-gain", "plot-partitions-clipcov",
                          "plot-partitions-semdedup", "plot-rounds"}
    for img in plots.values():
        assert img.format == "PNG" and img.width >= 800 and np.asarray(img.convert("L")).std() > 5
    assert res.counts["plots"] == len(plots)
    assert res.counts["samples"] == N_TRAIN and res.counts["selections"] == 4 and res.counts["rounds"] == 4
    # 4 selections + the latest pruning round, at most 24 thumbnails each, page size bounded
    assert res.counts["galleries"] == 5 and res.counts["thumbnails"] == len(dom.find("figure", "thumb")) <= 5 * 24
    assert res.bytes == len(page.encode()) < 1_500_000
    # the rounds table matches the manifests
    rows = dom.by_id("rounds-table")["text"]
    for r in range(4):
        hdr = json.loads((runs["full"] / "manifests" / f"round-{r:04d}.json").read_text())
        assert f"{hdr['counts']['kept']:,}" in rows and hdr["phase"] in rows


def test_gallery_thumbs_show_caption_reason_and_truth(full_report: tuple[Any, str], runs: dict[str, Path]) -> None:
    _, page = full_report
    dom = Dom(page)
    truth = captions_and_truth(runs["world"])
    reasons: dict[str, dict[str, str]] = {}
    for name in [*SELECTIONS, "scan-coreset"]:
        t = read_parquet(runs["full"] / "selections" / name / "scores.parquet")
        sel = t.column("selected").to_pylist()
        why = t.column("reason").to_pylist() if "reason" in t.column_names else ["frequent_candidate"] * len(sel)
        reasons[f"gallery-{name}"] = {u: ("kept" if s else w) for u, s, w in
                                      zip(t.column("uid").to_pylist(), sel, why, strict=True)}
    # round 2 is the latest round that pruned samples; its reasons come from the bootstrap history
    h = history(runs["full"]).to_pylist()
    kept2 = set(read_manifest(runs["full"] / "manifests" / "round-0002.parquet").table["uid"].to_pylist())
    reasons["gallery-round-0002"] = {**dict.fromkeys(kept2, "kept"),
                                     **{r["uid"]: r["reason"] for r in h if r["round"] == 2 and r["pruned"]}}
    lt = read_parquet(next((runs["full"] / "losses" / "round-0000").glob("*.parquet"))).to_pylist()
    loss0 = {r["uid"]: (r["loss_a"] + r["loss_b"]) / 2 for r in lt}
    seen = Counter()
    current = None
    for el in dom.elements:
        if el["tag"] == "div" and "gallery" in (el["attrs"].get("class") or ""):
            current = el["attrs"]["id"]
        if el["tag"] != "figure":
            continue
        a = el["attrs"]
        caption, label = truth[(a["data-shard"], a["data-key"])]
        assert caption in el["text"] and f"truth: {label}" in el["text"]
        assert a["data-reason"] == reasons[current][a["data-uid"]]  # the reason recorded for that uid
        if current == "gallery-round-0002":  # candidates of round 2 came from the losses of round 0
            assert f"loss {loss0[a['data-uid']]:.3f} (round 0)" in el["text"]
        seen[(current, a["data-reason"] == "kept")] += 1
    for g in [*reasons, "gallery-round-0002"]:
        assert seen[(g, True)] > 0 and seen[(g, False)] > 0, g
    assert sum(seen.values()) <= 5 * 24
    # SCAN's drop reasons and the coreset's single reason appear on pruned samples
    shown = {el["attrs"]["data-reason"] for el in dom.find("figure")}
    assert {"budget", "duplicate", "frequent_candidate"} <= shown and shown & {"redundant", "ill_matched", "both"}


def test_truth_table_counts_match_the_shards(full_report: tuple[Any, str], runs: dict[str, Path]) -> None:
    _, page = full_report
    dom = Dom(page)
    truth = captions_and_truth(runs["world"])
    t = read_parquet(runs["full"] / "selections" / "clip-score" / "scores.parquet")
    kept = Counter(truth[(s, k)][1] for s, k, sel in zip(t["shard"].to_pylist(), t["key"].to_pylist(),
                                                           t["selected"].to_pylist(), strict=True) if sel)
    table = dom.by_id("truth-gallery-clip-score")["text"]
    n = sum(kept.values())
    # the world has 4 shards and max_shards is 4: every sample is counted
    assert f"kept{n}{kept['clean'] / n:.0%}{kept['mismatched'] / n:.0%}" in table.replace("\n", "")


def test_report_is_deterministic_and_respects_options(runs: dict[str, Path], tmp_path: Path) -> None:
    a = build_report(runs["select"], tmp_path / "a.html")
    b = build_report(runs["select"], tmp_path / "b.html")
    assert a.path.read_bytes() == b.path.read_bytes()
    small = build_report(runs["select"], tmp_path / "c.html", selections=["clipcov"],
                         options=ReportOptions(thumbs=6, max_shards=1, seed=3))
    dom = Dom(small.path.read_text())
    figs = dom.find("figure", "thumb")
    assert small.counts["galleries"] == 1 and len(figs) == 6 and small.counts["shards_read"] == 1
    assert len({el["attrs"]["data-shard"] for el in figs}) == 1  # one shard read
    assert [s["has_data"] for s in small.sections] == [True, True, True, False, True]
    assert small.bytes < a.bytes


def test_partial_runs_say_what_is_missing(runs: dict[str, Path]) -> None:
    res = build_report(runs["embed"])
    page = res.path.read_text()
    check_page(page, {"overview": True, "score-distributions": True, "partitions": False,
                      "bootstrap-rounds": False, "galleries": False})
    assert res.counts["thumbnails"] == 0 and res.counts["plots"] == 1  # the CLIP-score histogram only
    plot = Dom(page).by_id("plot-clip-score")
    assert plot["attrs"]["data-selections"] == ""  # the pool alone, drawn
    assert np.asarray(decode_data_uri(plot["attrs"]["src"]).convert("L")).std() > 5
    assert "No selections yet" in page and "No bootstrap rounds yet" in page and "Nothing to compare yet" in page
    res = build_report(runs["select"])
    check_page(res.path.read_text(), {"overview": True, "score-distributions": True, "partitions": True,
                                      "bootstrap-rounds": False, "galleries": True})


def test_moved_shards_and_corrupt_tables_do_not_stop_the_report(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    rec = json.loads((run / "run.json").read_text())
    for s in rec["embed"]["shards"]:
        s["url"] = str(tmp_path / "gone" / f"{s['name']}.tar")
    (run / "run.json").write_text(json.dumps(rec))
    (run / "selections" / "semdedup" / "scores.parquet").write_bytes(b"not parquet")
    next((run / "losses" / "round-0001").glob("*.parquet")).write_bytes(b"not parquet either")
    res = build_report(run)
    dom = Dom(res.path.read_text())
    gal = dom.by_id("galleries")["text"]
    assert "could not read shard(s)" in gal and "image unavailable" in gal
    assert "selection semdedup could not be read: corrupt Parquet file" in dom.by_id("overview")["text"]
    assert dom.by_id("gallery-semdedup") is None and dom.by_id("gallery-clipcov") is not None
    rounds = dom.by_id("bootstrap-rounds")["text"]
    assert "round 1: corrupt Parquet file" in rounds
    assert res.counts["thumbnails"] == 0 and [s["id"] for s in res.sections] == SECTIONS
    assert all(s["has_data"] for s in res.sections)


def test_choose_splits_kept_and_pruned_over_reasons() -> None:
    t = pa.table({"selected": [True] * 3 + [False] * 10,
                  "reason": ["kept"] * 3 + ["a"] * 7 + ["b"] * 2 + ["c"]})
    idx = choose(t, 10, seed=1)
    assert len(idx) == len(set(idx)) == 10
    assert idx[:3] == [0, 1, 2]  # only 3 kept: pruned samples fill the rest
    why = [t["reason"][i].as_py() for i in idx[3:]]
    assert Counter(why) == {"a": 4, "b": 2, "c": 1}  # round-robin over reasons, largest first
    assert choose(t, 10, seed=1) == idx and len(choose(t, 4)) == 4


def _selection_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "selections").iterdir())


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_every_selection_has_its_own_clip_score_panel(many: Path, many_report: tuple[Any, Dom]) -> None:
    from curate.report.plots import series_color

    names = _selection_names(many)
    assert len(names) == 8 and {"both", "scan-coreset", "semdedup", "rand-a", "rand-b"} <= set(names)
    a = read_parquet(many / "selections" / "rand-a" / "manifest.parquet")["uid"].to_pylist()
    assert a == read_parquet(many / "selections" / "rand-b" / "manifest.parquet")["uid"].to_pylist()
    _, dom = many_report
    plot = dom.by_id("plot-clip-score")
    assert plot["attrs"]["data-selections"].split() == names
    px = np.asarray(decode_data_uri(plot["attrs"]["src"]).convert("RGB"), dtype=np.int16)
    for i, name in enumerate(names):  # every selection's colour covers an area, not just a legend swatch
        area = int((np.abs(px - _rgb(series_color(i))).sum(axis=2) < 12).sum())
        assert area > 400, (name, area)
    assert "not shown" not in dom.by_id("score-distributions")["text"]


def test_kept_vs_pruned_grid_shows_every_selection(many: Path, many_report: tuple[Any, Dom]) -> None:
    _, dom = many_report
    plot = dom.by_id("plot-selection-scores")
    assert plot["attrs"]["data-selections"].split() == _selection_names(many)
    text = dom.by_id("score-distributions")["text"]
    # set algebra and SCAN's coreset have no score column: drawn over the CLIP score, and the page says so
    assert "Drawn over the CLIP score, having no score of their own: both, scan-coreset." in text
    assert "not shown" not in text


def test_selections_beyond_the_panel_limit_are_named(many: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.report.build as build

    monkeypatch.setattr(build, "MAX_PANELS", 3)
    res = build_report(many, tmp_path / "r.html")
    dom = Dom(res.path.read_text())
    names = _selection_names(many)
    notes = [p["text"] for p in dom.find("p", "note")]
    for plot_id, what in (("plot-clip-score", "CLIP score"), ("plot-selection-scores", "kept vs pruned")):
        shown = dom.by_id(plot_id)["attrs"]["data-selections"].split()
        assert shown == names[:3]
        note = f"{what}: not shown (more than 3 selections; choose them with --selection): {', '.join(names[3:])}"
        assert note in notes


def _partition_counts(run: Path, name: str) -> dict[int, tuple[int, int]]:
    t = read_parquet(run / "selections" / name / "scores.parquet", ["partition", "selected"])
    out: dict[int, list[int]] = {}
    for p, s in zip(t["partition"].to_pylist(), t["selected"].to_pylist(), strict=True):
        if p is not None:
            c = out.setdefault(p, [0, 0])
            c[0] += 1
            c[1] += int(s)
    return {k: (v[0], v[1]) for k, v in out.items()}


def test_partitions_show_the_extremes_and_fold_every_partition(many: Path, many_report: tuple[Any, Dom]) -> None:
    res, dom = many_report
    page = res.path.read_text()
    with_parts = ["clipcov", "clipcov-k40", "semdedup"]
    summary = dom.by_id("partitions-summary")["text"]
    for name in with_parts:
        counts = _partition_counts(many, name)
        plot = dom.by_id(f"plot-partitions-{name}")
        assert int(plot["attrs"]["data-partitions"]) == min(10, len(counts))  # top 5 and bottom 5 drawn
        folded = dom.by_id(f"partitions-all-{name}")
        assert folded["tag"] == "details" and "open" not in folded["attrs"]
        table = dom.by_id(f"partitions-table-{name}")
        assert page.index(f'id="partitions-all-{name}"') < page.index(f'id="partitions-table-{name}"')
        rows = [el for el in dom.elements[dom.elements.index(table):] if el["tag"] == "tr"][1: len(counts) + 1]
        want = sorted(((f"cluster {k}", p, s) for k, (p, s) in counts.items()), key=lambda r: (-r[1], r[0]))
        got = []
        for r in rows:
            cells = [el["text"] for el in dom.elements[dom.elements.index(r) + 1:][:4]]
            got.append((cells[0], int(cells[1].replace(",", "")), int(cells[2].replace(",", ""))))
        assert sorted(got, key=lambda r: (-r[1], r[0])) == want  # every non-empty partition, right counts
        assert name in summary
    assert len(_partition_counts(many, "clipcov-k40")) > 10  # more partitions than drawn
    assert res.counts["plots"] == len(dom.find("img", "plot"))


# --- CLI ------------------------------------------------------------------------------------------
def test_cli_json_default_path_and_errors(runs: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = str(runs["select"])
    assert main(["report", "--run", run, "--json", "--thumbs", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"] == str(runs["select"] / "reports" / "report.html") and Path(out["path"]).exists()
    assert [s["id"] for s in out["sections"]] == SECTIONS and out["counts"]["thumbnails"] <= 3 * 4
    dest = tmp_path / "x" / "r.html"
    assert main(["report", "--run", run, "--out", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == str(dest) and dest.read_text().startswith("<!DOCTYPE html>")
    assert dest.stat().st_mode & 0o777 == 0o644  # readable by others, like any page to share
    assert main(["report", "--run", run, "--out", str(dest), "--thumbs", "2"]) == 0  # a curate report: replaced
    capsys.readouterr()
    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>")
    cases = [(["--run", str(tmp_path / "nope")], 3, "not a curate run"),
             (["--run", run, "--thumbs", "0"], 2, "--thumbs"),
             (["--run", run, "--selection", "missing"], 3, "no selection 'missing'"),
             (["--run", run, "--out", str(notes)], 2, "curate did not write it"),
             (["--run", run, "--out", str(runs["select"] / "run.json"), "--force"], 2, "a file of the run")]
    for args, code, msg in cases:
        assert main(["report", *args]) == code, args
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err
    assert notes.read_text() == "<p>my notes</p>"
    assert main(["report", "--run", run, "--out", str(notes), "--force", "--thumbs", "2"]) == 0
    assert main(["report", "--run", run, "--out", f"{tmp_path / 'pages'}/", "--thumbs", "2"]) == 0  # a folder
    assert (tmp_path / "pages" / "report.html").read_text().startswith("<!DOCTYPE html>")


# --- headless Chromium ----------------------------------------------------------------------------
def chromium() -> str | None:
    for name in (os.environ.get("CURATE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def render(page: Path, tmp: Path, height: int, name: str) -> tuple[Image.Image, str]:
    """Screenshot (1280 × height) and DOM of ``page`` after Chromium rendered it."""
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set CURATE_CHROMIUM)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp / 'ud'}",
             f"--window-size=1280,{height}"]
    shot = tmp / f"{name}.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True,
                   timeout=120)
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    img = Image.open(shot)
    img.load()
    return img, dom


def section_heights(page: Path, tmp: Path) -> dict[str, int]:
    """Rendered height in CSS pixels of each section (and ``page``: the document) at 1280 px wide."""
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set CURATE_CHROMIUM)")
    probe = tmp / f"probe-{page.stem}.html"  # the report has no script: a copy gets one that measures it
    script = ('<script>addEventListener("load", () => { const b = document.body; '
              'b.setAttribute("data-page", document.documentElement.scrollHeight); '
              'for (const s of document.querySelectorAll("section")) b.setAttribute("data-h-" + s.id, s.offsetHeight); '
              "});</script></body>")
    probe.write_text(page.read_text().replace("</body>", script))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp / 'ud'}",
             "--window-size=1280,900", "--virtual-time-budget=10000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    body = next(el for el in Dom(dom).elements if el["tag"] == "body")["attrs"]
    return {k.removeprefix("data-h-").removeprefix("data-"): int(v) for k, v in body.items()
            if k.startswith(("data-h-", "data-page"))}


def test_chromium_partition_section_height_is_bounded(many_report: tuple[Any, Dom], tmp_path: Path) -> None:
    res, _ = many_report
    heights = section_heights(res.path, tmp_path)
    assert set(heights) >= {"page", "partitions", "galleries"}, heights
    n = res.sections[[s["id"] for s in res.sections].index("partitions")]
    assert n["has_data"]
    # 3 selections with partitions (one with 40): a summary table, then per selection a heading, one
    # plot of at most 5 + 5 partitions and a folded table
    assert heights["partitions"] <= 250 + 3 * 350, heights


def test_chromium_renders_full_and_partial_reports(full_report: tuple[Any, str], runs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    res, page = full_report
    shot, dom_text = render(res.path, tmp_path, 4000, "full")
    assert shot.format == "PNG" and shot.size == (1280, 4000)
    px = np.asarray(shot.convert("RGB"), dtype=np.int16)
    assert px.std() > 20  # not blank
    colours = {tuple(c) for c in px[::7, ::7].reshape(-1, 3).tolist()}
    assert len(colours) > 500  # plots and photos, not a flat page
    kept_green = np.abs(px - np.array([47, 158, 68])).sum(axis=2) < 30  # the plots' "kept" colour
    assert kept_green.sum() > 5000  # the plots were drawn, not only the page around them
    dom = check_page(dom_text, dict.fromkeys(SECTIONS, True))
    assert len(dom.find("img", "plot")) == res.counts["plots"]
    assert len(dom.find("figure", "thumb")) == len(Dom(page).find("figure", "thumb")) > 0
    assert dom.by_id("gallery-clipcov") is not None and dom.by_id("gallery-round-0002") is not None

    part = build_report(runs["embed"])
    shot, dom_text = render(part.path, tmp_path, 1600, "embed-only")
    assert shot.size == (1280, 1600) and np.asarray(shot.convert("L")).std() > 10
    dom = check_page(dom_text, {"overview": True, "score-distributions": True, "partitions": False,
                                "bootstrap-rounds": False, "galleries": False})
    assert len(dom.find("p", "no-data")) >= 4


def test_every_selection_score_has_an_axis_label() -> None:
    """The kept-vs-pruned histograms label each method's ``score`` column by what it means."""
    from curate.report.data import SCORE_LABELS, SCORE_SHORT
    from curate.select import SELECTORS

    with_score = {name for name, cls in SELECTORS.items() if "score" in cls.columns}
    assert {"negcliploss", "normsim", "clipcov", "clip-score"} <= with_score
    assert with_score <= set(SCORE_LABELS) and with_score <= set(SCORE_SHORT)
