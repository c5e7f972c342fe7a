"""Fingerprints of every table and JSON file a run folder holds, to compare two runs of the demo.

A refactoring must not change what curate writes. Run the demo before and after it, fingerprint both
folders, and compare: every Parquet/Arrow table's rows and schema (with its curate metadata) and every
JSON file must be the same. What legitimately differs between two runs is left out: timestamps and the
command log of ``run.json``, wall-clock figures (``seconds``, ``samples_per_s``...), file fingerprints
(mtimes), absolute paths of the output folder (replaced by ``<RUN>``), and the report (its HTML embeds
timings).

    python scripts/demo_tables.py snapshot demo-run before.json
    python scripts/demo_tables.py snapshot demo-run after.json
    python scripts/demo_tables.py compare before.json after.json      # exit 1 and a list when they differ
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

VOLATILE = {"at", "commands", "seconds", "samples_per_s", "images_per_s", "elapsed", "created", "date", "time",
            "wall_seconds", "versions", "cpu_seconds", "duration_s", "rate", "fingerprint", "mtime_ns"}
#: The checkout the demo ran from (its bundled shards' paths): a worktree elsewhere compares equal.
REPO = str(Path(__file__).resolve().parents[1])
SKIP_PARTS = {"reports", "cache", "checkpoints"}


def _scrub(obj: Any, root: str) -> Any:
    if isinstance(obj, dict):
        return {k: _scrub(v, root) for k, v in sorted(obj.items()) if k not in VOLATILE}
    if isinstance(obj, list):
        return [_scrub(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<RUN>").replace(REPO, "<REPO>")
    return obj


def _table_digest(table: pa.Table, root: str) -> str:
    h = hashlib.sha256()
    meta = {k.decode(): v.decode(errors="replace") for k, v in (table.schema.metadata or {}).items()}
    clean = {}
    for k, v in meta.items():
        try:
            clean[k] = _scrub(json.loads(v), root)
        except ValueError:
            clean[k] = v.replace(root, "<RUN>").replace(REPO, "<REPO>")
    h.update(json.dumps(clean, sort_keys=True).encode())
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    root = str(folder.resolve())
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part in SKIP_PARTS for part in rel.parts) or rel.name.startswith("."):
            continue
        if p.suffix == ".parquet":
            out[str(rel)] = _table_digest(pq.read_table(p), root)
        elif p.suffix == ".arrow":
            with pa.memory_map(str(p)) as src:
                out[str(rel)] = _table_digest(pa.ipc.open_file(src).read_all(), root)
        elif p.suffix == ".json":
            data = _scrub(json.loads(p.read_text()), root)
            out[str(rel)] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("folder", type=Path)
    s.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "snapshot":
        snap = snapshot(args.folder)
        args.out.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
        print(f"{len(snap)} files fingerprinted in {args.out}")
        return
    a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    for k in diff:
        why = f"missing in {args.b}" if k not in b else f"missing in {args.a}" if k not in a else "content"
        print(f"differs: {k} ({why})")
    print(f"{len(a)} / {len(b)} files, {len(diff)} differ")
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
