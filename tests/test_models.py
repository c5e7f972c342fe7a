"""Model loading: names, pretrained tags, local checkpoints, local-dir folders, and every error path."""

from __future__ import annotations

import pickle
from pathlib import Path

import open_clip
import pytest
import torch

from curate.engines.devices import check_device
from curate.errors import CurateError, UsageError
from curate.models import load_model, register_model_config
from tests.embed_helpers import TINY_ARCH, TINY_CONFIG, make_local_dir, save_tiny_checkpoint, tiny_state_dict


def _probe() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 32, 32, generator=g)


def _reference(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings of the tiny model built in memory from the same state dict."""
    register_model_config(TINY_ARCH, TINY_CONFIG)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    model.load_state_dict(tiny_state_dict(seed))
    model.eval()
    tok = open_clip.get_tokenizer(TINY_ARCH)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(_probe()), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok(["a red square", "a blue star"])), dim=-1)
    return img, txt


def _embed(loaded) -> tuple[torch.Tensor, torch.Tensor]:
    return loaded.encode_images(_probe()), loaded.encode_texts(["a red square", "a blue star"])


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg.strip(), msg
    return msg


def test_register_model_config_is_idempotent():
    register_model_config(TINY_ARCH, TINY_CONFIG)
    register_model_config(TINY_ARCH, {"embed_dim": 999})  # already registered: ignored
    assert TINY_ARCH in open_clip.list_models()
    assert open_clip.get_model_config(TINY_ARCH)["embed_dim"] == TINY_CONFIG["embed_dim"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_local_checkpoint_gives_the_same_embeddings(tmp_path, suffix):
    ckpt = save_tiny_checkpoint(tmp_path / f"tiny{suffix}", seed=3)
    loaded = load_model(TINY_ARCH, str(ckpt), device="cpu")
    img, txt = _embed(loaded)
    ref_img, ref_txt = _reference(seed=3)
    torch.testing.assert_close(img, ref_img, rtol=0, atol=1e-6)
    torch.testing.assert_close(txt, ref_txt, rtol=0, atol=1e-6)
    assert loaded.embed_dim == TINY_CONFIG["embed_dim"]
    assert loaded.info["pretrained_sha256"] and len(loaded.info["pretrained_sha256"]) == 64
    assert loaded.info["image_size"] == [32, 32]
    assert loaded.precision_name == "fp32"
    # a different seed gives different weights, so the comparison above can fail
    other, _ = _reference(seed=4)
    assert not torch.allclose(img, other)


def test_local_dir_folder(tmp_path):
    folder = make_local_dir(tmp_path / "model", seed=5)
    loaded = load_model(f"local-dir:{folder}", device="cpu")
    img, txt = _embed(loaded)
    ref_img, ref_txt = _reference(seed=5)
    torch.testing.assert_close(img, ref_img, rtol=0, atol=1e-6)
    torch.testing.assert_close(txt, ref_txt, rtol=0, atol=1e-6)
    assert loaded.info["pretrained_sha256"]


def test_local_dir_errors(tmp_path):
    with pytest.raises(UsageError, match="model folder not found"):
        load_model(f"local-dir:{tmp_path / 'nope'}")
    (tmp_path / "cfg_only").mkdir()
    with pytest.raises(UsageError, match=r"no open_clip_config\.json"):
        load_model(f"local-dir:{tmp_path / 'cfg_only'}")
    folder = make_local_dir(tmp_path / "m")
    (folder / "open_clip_model.safetensors").unlink()
    # open_clip itself would build the model with random weights here; curate refuses
    with pytest.raises(UsageError, match="no weights file"):
        load_model(f"local-dir:{folder}")
    with pytest.raises(UsageError, match="--pretrained is not used"):
        load_model(f"local-dir:{make_local_dir(tmp_path / 'm2')}", "openai")


def test_unknown_model_and_tag():
    with pytest.raises(UsageError, match="unknown model 'ViT-Nope-99'") as ei:
        load_model("ViT-Nope-99")
    one_line(ei.value)
    with pytest.raises(UsageError, match="unknown pretrained tag 'no_such_tag' for ViT-B-32") as ei:
        load_model("ViT-B-32", "no_such_tag")
    assert "laion2b" in one_line(ei.value)  # lists the known tags


def test_known_tag_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CurateError, match=r"could not load ViT-B-32.*could not be downloaded") as ei:
        load_model("ViT-B-32", "laion2b_s34b_b79k")
    assert "--pretrained PATH" in one_line(ei.value)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(UsageError, match="checkpoint file not found"):
        load_model(TINY_ARCH, str(tmp_path / "missing.safetensors"))


def test_checkpoint_of_another_architecture(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    register_model_config("curate-test-tiny-wide", {**TINY_CONFIG, "embed_dim": 24})
    with pytest.raises(CurateError, match="could not load curate-test-tiny-wide") as ei:
        load_model("curate-test-tiny-wide", str(ckpt))
    one_line(ei.value)


class _Payload:
    """Unpickling this would create a file: proof that code ran while loading a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_with_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "evil.pt"
    with ckpt.open("wb") as f:
        pickle.dump({"state_dict": tiny_state_dict(), "x": _Payload(marker)}, f)
    with pytest.raises(CurateError, match="not a checkpoint curate can load safely") as ei:
        load_model(TINY_ARCH, str(ckpt))
    one_line(ei.value)
    assert not marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_on_a_cpu_machine():
    with pytest.raises(UsageError, match="CUDA is not available"):
        check_device("cuda")
    with pytest.raises(UsageError, match="CUDA is not available"):
        load_model(TINY_ARCH, device="cuda:0")


def test_device_and_precision_errors():
    with pytest.raises(UsageError, match="unknown device 'gpu0'"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")
    assert check_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        load_model(TINY_ARCH, device="cpu", precision="fp8")


def test_cpu_computes_in_fp32_whatever_is_asked():
    loaded = load_model(TINY_ARCH, device="cpu", precision="bf16")
    assert loaded.precision_name == "fp32"
    assert loaded.encode_images(_probe()).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "name"), [("auto", "fp16"), ("fp16", "fp16"), ("bf16", "bf16")])
def test_cuda_autocast_matches_fp32(tmp_path, precision, name):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.safetensors", seed=7)
    gpu = load_model(TINY_ARCH, str(ckpt), device="cuda", precision=precision)
    assert gpu.precision_name == name
    img, txt = _embed(gpu)
    ref_img, ref_txt = _reference(seed=7)
    assert img.dtype == torch.float32  # normalised in fp32 after autocast
    cos = (img.cpu() * ref_img).sum(-1)
    assert float(cos.min()) > 0.99
    assert float((txt.cpu() * ref_txt).sum(-1).min()) > 0.99
