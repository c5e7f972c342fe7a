"""Reading WebDataset shards: shard specs, sample identity, and the error policy.

Why not ``webdataset.tarfile_to_samples``: its grouping stage can only skip or raise on a bad sample,
while curate must count every dropped sample under a named reason (truncated tar, duplicate key, unsafe
member name, ...). So this module streams tar members itself with ``curate.io.tarstream`` (a fraction
of ``tarfile``'s CPU time per sample; a damaged header loses one member, not the rest of the shard),
groups them by ``__key__`` with the webdataset naming convention, and yields samples in the same
dict-like shape; the trainer kit's ``ManifestFilter`` plugs into ordinary webdataset pipelines.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np
from braceexpand import braceexpand
from PIL import Image, UnidentifiedImageError

from curate.errors import CurateError, InputError, StrictModeError
from curate.io.tarstream import NotTar, TarReader

_logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
DEFAULT_MAX_PIXELS = 64_000_000
#: Pillow formats decoded from image members: in-process raster decoders only. Whatever the member's
#: extension, other formats (EPS, which Pillow hands to Ghostscript; PDF, PSD, ...) are never decoded.
#: Longest accepted side / shortest side. A 1x200000 PNG is 470 bytes and 0.2 Mpx, but resizing its short side
#: to a 224 px model input asks for 10 Gpx; such images are dropped before any resize.
MAX_ASPECT_RATIO = 1000
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO (camera JPEGs)

#: Every reason a sample or a shard can be dropped, with what it means (README, "Drop reasons").
DROP_REASONS: dict[str, str] = {
    "corrupt_image": "the image bytes could not be decoded",
    "unsupported_image": "the image is in a format curate does not decode (see IMAGE_FORMATS; e.g. EPS)",
    "decompression_bomb": "the image has more pixels than the limit (--max-pixels)",
    "extreme_aspect_ratio": "the image is so long and thin that resizing it to the model input would exhaust memory",
    "missing_image": "no jpg/jpeg/png/webp member in the sample",
    "missing_caption": "no txt member in a shard that has captions",
    "caption_not_utf8": "the caption is not valid UTF-8",
    "bad_json": "the json member is not valid JSON",
    "duplicate_key": "the key appeared earlier in the shard (duplicate sample or non-contiguous members)",
    "duplicate_member": "the same extension appears twice in one sample",
    "unsafe_member": "a member name is absolute or contains '..'",
    "name_not_utf8": "the sample's key is not valid UTF-8 (keys are stored as text)",
    "non_file_member": "a member is a symlink, hardlink, directory or device",
    "truncated_sample": "the shard ended inside this sample (truncated or corrupt tar)",
}
#: Problems that concern a whole shard rather than one sample.
SHARD_PROBLEMS: dict[str, str] = {
    "truncated_tar": "the tar ends early or is corrupt past repair; samples before the damage are kept",
    "damaged_tar": "a damaged tar header (the member it starts is lost; reading goes on at the next intact "
                   "header), or data after the end-of-archive blocks",
    "not_tar": "the shard is not a tar archive (no tar header at all: a text file, an image, ...)",
    "unreadable_shard": "the shard could not be opened",
    "empty_shard": "the shard holds no samples",
}

_KEY_RE = re.compile(r"^((?:.*/|)[^./][^/]*?)\.([^/]*)$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --- shard specs ------------------------------------------------------------------------------
def _is_url(s: str) -> bool:
    return s.startswith("pipe:") or "://" in s


def shard_name(url: str) -> str:
    """Shard name used in tables and file names: the basename without ``.tar`` (and ``.tgz`` etc.)."""
    s = str(url)
    if s.startswith("pipe:"):
        toks = [t for t in re.split(r"[\s'\"]+", s[5:]) if ".tar" in t or ".tgz" in t]
        s = toks[-1] if toks else s[5:].strip()
    base = s.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _dir_shards(d: Path) -> list[str]:
    tars = sorted(str(p) for p in d.glob("*.tar"))
    if tars:
        return tars
    train = d / "train"
    if train.is_dir() and any(train.glob("*.tar")):  # a curate sample world: its training split
        return sorted(str(p) for p in train.glob("*.tar"))
    raise InputError(f"no .tar shards in folder {d}")


def expand_shards(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Expand a shard spec into a list of shard URLs/paths.

    Accepts brace expansion (``data/{00000..00099}.tar``), globs, folders (their ``*.tar``), ``::``-joined
    or Python lists, ``@list.txt`` files with one spec per line, and ``pipe:``/fsspec URLs (passed through).
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if item.startswith("@"):
            lines = Path(item[1:]).read_text().splitlines() if Path(item[1:]).exists() else None
            if lines is None:
                raise InputError(f"shard list file not found: {item[1:]}")
            out.extend(expand_shards([ln for ln in lines if ln.strip() and not ln.startswith("#")]))
            continue
        for part in item.split("::"):
            for x in braceexpand(part):
                if _is_url(x):
                    out.append(x)
                elif any(c in x for c in "*?["):
                    matches = sorted(glob.glob(x))
                    if not matches:
                        raise InputError(f"no shards match {x!r}")
                    out.extend(matches)
                elif Path(x).is_dir():
                    out.extend(_dir_shards(Path(x)))
                elif Path(x).exists():
                    out.append(x)
                else:
                    raise InputError(f"shard not found: {x}")
    out = list(dict.fromkeys(out))
    if not out:
        raise InputError("the shard list is empty")
    names = Counter(shard_name(u) for u in out)
    clash = [n for n, c in names.items() if c > 1]
    if clash:
        raise InputError(f"two shards share the name {clash[0]!r}; shard basenames must be unique in a run")
    return out


def fingerprint(url: str) -> dict[str, Any]:
    """Cheap identity of a shard's bytes: size and mtime (local) or size and etag (fsspec), if known."""
    if url.startswith("pipe:"):
        return {"url": url}
    if "://" not in url or url.startswith("file://"):
        path = url[7:] if url.startswith("file://") else url
        st = os.stat(path)
        return {"url": url, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        import fsspec

        fs, p = fsspec.core.url_to_fs(url)
        info = fs.info(p)
        return {"url": url, "size": info.get("size"), "etag": info.get("ETag") or info.get("etag")}
    except Exception as exc:  # remote metadata is best-effort
        return {"url": url, "error": type(exc).__name__}


def open_shard(url: str) -> IO[bytes]:
    """Open a shard for streaming reads: local path, ``pipe:command`` or any fsspec URL."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    if "://" in url and not url.startswith("file://"):
        import fsspec

        try:
            return fsspec.open(url, "rb").open()
        except ImportError as exc:  # the protocol's optional package is missing: no shard of it can be read
            raise InputError(f"cannot read {url.split('://')[0]}:// shards: {str(exc).splitlines()[0]}") from None
    return open(url[7:] if url.startswith("file://") else url, "rb")


# --- identity ---------------------------------------------------------------------------------
def _h128(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def make_uid(shard: str, key: str, meta: dict[str, Any] | None = None) -> str:
    """The sample's ``uid``: the json's 32-hex ``uid`` when present, else a 128-bit hash of (shard, key)."""
    if meta:
        u = meta.get("uid")
        if isinstance(u, str) and _HEX32.match(u.lower()):
            return u.lower()
    return _h128(shard.encode(), key.encode())


def make_content_hash(image: bytes | None, caption: str | None) -> str:
    """128-bit hash of image bytes + caption: equal for exact duplicates."""
    return _h128(image or b"", (caption or "").encode())


# --- samples ----------------------------------------------------------------------------------
@dataclass
class RawSample:
    """One sample of a shard, before decoding; ``uid`` and ``content_hash`` are hashed on first use (a
    trainer's reader, ``curate.trainer.TarSamples``, never needs them)."""

    shard: str
    url: str
    key: str
    position: int
    image_bytes: bytes | None
    image_ext: str | None
    caption: str | None
    meta: dict[str, Any] | None
    members: dict[str, bytes] = field(repr=False, default_factory=dict)

    @cached_property
    def uid(self) -> str:
        return make_uid(self.shard, self.key, self.meta)

    @cached_property
    def content_hash(self) -> str:
        return make_content_hash(self.image_bytes, self.caption)


@dataclass
class ErrorPolicy:
    """What to do with bad samples: skip and count (default), or fail on the first (``strict``).

    ``warn``: log a warning for each shard problem (off where the caller reports the counts itself).
    """

    strict: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    warn: bool = True


class SampleError(Exception):
    """A sample-level problem with a named reason (a key of ``DROP_REASONS``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def count_drop(stats: Counter[str], reason: str, shard: str, key: str, policy: ErrorPolicy, detail: str = "") -> None:
    """Count a skipped sample under ``dropped_<reason>``; under ``--strict`` raise it as one line instead."""
    stats[f"dropped_{reason}"] += 1
    if policy.strict:
        detail = detail.removeprefix(f"{reason}: ")
        extra = f" ({detail})" if detail and detail != reason else ""
        raise StrictModeError(f"{shard}: sample {key!r}: {reason}{extra} [--strict]")


def _shard_problem(stats: Counter[str], problem: str, shard: str, policy: ErrorPolicy, detail: str = "") -> None:
    stats[f"shard_{problem}"] += 1
    if policy.strict:
        raise StrictModeError(f"{shard}: {problem}{f' ({detail})' if detail else ''} [--strict]")
    if policy.warn:
        _logger.warning("shard %s: %s%s", shard, problem, f" ({detail})" if detail else "")


def _finish_group(
    shard: str, url: str, key: str, position: int, members: list[tuple[str, str, str, bytes | None]],
    stats: Counter[str], policy: ErrorPolicy,
) -> RawSample | None:
    """Validate one group of members; return a sample or count the drop and return None."""
    stats["seen"] += 1
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError:  # a name in another encoding (read with surrogate escapes, as tarfile does)
            count_drop(stats, "name_not_utf8", shard, key, policy)
            return None
    exts: dict[str, bytes] = {}
    for ext, name, kind, data in members:
        if name.startswith("/") or ".." in name.split("/"):
            count_drop(stats, "unsafe_member", shard, key, policy, name)
            return None
        if kind != "file" or data is None:
            count_drop(stats, "non_file_member", shard, key, policy, name)
            return None
        if ext in exts:
            count_drop(stats, "duplicate_member", shard, key, policy, name)
            return None
        exts[ext] = data
    image_ext = next((e for e in IMAGE_EXTS if e in exts), None)
    caption = None
    if CAPTION_EXT in exts:
        try:
            caption = exts[CAPTION_EXT].decode("utf-8")
        except UnicodeDecodeError:
            count_drop(stats, "caption_not_utf8", shard, key, policy)
            return None
    meta = None
    if "json" in exts:
        try:
            meta = json.loads(exts["json"])
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            count_drop(stats, "bad_json", shard, key, policy)
            return None
    if image_ext is None:
        count_drop(stats, "missing_image", shard, key, policy)
        return None
    image = exts[image_ext]
    return RawSample(shard=shard, url=url, key=key, position=position, image_bytes=image, image_ext=image_ext,
                     caption=caption, meta=meta, members=exts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def iter_shard(url: str, policy: ErrorPolicy | None = None, stats: Counter[str] | None = None) -> Iterator[RawSample]:
    """Stream the valid samples of one shard in tar order; bad ones are counted in ``stats``.

    Never raises for bad data (only ``StrictModeError`` under ``policy.strict``, and ``InputError`` when
    a URL scheme's optional package is missing): a shard that cannot be opened, or whose stream fails
    before its first byte, is ``unreadable_shard``; a stream without a single tar header is ``not_tar``;
    damage after that is ``truncated_tar`` (the samples before it are kept); a readable tar with no
    samples is ``empty_shard``.
    """
    policy = policy or ErrorPolicy()
    stats = stats if stats is not None else Counter()
    shard = shard_name(url)
    try:
        stream = open_shard(url)
    except CurateError:
        raise
    except Exception as exc:  # every backend (local, pipe:, fsspec) has its own error types
        _shard_problem(stats, "unreadable_shard", shard, policy, _first_line(exc))
        return
    seen_keys: set[str] = set()
    group: list[tuple[str, str, str, bytes | None]] = []
    cur_key: str | None = None
    position = 0
    n_groups = 0
    problem: str | None = None

    def flush() -> RawSample | None:
        nonlocal position, n_groups
        if cur_key is None:
            return None
        n_groups += 1
        pos = position
        position += 1
        if cur_key in seen_keys:
            stats["seen"] += 1
            count_drop(stats, "duplicate_key", shard, cur_key, policy)
            return None
        seen_keys.add(cur_key)
        return _finish_group(shard, url, cur_key, pos, group, stats, policy)

    def damaged(detail: str) -> None:
        _shard_problem(stats, "damaged_tar", shard, policy, detail)

    reader = TarReader(stream, damaged)
    try:
        with stream:
            for name, kind, data in reader:
                if kind == "dir":
                    continue
                m = _KEY_RE.match(name.lstrip("./") if name.startswith("./") else name)
                if m is None:
                    stats["skipped_member_without_extension"] += 1
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if key != cur_key:
                    sample = flush()
                    if sample is not None:
                        yield sample
                    cur_key, group = key, []
                group.append((ext, name, kind, data))
    except CurateError:
        raise
    except Exception as exc:  # a tar cut off or corrupt past repair, gzip errors, failing pipes and network streams
        if isinstance(exc, NotTar):
            problem, detail = "not_tar", str(exc)
        else:
            problem = "unreadable_shard" if reader.nbytes == 0 else "truncated_tar"
            detail = _first_line(exc)
        _shard_problem(stats, problem, shard, policy, detail)
        if cur_key is not None:  # the group being read when the damage hit is incomplete
            n_groups += 1
            stats["seen"] += 1
            count_drop(stats, "truncated_sample", shard, cur_key, policy)
            cur_key = None
    sample = flush()
    if sample is not None:
        yield sample
    if n_groups == 0 and problem is None:
        _shard_problem(stats, "empty_shard", shard, policy)


def iter_shards(urls: Iterable[str], policy: ErrorPolicy | None = None, stats: Counter[str] | None = None
                ) -> Iterator[RawSample]:
    """Stream the valid samples of several shards in order."""
    for url in urls:
        yield from iter_shard(url, policy, stats)


# --- captions ---------------------------------------------------------------------------------
#: Characters of a caption kept per token of the tokenizer's context (see ``caption_for_tokenizer``).
CAPTION_CHARS_PER_TOKEN = 16
#: Longest run of non-space characters handed to a tokenizer.
MAX_CAPTION_WORD = 64
_LONG_WORD = re.compile(rf"\S{{{MAX_CAPTION_WORD + 1},}}")


def caption_for_tokenizer(caption: str, context_length: int = 77) -> str:
    """The part of a caption a CLIP tokenizer needs, cut so that tokenizing it takes bounded time.

    CLIP tokenizers keep only the first ``context_length`` tokens, but open_clip's BPE runs on the whole
    text first and costs time quadratic in the length of a word (20,000 letters without a space: 20 s),
    so a 1 MB one-word caption would stall embedding for hours. This keeps the first
    ``context_length * CAPTION_CHARS_PER_TOKEN`` characters and cuts runs of non-space characters to
    ``MAX_CAPTION_WORD``; the tokens of ordinary text (words shorter than that, under 16 characters per
    token on average) are unchanged.
    """
    head = caption[: context_length * CAPTION_CHARS_PER_TOKEN]
    return _LONG_WORD.sub(lambda m: m.group(0)[:MAX_CAPTION_WORD], head)


# --- decoding ---------------------------------------------------------------------------------
def _format_of(data: bytes) -> str | None:
    """The Pillow format name of ``data`` among all formats (header only, nothing decoded), or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format)
    except Exception:  # not an image Pillow knows at all
        return None


def decode_image(data: bytes, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB PIL image; raise ``SampleError`` with a reason on failure.

    Only ``IMAGE_FORMATS`` are decoded (by content, whatever the member's extension). From the header,
    before any pixel is decoded: more than ``max_pixels`` pixels is a ``decompression_bomb``; a side ratio
    above ``MAX_ASPECT_RATIO``, or one whose resize to ``draft_size`` on the short side would exceed
    ``max_pixels``, is ``extreme_aspect_ratio``.
    ``draft_size``: the model input's short side; for JPEG, libjpeg decodes at a reduced scale that is
    still >= this size on the short side (much faster for large images feeding a small model input).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise SampleError("decompression_bomb", f"{w}x{h} pixels")
            ratio = max(w, h) / max(1, min(w, h))
            if ratio > MAX_ASPECT_RATIO or (draft_size and ratio * draft_size * draft_size > max_pixels):
                raise SampleError("extreme_aspect_ratio", f"{w}x{h} pixels")
            if draft_size and img.format == "JPEG":
                scale = min(w, h) / draft_size
                if scale >= 2:
                    img.draft("RGB", (max(1, int(w / scale)) + 1, max(1, int(h / scale)) + 1))
            img.load()
            return to_rgb(img)
    except SampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleError("decompression_bomb", str(exc).splitlines()[0]) from None
    except UnidentifiedImageError:
        fmt = _format_of(data)
        if fmt is not None:
            raise SampleError("unsupported_image", f"{fmt} images are not decoded") from None
        raise SampleError("corrupt_image", "not an image in a known format") from None
    except Exception as exc:  # PIL raises many types on corrupt data
        raise SampleError("corrupt_image", _first_line(exc)) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (CMYK, 16-bit, palette, alpha, grayscale) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = (arr / (hi if hi > 0 else 1.0) * 255.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")
