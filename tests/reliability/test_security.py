"""Security: no pickle of untrusted data, weights-only checkpoints, reshard stays in its folder, bounded images.

The package is scanned (AST) for unpickling and extraction calls; the rest are behavioural tests with
hostile files whose payload would leave a marker file if it ever ran.
"""

from __future__ import annotations

import ast
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import curate
from curate.cli.app import main
from curate.io.manifest import build_manifest, write_manifest
from curate.io.shards import DEFAULT_MAX_PIXELS, ErrorPolicy, SampleError, decode_image, iter_shard
from curate.io.tarwrite import write_members
from tests.embed_helpers import TINY_ARCH, TINY_CONFIG
from tests.reliability.faults import EPS, image_bytes, png_header_only

PACKAGE = Path(curate.__file__).resolve().parent


# --- static scan ----------------------------------------------------------------------------------
#: Modules whose only purpose is (un)pickling arbitrary objects.
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
LOADERS = {"load", "loads", "Unpickler", "open"}


def _name(f: ast.expr) -> str:
    """Dotted name of a call target (``np.load``, ``torch.load``, ``eval``); '' when not a plain name."""
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if not isinstance(f, ast.Name):
        return "." + ".".join(reversed(parts))  # e.g. self.model.eval -> '.model.eval'
    return ".".join([f.id, *reversed(parts)])


def _kw(call: ast.Call, name: str) -> object:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expression>"
    return "<missing>"


def scan(root: Path) -> list[str]:
    """Every unsafe deserialisation or extraction call under ``root`` as 'file:line: what'."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
                bad = [a.name for a in node.names if a.name in LOADERS]
                if bad:
                    problems.append(f"{rel}:{node.lineno}: from {node.module} import {', '.join(bad)}")
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            where = f"{rel}:{node.lineno}: {name}"
            head, _, last = name.rpartition(".")
            if head in PICKLERS and last in LOADERS:
                problems.append(where)
            elif name == "torch.load" and _kw(node, "weights_only") is not True:
                problems.append(f"{where} without weights_only=True")  # torch < 2.6 defaults to False
            elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in (False, "<missing>"):
                problems.append(f"{where} with allow_pickle")  # numpy's default is False
            elif last in ("extractall", "extract") and "." in name:
                problems.append(f"{where} (tar members could be written outside the target)")
            elif name in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "pd.read_pickle", "pandas.read_pickle"):
                problems.append(where)
            elif (name.startswith("open_clip.") and last in ("create_model", "create_model_and_transforms",
                                                             "load_checkpoint")
                  and _kw(node, "weights_only") is not True):
                problems.append(f"{where} without weights_only=True")
    return problems


def test_package_never_unpickles_or_extracts() -> None:
    assert scan(PACKAGE) == []


def test_scan_finds_unsafe_code(tmp_path: Path) -> None:
    """The scanner itself: each unsafe pattern is reported (so an empty report means something)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import pickle\nimport torch\nimport numpy as np\nimport tarfile\nimport open_clip\n"
        "from dill import loads\npickle.loads(b'')\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
        "np.load('x', allow_pickle=True)\ntarfile.open('x').extractall('y')\neval('1')\n"
        "open_clip.create_model_and_transforms('m', pretrained='p')\n"
    )
    (pkg / "good.py").write_text(
        "import pickle\nimport torch\nimport numpy as np\ntorch.load('x', weights_only=True)\nnp.load('x')\n"
        "np.load('x', allow_pickle=False)\nerrors = (pickle.UnpicklingError,)\nself.model.eval()\n"
    )
    found = scan(pkg)
    assert len(found) == 8 and all(f.startswith("pkg/bad.py:") for f in found), found


# --- checkpoints --------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this object runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"visual.proj": _Payload(marker)}}, path)
    return path, marker


def test_checkpoints_load_weights_only(evil_checkpoint: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    import open_clip

    from curate.models import load_model, register_model_config
    from curate.trainer.offline import load_weights

    path, marker = evil_checkpoint
    register_model_config(TINY_ARCH, TINY_CONFIG)
    with pytest.raises((pickle.UnpicklingError, curate.errors.CurateError)):
        load_model(TINY_ARCH, str(path), device="cpu")
    assert not marker.exists()
    with pytest.raises((pickle.UnpicklingError, curate.errors.CurateError)):
        load_weights(open_clip.create_model(TINY_ARCH, pretrained=None), path)
    assert not marker.exists()
    shard = tmp_path / "s.tar"
    write_members(shard, [("a.jpg", image_bytes()), ("a.txt", b"a")])
    code = main(["embed", str(shard), "--run", str(tmp_path / "run"), "--model", TINY_ARCH, "--pretrained",
                 str(path), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: ")
    assert not marker.exists()


def test_losses_with_a_hostile_checkpoint_is_one_line(evil_checkpoint: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from curate.bootstrap import bootstrap_round
    from curate.models import register_model_config
    from tests.bootstrap_helpers import make_pool_run
    from tests.reliability.runs import source_shards

    path, marker = evil_checkpoint
    register_model_config(TINY_ARCH, TINY_CONFIG)
    run = make_pool_run(tmp_path / "run", 20, per_shard=10)
    bootstrap_round(run.root, 0)
    source_shards(tmp_path / "shards", 20, 2)
    code = main(["losses", "--run", str(run.root), "--round", "0", "--checkpoint", str(path), "--model", TINY_ARCH,
                 "--shards", str(tmp_path / "shards")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: ") and "evil.pt" in err[0], err
    assert not marker.exists()
    assert not run.losses_dir(0).exists()


def test_reference_trainer_does_not_unpickle_shard_members(tmp_path: Path) -> None:
    import pickle

    import torch

    from curate.trainer.reference import TrainConfig, _round_loader

    marker = tmp_path / "pwned"
    shard = tmp_path / "00000.tar"
    write_members(shard, [("k.jpg", image_bytes()), ("k.txt", b"a red square"),
                          ("k.pyd", pickle.dumps(_Payload(marker)))])
    rows = pa.table({"uid": [f"{1:032x}"], "shard": ["00000"], "key": ["k"], "position": pa.array([0], pa.int32())})
    mpath = write_manifest(tmp_path / "m.parquet", build_manifest(rows, kind="selection", command="test"))

    class Loaded:
        @staticmethod
        def preprocess(img: Image.Image) -> torch.Tensor:
            return torch.zeros(3, 8, 8)

    cfg = TrainConfig(run=str(tmp_path), rounds=1, batch_size=1, shuffle_buffer=1)
    for _ in _round_loader([str(shard)], mpath, Loaded(), cfg, 0):  # type: ignore[arg-type]
        pass
    assert not marker.exists(), "a .pyd member of a shard was unpickled (arbitrary code ran)"


# --- reshard stays inside its output folder ------------------------------------------------------------
def _hostile_source(path: Path) -> None:
    sym = tarfile.TarInfo("evil-link.jpg")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("evil-hard.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/passwd"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        entries: list[tuple[str, bytes] | tarfile.TarInfo] = [
            ("good1.jpg", image_bytes()), ("good1.txt", b"one"),
            ("../escape.jpg", image_bytes()), ("../escape.txt", b"up"),
            ("/tmp/abs.jpg", image_bytes()), ("/tmp/abs.txt", b"abs"),
            ("a/../../deep.jpg", image_bytes()), ("a/../../deep.txt", b"deep"),
            sym, hard,
            ("good2.jpg", image_bytes("blue")), ("good2.txt", b"two"),
        ]
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                ti = tarfile.TarInfo(e[0])
                ti.size = len(e[1])
                tf.addfile(ti, io.BytesIO(e[1]))


def _manifest(path: Path, keys: list[str]) -> Path:
    rows = pa.table({"uid": [f"{i:032x}" for i in range(len(keys))], "shard": ["src"] * len(keys), "key": keys,
                     "position": pa.array(np.arange(len(keys)), pa.int32())})
    return write_manifest(path, build_manifest(rows, kind="selection", command="test"))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


@pytest.mark.parametrize("keys", [["../escape"], ["/tmp/abs"], ["a/../../deep"], ["evil-link", "good1"],
                                  ["evil-hard"]])
def test_reshard_refuses_hostile_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: list[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "src").mkdir()  # the source shards' folder: reshard never writes inside it
    _hostile_source(tmp_path / "src" / "src.tar")
    man = _manifest(work / "m.parquet", keys)
    before = _tree(tmp_path)
    code = main(["reshard", "--manifest", str(man), "-o", str(work / "out" / "shards"), "--shards",
                 str(tmp_path / "src" / "src.tar")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "missing" in err[0], err
    assert _tree(tmp_path) == before  # nothing written anywhere (not even the output's parent)


def test_reshard_writes_only_safe_members_inside_out(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "src").mkdir()  # the source shards' folder: reshard never writes inside it
    _hostile_source(tmp_path / "src" / "src.tar")
    man = _manifest(work / "m.parquet", ["good1", "good2"])
    before = _tree(tmp_path)
    out = work / "out"
    assert main(["reshard", "--manifest", str(man), "-o", str(out), "--shards", str(tmp_path / "src" / "src.tar"),
                 "--json"]) == 0
    after = _tree(tmp_path)
    new = sorted(set(after) - set(before))
    assert new == ["work/out", "work/out/000000.tar", "work/out/reshard.json"], new
    with tarfile.open(out / "000000.tar") as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == ["good1.jpg", "good1.txt", "good2.jpg", "good2.txt"]
    assert all(m.isfile() and not os.path.isabs(m.name) and ".." not in m.name.split("/") for m in members)
    assert json.loads((out / "reshard.json").read_text())["samples"] == 2


def test_reshard_rerun_is_idempotent_and_cleans_dead_temps(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "src").mkdir()  # the source shards' folder: reshard never writes inside it
    _hostile_source(tmp_path / "src" / "src.tar")
    man = _manifest(work / "m.parquet", ["good1", "good2"])
    args = ["reshard", "--manifest", str(man), "-o", str(work / "out"), "--shards", str(tmp_path / "src" / "src.tar"),
            "--json"]
    stale = work / ".out.tmp-999999999"  # a killed writer's folder (no such pid)
    stale.mkdir()
    (stale / "000000.tar").write_bytes(b"partial")
    assert main(args) == 0
    assert not stale.exists()
    first = _tree(work)
    assert main(args) == 0  # same command again: the complete output is kept as it is
    assert _tree(work) == first
    assert main([*args[:-1], "--shard-size", "1", "--json"]) == 2  # a different reshard into it needs --force


def _reshard_args(tmp_path: Path, man: Path, out: Path, *extra: str) -> list[str]:
    return ["reshard", "--manifest", str(man), "--out", str(out), "--shards", str(tmp_path / "src" / "src.tar"),
            "--json", *extra]


def test_reshard_force_replaces_only_files_reshard_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--force replaces an earlier reshard output (the files its reshard.json lists) and nothing else."""
    (tmp_path / "src").mkdir()
    _hostile_source(tmp_path / "src" / "src.tar")
    work = tmp_path / "work"
    work.mkdir()
    man = _manifest(work / "m.parquet", ["good1", "good2"])
    out = work / "out"
    assert main(_reshard_args(tmp_path, man, out, "--shard-size", "1")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "000001.tar", "reshard.json"]
    # a file of the user's inside the output: refused whatever the flags, and kept
    (out / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    capsys.readouterr()
    assert main(_reshard_args(tmp_path, man, out, "--shard-size", "2", "--force")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds files reshard did not write (notes.txt)" in err[0], err
    assert _tree(tmp_path) == before
    # the same reshard again is still recognised as complete (the extra file is left alone)
    assert main(_reshard_args(tmp_path, man, out, "--shard-size", "1")) == 0
    assert _tree(tmp_path) == before
    (out / "notes.txt").unlink()
    info = json.loads((out / "reshard.json").read_text())
    assert info["written_by"] == "curate reshard"
    # an output from before the marker (same keys, no "written_by") is still recognised as reshard's
    del info["written_by"]
    (out / "reshard.json").write_text(json.dumps(info))
    assert main(_reshard_args(tmp_path, man, out, "--shard-size", "2", "--force")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "reshard.json"]  # 000001.tar was reshard's
    assert sorted(p.name for p in work.iterdir()) == ["m.json", "m.parquet", "out"]  # no .out.old-* left


def test_reshard_cleans_a_killed_replacement_without_touching_foreign_files(tmp_path: Path) -> None:
    """A replacing run killed after moving the old output aside leaves ``.out.old-<pid>``; the next run removes
    only the files that output's reshard.json lists."""
    (tmp_path / "src").mkdir()
    _hostile_source(tmp_path / "src" / "src.tar")
    work = tmp_path / "work"
    work.mkdir()
    man = _manifest(work / "m.parquet", ["good1", "good2"])
    assert main(_reshard_args(tmp_path, man, work / "first", "--shard-size", "1")) == 0
    old = work / ".out.old-999999999"  # no such pid: its writer is dead
    (work / "first").rename(old)
    (old / "notes.txt").write_text("not reshard's")
    assert main(_reshard_args(tmp_path, man, work / "out")) == 0
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]  # the listed files went, the foreign one stayed


def test_reshard_never_writes_around_a_run_or_the_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's cases: '--out RUN --force' and '--out OTHER --force' used to delete the run and OTHER's files."""
    (tmp_path / "src").mkdir()
    _hostile_source(tmp_path / "src" / "src.tar")
    run = tmp_path / "run"
    (run / "embeddings").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "embeddings" / "00000.parquet").write_bytes(b"embeddings")
    other = tmp_path / "other"
    (other / "projects").mkdir(parents=True)
    (other / "projects" / "main.py").write_text("print('mine')\n")
    man = _manifest(run / "m.parquet", ["good1", "good2"])
    before = _tree(tmp_path)
    outs = {run: "is a curate run folder", run / "embeddings": "which is a curate run folder",
            run / "new": "which is a curate run folder", tmp_path: "contains a curate run folder",
            other: "not the output of an earlier", tmp_path / "src": "is the folder of the source shards",
            tmp_path / "src" / "sub": "is inside the folder of the source shards"}
    for out, message in outs.items():
        capsys.readouterr()
        assert main(_reshard_args(tmp_path, man, out, "--force")) == 2, out
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (out, err)
        assert _tree(tmp_path) == before, out


# --- images -------------------------------------------------------------------------------------------
def test_pixel_limit_is_checked_before_decoding() -> None:
    bomb = png_header_only(100_000, 100_000)  # 10 Gpx declared in a few hundred bytes
    with pytest.raises(SampleError) as ei:
        decode_image(bomb)
    assert ei.value.reason == "decompression_bomb"
    # curate's own limit applies below Pillow's, and Pillow's guard still holds if a caller raises ours
    assert DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    with pytest.raises(SampleError) as ei:
        decode_image(bomb, max_pixels=10**12)
    assert ei.value.reason == "decompression_bomb"
    big = image_bytes("red", 300)
    with pytest.raises(SampleError) as ei:
        decode_image(big, max_pixels=300 * 300 - 1)
    assert ei.value.reason == "decompression_bomb"
    assert decode_image(big, max_pixels=300 * 300).size == (300, 300)


def test_pillow_pixel_limit_is_never_disabled() -> None:
    import re

    import curate.cli.app  # noqa: F401  (imports every command module)

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS >= DEFAULT_MAX_PIXELS
    assign = re.compile(r"MAX_IMAGE_PIXELS\s*=[^=]")
    assert not [p for p in PACKAGE.rglob("*.py") if assign.search(p.read_text())]


def test_thin_images_are_dropped_before_resizing() -> None:
    buf = io.BytesIO()
    Image.new("L", (1, 200_000), 0).save(buf, "PNG")  # 470 bytes; 10 Gpx once resized to a 224 px input
    with pytest.raises(SampleError) as ei:
        decode_image(buf.getvalue(), draft_size=224)
    assert ei.value.reason == "extreme_aspect_ratio"


def test_eps_is_never_handed_to_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    with pytest.raises(SampleError) as ei:
        decode_image(EPS)
    assert ei.value.reason == "unsupported_image" and calls == []


def test_reader_never_writes_and_never_follows_links(tmp_path: Path) -> None:
    """Reading a hostile shard creates no file and yields only regular, relative members."""
    src = tmp_path / "src.tar"
    _hostile_source(src)
    before = _tree(tmp_path)
    stats: Counter[str] = Counter()
    samples = list(iter_shard(str(src), ErrorPolicy(), stats))
    assert [s.key for s in samples] == ["good1", "good2"]
    assert stats["dropped_unsafe_member"] == 3 and stats["dropped_non_file_member"] == 2
    assert _tree(tmp_path) == before


def test_losses_local_dir_with_a_hostile_checkpoint_is_one_line(evil_checkpoint: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from curate.bootstrap import bootstrap_round
    from tests.bootstrap_helpers import make_pool_run
    from tests.embed_helpers import make_local_dir
    from tests.reliability.runs import source_shards

    path, marker = evil_checkpoint
    run = make_pool_run(tmp_path / "run", 20, per_shard=10)
    bootstrap_round(run.root, 0)
    source_shards(tmp_path / "shards", 20, 2)
    model = make_local_dir(tmp_path / "model")
    try:
        code = main(["losses", "--run", str(run.root), "--round", "0", "--checkpoint", str(path), "--model",
                     f"local-dir:{model}", "--shards", str(tmp_path / "shards")])
    except Exception as exc:  # the real CLI prints a traceback
        pytest.fail(f"{type(exc).__name__} escaped the CLI")
    finally:
        assert not marker.exists()  # weights-only: the payload never runs, whatever the error handling
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: "), err
