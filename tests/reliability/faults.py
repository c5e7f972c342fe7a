"""Hostile shards for the reliability tests: one shard per defect, each with good samples around it.

Every builder returns the defective shard's path; ``DEFECTS`` says what each one must produce: the
counter keys (``dropped_<reason>`` / ``shard_<problem>``) that ``curate embed`` writes to
``RUN/stats/embed.json`` and the problem names that ``curate shards validate`` reports. Valid but
unusual images (CMYK, 16-bit, alpha, palette, grayscale, PNG, WebP, a 1 MB caption) must be embedded.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from curate.io.tarwrite import write_members, write_tar

GOOD_PER_SHARD = 3
#: Characters of the long caption (1 MB of ordinary words).
LONG_CAPTION = ("a photo of a small red circle on a plain background " * 20_000)[:1_000_000]


def image_bytes(color: str = "red", size: int = 32, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    img = Image.new("RGB", (size, size), color)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but carries almost no data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _thin_png(width: int, height: int) -> bytes:
    """A tiny PNG with an absurd aspect ratio (a few hundred bytes; a bomb once resized to a model input)."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 7).save(buf, "PNG")
    return buf.getvalue()


#: An EPS file: Pillow would hand it to Ghostscript on load; curate must never decode it.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke showpage\n"


def _good(prefix: str, n: int = GOOD_PER_SHARD) -> list[tuple[str, bytes]]:
    colors = ["red", "green", "blue", "yellow"]
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        out += [(f"{prefix}good{i}.jpg", image_bytes(colors[i % 4])), (f"{prefix}good{i}.txt", f"good {i}".encode())]
    return out


def _with_good(path: Path, bad: list[tuple[str, bytes]]) -> Path:
    """Good samples, then the defective members, then good samples again (the reader must resync)."""
    write_members(path, [*_good("a"), *bad, *_good("z")])
    return path


def _image_case(data: bytes) -> Callable[[Path], Path]:
    ext = "png" if data[:4] == b"\x89PNG" else "jpg"
    return lambda p: _with_good(p, [(f"bad.{ext}", data), ("bad.txt", b"ok")])


def _raw_tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                ti = tarfile.TarInfo(e[0])
                ti.size = len(e[1])
                tf.addfile(ti, io.BytesIO(e[1]))
    return path


def _links(path: Path) -> Path:
    sym = tarfile.TarInfo("sym.jpg")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hard.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "agood0.jpg"
    return _raw_tar(path, [*_good("a"), sym, ("sym.txt", b"x"), hard, ("hard.txt", b"x"), *_good("z")])


def _truncated(path: Path) -> Path:
    full = path.with_suffix(".full")
    write_tar(full, [(f"k{i:03d}", {"jpg": image_bytes("blue", 48), "txt": b"blue"}) for i in range(12)])
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2 + 100])
    return path


def _damaged_header(path: Path) -> Path:
    """A member header in the middle of the shard whose checksum no longer matches (one flipped byte)."""
    _with_good(path, [("bad.jpg", image_bytes()), ("bad.txt", b"x")])
    data = bytearray(path.read_bytes())
    at = next(i for i in range(0, len(data), 512) if data[i:i + 8] == b"bad.jpg\0")
    data[at] = ord("B")
    path.write_bytes(bytes(data))
    return path


def _latin1_name(path: Path) -> Path:
    """A sample whose member names are Latin-1 bytes, not UTF-8 (as in old tars)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tf:
        for name, data in [*_good("a"), ("bad\xe9.jpg", image_bytes()), ("bad\xe9.txt", b"x"), *_good("z")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _mode_image(mode: str, fmt: str) -> bytes:
    if mode == "I;16":
        img = Image.fromarray(np.linspace(0, 60000, 32 * 32, dtype=np.uint16).reshape(32, 32))
    elif mode == "RGBA":
        img = Image.new("RGBA", (32, 32), (200, 30, 30, 90))
    else:
        img = Image.new("RGB", (32, 32), "teal").convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _unusual(path: Path) -> Path:
    samples = [
        ("cmyk", {"jpg": _mode_image("CMYK", "JPEG")}),
        ("gray16", {"png": _mode_image("I;16", "PNG")}),
        ("alpha", {"png": _mode_image("RGBA", "PNG")}),
        ("palette", {"png": _mode_image("P", "PNG")}),
        ("gray", {"jpg": _mode_image("L", "JPEG")}),
        ("webp", {"webp": _mode_image("RGB", "WEBP")}),
        ("longcap", {"jpg": image_bytes("purple"), "txt": LONG_CAPTION.encode()}),
        ("emptycap", {"jpg": image_bytes("orange"), "txt": b""}),
    ]
    write_tar(path, [(k, {**m, "txt": m.get("txt", f"an unusual image {k}".encode())}) for k, m in samples])
    return path


@dataclass(frozen=True)
class Defect:
    """A defective shard and what it must produce."""

    build: Callable[[Path], Path]
    stats: dict[str, int]  # exact counters in the shard's embed stats (besides seen/written)
    written: int  # samples embedded
    validate: dict[str, int] = field(default_factory=dict)  # problems 'curate shards validate' reports
    strict_reason: str = ""  # what the one-line --strict error names


def _d(build: Callable[[Path], Path], stats: dict[str, int], written: int, validate: dict[str, int] | None = None,
       strict: str = "") -> Defect:
    validate = validate if validate is not None else {k.removeprefix("dropped_"): v for k, v in stats.items()}
    return Defect(build, stats, written, validate, strict or next(iter(validate), ""))


#: The image bytes of each image defect (also used on their own, e.g. in labelled evaluation shards).
BAD_IMAGES: dict[str, tuple[bytes, str]] = {  # name -> (bytes, drop reason)
    "zero_byte_image": (b"", "corrupt_image"),
    "corrupt_jpeg": (image_bytes("red", 64)[:300], "corrupt_image"),
    "garbage_image": (b"\xff\xd8" + bytes(range(256)) * 4, "corrupt_image"),
    "decompression_bomb": (png_header_only(100_000, 100_000), "decompression_bomb"),
    "extreme_aspect_ratio": (_thin_png(1, 50_000), "extreme_aspect_ratio"),
    "eps_in_jpg": (EPS, "unsupported_image"),
}

G = 2 * GOOD_PER_SHARD
DEFECTS: dict[str, Defect] = {
    "truncated_tar": _d(_truncated, {"shard_truncated_tar": 1, "dropped_truncated_sample": 1}, -1),
    # only the damaged member is lost: its caption is left as a sample without an image
    "damaged_header": _d(_damaged_header, {"shard_damaged_tar": 1, "dropped_missing_image": 1}, G),
    "latin1_name": _d(_latin1_name, {"dropped_name_not_utf8": 1}, G),
    **{name: _d(_image_case(data), {f"dropped_{reason}": 1}, G) for name, (data, reason) in BAD_IMAGES.items()},
    "missing_caption": _d(lambda p: _with_good(p, [("bad.jpg", image_bytes())]), {"dropped_missing_caption": 1}, G),
    "missing_image": _d(lambda p: _with_good(p, [("bad.txt", b"no image")]), {"dropped_missing_image": 1}, G),
    "caption_not_utf8": _d(
        lambda p: _with_good(p, [("bad.jpg", image_bytes()), ("bad.txt", b"caf\xe9 \xff\xfe")]),
        {"dropped_caption_not_utf8": 1}, G,
    ),
    "bad_json": _d(
        lambda p: _with_good(p, [("bad.jpg", image_bytes()), ("bad.txt", b"x"), ("bad.json", b"{nope")]),
        {"dropped_bad_json": 1}, G,
    ),
    "duplicate_key": _d(
        lambda p: _with_good(p, [("agood0.jpg", image_bytes()), ("agood0.txt", b"again")]),
        {"dropped_duplicate_key": 1}, G,
    ),
    # 'nc' is split by 'mid': its first group lacks a caption, its second repeats the key
    "non_contiguous": _d(
        lambda p: _with_good(p, [("nc.jpg", image_bytes()), ("mid.jpg", image_bytes()), ("mid.txt", b"m"),
                                 ("nc.txt", b"late")]),
        {"dropped_duplicate_key": 1, "dropped_missing_caption": 1}, G + 1, strict="missing_caption",
    ),
    "duplicate_member": _d(
        lambda p: _with_good(p, [("bad.jpg", image_bytes()), ("bad.jpg", image_bytes()), ("bad.txt", b"x")]),
        {"dropped_duplicate_member": 1}, G,
    ),
    "dotdot_member": _d(
        lambda p: _with_good(p, [("../evil.jpg", image_bytes()), ("../evil.txt", b"x")]),
        {"dropped_unsafe_member": 1}, G,
    ),
    "absolute_member": _d(
        lambda p: _with_good(p, [("/tmp/evil.jpg", image_bytes()), ("/tmp/evil.txt", b"x")]),
        {"dropped_unsafe_member": 1}, G,
    ),
    "link_members": _d(_links, {"dropped_non_file_member": 2}, G),
    "empty_shard": _d(lambda p: (write_members(p, []), p)[1], {"shard_empty_shard": 1}, 0),
    # a text file given as a shard (a README, a URL list): not a tar at all, whatever its length
    "text_file": _d(lambda p: (p.write_text("# notes\n" + "not a tar, just text\n" * 200), p)[1],
                    {"shard_not_tar": 1}, 0),
    "short_text_file": _d(lambda p: (p.write_text("hello\n"), p)[1], {"shard_not_tar": 1}, 0),
    "unusual_images": _d(_unusual, {}, 8, {}),
}


def build_defects(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the shards of ``names`` (default all) into ``folder`` as ``<name>.tar``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {n: DEFECTS[n].build(folder / f"{n}.tar") for n in (names or list(DEFECTS))}
