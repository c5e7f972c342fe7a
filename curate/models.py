"""Model loading: the only module that imports open_clip.

Offline-first. A model is named by an open_clip architecture (``ViT-B-32``), ``local-dir:/path``, an
``hf-hub:`` id, or ``sample`` (the tiny CLIP committed in ``shards/tiny-clip``). Weights come from an
open_clip ``pretrained`` tag (downloaded by open_clip where the machine can reach the hub) or a local
checkpoint file (``.safetensors``, ``.pt``, ``.bin``), always loaded with ``weights_only=True``.
``pretrained="none"`` gives an architecture random weights instead (seeded, so every process gets the
same ones): its embeddings mean nothing, but its speed is the trained model's (throughput checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from curate.choices import PRECISIONS
from curate.engines.devices import check_device
from curate.errors import CurateError, InputError, UsageError

_logger = logging.getLogger(__name__)

SAMPLE_MODEL = "sample"
SAMPLE_ARCH = "curate-tiny"
#: ``--pretrained`` value for random weights (seeded with ``RANDOM_WEIGHTS_SEED``): for speed tests only.
RANDOM_WEIGHTS = "none"
RANDOM_WEIGHTS_SEED = 0


def sample_dir() -> Path:
    """Folder of the embedded sample shards and tiny model (``$CURATE_SAMPLE_DIR`` or repo ``shards/``)."""
    env = os.environ.get("CURATE_SAMPLE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "shards"


def sample_model_paths() -> tuple[Path, Path]:
    """(config json, weights) of the built-in ``sample`` model."""
    d = sample_dir() / "tiny-clip"
    return d / f"{SAMPLE_ARCH}.json", d / "model.safetensors"


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Register an open_clip architecture config under ``name`` at run time (e.g. a tiny test model)."""
    import open_clip

    if name in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Mute open_clip's and huggingface_hub's log lines while loading; their errors reach us as exceptions."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _seeded(on: bool) -> Iterator[None]:
    """Within: torch's CPU generator seeded with ``RANDOM_WEIGHTS_SEED`` (when ``on``); restored after."""
    if not on:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        return None  # CPU: fp32 (fp16 matmuls are slow or unsupported on CPU)
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]


@dataclass
class LoadedModel:
    """An open_clip model with its preprocessing, tokenizer and provenance."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    autocast_dtype: torch.dtype | None = None

    @property
    def embed_dim(self) -> int:
        return int(self.info["embed_dim"])

    @property
    def precision_name(self) -> str:
        """The precision the model computes in: ``fp16``/``bf16`` (CUDA autocast) or ``fp32``."""
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.autocast_dtype, "fp32")  # type: ignore[arg-type]

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings of a preprocessed batch."""
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            feats = self.model.encode_image(images)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 text embeddings of a token batch."""
        with self._autocast():
            feats = self.model.encode_text(tokens.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 text embeddings of strings."""
        outs = [
            self.encode_tokens(self.tokenizer(list(texts[i : i + batch_size])))
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(outs) if outs else torch.empty(0, self.embed_dim)

    def zeroshot_classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Class text embeddings [C, d]: each class's prompts averaged and re-normalised."""
        rows = []
        for name in classnames:
            emb = self.encode_texts([t.format(name) for t in templates]).mean(0)
            rows.append(torch.nn.functional.normalize(emb, dim=-1))
        return torch.stack(rows)


def imagenet_zeroshot_metadata() -> tuple[list[str], list[str]]:
    """ImageNet-1k class names and the 80 OpenAI prompt templates shipped inside open_clip."""
    import open_clip

    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    return list(open_clip.IMAGENET_CLASSNAMES), templates


def _resolve_name(name: str, pretrained: str | None) -> tuple[str, str | None]:
    """Map curate's model names onto open_clip's; register the sample config when needed."""
    if name == SAMPLE_MODEL:
        cfg_path, weights = sample_model_paths()
        if not cfg_path.exists() or not weights.exists():
            raise CurateError(
                f"built-in sample model not found in {cfg_path.parent}; "
                "run 'python scripts/train_sample_model.py' or set CURATE_SAMPLE_DIR"
            )
        register_model_config(SAMPLE_ARCH, json.loads(cfg_path.read_text()))
        return SAMPLE_ARCH, pretrained or str(weights)
    return name, pretrained


#: Weight files open_clip looks for in a ``local-dir:`` folder (next to ``open_clip_config.json``).
LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
)


def _weights_digest(arch: str, weights: str | None) -> str | None:
    """sha256 of the local weights file (a checkpoint path or a ``local-dir:`` folder's weights), if any."""
    if weights is not None:
        return _file_digest(Path(weights).expanduser())
    if arch.startswith("local-dir:"):
        folder = Path(arch[len("local-dir:"):]).expanduser()
        found = next((folder / w for w in LOCAL_DIR_WEIGHTS if (folder / w).is_file()), None)
        return _file_digest(found) if found else None
    return None


#: Lines of torch's weights-only refusal that advise loading the file unsafely (never shown to a user).
_UNSAFE_ADVICE = ("weights_only", "weights only", "trusted source", "file an issue", "documentation of torch.load")


def checkpoint_error(path: str | os.PathLike[str], exc: BaseException) -> InputError:
    """The one-line error for a checkpoint file that cannot be loaded as weights only.

    Says why in curate's words (code to run, not a PyTorch or safetensors file, a corrupt file) and never
    passes on torch's advice to retry with ``weights_only=False``, which would run whatever the file holds.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not any(a in ln.lower() for a in _UNSAFE_ADVICE)]
    code = next((m.group(1) for ln in lines if (m := re.search(r"GLOBAL (\S+)", ln))), None)
    if code is not None:  # what the pickle asked to import and call
        why = f"loading it would run code: {code}"
    elif type(exc).__name__ == "SafetensorError":
        why = f"not a valid safetensors file: {lines[0] if lines else type(exc).__name__}"
    elif isinstance(exc, (pickle.UnpicklingError, EOFError)) or "PytorchStreamReader" in str(exc):
        why = "not a PyTorch (.pt, .bin) or safetensors file"
    elif isinstance(exc, OSError):
        why = f"{type(exc).__name__}: {exc.strerror or (lines[0] if lines else '')}"
    else:
        why = f"{type(exc).__name__}: {lines[0] if lines else 'unexpected content'}"
    if len(why) > 200:
        why = why[:197] + "..."
    return InputError(f"not a checkpoint curate can load safely: {path} ({why})")


def _fits_not(exc: BaseException) -> bool:
    """A state dict that loaded but does not fit the architecture (missing keys, size mismatch)."""
    return isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc)


def _check_local_dir(path: Path) -> None:
    """A ``local-dir:`` folder must hold a config and weights (open_clip would fall back to random weights)."""
    if not path.is_dir():
        raise UsageError(f"model folder not found: {path}")
    if not (path / "open_clip_config.json").is_file():
        raise UsageError(f"{path} has no open_clip_config.json (needed by local-dir: models)")
    if not any((path / w).is_file() for w in LOCAL_DIR_WEIGHTS):
        raise UsageError(f"{path} has no weights file (one of {', '.join(LOCAL_DIR_WEIGHTS)})")


def load_model(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device | None = "cpu",
    precision: str = "auto",
) -> LoadedModel:
    """Load an open_clip model by name with a pretrained tag or a local checkpoint path.

    ``pretrained="none"`` (``RANDOM_WEIGHTS``): random weights, the same in every process (seeded).
    Raises ``UsageError`` for an unknown model or a pretrained tag that can't be loaded offline.
    """
    import open_clip

    dev = check_device(device)
    autocast_dtype(precision, dev)  # validate before the (slow) load
    arch, weights = _resolve_name(name, pretrained)
    is_schema = arch.startswith(("local-dir:", "hf-hub:"))
    if is_schema and weights is not None:
        raise UsageError(f"--pretrained is not used with {arch.split(':')[0]}: models (their weights come with them)")
    if arch.startswith("local-dir:"):
        _check_local_dir(Path(arch[len("local-dir:"):]).expanduser())
    random_weights = weights == RANDOM_WEIGHTS
    if random_weights:
        weights = None
    if not is_schema and arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if arch.lower()[:5] in m.lower()][:5]
        hint = f" (did you mean: {', '.join(close)}?)" if close else " (see open_clip.list_models())"
        raise UsageError(f"unknown model {name!r}{hint}")
    local_file = weights is not None and Path(weights).expanduser().exists()
    if local_file and Path(weights).expanduser().is_dir():
        raise UsageError(f"{weights} is a folder, not a checkpoint file (an open_clip model folder is "
                         f"local-dir:{weights})")
    if weights is not None and not local_file and weights not in open_clip.list_pretrained_tags_by_model(arch):
        if any(sep in weights for sep in ("/", "\\", ".pt", ".bin", ".safetensors")):
            raise UsageError(f"checkpoint file not found: {weights}")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise UsageError(f"unknown pretrained tag {weights!r} for {arch} (known tags: {tags})")
    try:
        with _quiet_logs(), _seeded(random_weights):
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=str(Path(weights).expanduser()) if local_file else weights,
                device="cpu",
                weights_only=True,
            )
    except Exception as exc:  # whatever a file holds, loading it fails with one line
        if local_file and not _fits_not(exc):
            raise checkpoint_error(weights, exc) from None
        if local_file:  # a state dict of another architecture
            lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
            detail = lines[0] if lines else "its tensors do not match the model's"
            raise InputError(f"could not load {name}: the checkpoint {weights} does not fit it "
                             f"({detail[:150] + '...' if len(detail) > 150 else detail})") from None
        if not isinstance(exc, (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError)):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if len(first) > 200:
            first = first[:197] + "..."
        if weights is not None and not local_file:
            raise CurateError(
                f"could not load {name} (pretrained={weights}): the weights could not be downloaded (offline?); "
                "pass a local checkpoint file with --pretrained PATH or a local-dir:FOLDER model"
            ) from None
        raise CurateError(f"could not load {name} (pretrained={weights}): {type(exc).__name__}: {first}") from None
    model.eval().to(dev)
    tokenizer = open_clip.get_tokenizer(arch)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", getattr(model.visual, "image_size", None))
    info: dict[str, Any] = {
        "model": name,
        "arch": arch,
        "pretrained": RANDOM_WEIGHTS if random_weights else weights,
        "pretrained_sha256": _weights_digest(arch, weights if local_file else None),
        "embed_dim": int(model.text_projection.shape[1])
        if getattr(model, "text_projection", None) is not None and model.text_projection.ndim == 2
        else int(model.encode_text(tokenizer(["a"]).to(dev)).shape[-1]),
        "image_size": list(size) if isinstance(size, (tuple, list)) else size,
        "mean": list(pp.get("mean", ())),
        "std": list(pp.get("std", ())),
        "interpolation": pp.get("interpolation"),
        "resize_mode": pp.get("resize_mode"),
        "context_length": int(getattr(model, "context_length", 77)),
        "open_clip": open_clip.__version__,
        "precision": precision,
    }
    return LoadedModel(model, preprocess, tokenizer, dev, info, autocast_dtype(precision, dev))


def load_model_from_run(run_root: str | os.PathLike[str], device: str | None = "cpu") -> LoadedModel:
    """Load the model that embedded a run (from ``run.json``'s ``embed`` section)."""
    from curate.rundir import RunDir

    rec = RunDir(run_root).require()
    emb = rec.get("embed") or {}
    if "model" not in emb:
        raise CurateError(f"{run_root}/run.json has no embed section; run 'curate embed' first")
    return load_model(emb["model"], emb.get("pretrained_arg"), device=device, precision=emb.get("precision", "auto"))
