"""Tests of the synthetic world (curate.world) and the deterministic tar writer, on real generated data."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.io.tarwrite import write_members, write_tar
from curate.schemas import TRUTH_SCHEMA
from curate.world import (
    COLORS,
    DEFAULT_COLORS,
    DEFAULT_SHAPES,
    SHAPES,
    class_names,
    list_shards,
    make_sample,
    read_truth,
    sample_uid,
)

REPO = Path(__file__).resolve().parents[1]
COMMITTED_SAMPLE = REPO / "shards" / "sample"

N_TRAIN, N_TEST, SHARD_SIZE = 1200, 90, 250
N_CLASSES = len(DEFAULT_COLORS) * len(DEFAULT_SHAPES)


def _read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]


def _samples(out: Path, split: str) -> dict[str, dict[str, Any]]:
    """uid -> {"shard", "key", "jpg", "txt", "json"} for every sample of a split."""
    by_uid: dict[str, dict[str, Any]] = {}
    for shard in list_shards(out, split):
        grouped: dict[str, dict[str, Any]] = {}
        for name, data in _read_tar(shard):
            key, ext = name.split(".", 1)
            grouped.setdefault(key, {"shard": shard.stem, "key": key})[ext] = data
        for sample in grouped.values():
            sample["meta"] = json.loads(sample["json"])
            by_uid[sample["meta"]["uid"]] = sample
    return by_uid


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("world")
    summary = make_sample(out, seed=3, n_train=N_TRAIN, n_test=N_TEST, shard_size=SHARD_SIZE)
    return out, summary


@pytest.fixture(scope="module")
def train(world: tuple[Path, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return _samples(world[0], "train")


@pytest.fixture(scope="module")
def default_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("default-world")
    return out, make_sample(out)


# ------------------------------------------------------------------------------------------------
# tarwrite


def test_write_tar_orders_members_and_normalises_headers(tmp_path: Path) -> None:
    samples = [
        ("b", {"json": b"{}", "zz": b"z", "txt": b"cap", "cls": b"1", "jpg": b"\xff\xd8"}),
        ("a", {"txt": b"x", "png": b"p"}),
    ]
    path = tmp_path / "s.tar"
    assert write_tar(path, samples) == 2
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "b.jpg", "b.txt", "b.json", "b.cls", "b.zz", "a.png", "a.txt",
        ]  # fmt: skip
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            assert m.isreg()
        assert tar.extractfile("b.txt").read() == b"cap"  # type: ignore[union-attr]
    first = path.read_bytes()
    write_tar(path, samples)
    assert path.read_bytes() == first
    assert first[257:263] == b"ustar\x00"  # POSIX header magic
    assert len(first) % 10240 == 0


@pytest.mark.parametrize(
    "samples",
    [
        [("a", {"txt": b"1"}), ("a", {"txt": b"2"})],
        [("a.b", {"txt": b"1"})],
        [("", {"txt": b"1"})],
        [("../a", {"txt": b"1"})],
        [("a", {})],
        [("a", {".txt": b"1"})],
        [("a", {"txt": "not bytes"})],
    ],
)
def test_write_tar_rejects_malformed_samples_atomically(tmp_path: Path, samples: list[Any]) -> None:
    path = tmp_path / "bad.tar"
    write_tar(path, [("keep", {"txt": b"old"})])
    before = path.read_bytes()
    with pytest.raises((ValueError, TypeError)):
        write_tar(path, samples)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar"]


def test_write_members_writes_anything_in_order(tmp_path: Path) -> None:
    members = [("x.txt", b"1"), ("x.txt", b"2"), ("noext", b""), ("d/y.jpg", b"j"), ("a.json", b"{}")]
    path = tmp_path / "raw.tar"
    assert write_members(path, members) == 5
    assert _read_tar(path) == members


def test_interrupted_write_leaves_no_temp_file(tmp_path: Path) -> None:
    def boom() -> Any:
        yield "000000001", {"txt": b"fine"}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_tar(tmp_path / "x.tar", boom())
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# determinism and layout


def test_same_seed_same_bytes_other_seed_differs(world: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, summary = world
    again = make_sample(tmp_path / "again", seed=3, n_train=N_TRAIN, n_test=N_TEST, shard_size=SHARD_SIZE)
    assert again == summary
    assert _tree_hashes(tmp_path / "again") == _tree_hashes(out)

    other = tmp_path / "other"
    make_sample(other, seed=4, n_train=N_TRAIN, n_test=N_TEST, shard_size=SHARD_SIZE)
    for split in ("train", "test"):
        for a, b in zip(list_shards(out, split), list_shards(other, split), strict=True):
            assert a.read_bytes() != b.read_bytes()
    uids = set(read_truth(list_shards(out, "train")).column("uid").to_pylist())
    assert uids.isdisjoint(read_truth(list_shards(other, "train")).column("uid").to_pylist())


def test_layout_member_names_and_order(world: tuple[Path, dict[str, Any]]) -> None:
    out, summary = world
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        shards = list_shards(out, split)
        assert [p.name for p in shards] == [f"{i:05d}.tar" for i in range(-(-n // SHARD_SIZE))]
        assert summary["splits"][split]["samples"] == n
        assert summary["splits"][split]["shards"] == len(shards)
        names = [name for shard in shards for name, _ in _read_tar(shard)]
        expected = [f"{i:09d}.{ext}" for i in range(n) for ext in ("jpg", "txt", "json")]
        assert names == expected
        per_shard = [len(_read_tar(s)) // 3 for s in shards]
        assert per_shard == [min(SHARD_SIZE, n - i * SHARD_SIZE) for i in range(len(shards))]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_world_json_lists_every_file_with_its_hash(world: tuple[Path, dict[str, Any]]) -> None:
    out, summary = world
    assert json.loads((out / "world.json").read_text()) == summary
    hashes = _tree_hashes(out)
    hashes.pop("world.json")
    assert {f["path"]: f["sha256"] for f in summary["files"]} == hashes
    assert all(f["bytes"] == (out / f["path"]).stat().st_size for f in summary["files"])
    names = class_names()
    assert (out / "classnames.txt").read_text().splitlines() == names
    assert [c["name"] for c in summary["classes"]] == names
    assert [c["class_id"] for c in summary["classes"]] == list(range(N_CLASSES))
    templates = (out / "templates.txt").read_text().splitlines()
    assert len(templates) >= 3 and all(t.count("{}") == 1 for t in templates)


def test_rerun_into_same_folder_removes_stale_shards(tmp_path: Path) -> None:
    make_sample(tmp_path, n_train=120, n_test=30, shard_size=40)
    assert len(list_shards(tmp_path, "train")) == 3
    summary = make_sample(tmp_path, n_train=120, n_test=30, shard_size=60)
    assert [p.name for p in list_shards(tmp_path, "train")] == ["00000.tar", "00001.tar"]
    assert sorted(f["path"] for f in summary["files"] if f["path"].startswith("train/")) == [
        "train/00000.tar",
        "train/00001.tar",
    ]


def test_never_writes_over_files_it_did_not_write(tmp_path: Path) -> None:
    """A folder with the user's own shards is refused; an earlier world's folder keeps the user's files."""
    from curate.errors import UsageError

    mine = tmp_path / "data" / "train"
    mine.mkdir(parents=True)
    for name in ("00000.tar", "00007.tar"):
        (mine / name).write_bytes(b"the user's shard " + name.encode())
    with pytest.raises(UsageError, match="holds no synthetic world"):
        make_sample(tmp_path / "data", n_train=40, n_test=10, shard_size=20)
    assert sorted(p.read_bytes() for p in mine.iterdir()) == [b"the user's shard 00000.tar",
                                                            b"the user's shard 00007.tar"]
    world = tmp_path / "world"
    make_sample(world, n_train=60, n_test=10, shard_size=20)
    (world / "train" / "00009.tar").write_bytes(b"added by the user")
    make_sample(world, n_train=40, n_test=10, shard_size=20)  # its own stale 00002.tar goes, the user's stays
    assert [p.name for p in list_shards(world, "train")] == ["00000.tar", "00001.tar", "00009.tar"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0},
        {"shard_size": 0},
        {"colors": ("red", "mauve")},
        {"shapes": ("circle", "circle")},
        {"mismatch_rate": 1.5},
        {"mismatch_rate": 0.6, "uninformative_rate": 0.5},
        {"jpeg_quality": 0},
    ],
)
def test_bad_parameters_raise(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_sample(tmp_path, **{"n_train": 50, "n_test": 10, **kwargs})


# ------------------------------------------------------------------------------------------------
# content and ground truth


def test_samples_are_valid_images_uids_and_json(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    for split in ("train", "test"):
        samples = _samples(out, split)
        for sample in samples.values():
            meta = sample["meta"]
            index = int(sample["key"])
            assert meta["uid"] == sample_uid(3, split, index)
            assert re.fullmatch(r"[0-9a-f]{32}", meta["uid"])
            assert meta["key"] == sample["key"] and meta["split"] == split
            assert meta["caption"] == sample["txt"].decode()
            with Image.open(io.BytesIO(sample["jpg"])) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))
    assert len(_samples(out, "test")) == N_TEST


def test_defect_rates_and_exclusivity(world: tuple[Path, dict[str, Any]]) -> None:
    out, summary = world
    t = read_truth(list_shards(out, "train")).to_pydict()
    n = len(t["uid"])
    assert n == N_TRAIN
    mismatched = np.array(t["mismatched"])
    uninformative = np.array(t["uninformative"])
    kind = np.array([k or "" for k in t["duplicate_kind"]])
    assert np.mean(mismatched) == pytest.approx(0.20, abs=0.01)
    assert np.mean(kind == "exact") == pytest.approx(0.03, abs=0.005)
    assert np.mean(kind == "near") == pytest.approx(0.05, abs=0.005)
    assert np.mean(uninformative) == pytest.approx(0.05, abs=0.005)
    assert ((kind != "").astype(int) + mismatched + uninformative).max() == 1
    assert all((k == "") == (d is None) for k, d in zip(kind, t["duplicate_of"], strict=True))
    defects = summary["splits"]["train"]["defects"]
    assert defects == {
        "clean": int(n - mismatched.sum() - uninformative.sum() - (kind != "").sum()),
        "mismatched": int(mismatched.sum()),
        "uninformative": int(uninformative.sum()),
        "exact_duplicate": int((kind == "exact").sum()),
        "near_duplicate": int((kind == "near").sum()),
    }


def _mentions(caption: str, words: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", caption.lower()) for w in words)


def test_captions_match_truth(train: dict[str, dict[str, Any]]) -> None:
    vocabulary = list(COLORS) + list(SHAPES)
    seen = Counter()
    for sample in train.values():
        caption, truth = sample["meta"]["caption"], sample["meta"]["truth"]
        text = caption.lower()
        assert truth["class"] == class_names()[truth["class_id"]]
        if truth["uninformative"]:
            assert truth["caption_class"] is None
            assert not _mentions(caption, vocabulary), caption
            seen["uninformative"] += 1
        elif truth["mismatched"]:
            assert truth["class"] not in text, caption
            assert truth["caption_class"] != truth["class"]
            assert truth["caption_class"] in text, caption
            seen["mismatched"] += 1
        else:
            assert truth["caption_class"] == truth["class"]
            assert truth["class"] in text, caption
            assert sum(f"{c} {s}" in text for c in COLORS for s in SHAPES) == 1, caption
    assert seen["uninformative"] > 0 and seen["mismatched"] > 0
    mismatched_to = Counter(
        s["meta"]["truth"]["caption_class"] for s in train.values() if s["meta"]["truth"]["mismatched"]
    )
    assert len(mismatched_to) >= N_CLASSES // 2  # random other classes, not a fixed mapping


def test_captions_are_varied(train: dict[str, dict[str, Any]]) -> None:
    captions = [s["meta"]["caption"] for s in train.values() if not s["meta"]["truth"]["uninformative"]]
    assert len(set(captions)) > 0.7 * len(captions)
    lower = [c.lower() for c in captions]
    assert np.mean([_mentions(c, ["small", "tiny", "little", "large", "big", "huge", "medium"]) for c in lower]) > 0.3
    assert np.mean(["background" in c or "backdrop" in c or "gradient" in c for c in lower]) > 0.2
    assert (
        np.mean([_mentions(c, ["left", "right", "top", "bottom", "center", "middle", "centered"]) for c in lower]) > 0.3
    )


def test_duplicates_point_to_clean_originals(train: dict[str, dict[str, Any]]) -> None:
    kinds: Counter[str] = Counter()
    other_shard = 0
    for sample in train.values():
        truth = sample["meta"]["truth"]
        if truth["duplicate_of"] is None:
            continue
        original = train[truth["duplicate_of"]]
        o_truth = original["meta"]["truth"]
        assert o_truth["duplicate_of"] is None and not o_truth["mismatched"] and not o_truth["uninformative"]
        assert o_truth["class"] == truth["class"]
        assert original["key"] != sample["key"]
        other_shard += original["shard"] != sample["shard"]
        kinds[truth["duplicate_kind"]] += 1
        if truth["duplicate_kind"] == "exact":
            assert sample["jpg"] == original["jpg"]
            assert sample["txt"] == original["txt"]
        else:
            assert truth["duplicate_kind"] == "near"
            assert sample["jpg"] != original["jpg"]
            assert truth["class"] in sample["txt"].decode().lower()
            a = np.asarray(Image.open(io.BytesIO(sample["jpg"])), dtype=np.float32)
            b = np.asarray(Image.open(io.BytesIO(original["jpg"])), dtype=np.float32)
            assert np.abs(a - b).mean() < 25.0  # the same scene, lightly changed
    assert kinds["exact"] > 0 and kinds["near"] > 0
    assert other_shard > 0.5 * sum(kinds.values())


def test_images_show_their_class_colour(train: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for sample in train.values():
        meta = sample["meta"]
        if meta["scene"]["background"] != "solid":
            continue
        colour = meta["truth"]["class"].split()[0]
        pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])), dtype=np.float32).reshape(-1, 3)
        near = np.linalg.norm(pixels - np.array(COLORS[colour], dtype=np.float32), axis=1) < 45
        assert near.sum() >= 15, meta
        checked += 1
    assert checked > 100


def test_test_split_is_clean_balanced_and_complete(world: tuple[Path, dict[str, Any]]) -> None:
    out, summary = world
    t = read_truth(list_shards(out, "test")).to_pydict()
    assert not any(t["mismatched"]) and not any(t["uninformative"])
    assert set(t["duplicate_of"]) == {None} and set(t["duplicate_kind"]) == {None}
    counts = Counter(t["class_id"])
    assert set(counts) == set(range(N_CLASSES))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert [c["test_count"] for c in summary["classes"]] == [counts[i] for i in range(N_CLASSES)]
    assert len(set(t["key"])) == len(t["key"])


def test_class_counts_are_long_tailed(default_world: tuple[Path, dict[str, Any]]) -> None:
    _, summary = default_world
    counts = np.array([c["train_count"] for c in summary["classes"]])
    ranks = np.array([c["zipf_rank"] for c in summary["classes"]])
    assert counts.sum() == 3000 and sorted(ranks) == list(range(N_CLASSES))
    by_rank = counts[np.argsort(ranks)]
    assert np.all(np.diff(by_rank) <= 0)
    slope = np.polyfit(np.log(np.arange(1, N_CLASSES + 1)), np.log(by_rank), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)
    assert by_rank[-1] >= 10  # the tail still has a handful of samples
    assert by_rank[0] > 20 * by_rank[-1]
    # the head class is not simply class 0: the class order is seeded
    other = make_sample(default_world[0].parent / "zipf-seed-1", seed=1, n_train=300, n_test=0)
    assert [c["zipf_rank"] for c in other["classes"]] != list(ranks)


# ------------------------------------------------------------------------------------------------
# read_truth


def test_read_truth_round_trip(world: tuple[Path, dict[str, Any]], train: dict[str, dict[str, Any]]) -> None:
    out, _ = world
    shards = list_shards(out, "train")
    table = read_truth(shards)
    assert table.schema == TRUTH_SCHEMA
    assert table.num_rows == N_TRAIN
    assert len(set(table.column("uid").to_pylist())) == N_TRAIN
    for row in table.to_pylist():
        sample = train[row["uid"]]
        assert row["key"] == sample["key"] and row["shard"] == sample["shard"]
        truth = sample["meta"]["truth"]
        assert {k: truth[k] for k in TRUTH_SCHEMA.names if k in truth} == {
            k: row[k] for k in TRUTH_SCHEMA.names if k in truth
        }
    single = read_truth(str(shards[1]))
    assert single.num_rows == SHARD_SIZE and set(single.column("shard").to_pylist()) == {"00001"}
    assert read_truth([]).num_rows == 0


def test_read_truth_rejects_foreign_shards(tmp_path: Path) -> None:
    path = tmp_path / "foreign.tar"
    write_tar(path, [("k", {"jpg": b"x", "json": b'{"uid": "00"}'})])
    with pytest.raises(ValueError, match="truth"):
        read_truth([path])
    write_tar(tmp_path / "empty.tar", [])
    empty = read_truth([tmp_path / "empty.tar"])
    assert isinstance(empty, pa.Table) and empty.num_rows == 0 and empty.schema == TRUTH_SCHEMA


# ------------------------------------------------------------------------------------------------
# the committed sample


def test_committed_sample_is_regenerable(default_world: tuple[Path, dict[str, Any]]) -> None:
    if not (COMMITTED_SAMPLE / "world.json").exists():
        pytest.skip("shards/sample is not present in this checkout")
    regenerated, _ = default_world
    committed = _tree_hashes(COMMITTED_SAMPLE)
    assert committed == _tree_hashes(regenerated)
    assert sum((COMMITTED_SAMPLE / p).stat().st_size for p in committed) < 20_000_000
