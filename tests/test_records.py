"""The record schema and its I/O: JSONL as before, parquet shards for every kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.errors import AmaliaError, MissingInputError
from components.records import (
    Record,
    ShardWriter,
    iter_jsonl,
    read_records,
    record_arrow_schema,
    write_records,
)

COMMON = {"source": "s", "language": "pt-PT", "split": "train", "task_family": "f"}
RECORDS = [
    Record(id="a", kind="caption", image="x.png", text="Uma legenda.", **COMMON),
    Record(id="b", kind="qa", image="x.png", question="Q?", answer="1", options=["1", "2"],
           **COMMON),
    Record(id="c", kind="preference", question="Q?", chosen="1", rejected="2", **COMMON),
    Record(id="d", kind="conversation", images=["x.png", "y.png"], image="x.png", **COMMON,
           conversations=[{"role": "user", "content": "<image><image> Diferenças?"},
                          {"role": "assistant", "content": "Nenhuma."}]),
    Record(id="e", kind="grounding", image="x.png", question="o gato", **COMMON,
           boxes=[{"bbox": [1, 2, 3, 4], "label": "gato"}, {"bbox": [0, 0, 1, 1]}]),
    Record(id="f", kind="multiple_choice", question="Q?", options=["a", "b"], answer="a",
           **COMMON),
]


def test_jsonl_round_trip_keeps_the_old_form(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    assert write_records(path, RECORDS) == len(RECORDS)
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"id": "a", **COMMON, "kind": "caption", "image": "x.png",
                     "text": "Uma legenda."}  # None fields left out, as before
    assert read_records(path) == RECORDS


def test_parquet_shards_round_trip_every_kind(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "shards", shard_rows=4, group_rows=2)
    writer.extend(r.model_dump() for r in RECORDS)
    paths = writer.close()
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet"]
    assert read_records(tmp_path / "shards") == RECORDS
    assert read_records(paths[1]) == RECORDS[4:]


def test_extra_columns_are_ignored_when_reading(tmp_path: Path) -> None:
    import pyarrow as pa

    schema = record_arrow_schema().append(pa.field("image_bytes", pa.list_(pa.binary())))
    writer = ShardWriter(tmp_path / "v", schema=schema)
    writer.add({**RECORDS[0].model_dump(), "image_bytes": [b"\x89PNG"]})
    writer.close()
    assert read_records(tmp_path / "v") == RECORDS[:1]


def test_helpers() -> None:
    d = RECORDS[3]
    assert d.image_list() == ["x.png", "y.png"] and d.placeholder_count() == 2
    assert RECORDS[0].image_list() == ["x.png"] and RECORDS[2].image_list() == []
    assert "gato" in RECORDS[4].all_texts() and "b" in RECORDS[5].all_texts()
    with pytest.raises(ValueError):
        Record(id="x", kind="grounding", boxes=[{"bbox": [1, 2, 3]}], **COMMON)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(MissingInputError):
        read_records(tmp_path / "nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{oops\n')
    with pytest.raises(AmaliaError, match=r"bad\.jsonl:2: not valid JSON"):
        list(iter_jsonl(bad))


def test_rows_to_table_equals_from_pylist() -> None:
    """The fast column-wise build gives the very table `from_pylist` gives: image lists
    joined into one buffer, null and empty lists kept, anything else through pyarrow."""
    import pyarrow as pa

    from components.records import rows_to_table

    schema = pa.schema([("id", pa.string()), ("image_bytes", pa.list_(pa.binary())),
                        ("n", pa.int64()), ("other", pa.list_(pa.binary()))])
    rows = [
        {"id": "a", "image_bytes": [b"\xff\xd8jpeg", b""], "n": 1, "other": [b"x"]},
        {"id": "b", "image_bytes": None, "n": None, "other": [None, b"y"]},  # not all bytes
        {"id": "c", "image_bytes": [], "other": None},  # a missing key reads as null
        {"id": "d", "image_bytes": [bytes(range(256)) * 40], "n": 3, "other": []},
    ]
    table = rows_to_table(rows, schema)
    assert table.equals(pa.Table.from_pylist(rows, schema=schema))
    assert table.column("image_bytes").to_pylist() == [[b"\xff\xd8jpeg", b""], None, [],
                                                       [bytes(range(256)) * 40]]
    assert table.column("other").to_pylist()[1] == [None, b"y"]
