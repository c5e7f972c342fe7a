"""A file that is not a checkpoint curate can load weights-only: one line, exit 3, on every loading path.

The line says ``not a checkpoint curate can load safely: PATH (why)`` and never passes on torch's advice to
retry with ``weights_only=False`` (which would run whatever the file holds). Paths: ``load_model`` (embed
``--pretrained``, ``curate losses --checkpoint``), ``load_weights`` (``curate losses`` with a ``local-dir:``
model, the reference trainer's resume); the trainer's own checkpoints are covered in
``tests/test_trainer_loop.py::test_start_and_checkpoints_are_checked_with_one_line``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from curate.cli.app import main
from curate.errors import InputError
from curate.io.tarwrite import write_members
from tests.embed_helpers import REPO, TINY_ARCH, TINY_CONFIG, make_local_dir, save_tiny_checkpoint, tiny_state_dict
from tests.reliability.faults import image_bytes


class _Payload:
    """Unpickling this would run ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _truncated(suffix: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        good = save_tiny_checkpoint(folder / f"good{suffix}")
        data = good.read_bytes()
        path = folder / f"cut{suffix}"
        path.write_bytes(data[: len(data) // 2])
        return path

    return make


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return make


def _saved(name: str, obj: Callable[[Path], object]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        torch.save(obj(folder), folder / name)
        return folder / name

    return make


def _zip(folder: Path) -> Path:
    with zipfile.ZipFile(folder / "other.pt", "w") as z:
        z.writestr("notes.txt", "a zip, not a torch checkpoint")
    return folder / "other.pt"


#: name -> (how to make the file, what the line says about it)
BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "README as a checkpoint": (_write("README.md", (REPO / "README.md").read_bytes()[:4000]),
                               "not a PyTorch (.pt, .bin) or safetensors file"),
    "text named .safetensors": (_write("notes.safetensors", b"just some text\n"), "not a valid safetensors file"),
    "empty .pt": (_write("empty.pt", b""), "not a PyTorch (.pt, .bin) or safetensors file"),
    "zip that is not a checkpoint": (_zip, "not a checkpoint curate can load safely"),
    "truncated .pt": (_truncated(".pt"), "not a PyTorch (.pt, .bin) or safetensors file"),
    "truncated .safetensors": (_truncated(".safetensors"), "not a valid safetensors file"),
    "pickle that runs code": (_saved("evil.pt", lambda d: {"state_dict": {"w": _Payload(d / "pwned")}}),
                              "loading it would run code: posix.system"),
    "a list of numbers": (_saved("list.pt", lambda d: [1, 2, 3]), "not a checkpoint curate can load safely"),
}


def _check_line(line: str, path: Path, why: str) -> None:
    assert line.startswith(f"error: not a checkpoint curate can load safely: {path} ("), line
    assert why in line, line
    assert "weights_only" not in line and "Weights only" not in line and "trusted" not in line, line


@pytest.mark.parametrize("name", list(BAD))
def test_load_model_and_load_weights(tmp_path: Path, name: str) -> None:
    import open_clip

    from curate.models import load_model, register_model_config
    from curate.trainer.offline import load_weights

    make, why = BAD[name]
    path = make(tmp_path)
    register_model_config(TINY_ARCH, TINY_CONFIG)
    with pytest.raises(InputError) as ei:
        load_model(TINY_ARCH, str(path), device="cpu")
    _check_line(f"error: {ei.value}", path, why)
    with pytest.raises(InputError) as ei:
        load_weights(open_clip.create_model(TINY_ARCH, pretrained=None), path)
    _check_line(f"error: {ei.value}", path, why)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def losses_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curate.bootstrap import bootstrap_round
    from tests.bootstrap_helpers import make_pool_run
    from tests.reliability.runs import source_shards

    root = tmp_path_factory.mktemp("losses")
    run = make_pool_run(root / "run", 20, per_shard=10)
    bootstrap_round(run.root, 0)
    source_shards(root / "shards", 20, 2)
    tiny_state_dict()  # registers the tiny architecture in this process
    make_local_dir(root / "tiny")
    return root


@pytest.mark.parametrize("model", ["arch", "local-dir"])
@pytest.mark.parametrize("name", ["README as a checkpoint", "text named .safetensors", "pickle that runs code"])
def test_curate_losses_checkpoint(losses_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                  model: str) -> None:
    make, why = BAD[name]
    path = make(tmp_path)
    run = losses_run / "run"
    spec = TINY_ARCH if model == "arch" else f"local-dir:{losses_run / 'tiny'}"
    code = main(["losses", "--run", str(run), "--round", "0", "--checkpoint", str(path), "--model", spec,
                 "--shards", str(losses_run / "shards")])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 3 and out == "" and len(lines) == 1, err
    _check_line(lines[0], path, why)
    assert not (run / "losses").exists() and not (tmp_path / "pwned").exists()


def test_embed_pretrained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, why = BAD["README as a checkpoint"]
    path = make(tmp_path)
    shard = tmp_path / "s.tar"
    write_members(shard, [("a.jpg", image_bytes()), ("a.txt", b"a")])
    tiny_state_dict()
    code = main(["embed", str(shard), "--run", str(tmp_path / "run"), "--model", TINY_ARCH, "--pretrained", str(path),
                 "--workers", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(lines) == 1, lines
    _check_line(lines[0], path, why)
