"""The README's data-contract tables agree with ``curate.schemas``; readers refuse foreign tables in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import schemas
from curate.errors import InputError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_tables() -> dict[str, list[tuple[str, str]]]:
    """``{bold title: [(column, type), ...]}`` of every column table in the README's Data contracts."""
    text = README.read_text()
    section = text[text.index("## Data contracts"):]
    section = section[: section.index("\n## ", 3)]
    out: dict[str, list[tuple[str, str]]] = {}
    title = None
    for line in section.splitlines():
        m = re.match(r"\*\*([^*]+)\*\*", line)
        if m:
            title = m.group(1)
        row = re.match(r"\| `([a-z_]+)` \| ([^|]+?) \|", line)
        if row and title is not None:
            out.setdefault(title, []).append((row.group(1), row.group(2)))
    return out


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_type_name(t.value_type)}>"
    if pa.types.is_dictionary(t):
        return f"dictionary<{_type_name(t.value_type)}>"
    return {"halffloat": "float16", "float": "float32", "double": "float64"}.get(str(t), str(t))


def _columns(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, _type_name(f.type)) for f in schema]


@pytest.mark.parametrize(
    ("title", "schema"),
    [
        ("Embeddings", schemas.embedding_schema(8)),
        ("Scores", pa.schema(list(schemas.SCORES_COMMON_FIELDS))),
        ("Manifest", schemas.MANIFEST_SCHEMA),
        ("Losses", schemas.LOSS_SCHEMA),
        ("Bootstrap decisions", schemas.DECISIONS_SCHEMA),
    ],
)
def test_readme_tables_match_the_schemas(title: str, schema: pa.Schema) -> None:
    tables = _readme_tables()
    assert title in tables, f"README's Data contracts has no column table under **{title}**"
    assert tables[title] == _columns(schema)


def test_every_id_column_is_declared_once() -> None:
    for schema in (schemas.embedding_schema(4), schemas.MANIFEST_SCHEMA, schemas.POOL_SCHEMA,
                   schemas.scores_schema({"score": "f8"})):
        assert list(schema)[:4] == list(schemas.ID_FIELDS)


def test_scores_schema_types_and_unknown_codes() -> None:
    s = schemas.scores_schema({"score": "f8", "partition": "i4", "in_a": "bool"})
    assert s.names[-3:] == ["score", "partition", "in_a"]
    assert [s.field(n).type for n in ("score", "partition", "in_a")] == [pa.float64(), pa.int32(), pa.bool_()]
    with pytest.raises(ValueError, match="unknown score column type"):
        schemas.scores_schema({"x": "f2"})


def test_check_table_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"uid": ["a"], "batch": [1]}), path)
    with pytest.raises(InputError, match=r"part-0.parquet is not a curate losses table \(missing columns \['loss_a'\]"):
        schemas.check_table("losses", schemas.LOSS_SCHEMA, pq.read_schema(path), path, optional=("loss_b",))
    pq.write_table(pa.table({"uid": ["a"], "batch": ["one"], "loss_a": [1.0]}), path)
    with pytest.raises(InputError, match="column 'batch' is string, expected int64"):
        schemas.check_table("losses", schemas.LOSS_SCHEMA, pq.read_schema(path), path, ["uid", "batch", "loss_a"])


def test_check_version() -> None:
    schemas.check_version("manifest", {"format_version": schemas.FORMAT_VERSION}, "m.json")
    with pytest.raises(InputError, match="format version 2; this curate reads version 1"):
        schemas.check_version("manifest", {"format_version": 2}, "m.json")
    with pytest.raises(InputError, match="no format_version"):
        schemas.check_version("manifest", {}, "m.json")


def test_a_manifest_of_another_version_is_one_line(tmp_path: Path) -> None:
    from curate.io.manifest import build_manifest, read_manifest, write_manifest

    rows = pa.table({"uid": ["u"], "shard": ["s"], "key": ["k"], "position": pa.array([0], pa.int32())})
    path = write_manifest(tmp_path / "m.parquet", build_manifest(rows, kind="selection", command="t", params={},
                                                                   seed=0, pool_size=1))
    assert len(read_manifest(path)) == 1
    header = json.loads(pq.read_schema(path).metadata[schemas.MANIFEST_HEADER_KEY])
    header["format_version"] = 99
    t = pq.read_table(path).replace_schema_metadata({schemas.MANIFEST_HEADER_KEY: json.dumps(header).encode()})
    pq.write_table(t, path)
    with pytest.raises(InputError, match="format version 99"):
        read_manifest(path)


def test_embedding_tables_store_vectors_plain_and_uncompressed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The vector columns skip the dictionary attempt and Snappy (float16 values neither repeat nor compress;
    both only slow decoding); the id columns keep them; row groups hold EMBEDDING_GROUP_ROWS rows (what a
    reader decodes at once); the values read back exactly."""
    import numpy as np

    from curate.io import tables
    from curate.io.tables import fixed_list, write_embedding_table

    monkeypatch.setattr(tables, "EMBEDDING_GROUP_ROWS", 16)
    from curate.schemas import embedding_schema

    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 8)).astype(np.float16)
    ids = pa.array([f"u{i}" for i in range(50)])
    table = pa.table({"uid": ids, "shard": pa.array(["s"] * 50), "key": ids,
                      "position": pa.array(np.arange(50, dtype=np.int32)), "content_hash": ids,
                      "image_emb": fixed_list(img), "text_emb": fixed_list(img),
                      "clip_score": pa.array(np.ones(50, np.float32))}, schema=embedding_schema(8))
    path = tmp_path / "e.parquet"
    write_embedding_table(path, table)
    md = pq.read_metadata(path)
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [16, 16, 16, 2]
    group = md.row_group(0)
    cols = {group.column(i).path_in_schema.split(".")[0]: group.column(i) for i in range(group.num_columns)}
    for name in ("image_emb", "text_emb"):
        assert cols[name].compression == "UNCOMPRESSED"
        assert not any("DICTIONARY" in e for e in cols[name].encodings)
    assert cols["uid"].compression == "SNAPPY"
    assert pq.read_table(path).equals(table)
