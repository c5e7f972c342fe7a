"""Default selection names come from every option that changes the result; inputs are checked before names;
clipcov says when the run's shards come with a class list that its default partition ignores."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import MakeRun, normalise

from curate.cli.app import main
from curate.select import get_selector


def _name(method: str, options: dict[str, Any], fraction: float | None = None, count: int | None = None,
          seed: int = 0) -> str:
    cls = get_selector(method)
    return cls(cls.config_class.from_options(method, options)).default_name(fraction, count, seed)


def test_default_options_keep_their_names() -> None:
    assert _name("clipcov", {}, 0.3) == "clipcov-f0.3"
    assert _name("clipcov", {"variant": "reference", "partition": "imagenet"}, 0.3) == "clipcov-f0.3"
    assert _name("clipcov", {}, 0.3, seed=5) == "clipcov-f0.3"  # zero-shot labels use no randomness
    assert _name("random", {}, 0.3) == "random-f0.3"
    assert _name("random", {}, count=1000) == "random-n1000"
    assert _name("clip-score", {}, 0.3) == "clip-score-f0.3"
    assert _name("clip-score", {"threshold": 0.28}) == "clip-score-t0.28"
    assert _name("clip-score", {"threshold": 0.28}, seed=3) == "clip-score-t0.28"  # no randomness
    assert _name("semdedup", {"eps": 0.05}) == "semdedup-eps0.05"
    assert _name("semdedup", {"keep": "farthest"}, 0.5) == "semdedup-f0.5"


def test_options_that_change_the_result_are_in_the_name(tmp_path: Path) -> None:
    assert _name("clipcov", {"variant": "greedy", "partition": "kmeans:20"}, 0.3) == "clipcov-greedy-km20-f0.3"
    assert _name("clipcov", {"partition": "kmeans:20"}, 0.3, seed=2) == "clipcov-km20-s2-f0.3"
    classes = tmp_path / "my classes.txt"
    classes.write_text("cat\ndog\n")
    assert _name("clipcov", {"classes": str(classes)}, 0.3) == "clipcov-my_classes-f0.3"
    assert _name("random", {}, 0.3, seed=1) == "random-s1-f0.3"
    assert _name("semdedup", {"eps": 0.05, "keep": "random", "clusters": 50}, seed=2) == \
        "semdedup-random-k50-s2-eps0.05"


def _world(n: int = 400, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(k, d)))
    lab = rng.integers(0, k, n)
    img = normalise(centres[lab] + 0.3 * rng.normal(size=(n, d)))
    txt = normalise(centres[lab] + 0.3 * rng.normal(size=(n, d)))
    return img, txt, centres, lab


def test_variant_and_seed_after_a_plain_selection_do_not_clash(make_run: MakeRun,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    img, txt, _, _ = _world()
    run = make_run(img, txt)
    base = ["select", "-r", str(run), "-m", "clipcov", "-f", "0.3", "--partition", "kmeans:4", "--json"]
    names = []
    for extra in ([], ["--variant", "greedy"], ["--seed", "1"]):
        assert main([*base, *extra]) == 0, capsys.readouterr().err
        names.append(json.loads(capsys.readouterr().out)["name"])
    for extra in ([], ["--seed", "1"]):
        assert main(["select", "-r", str(run), "-m", "random", "-f", "0.3", "--json", *extra]) == 0
        names.append(json.loads(capsys.readouterr().out)["name"])
    assert names == ["clipcov-km4-f0.3", "clipcov-greedy-km4-f0.3", "clipcov-km4-s1-f0.3", "random-f0.3",
                     "random-s1-f0.3"]
    assert sorted(p.name for p in (run / "selections").iterdir()) == sorted(names)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--classes", "NOPE"], 3, "classes file not found"),
        (["--partition", "kmeans:500"], 2, "kmeans:500 needs at least 500 samples, the pool has 400"),
        (["--partition", "kmeans:x"], 2, "bad --partition"),
    ],
)
def test_inputs_are_checked_before_the_name(make_run: MakeRun, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            extra: list[str], code: int, message: str) -> None:
    """A name that is taken must not hide a bad input: the input's own error comes first."""
    img, txt, _, _ = _world()
    run = make_run(img, txt)
    assert main(["select", "-r", str(run), "-m", "random", "-f", "0.3", "--name", "taken"]) == 0
    capsys.readouterr()
    extra = [str(tmp_path / "nope.txt") if a == "NOPE" else a for a in extra]
    assert main(["select", "-r", str(run), "-m", "clipcov", "-f", "0.3", "--name", "taken", *extra]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


# --- the class list hint --------------------------------------------------------------------------
@pytest.fixture
def stand_in_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's model and ImageNet's class list replaced by a stand-in (no weights needed)."""
    import curate.models

    def encode_texts(prompts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(prompts))
        return normalise(rng.normal(size=(len(prompts), 16)))

    fake = SimpleNamespace(encode_texts=encode_texts, info={"model": "stand-in"})
    monkeypatch.setattr(curate.models, "load_model_from_run", lambda run, device="cpu": fake)
    monkeypatch.setattr(curate.models, "imagenet_zeroshot_metadata", lambda: (["tench", "shark"], ["a {}."]))


def _world_with_class_list(make_run: MakeRun, tmp_path: Path, with_list: bool) -> tuple[Path, Path]:
    world = tmp_path / "world"
    (world / "train").mkdir(parents=True)
    if with_list:
        (world / "classnames.txt").write_text("circle\nsquare\ntriangle\nstar\n")
    img, txt, _, _ = _world()
    urls = [str(world / "train" / f"{s:05d}.tar") for s in range(2)]
    return make_run(img, txt, shard_urls=urls), world / "classnames.txt"


def _hints(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hint:")]


@pytest.mark.usefixtures("stand_in_model")
def test_clipcov_says_once_that_the_shards_come_with_a_class_list(make_run: MakeRun, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run, classes = _world_with_class_list(make_run, tmp_path, with_list=True)
    base = ["select", "-r", str(run), "-m", "clipcov", "-f", "0.3", "--device", "cpu", "--json"]
    assert main(base) == 0
    hints = _hints(capsys.readouterr().err)
    assert len(hints) == 1 and str(classes) in hints[0] and f"--classes {classes}" in hints[0], hints
    # the partition chosen explicitly (ImageNet on purpose, the class list, k-means): no hint
    for extra in (["--partition", "imagenet", "--name", "a"], ["--classes", str(classes)],
                  ["--partition", "kmeans:4"]):
        assert main([*base, *extra]) == 0
        assert _hints(capsys.readouterr().err) == [], extra
    # other methods never need one
    assert main(["select", "-r", str(run), "-m", "random", "-f", "0.3"]) == 0
    assert _hints(capsys.readouterr().err) == []


@pytest.mark.usefixtures("stand_in_model")
def test_no_hint_without_a_class_list(make_run: MakeRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = _world_with_class_list(make_run, tmp_path, with_list=False)
    assert main(["select", "-r", str(run), "-m", "clipcov", "-f", "0.3", "--device", "cpu", "--json"]) == 0
    assert _hints(capsys.readouterr().err) == []


def test_help_explains_the_partition(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Partition (clipcov):" in text and "--classes FILE" in text and "kmeans:K clusters" in text
