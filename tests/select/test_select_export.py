"""Exports (DataComp .npy, keys, urls) and reshard (readable by a plain webdataset pipeline)."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import hex_uid

from curate.errors import InputError, UsageError
from curate.io.export import export_manifest, read_datacomp, u8pair_to_uids, uids_to_u8pair
from curate.io.manifest import build_manifest, write_manifest
from curate.io.reshard import reshard
from curate.io.shards import iter_shard, shard_name
from curate.io.tarwrite import write_members
from curate.rundir import RunDir


def test_datacomp_u8pair_round_trip_matches_datacomp_conversion() -> None:
    uids = [hex_uid(i) for i in range(2000)] + ["ffffffffffffffff0000000000000001", "0" * 32]
    pairs = uids_to_u8pair(uids)
    # DataComp's own conversion (baselines/apply_filter.py): (int(uid[:16], 16), int(uid[16:32], 16))
    want = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    np.testing.assert_array_equal(pairs, want)
    assert list(u8pair_to_uids(pairs)) == uids
    assert list(u8pair_to_uids(uids_to_u8pair([u.upper() for u in uids]))) == uids
    with pytest.raises(InputError, match="not a 128-bit hex uid"):
        uids_to_u8pair(["abc"])
    with pytest.raises(InputError, match="not hexadecimal"):
        uids_to_u8pair(["g" * 32])


def _manifest(tmp: Path, rows: list[tuple[str, str, int]], run_shards: list[dict] | None = None) -> Path:
    """A selection manifest inside a run at ``tmp/run``; rows are (shard, key, position)."""
    run = tmp / "run"
    RunDir(run).update("embed", {"model": "test", "shards": run_shards or []})
    table = pa.table(
        {
            "uid": [hex_uid(hash((s, k)) % 10**9) for s, k, _ in rows],
            "shard": [s for s, _, _ in rows],
            "key": [k for _, k, _ in rows],
            "position": pa.array([p for _, _, p in rows], pa.int32()),
        }
    )
    m = build_manifest(table, kind="selection", command="test", pool_size=100)
    return write_manifest(run / "selections" / "x" / "manifest.parquet", m)


def test_export_formats(tmp_path: Path) -> None:
    rows = [("00001", "b", 1), ("00000", "a", 0), ("00001", "a", 0)]
    shards = [
        {"name": "00000", "url": "s3://bucket/00000.tar"},
        {"name": "00001", "url": "s3://bucket/00001.tar"},
        {"name": "00002", "url": "s3://bucket/00002.tar"},
    ]
    path = _manifest(tmp_path, rows, shards)
    out, n = export_manifest(path, "datacomp")
    assert out == path.parent / "subset.npy" and n == 3
    arr = np.load(out)
    assert arr.dtype == np.dtype("u8,u8")
    assert arr.tolist() == sorted(arr.tolist())  # sorted by (upper, lower), as DataComp binary-searches it
    assert sorted(read_datacomp(out)) == sorted(hex_uid(hash((s, k)) % 10**9) for s, k, _ in rows)
    out, n = export_manifest(path, "keys", tmp_path / "k.txt")
    assert out.read_text().splitlines() == ["00000/a", "00001/a", "00001/b"]
    out, n = export_manifest(path.parent, "urls", tmp_path / "u.txt")  # a selection folder works too
    assert out.read_text().splitlines() == ["s3://bucket/00000.tar", "s3://bucket/00001.tar"]
    path2 = _manifest(tmp_path / "nourl", rows)  # no URLs recorded: fall back to the shard names
    out, _ = export_manifest(path2, "urls", tmp_path / "u2.txt")
    assert out.read_text().splitlines() == ["00000", "00001"]
    with pytest.raises(UsageError, match="unknown export format"):
        export_manifest(path, "csv")


def test_export_into_a_folder(tmp_path: Path) -> None:
    """--out DIR (existing, or ending with '/') gets DIR/<selection>.npy, .keys.txt, .urls.txt; before, datacomp
    into a folder was an IsADirectoryError traceback."""
    path = _manifest(tmp_path, [("00000", "a", 0), ("00001", "b", 1)], [{"name": "00000", "url": "/d/00000.tar"},
                                                                        {"name": "00001", "url": "/d/00001.tar"}])
    (tmp_path / "out").mkdir()
    out, n = export_manifest(path, "datacomp", tmp_path / "out")
    assert out == tmp_path / "out" / "x.npy" and n == 2 and len(read_datacomp(out)) == 2
    out, _ = export_manifest(path.parent, "keys", f"{tmp_path / 'new'}/")  # a folder that does not exist yet
    assert out == tmp_path / "new" / "x.keys.txt" and out.read_text().splitlines() == ["00000/a", "00001/b"]
    out, _ = export_manifest(path, "urls", tmp_path / "out")
    assert out == tmp_path / "out" / "x.urls.txt" and out.read_text().splitlines() == ["/d/00000.tar", "/d/00001.tar"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.npy", "x.urls.txt"]
    # a bootstrap round's manifest is named after its round
    rows = pa.table({"uid": [hex_uid(1)], "shard": ["00000"], "key": ["a"], "position": pa.array([0], pa.int32())})
    rnd = write_manifest(tmp_path / "r" / "round-0003.parquet",
                         build_manifest(rows, kind="bootstrap", command="test", round=3))
    assert export_manifest(rnd, "datacomp", tmp_path / "out")[0] == tmp_path / "out" / "round-0003.npy"
    with pytest.raises(UsageError, match="is not one"):
        export_manifest(path, "keys", f"{tmp_path / 'out' / 'x.npy'}/")


def test_export_replaces_only_what_curate_wrote(tmp_path: Path) -> None:
    """An existing --out is replaced when curate wrote it (default names in a selection folder), left as it is
    when it holds the same bytes, and otherwise only with force; before, any file was overwritten silently."""
    path = _manifest(tmp_path, [("00000", "a", 0), ("00001", "b", 1)])
    user = tmp_path / "subset.npy"
    user.write_bytes(b"the user's own subset")
    with pytest.raises(UsageError, match="curate did not write it; pass --force"):
        export_manifest(path, "datacomp", user)
    assert user.read_bytes() == b"the user's own subset"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    _, n = export_manifest(path, "datacomp", user, force=True)
    assert n == 2 and len(read_datacomp(user)) == 2
    ino = user.stat().st_ino
    export_manifest(path, "datacomp", user)  # the same bytes again: fine, and the file is left as it is
    assert user.stat().st_ino == ino
    # the default file in the selection folder is curate's: a changed selection replaces it without force
    default, _ = export_manifest(path, "keys")
    assert default == path.parent / "keys.txt"
    rows = pa.table({"uid": [hex_uid(7)], "shard": ["00002"], "key": ["z"], "position": pa.array([0], pa.int32())})
    write_manifest(path, build_manifest(rows, kind="selection", command="test"))
    assert export_manifest(path, "keys")[1] == 1 and default.read_text() == "00002/z\n"
    with pytest.raises(UsageError, match="is the manifest being exported"):
        export_manifest(path, "keys", path, force=True)
    (path.parent / "scores.parquet").write_bytes(b"the selection's scores")
    with pytest.raises(UsageError, match="is a file of the run"):
        export_manifest(path, "keys", path.parent / "scores.parquet", force=True)
    assert (path.parent / "scores.parquet").read_bytes() == b"the selection's scores"


@pytest.fixture
def source(make_shards: Callable[..., list[str]]) -> list[str]:
    return make_shards(n_shards=3, per_shard=10)


def test_reshard_readable_by_webdataset(tmp_path: Path, source: list[str]) -> None:
    import webdataset as wds

    all_samples = {(s.shard, s.key): s for u in source for s in iter_shard(u)}
    chosen = sorted(all_samples)[::3]  # 10 of 30, across all shards
    rows = [(s, k, all_samples[(s, k)].position) for s, k in chosen]
    shards = [{"name": shard_name(u), "url": u} for u in source]
    path = _manifest(tmp_path, rows, shards)
    res = reshard(path, tmp_path / "out", shard_size=4)
    assert res.written == 10 and [s["samples"] for s in res.shards] == [4, 4, 2]
    assert not res.prefixed_keys
    urls = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    got = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        got[sample["__key__"]] = sample
    assert set(got) == {k for _, k in chosen}
    for s, k in chosen:  # bytes copied unchanged
        assert got[k]["jpg"] == all_samples[(s, k)].image_bytes
        assert got[k]["txt"].decode() == all_samples[(s, k)].caption
    for u in urls:  # safe member names only, regular files only
        with tarfile.open(u) as tf:
            for m in tf.getmembers():
                assert m.isfile() and not m.name.startswith("/") and ".." not in m.name.split("/")
    with pytest.raises(UsageError, match="not empty"):
        reshard(path, tmp_path / "out")
    assert reshard(path, tmp_path / "out", shard_size=100, force=True).shards == [{"name": "000000.tar", "samples": 10}]


def tiny_sample(key: str, caption: str) -> list[tuple[str, bytes]]:
    """Members of one sample (image bytes are not decoded by the reader)."""
    return [(f"{key}.jpg", b"\xff\xd8 not really a jpeg " + key.encode()), (f"{key}.txt", caption.encode())]


def test_reshard_prefixes_colliding_keys(tmp_path: Path) -> None:
    srcs = []
    for s in range(2):
        p = tmp_path / "src" / f"{s:05d}.tar"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_members(p, [m for k in ("a", "b") for m in tiny_sample(k, f"{s}{k}")])
        srcs.append(str(p))
    path = _manifest(tmp_path, [("00000", "a", 0), ("00001", "a", 0)])
    res = reshard(path, tmp_path / "out", shards=str(tmp_path / "src" / "{00000..00001}.tar"))
    assert res.prefixed_keys
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "out" / "000000.tar"), shardshuffle=False)]
    assert keys == ["00000/a", "00001/a"]


def test_reshard_reports_missing_and_unsafe_samples(tmp_path: Path) -> None:
    p = tmp_path / "src" / "00000.tar"
    p.parent.mkdir(parents=True)
    members = [*tiny_sample("good", "g"), ("../evil.jpg", b"x"), ("../evil.txt", b"y")]
    write_members(p, members)
    path = _manifest(
        tmp_path,
        [("00000", "good", 0), ("00000", "../evil", 1), ("00000", "gone", 2)],
        [{"name": "00000", "url": str(p)}],
    )
    with pytest.raises(InputError, match=r"found 1 of 3 manifest samples; missing 00000/../evil, 00000/gone"):
        reshard(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_merge_sub_pools_export_reshard_and_shard_urls(tmp_path: Path, make_shards: Callable[..., list[str]],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs (sub-pools of one pool, disjoint shards) selected apart; `curate merge` joins their
    manifests, and export, reshard and shard_urls find every shard's URL without a run folder."""
    import json

    from curate.cli.app import main
    from curate.io.manifest import read_manifest
    from curate.trainer import shard_urls

    source = make_shards(n_shards=4, per_shard=10)
    samples = {(s.shard, s.key): s for u in source for s in iter_shard(u)}
    parts = []
    for name, urls in (("a", source[:2]), ("b", source[2:])):
        names = [shard_name(u) for u in urls]
        rows = [(s, k, samples[(s, k)].position) for s, k in sorted(samples) if s in names][::2]
        parts.append(_manifest(tmp_path / name, rows, [{"name": shard_name(u), "url": u} for u in urls]))
    out = tmp_path / "merged" / "all.parquet"
    assert main(["merge", str(parts[0].parent), str(parts[1]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    merged = read_manifest(out)
    assert len(merged) == 20 and merged.header["kind"] == "merge"
    assert merged.header["counts"]["pool"] == 200 and merged.header["counts"]["kept"] == 20
    assert [s["content_hash"] for s in merged.header["sources"]] == [read_manifest(p).header["content_hash"]
                                                                     for p in parts]
    assert json.loads(out.with_suffix(".json").read_text()) == merged.header
    assert sorted(merged.uids) == sorted([*read_manifest(parts[0]).uids, *read_manifest(parts[1]).uids])
    assert shard_urls(merged) == source  # URLs from both runs, from the header alone
    urls_file, n = export_manifest(out, "urls", tmp_path / "urls.txt")
    assert n == 4 and urls_file.read_text().splitlines() == source
    res = reshard(out, tmp_path / "reshard", shard_size=8)
    assert res.written == 20
    # bad merges: one line, nothing written
    assert main(["merge", str(parts[0]), "--out", str(tmp_path / "m1.parquet")]) == 2
    assert main(["merge", str(parts[0]), str(parts[1]), "--out", str(out)]) == 2  # exists: needs --force
    assert main(["merge", str(parts[0]), str(parts[1]), "--out", str(parts[0])]) == 2
    assert main(["merge", str(parts[0]), str(out), "--out", str(tmp_path / "m2.parquet")]) == 3  # overlap
    assert "is in both" in capsys.readouterr().err
    assert main(["merge", str(parts[0]), str(tmp_path / "nope"), "--out", str(tmp_path / "m3.parquet")]) == 3
    assert not any((tmp_path / f"m{i}.parquet").exists() for i in (1, 2, 3))
    assert main(["merge", str(parts[0]), str(parts[1]), "--out", str(out), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 20


def test_merge_refuses_a_uid_in_two_manifests(tmp_path: Path) -> None:
    from curate.io.merge import merge_manifests

    a = _manifest(tmp_path / "a", [("00000", "k1", 0)])
    b = _manifest(tmp_path / "b", [("00000", "k1", 0)])  # the same sample: shard names clash first
    with pytest.raises(InputError, match="is in both"):
        merge_manifests([a, b], tmp_path / "m.parquet")
    table = pa.table({"uid": [hex_uid(hash(("00000", "k1")) % 10**9)], "shard": ["00009"], "key": ["z"],
                      "position": pa.array([0], pa.int32())})
    c = write_manifest(tmp_path / "c.parquet", build_manifest(table, kind="selection", command="test"))
    with pytest.raises(InputError, match="appear in more than one manifest"):
        merge_manifests([a, c], tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()
