"""``curate select / export / reshard`` through ``curate.cli.app.main`` (exit codes, one-line errors)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import MakeRun, normalise, read_scores
from oracle import load_round_pool

from curate.cli.app import main


def _world(n: int = 400, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(k, d)))
    lab = rng.integers(0, k, n)
    img = normalise(centres[lab] + 0.3 * rng.normal(size=(n, d)))
    txt = normalise(centres[lab] + 0.3 * rng.normal(size=(n, d)))
    return img, txt, centres, lab


def test_select_methods_json_and_summary(make_run: MakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    img, txt, _, _ = _world()
    run = make_run(img, txt)
    assert main(["select", "--run", str(run), "--method", "random", "--fraction", "0.25", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["name"] == "random-f0.25" and res["kept"] == 100 and res["pool"] == 400
    args = ["select", "-r", str(run), "-m", "clipcov", "-n", "120", "--partition", "kmeans:4", "--variant", "greedy",
            "--name", "clipcov-n120"]
    assert main(args) == 0
    out, printed = capsys.readouterr()
    assert out == f"{run / 'selections' / 'clipcov-n120'}\n"  # stdout: the selection folder; tables: stderr
    assert "kept" in printed and "120" in printed and "kept per partition" in printed
    assert read_scores(run / "selections" / "clipcov-n120")["selected"].sum() == 120
    assert main(["select", "--run", str(run), "--method", "semdedup", "--eps", "0.02", "--keep", "closest"]) == 0
    assert main(["select", "--run", str(run), "--method", "clip-score", "--threshold", "0.5"]) == 0
    capsys.readouterr()
    of = ["--of", "clipcov-n120", "clip-score-t0.5"]
    assert main(["select", "--run", str(run), "--method", "intersect", *of, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["name"] == "clipcov-n120-intersect-clip-score-t0.5" and 0 < res["kept"] <= 120
    man = json.loads((run / "selections" / "clipcov-n120-intersect-clip-score-t0.5" / "manifest.json").read_text())
    assert [p["name"] for p in man["parents"]] == ["clipcov-n120", "clip-score-t0.5"]
    rec = json.loads((run / "run.json").read_text())
    last = rec["commands"][-1]["command"]
    assert last.startswith("curate select --run") and "--of clipcov-n120 clip-score-t0.5" in last


@pytest.mark.parametrize(
    ("extra", "code", "msg"),
    [
        (["--method", "random", "--fraction", "-0.5"], 2, "--fraction must be in (0, 1]"),
        (["--method", "random", "--fraction", "1.5"], 2, "--fraction must be in (0, 1]"),
        (["--method", "random", "--count", "401"], 2, "exceeds the pool of 400"),
        (["--method", "magic", "--count", "3"], 2, "magic"),
        (["--method", "random"], 2, "needs --fraction F or --count K"),
        (["--method", "random", "--count", "3", "--eps", "0.1"], 2, "--eps does not apply to --method random"),
        (["--method", "clipcov", "--count", "3", "--partition", "kmeans:x"], 2, "bad --partition"),
        (["--method", "clipcov", "--count", "3", "--classes", "/nope.txt"], 3, "classes file not found"),
        (["--method", "union", "--of", "a", "b"], 3, "no selection 'a'"),
        (["--method", "negcliploss", "--count", "3"], 2, "pass --temperature T"),
        (["--method", "negcliploss", "--count", "3", "--temperature", "0.1", "--repeats", "0"], 2, "--repeats"),
        (["--method", "normsim", "--count", "3"], 2, "needs --target"),
        (["--method", "normsim", "--count", "3", "--target", "/nope"], 3, "target not found: /nope"),
        (["--method", "image-filter", "--count", "3", "--target", "/nope"], 2, "takes no --fraction/--count"),
        (["--method", "clip-score", "--count", "3", "--target", "/nope"], 2, "--target does not apply"),
        (["--method", "random", "--count", "3", "--workers", "0"], 2, "--workers must be >= 1"),
        (["--method", "random", "--count", "3", "--within", "nope"], 3, "--within: no selection 'nope'"),
        (["--method", "random", "--count", "3", "--within"], 2, "option '--within' requires a value"),
        (["--method", "clip-score", "--count", "3", "--within", "x"], 2, "--within does not apply"),
        # --dry-run checks the earlier selections a method reads, as the real run does
        (["--method", "random", "--count", "3", "--within", "nope", "--dry-run"], 3, "--within: no selection 'nope'"),
        (["--method", "union", "--of", "a", "b", "--dry-run"], 3, "no selection 'a'"),
        (["--method", "combine", "--of", "a", "b", "--count", "3", "--dry-run"], 3, "no selection 'a'"),
        (["--method", "clip-score", "--count", "3", "--per-partition", "sqrt", "--partition", "selection:x",
          "--dry-run"], 3, "--partition selection:x: no selection 'x'"),
    ],
)
def test_select_bad_input_one_line_nothing_written(
    make_run: MakeRun, capsys: pytest.CaptureFixture[str], extra: list[str], code: int, msg: str
) -> None:
    img, txt, _, _ = _world()
    run = make_run(img, txt)
    before = (run / "run.json").read_bytes()
    assert main(["select", "--run", str(run), *extra]) == code
    errlines = capsys.readouterr().err.strip().splitlines()
    assert len(errlines) == 1 and errlines[0].startswith("error: ") and msg in errlines[0]
    assert not (run / "selections").exists()
    assert (run / "run.json").read_bytes() == before


def test_select_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", "--run", str(tmp_path / "nope"), "--method", "random", "--count", "1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a curate run" in err[0]
    assert not (tmp_path / "nope").exists()


def test_clipcov_zero_shot_with_run_model_and_classes_file(
    make_run: MakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The zero-shot path: prompts encoded by the run's model, averaged; a stand-in model here."""
    import curate.models

    img, txt, centres, lab = _world(n=300, k=3, seed=2)
    names = ["cat", "dog", "fish"]
    calls: list[int] = []
    calls_seen: list[int] = []

    def encode_texts(prompts: list[str]) -> np.ndarray:
        calls.append(len(prompts))
        rows = [centres[next(i for i, c in enumerate(names) if c in p)] + 0.001 * len(p) for p in prompts]
        return normalise(np.asarray(rows))

    fake = SimpleNamespace(encode_texts=encode_texts, info={"model": "stand-in"})
    monkeypatch.setattr(curate.models, "load_model_from_run", lambda run, device="cpu": fake)
    monkeypatch.setattr(curate.models, "imagenet_zeroshot_metadata", lambda: (names, ["a {}.", "a photo of a {}."]))
    run = make_run(img, txt)
    assert main(["select", "--run", str(run), "--method", "clipcov", "--fraction", "0.5", "--device", "cpu"]) == 0
    t = read_scores(run / "selections" / "clipcov-f0.5")
    calls_seen.extend(calls)
    templates = ["a {}.", "a photo of a {}."]
    class_text = normalise(np.stack([encode_texts([tp.format(c) for tp in templates]).mean(0) for c in names]))
    calls.clear()
    pool_img = load_round_pool(run, {"image"}).image
    want = np.argmax(pool_img @ class_text.T, axis=1)  # argmax over the prompt-ensemble class embeddings
    assert (want == lab).mean() > 0.9
    np.testing.assert_array_equal(t["partition"], want)
    assert "cat" in capsys.readouterr().err  # kept per partition shows class names
    assert calls_seen == [6] and len(list((run / "cache" / "class_text").glob("*.npy"))) == 1
    assert main(["select", "--run", str(run), "--method", "clipcov", "--fraction", "0.5", "--name", "again"]) == 0
    assert calls == []  # cached
    cls_file = tmp_path / "classes.txt"
    cls_file.write_text("# my classes\nfish\ndog\n\ncat\n")
    args = ["select", "--run", str(run), "--method", "clipcov", "--count", "100", "--classes", str(cls_file)]
    assert main(args) == 0
    t = read_scores(run / "selections" / "clipcov-classes-n100")  # named after the class list
    np.testing.assert_array_equal(t["partition"], np.array([2, 1, 0])[want])  # indices in file order


def test_export_and_reshard_cli(
    make_run: MakeRun, make_shards: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from curate.io.shards import iter_shard

    urls = make_shards(n_shards=2, per_shard=10)
    samples = [s for u in urls for s in iter_shard(u)]
    img, txt, _, _ = _world(n=len(samples))
    run = make_run(img, txt, keys=[s.key for s in samples], shard_urls=urls)
    assert main(["select", "--run", str(run), "--method", "random", "--count", "7"]) == 0
    sel = run / "selections" / "random-n7"
    capsys.readouterr()
    assert main(["export", "--manifest", str(sel), "--format", "datacomp", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["entries"] == 7 and np.load(res["path"]).dtype == np.dtype("u8,u8")
    args = ["export", "--manifest", str(sel / "manifest.parquet"), "--format", "keys", "-o", str(tmp_path / "k")]
    assert main(args) == 0
    assert len((tmp_path / "k").read_text().splitlines()) == 7
    assert main(["export", "--manifest", str(sel), "--format", "urls", "-o", str(tmp_path / "u")]) == 0
    assert set((tmp_path / "u").read_text().splitlines()) <= set(urls)
    assert main(["export", "--manifest", str(sel), "--format", "csv"]) == 2
    assert main(["reshard", "--manifest", str(sel), "--out", str(tmp_path / "new"), "--shard-size", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "new").glob("*.tar")) == ["000000.tar", "000001.tar", "000002.tar"]
    capsys.readouterr()
    assert main(["reshard", "--manifest", str(sel), "--out", str(tmp_path / "new")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--manifest", str(tmp_path / "missing.parquet"), "--format", "keys"]) == 3
