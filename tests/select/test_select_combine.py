"""--method combine: weighted sums of normalised score columns of earlier selections (recipes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MakeRun, normalise, read_scores

from curate.errors import InputError, UsageError
from curate.select import run_selection


def _run(make_run: MakeRun) -> tuple:
    rng = np.random.default_rng(11)
    n, d = 800, 8
    img = normalise(rng.normal(size=(n, d)))
    txt = normalise(img + 0.7 * rng.normal(size=(n, d)))
    null = np.zeros(n, bool)
    null[[5, 6]] = True  # no caption: no CLIP score
    run = make_run(img, txt, text_null=null)
    run_selection(run, "clip-score", fraction=0.5, name="cs")
    run_selection(run, "random", fraction=0.5, name="rnd", seed=3)
    return run, read_scores(run / "selections" / "cs"), read_scores(run / "selections" / "rnd")


@pytest.mark.parametrize("normalize", ["z", "rank"])
def test_combine_matches_a_brute_force(make_run: MakeRun, normalize: str) -> None:
    run, cs, rnd = _run(make_run)
    res = run_selection(run, "combine", count=200, name="mix",
                        options={"of": ("cs", "rnd"), "weights": "2,-0.5", "normalize": normalize})
    a, b = cs["score"], rnd["score"]

    def norm(v: np.ndarray) -> np.ndarray:
        fin = v[np.isfinite(v)]
        if normalize == "z":
            return (v - fin.mean()) / fin.std()
        return np.array([np.sum(fin <= x) / len(fin) if np.isfinite(x) else np.nan for x in v])

    want = 2 * norm(a) - 0.5 * norm(b)
    t = read_scores(res.path)
    np.testing.assert_allclose(t["score"], want, rtol=1e-12, atol=1e-12)
    ok = np.isfinite(want)
    order = np.flatnonzero(ok)[np.argsort(-want[ok], kind="stable")[:200]]
    assert set(np.flatnonzero(t["selected"])) == set(order)
    assert list(t["reason"][[5, 6]]) == ["no_score:cs"] * 2
    header = json.loads((res.path / "manifest.json").read_text())
    assert header["info"]["recipe"] == f"2·{normalize}(cs:score) + -0.5·{normalize}(rnd:score)"
    assert [p["name"] for p in header["parents"]] == ["cs", "rnd"]


def test_combine_threshold_column_and_errors(make_run: MakeRun) -> None:
    run, cs, _ = _run(make_run)
    res = run_selection(run, "combine", options={"of": ("cs",), "columns": ("cs:score",), "threshold": 1.0})
    t = read_scores(res.path)
    z = (cs["score"] - np.nanmean(cs["score"])) / np.nanstd(cs["score"])
    assert set(np.flatnonzero(t["selected"])) == set(np.flatnonzero(np.nan_to_num(z, nan=-9) >= 1.0))
    with pytest.raises(UsageError, match="exactly one of --fraction, --count or --threshold"):
        run_selection(run, "combine", options={"of": ("cs",)})
    with pytest.raises(UsageError, match="needs 2 finite numbers"):
        run_selection(run, "combine", count=5, options={"of": ("cs", "rnd"), "weights": "1"})
    with pytest.raises(InputError, match="no numeric column 'reason'"):
        run_selection(run, "combine", count=5, options={"of": ("cs",), "columns": ("cs:reason",)})
    with pytest.raises(InputError, match="no selection 'nope'"):
        run_selection(run, "combine", count=5, options={"of": ("cs", "nope")})
