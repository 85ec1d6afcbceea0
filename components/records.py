"""The normalised record schema every stage reads and writes, and its JSONL / parquet I/O.

One flat record serves all kinds (`kind`, with the fields each kind needs):
- `caption`:         `image`, `text`
- `qa`:              `question`, `answer`, `options` (the closed answer set, if any: a `qa`
                     record with options is validated as multiple choice); `image` optional
                     (text-only instructions have none)
- `multiple_choice`: `question`, `options` (>= 2), `answer` (one of the options)
- `conversation`:    `conversations`: turns `{role: system|user|assistant, content}`; the
                     `<image>` placeholders in the turns stand for the record's images
- `grounding`:       `image`, `question` (the referring expression or prompt), `boxes`:
                     `{bbox: [x0, y0, x1, y1] in pixels of the image, label}`, `answer` optional
- `preference`:      `question` (the prompt), `chosen`, `rejected`; `image` optional

Every record has `id`, `source`, `language` (BCP-47-like: `pt-PT`, `en`, ...), `split`
(`train` / `test`; `test` = held out for evaluation), `task_family` and `kind`. `image` is
the first (or only) image: a path relative to the data root (`settings.data_dir`) for the
embedded data, else an absolute path, an `s3://` URI or a synthetic locator of an image that
arrived as bytes (`<file>#<row>/<column>`). Multi-image records list every image in `images`
(`image == images[0]`). Stage-to-stage files go through `read_records` / `write_records` /
`ShardWriter`, the one place that knows the on-disk formats: JSONL (one object a line, None
fields left out) and sharded parquet (`part-00000.parquet`, ... with `RECORD_SCHEMA` first and
any extra columns, e.g. embedded image bytes, after it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.errors import AmaliaError, MissingInputError

Kind = Literal["caption", "qa", "multiple_choice", "conversation", "grounding", "preference"]
KINDS: tuple[str, ...] = ("caption", "qa", "multiple_choice", "conversation", "grounding",
                          "preference")
Role = Literal["system", "user", "assistant"]
TEXT_FIELDS = ("text", "question", "answer", "chosen", "rejected")
PLACEHOLDER = "<image>"


class Turn(BaseModel):
    """One conversation turn."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class Box(BaseModel):
    """A grounding box: `bbox` = `[x0, y0, x1, y1]` in pixels of the record's image."""

    model_config = ConfigDict(extra="forbid")

    bbox: Annotated[list[float], Field(min_length=4, max_length=4)]
    label: str | None = None


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    language: str
    split: Literal["train", "test"] = "train"
    task_family: str
    kind: Kind
    image: str | None = None
    text: str | None = None
    question: str | None = None
    answer: str | None = None
    options: list[str] | None = None
    chosen: str | None = None
    rejected: str | None = None
    images: list[str] | None = None
    conversations: list[Turn] | None = None
    boxes: list[Box] | None = None

    def texts(self) -> dict[str, str]:
        """The non-empty free-text fields (`TEXT_FIELDS`), by name."""
        return {f: getattr(self, f) for f in TEXT_FIELDS if getattr(self, f)}

    def all_texts(self) -> list[str]:
        """Every free text: `TEXT_FIELDS`, options, conversation turns and box labels."""
        out = [*self.texts().values(), *(self.options or [])]
        out += [t.content for t in self.conversations or []]
        out += [b.label for b in self.boxes or [] if b.label]
        return out

    def image_list(self) -> list[str]:
        """Every image of the record, in order (`images`, else `[image]`, else `[]`)."""
        if self.images:
            return list(self.images)
        return [self.image] if self.image else []

    def placeholder_count(self) -> int:
        """How many `<image>` placeholders the record's texts hold."""
        return sum(t.count(PLACEHOLDER) for t in self.all_texts())


RECORD_FIELDS: tuple[str, ...] = tuple(Record.model_fields)


def record_arrow_schema():
    """The parquet/arrow schema of `Record` (every field nullable except the ids)."""
    import pyarrow as pa

    string = pa.string()
    return pa.schema([
        pa.field("id", string, nullable=False),
        pa.field("source", string, nullable=False),
        pa.field("language", string, nullable=False),
        pa.field("split", string, nullable=False),
        pa.field("task_family", string, nullable=False),
        pa.field("kind", string, nullable=False),
        pa.field("image", string),
        pa.field("text", string),
        pa.field("question", string),
        pa.field("answer", string),
        pa.field("options", pa.list_(string)),
        pa.field("chosen", string),
        pa.field("rejected", string),
        pa.field("images", pa.list_(string)),
        pa.field("conversations", pa.list_(pa.struct([("role", string),
                                                       ("content", string)]))),
        pa.field("boxes", pa.list_(pa.struct([("bbox", pa.list_(pa.float64())),
                                              ("label", string)]))),
    ])


def record_row(rec: Record | dict[str, Any]) -> dict[str, Any]:
    """A JSON-able dict of a record with None fields left out (the JSONL form)."""
    return rec.model_dump(exclude_none=True) if isinstance(rec, Record) else rec


def record_from_row(row: dict[str, Any]) -> Record:
    """A `Record` from a parquet/JSON row; extra columns and None values are ignored."""
    clean: dict[str, Any] = {}
    for key in RECORD_FIELDS:
        value = row.get(key)
        if value is None:
            continue
        if key == "boxes":
            value = [{k: v for k, v in b.items() if v is not None} for b in value]
        clean[key] = value
    return Record.model_validate(clean)


def write_records(path: Path, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records as JSONL (one object a line, UTF-8); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(record_row(rec), ensure_ascii=False) + "\n")
            n += 1
    return n


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)`; a line that is not JSON raises naming file and line."""
    if not path.exists():
        raise MissingInputError(f"{path} not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise AmaliaError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def shard_paths(path: Path) -> list[Path]:
    """The parquet shards of `path`: the file itself, or `*.parquet` under a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if p.is_file())
    raise MissingInputError(f"{path} not found")


def iter_parquet_rows(path: Path, columns: list[str] | None = None,
                      batch_size: int = 2048) -> Iterator[dict[str, Any]]:
    """Stream the rows of a parquet file or shard folder as dicts (bounded memory)."""
    import pyarrow.parquet as pq

    for shard in shard_paths(path):
        pf = pq.ParquetFile(shard)
        cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield from batch.to_pylist()


def iter_records(path: Path) -> Iterator[Record]:
    """Stream the records of a JSONL file, a parquet file or a folder of parquet shards."""
    path = Path(path)
    if path.suffix == ".jsonl" or (path.is_file() and path.suffix != ".parquet"):
        for _, obj in iter_jsonl(path):
            yield Record.model_validate(obj)
        return
    for row in iter_parquet_rows(path, columns=list(RECORD_FIELDS)):
        yield record_from_row(row)


def read_records(path: Path) -> list[Record]:
    """Read already-validated records from a JSONL file (as every trainer does today), a
    parquet file or a folder of parquet shards (`<run>/mix/shards/sft/`)."""
    return list(iter_records(path))


def rows_to_table(rows: list[dict[str, Any]], schema):
    """`pa.Table.from_pylist(rows, schema=schema)`, built column by column (2x faster for
    wide rows), with `list<binary>` columns (image files) joined into one buffer instead of
    fed value by value to a builder (10x faster for images of tens of KB)."""
    import pyarrow as pa

    columns = []
    for f in schema:
        values = [row.get(f.name) for row in rows]
        fast = _binary_lists(values, f.type) if pa.types.is_list(f.type) and \
            pa.types.is_binary(f.type.value_type) else None
        columns.append(fast if fast is not None else pa.array(values, type=f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _binary_lists(values: list[Any], type_) -> Any | None:
    """A `list<binary>` array from lists of `bytes` (None rows are null), or None when a
    value is anything else or the bytes exceed one array's 2 GiB offsets."""
    import numpy as np
    import pyarrow as pa

    counts, blobs, nulls = [], [], []
    for value in values:
        if value is None:
            counts.append(0)
            nulls.append(True)
            continue
        if not isinstance(value, list) or not all(isinstance(b, bytes) for b in value):
            return None
        counts.append(len(value))
        nulls.append(False)
        blobs.extend(value)
    sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
    if sizes.sum() >= 2**31:
        return None
    offsets = np.zeros(len(blobs) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    child = pa.Array.from_buffers(pa.binary(), len(blobs),
                                  [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(blobs))])
    list_offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(counts, out=list_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(list_offsets), child, type=type_,
                                    mask=pa.array(nulls) if any(nulls) else None)


class ShardWriter:
    """Write rows into `<folder>/part-00000.parquet`, `part-00001.parquet`, ...

    Rows are buffered and written as row groups of `group_rows`; a new shard starts after
    `shard_rows` rows or about `shard_bytes` bytes, so a dataset is a few large files (DVC
    and object stores handle those well), never one file per sample. Memory holds at most
    one row group. `schema` defaults to `record_arrow_schema()`; extra columns are appended
    to it by the caller. `close()` returns the shard paths written (none for zero rows).
    """

    def __init__(self, folder: Path, schema=None, shard_rows: int = 50_000,
                 shard_bytes: int = 512 << 20, group_rows: int = 1024):
        self.folder = Path(folder)
        self.schema = schema if schema is not None else record_arrow_schema()
        self.shard_rows, self.shard_bytes, self.group_rows = shard_rows, shard_bytes, group_rows
        self.paths: list[Path] = []
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer = None
        self._in_shard = 0
        self._bytes_in_shard = 0

    def add(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.group_rows:
            self._flush()

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        while self._buffer:
            room = self.shard_rows - self._in_shard
            take, self._buffer = self._buffer[:room], self._buffer[room:]
            table = rows_to_table(take, self.schema)
            if self._writer is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                path = self.folder / f"part-{len(self.paths):05d}.parquet"
                self.paths.append(path)
                self._writer = pq.ParquetWriter(path, self.schema, **self._column_options())
            self._writer.write_table(table)
            self.rows += len(take)
            self._in_shard += len(take)
            self._bytes_in_shard += table.nbytes
            if self._in_shard >= self.shard_rows or self._bytes_in_shard >= self.shard_bytes:
                self._writer.close()
                self._writer, self._in_shard, self._bytes_in_shard = None, 0, 0

    def _column_options(self) -> dict[str, Any]:
        """ParquetWriter options per leaf column: plain binary columns (image files, already
        compressed) get no compression, no dictionary and no min/max statistics, which would
        only hash and compare megabytes of JPEG (3x slower writes); the rest zstd."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(self.schema.empty_table(), buf)
        meta = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
        blobs, others = [], []
        for i in range(len(meta)):
            column = meta.column(i)
            is_blob = column.physical_type == "BYTE_ARRAY" and column.logical_type.type == "NONE"
            (blobs if is_blob else others).append(column.path)
        return {"compression": {**dict.fromkeys(others, "zstd"), **dict.fromkeys(blobs, "none")},
                "use_dictionary": others, "write_statistics": others}

    def close(self) -> list[Path]:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return list(self.paths)
