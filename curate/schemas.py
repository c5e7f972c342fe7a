"""Every table curate reads or writes: its Arrow schema and format version, in one place.

The README's "Data contracts" section describes these tables for people; ``tests/test_schemas.py`` checks
that the two agree. Writers build their tables with these schemas; readers call :func:`check_table` (or
:func:`check_version` for a header's ``format_version``), so a table of another version, or a file that
is not the table it should be, is one line naming the file and what is wrong with it.

Tables (paths under a run folder RUN):

=====================  ==========================================  =======================================
table                  path                                        written by
=====================  ==========================================  =======================================
embeddings             RUN/embeddings/<shard>.parquet              curate embed
scores                 RUN/selections/<name>/scores.parquet        curate select (common + method columns)
coreset scores         RUN/selections/<name>/scores.parquet        curate bootstrap --coreset
manifest               RUN/selections/<name>/manifest.parquet,     select, bootstrap, merge
                       RUN/manifests/round-NNNN.parquet
losses                 RUN/losses/round-NNNN/<part>.parquet        the trainer (trainer kit, curate losses)
pool cache             RUN/bootstrap/pool.arrow                    curate bootstrap (round 0)
decisions              RUN/bootstrap/decisions/round-NNNN.parquet  curate bootstrap
truth                  (in memory: the synthetic shards' json)     curate shards make (the synthetic world)
=====================  ==========================================  =======================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from curate.errors import InputError

#: Format version of every table and header curate writes (run.json, embeddings metadata, manifest header,
#: bootstrap state); a reader refuses any other version with one line.
FORMAT_VERSION = 1
RUN_FORMAT_VERSION = FORMAT_VERSION
EMBEDDINGS_FORMAT_VERSION = FORMAT_VERSION
MANIFEST_FORMAT_VERSION = FORMAT_VERSION
STATE_FORMAT_VERSION = FORMAT_VERSION

#: The sample's identity, first in every per-sample table: nothing is keyed by row position.
ID_FIELDS: tuple[pa.Field, ...] = (
    pa.field("uid", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("position", pa.int32(), nullable=False),  # the sample's index among its shard's samples
)
ID_COLUMNS: list[str] = [f.name for f in ID_FIELDS]

#: Parquet metadata key of the embeddings table's JSON record (format version, model, preprocessing).
EMBEDDINGS_META_KEY = b"curate"


def embedding_schema(dim: int, metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """``RUN/embeddings/<shard>.parquet``: L2-normalised float16 embeddings of width ``dim``."""
    import json

    fields = [
        *ID_FIELDS,
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("image_emb", pa.list_(pa.float16(), dim), nullable=False),
        pa.field("text_emb", pa.list_(pa.float16(), dim), nullable=True),
        pa.field("clip_score", pa.float32(), nullable=True),
    ]
    md = {EMBEDDINGS_META_KEY: json.dumps(dict(metadata), sort_keys=True).encode()} if metadata else None
    return pa.schema(fields, metadata=md)


#: ``scores.parquet`` of ``curate select``: these columns, then the method's own (``Selector.columns``).
SCORES_COMMON_FIELDS: tuple[pa.Field, ...] = (
    *ID_FIELDS,
    pa.field("selected", pa.bool_()),
    pa.field("rank", pa.int64()),  # 0 = best; null where the method ranks nothing (rule-based drops)
    pa.field("reason", pa.string()),  # null when kept, else why the sample was dropped
)

#: Method column codes (``Selector.columns`` values) → Arrow types; all nullable (NaN / -1 → null).
SCORE_COLUMN_TYPES: dict[str, pa.DataType] = {"f8": pa.float64(), "i4": pa.int32(), "bool": pa.bool_()}


def scores_schema(columns: Mapping[str, str]) -> pa.Schema:
    """The score table of a method whose own columns are ``columns`` (name → code of SCORE_COLUMN_TYPES)."""
    unknown = {c for c in columns.values() if c not in SCORE_COLUMN_TYPES}
    if unknown:
        raise ValueError(f"unknown score column type(s) {sorted(unknown)}; use one of {list(SCORE_COLUMN_TYPES)}")
    return pa.schema([*SCORES_COMMON_FIELDS, *(pa.field(n, SCORE_COLUMN_TYPES[c]) for n, c in columns.items())])


#: ``scores.parquet`` of the SCAN coreset (``curate bootstrap --coreset``): per pool sample.
CORESET_SCORES_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("candidate_count", pa.int64()),  # preparation rounds in which it was a pruning candidate
        pa.field("scored_rounds", pa.int64()),  # preparation rounds in which it had a loss
        pa.field("median_distance", pa.float32()),
        pa.field("rank", pa.int64()),
        pa.field("selected", pa.bool_()),
    ]
)

MANIFEST_SCHEMA = pa.schema([*ID_FIELDS, pa.field("weight", pa.float32(), nullable=False)])
#: Parquet metadata key of the manifest's JSON header (also written beside it as ``<name>.json``).
MANIFEST_HEADER_KEY = b"curate.manifest"

#: ``RUN/losses/round-NNNN/<part>.parquet``: one row per trained sample (written by the trainer).
LOSS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("batch", pa.int64(), nullable=False),  # samples are ranked within their batch
        pa.field("loss_a", pa.float32(), nullable=False),  # CLIP image→text (MoCo: view 1)
        pa.field("loss_b", pa.float32(), nullable=True),  # CLIP text→image (MoCo: view 2), optional
    ]
)

#: ``RUN/bootstrap/pool.arrow``: the pool's identities in embedding order (round 0 writes it).
POOL_SCHEMA = pa.schema(list(ID_FIELDS))

#: ``RUN/bootstrap/decisions/round-NNNN.parquet``: what a round decided for each pool row it touched.
DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("round", pa.int32(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("candidate", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("pruned", pa.bool_(), nullable=False),
        pa.field("reason", pa.dictionary(pa.int8(), pa.string()), nullable=True),
    ]
)

#: Ground truth of a synthetic world (read from its shards' json members): class and injected defects.
TRUTH_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("class", pa.string(), nullable=False),
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("mismatched", pa.bool_(), nullable=False),
        pa.field("duplicate_of", pa.string()),
        pa.field("duplicate_kind", pa.string()),
        pa.field("uninformative", pa.bool_(), nullable=False),
    ]
)


def _compatible(want: pa.DataType, got: pa.DataType) -> bool:
    if want == got:
        return True
    if pa.types.is_dictionary(want):  # a reader may get the dictionary's values decoded
        return got == want.value_type or (pa.types.is_dictionary(got) and got.value_type == want.value_type)
    return False


def check_table(kind: str, expected: pa.Schema, actual: pa.Schema, path: str | os.PathLike[str],
                columns: list[str] | None = None, optional: tuple[str, ...] = ()) -> None:
    """One line when ``actual`` (a file's schema) lacks a column of ``expected`` or has it with another type.

    ``columns``: check only these (a reader that reads a few columns); default: every column of ``expected``.
    ``optional``: columns that may be absent (checked for their type when present).
    """
    names = columns if columns is not None else expected.names
    missing = [n for n in names if n in expected.names and n not in actual.names and n not in optional]
    if missing:
        raise InputError(f"{path} is not a curate {kind} table (missing columns {missing})")
    for n in names:
        if n not in expected.names or n not in actual.names:
            continue
        want, got = expected.field(n).type, actual.field(n).type
        if not _compatible(want, got):
            raise InputError(f"{path} is not a curate {kind} table (column {n!r} is {got}, expected {want})")


def check_version(kind: str, record: Mapping[str, Any], path: str | os.PathLike[str],
                  expected: int = FORMAT_VERSION) -> None:
    """One line when a header's ``format_version`` is not one this curate reads."""
    got = record.get("format_version")
    if got is None:
        raise InputError(f"{path} has no format_version: not a curate {kind} (or written by an old draft)")
    if got != expected:
        raise InputError(f"{path} is a curate {kind} of format version {got}; this curate reads version "
                         f"{expected} (use the curate that wrote it, or rebuild it)")
