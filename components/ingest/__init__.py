"""Ingestion: read every source format of the stage-2 mix as a stream of raw rows.

An input is `[FORMAT:]LOCATION[?key=value&...]` (see `parse_spec`): LOCATION a local path,
an `s3://` URI or `hf://<hub id or local path>`. Formats (`FORMATS`, auto-detected by
`detect_format` when not given):

- `jsonl`:   one JSON object a line (the pipeline's records, LLaVA rows, or any layout
             `normalise` knows); a line that is not JSON is quarantined (`json_decode`) with
             its file and line, the rest of the file goes on. A file that is not JSON Lines at
             all (none of its first `PROBE_LINES` non-empty lines is a JSON object) stops the
             stage with an `AmaliaError` naming the file and its first bad line.
- `llava`:   a JSON array of LLaVA rows (`id`, `image` path or list, `conversations`),
             streamed object by object; a file that is not a JSON array stops the stage with
             an `AmaliaError` naming the file, the line and the column.
- `parquet` / `arrow`: Hugging Face-style tables (image columns as `{bytes, path}` structs,
             raw bytes or paths), streamed in record batches; a file, or a folder / prefix.
             A file that cannot be read (not a table, truncated) stops the stage with an
             `AmaliaError` naming the file and the row (and, for arrow, the record batch).
- `hf`:      a dataset saved with `save_to_disk` (a folder), or a hub id read with
             `datasets.load_dataset(id, name=config, split=..., streaming=True)` (never
             called offline).
- `images` (alias `imagefolder`, Hugging Face's name): a folder of images; texts from an
             imagefolder `metadata.jsonl` (`file_name` column), else from a `<stem>.txt`
             (caption) or `<stem>.json` sidecar.

`iter_items(spec)` yields `Item`s: `(file, line, payload)` with payload a raw JSONL line
(parsed later, in a worker) or a dict; for tables, `line` is the 1-based row. Keys of the
spec: `source` (default: the file or folder name; for a hub id its name, plus `-<config>`
with `config`), `language` (default `en` for foreign layouts), `split`, `task_family`,
`image_root`, `box_format`, `config` (alias `subset`: the configuration of a multi-subset
hub dataset, e.g. `hf://HuggingFaceM4/FineVision?config=chartqa`; hub ids only).

Relative image paths (strings, or `{bytes: null, path}` structs) resolve against
`image_root`: by default the input folder, or the folder of the file when the input is one
file (local or s3). A hub dataset has no folder: a row with a relative image path stops the
stage with an `AmaliaError` naming the row unless `?image_root=DIR` (a local folder or an
s3 prefix holding the images) is given.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from components.errors import AmaliaError, ConfigError
from components.ingest import sources
from components.ingest.normalise import image_paths
from components.ingest.sources import IMAGE_SUFFIXES, fail

FORMATS = ("jsonl", "llava", "parquet", "arrow", "hf", "images")
FORMAT_ALIASES = {"imagefolder": "images"}
SPEC_KEYS = ("source", "language", "split", "task_family", "image_root", "box_format",
             "config")
OPTION_ALIASES = {"subset": "config"}
BATCH_ROWS = 512
READ_CHARS = 1 << 20
PROBE_LINES = 20


class Item(NamedTuple):
    """One raw row: where it came from and what it holds."""

    file: str
    line: int
    payload: Any  # str (a JSONL line, parsed in the worker) or dict


@dataclass(frozen=True)
class InputSpec:
    """One input of the validate stage.

    `relative_images`: image paths stay relative to `image_root` in the output (the embedded
    data under `data_dir`); otherwise they are resolved to absolute paths / s3 URIs.
    `expected_source`: every record must carry this source (the embedded data).
    """

    location: str
    format: str
    options: dict[str, str] = field(default_factory=dict)
    hub: bool = False
    relative_images: bool = False
    expected_source: str | None = None
    endpoint: str | None = None

    @property
    def display(self) -> str:
        """Where the input is, as reports, manifests, logs and errors show it: credentials
        in the location (URL userinfo, `?token=`) masked (`components.redact`)."""
        from components.redact import redact

        return redact(self.options.get("_display") or self.location)

    @property
    def source(self) -> str:
        if "source" in self.options:
            return self.options["source"]
        name = self.location.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
        for suffix in (".jsonl", ".json", ".parquet", ".arrow"):
            name = name.removesuffix(suffix)
        if self.hub and self.options.get("config"):
            name = f"{name}-{self.options['config']}"
        return name or "input"

    @cached_property
    def image_root(self) -> str:
        if "image_root" in self.options:
            return self.options["image_root"]
        if self.hub:
            return ""
        if sources.exists_dir(self.location, self.endpoint):
            return self.location
        return sources.parent(self.location)

    def defaults(self) -> dict[str, Any]:
        """What rows lack: `source`, `language`, `split`, `task_family`, `box_format`."""
        return dict(self._defaults)

    @cached_property
    def _defaults(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.expected_source is None:
            out["language"] = "en"
        for key in ("language", "split", "task_family", "box_format"):
            if key in self.options:
                out[key] = self.options[key]
        return out


def split_spec(text: str) -> tuple[str | None, str, dict[str, str], bool]:
    """`(format or None, location, options, is_hf)` of a spec, without touching any file.

    Format aliases are mapped (`imagefolder` -> `images`), option aliases too (`subset` ->
    `config`); `is_hf` is true for `hf://` locations (returned without the scheme). Raises
    `ConfigError` for an unknown option or an empty location.
    """
    raw = text.strip()
    options: dict[str, str] = {}
    if "?" in raw:
        raw, _, query = raw.rpartition("?")
        for key, value in parse_qsl(query, keep_blank_values=True):
            key = OPTION_ALIASES.get(key, key)
            if key not in SPEC_KEYS:
                raise ConfigError(f"input '{text}': unknown option '{key}'",
                                  f"options are: {', '.join(SPEC_KEYS)}")
            options[key] = value
    fmt = None
    head, sep, rest = raw.partition(":")
    if sep and (head in FORMATS or head in FORMAT_ALIASES) and not raw.startswith("hf://"):
        fmt, raw = FORMAT_ALIASES.get(head, head), rest  # `llava:/data/x.json`
    is_hf = raw.startswith("hf://")
    if is_hf:
        raw = raw[len("hf://"):]
    if not raw:
        raise ConfigError(f"input '{text}' names no location")
    return fmt, raw, options, is_hf


def parse_spec(text: str, endpoint: str | None = None) -> InputSpec:
    """`[FORMAT:]LOCATION[?key=value&...]` -> `InputSpec` (format auto-detected if absent).

    Raises `ConfigError` for an unknown format or option, or `config` on a non-hub input.
    """
    fmt, raw, options, is_hf = split_spec(text)
    hub = False
    if is_hf:
        fmt = fmt or "hf"
        hub = not Path(raw).exists()
    if "config" in options and not hub:
        raise ConfigError(f"input '{text}': ?config= applies to hub ids only",
                          "point at the files of that subset instead")
    if not hub and not sources.is_s3(raw):
        raw = str(Path(raw).expanduser())
    spec = InputSpec(location=raw, format=fmt or "", options=options, hub=hub,
                     endpoint=endpoint)
    if not fmt:
        spec = InputSpec(location=raw, format=detect_format(raw, endpoint), options=options,
                         hub=hub, endpoint=endpoint)
    if spec.format not in FORMATS:
        raise ConfigError(f"input '{text}': unknown format '{spec.format}'",
                          f"formats are: {', '.join(FORMATS)} (imagefolder = images)")
    return spec


def detect_format(location: str, endpoint: str | None = None) -> str:
    """The format of a local path or s3 URI, from its name or its folder's contents."""
    lower = location.lower().rstrip("/")
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "llava"), (".parquet", "parquet"),
                        (".arrow", "arrow")):
        if lower.endswith(suffix):
            return fmt
    sources.require(location, endpoint)
    if not sources.exists_dir(location, endpoint):
        raise ConfigError(f"cannot tell the format of {location}",
                          "prefix it with one of: " + ", ".join(f"{f}:" for f in FORMATS))
    if not sources.is_s3(location) and (
            (Path(location) / "dataset_info.json").exists()
            or (Path(location) / "dataset_dict.json").exists()
            or (Path(location) / "state.json").exists()):
        return "hf"
    for suffixes, fmt in (((".parquet",), "parquet"), ((".arrow",), "arrow"),
                          (IMAGE_SUFFIXES, "images"), ((".jsonl",), "jsonl")):
        if sources.list_files(location, suffixes, endpoint):
            return fmt
    raise ConfigError(f"no records found in {location}",
                      "expected *.jsonl, *.json, *.parquet, *.arrow or images")


# ----------------------------------------------------------------------------- readers


def iter_json_lines(lines: Iterable[tuple[int, str]], display: str) -> Iterator[Item]:
    """The non-empty lines of a JSON Lines file as `Item`s (raw text, parsed later).

    Until a line parses as a JSON object, lines are parsed here and held back (at most
    `PROBE_LINES`); after that they pass unparsed, so a bad line is quarantined downstream.
    A file none of whose first `PROBE_LINES` non-empty lines (or no line at all) is a JSON
    object is not JSON Lines: `AmaliaError("FILE:LINE: cannot parse as JSON Lines (...)")`
    naming its first bad line.
    """
    held: list[Item] = []  # the bad lines read while probing
    first_bad: tuple[int, str] | None = None
    probing = True
    for lineno, line in lines:
        if not line.strip():
            continue
        item = Item(display, lineno, line)
        if probing:
            why = _not_an_object(line)
            if why is not None:
                first_bad = first_bad or (lineno, why)
                held.append(item)
                if len(held) >= PROBE_LINES:
                    raise fail(display, first_bad[0], f"cannot parse as JSON Lines "
                               f"({first_bad[1]}); none of its first {PROBE_LINES} "
                               "lines is a JSON object")
                continue
            probing = False
            yield from held
            held = []
        yield item
    if first_bad is not None and probing:
        raise fail(display, first_bad[0], f"cannot parse as JSON Lines ({first_bad[1]}); "
                                          "no line of it is a JSON object")


def _not_an_object(line: str) -> str | None:
    """Why a JSON Lines line is not a JSON object (None when it is)."""
    try:
        value = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        return f"{exc.msg}, column {exc.colno}"
    if isinstance(value, dict):
        return None
    kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return f"a JSON {kind.get(type(value), 'null')}, not an object"


def _jsonl(spec: InputSpec, path: str, display: str) -> Iterator[Item]:
    with sources.open_text(path, spec.endpoint) as fh:
        yield from iter_json_lines(enumerate(fh, start=1), display)


def iter_json_array(fh, display: str) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a JSON array from a text file: `(line, element)`.

    Bounded memory (about `READ_CHARS` plus one element). A file that is not a JSON array
    raises `AmaliaError("FILE:LINE: not ... (..., column C)")` naming the file, the line and
    the column where parsing failed.
    """
    decoder = json.JSONDecoder()
    buf, pos, line, eof = "", 0, 1, False
    col0 = 0  # the 0-based column of buf[0]

    def column(at: int) -> int:
        """The 1-based column of `buf[at]`."""
        newline = buf.rfind("\n", 0, at)
        return at - newline if newline >= 0 else col0 + at + 1

    def more() -> bool:
        nonlocal buf, pos, eof, col0
        if eof:
            return False
        chunk = fh.read(READ_CHARS)
        if not chunk:
            eof = True
            return False
        col0 = column(pos) - 1
        buf = buf[pos:] + chunk
        pos = 0
        return True

    def skip_ws() -> str:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    first = skip_ws()
    if first != "[":
        raise fail(display, line, f"not a JSON array (column {column(pos)}; a LLaVA-style "
                                  "file is [ {...}, ... ]; use jsonl: for one object a line)")
    pos += 1
    expect_value = True
    while True:
        ch = skip_ws()
        if ch == "":
            raise fail(display, line, "not valid JSON (the array is not closed)")
        if ch == "]":
            pos += 1
            if skip_ws() != "":
                raise fail(display, line, "not valid JSON (extra data after the array, "
                                          f"column {column(pos)})")
            return
        if not expect_value:
            if ch != ",":
                raise fail(display, line, "not valid JSON (expected ',' or ']', "
                                          f"column {column(pos)})")
            pos += 1
            expect_value = True
            continue
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end >= len(buf) and not eof and more():
                    continue  # the element may go on in the next block
                break
            except json.JSONDecodeError as exc:
                if more():
                    continue
                bad_line = line + buf.count("\n", pos, exc.pos)
                raise fail(display, bad_line, f"not valid JSON ({exc.msg}, "
                                              f"column {column(exc.pos)})") from None
        start_line = line
        line += buf.count("\n", pos, end)
        pos = end
        expect_value = False
        yield start_line, value


def _llava(spec: InputSpec, path: str, display: str) -> Iterator[Item]:
    with sources.open_text(path, spec.endpoint) as fh:
        head = fh.read(4096)
        stripped = head.lstrip()
        fh.seek(0)
        if stripped.startswith("{"):  # one object a line after all
            yield from _jsonl(spec, path, display)
            return
        for lineno, obj in iter_json_array(fh, display):
            yield Item(display, lineno, obj)


def _parquet_file(spec: InputSpec, path: str, display: str) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with sources.open_binary(path, spec.endpoint) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowInvalid, OSError) as exc:
            raise fail(display, None, f"not a readable parquet file ({exc})") from None
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for obj in batch.to_pylist():
                    row += 1
                    yield Item(display, row, obj)
        except (pa.ArrowInvalid, OSError) as exc:
            raise fail(display, row + 1, f"unreadable parquet data ({exc})") from None


def _arrow_file(spec: InputSpec, path: str, display: str) -> Iterator[Item]:
    import pyarrow as pa

    with sources.open_binary(path, spec.endpoint) as fh:
        try:
            reader = pa.ipc.open_stream(fh)
        except (pa.ArrowInvalid, OSError):
            fh.seek(0)
            try:
                file_reader = pa.ipc.open_file(fh)
            except (pa.ArrowInvalid, OSError) as exc:
                raise fail(display, None, f"not a readable arrow file ({exc})") from None
            reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        row = batches_read = 0
        try:
            for batch in reader:
                for obj in batch.to_pylist():
                    row += 1
                    yield Item(display, row, obj)
                batches_read += 1
        except (pa.ArrowInvalid, OSError) as exc:  # e.g. a truncated file
            raise fail(display, row + 1, f"unreadable arrow data in record batch "
                                         f"{batches_read + 1} ({exc})") from None


def _files(spec: InputSpec, suffix: str) -> list[str]:
    if sources.exists_dir(spec.location, spec.endpoint):
        found = sources.list_files(spec.location, (suffix,), spec.endpoint)
        if not found:
            raise fail(spec.display, None, f"no {suffix} files found")
        return found
    sources.require(spec.location, spec.endpoint)
    return [spec.location]


def _tables(spec: InputSpec, reader) -> Iterator[Item]:
    suffix = ".parquet" if reader is _parquet_file else ".arrow"
    for path in _files(spec, suffix):
        yield from reader(spec, path, path)


def _undecoded(ds):
    """Image columns as `{bytes, path}` (no PIL decode in the reader)."""
    from datasets import Image as HFImage
    from datasets import Sequence

    features = getattr(ds, "features", None) or {}
    for name, feature in features.items():
        if isinstance(feature, HFImage):
            ds = ds.cast_column(name, HFImage(decode=False))
        elif isinstance(feature, Sequence) and isinstance(feature.feature, HFImage):
            ds = ds.cast_column(name, Sequence(HFImage(decode=False)))
        elif isinstance(feature, list) and feature and isinstance(feature[0], HFImage):
            ds = ds.cast_column(name, [HFImage(decode=False)])
    return ds


def _hf(spec: InputSpec, split: str) -> Iterator[Item]:
    import datasets

    hf_split = spec.options.get("split", split)
    if spec.hub:
        # A hub id: streamed, nothing stored beside the HF cache. Never reached offline.
        config = spec.options.get("config")
        kwargs = {"name": config} if config else {}
        ds = datasets.load_dataset(spec.location, split=hf_split, streaming=True, **kwargs)
        display = f"hf://{spec.display}" + (f":{config}" if config else "") + f"[{hf_split}]"
        yield from _hub_rows(spec, _undecoded(ds), display)
        return
    else:
        path = Path(spec.location)
        saved = any((path / n).exists() for n in ("state.json", "dataset_dict.json"))
        if path.is_file() or (path.is_dir() and not saved):  # parquet / arrow files
            is_arrow = path.suffix == ".arrow" or (path.is_dir()
                                                   and not any(path.rglob("*.parquet")))
            yield from _tables(spec, _arrow_file if is_arrow else _parquet_file)
            return
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(path), None, f"not a saved Hugging Face dataset ({exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            if hf_split not in ds:
                if len(ds) != 1:
                    raise ConfigError(f"{path}: no split '{hf_split}'",
                                      f"splits are: {', '.join(ds)}; add ?split=NAME")
                hf_split = next(iter(ds))
            ds = ds[hf_split]
        display = f"{path}[{hf_split}]"
    ds = _undecoded(ds)
    for row, obj in enumerate(ds, start=1):
        yield Item(display, row, obj)


def _hub_rows(spec: InputSpec, ds: Iterable[Any], display: str) -> Iterator[Item]:
    """The rows of a hub dataset; a relative image path needs `?image_root=` (no folder)."""
    root = spec.options.get("image_root")
    for row, obj in enumerate(ds, start=1):
        if not root and isinstance(obj, dict):
            for path in image_paths(obj):
                if not (sources.is_s3(path) or "://" in path or Path(path).is_absolute()):
                    raise fail(display, row, f"image path '{path}' is relative and a hub "
                                             "dataset has no folder to resolve it against "
                                             "(add ?image_root=DIR: a local folder or s3:// "
                                             "prefix holding the images)")
        yield Item(display, row, obj)


def _images(spec: InputSpec) -> Iterator[Item]:
    root = spec.location
    if not sources.exists_dir(root, spec.endpoint):
        raise fail(spec.display, None, "not a folder of images")
    meta_path = sources.join(root, "metadata.jsonl")
    meta = sources.read_text_maybe(meta_path, spec.endpoint)
    if meta is not None:  # the Hugging Face imagefolder layout
        yield from iter_json_lines(enumerate(meta.splitlines(), start=1), meta_path)
        return
    for path in sources.list_files(root, IMAGE_SUFFIXES, spec.endpoint):
        rel = posixpath.relpath(path, root) if sources.is_s3(root) \
            else Path(path).relative_to(root).as_posix()
        stem = rel.rsplit(".", 1)[0]
        row: dict[str, Any] = {"id": stem, "image": rel}
        sidecar = sources.read_text_maybe(path.rsplit(".", 1)[0] + ".json", spec.endpoint)
        if sidecar is not None:
            try:
                extra = json.loads(sidecar)
            except json.JSONDecodeError as exc:
                raise fail(path.rsplit(".", 1)[0] + ".json", exc.lineno,
                           f"not valid JSON ({exc.msg})") from None
            if isinstance(extra, dict):
                row.update({k: v for k, v in extra.items() if k not in ("image", "images")})
        else:  # no sidecar: a caption without its text (quarantined as such)
            caption = sources.read_text_maybe(path.rsplit(".", 1)[0] + ".txt", spec.endpoint)
            if caption is not None:
                row["caption"] = caption.strip()
        yield Item(path, 1, row)


def iter_items(spec: InputSpec, hf_split: str = "train") -> Iterator[Item]:
    """Every raw row of one input, streamed (see the module docstring)."""
    if spec.format == "jsonl":
        if sources.exists_dir(spec.location, spec.endpoint):
            for path in _files(spec, ".jsonl"):
                yield from _jsonl(spec, path, path)
        else:
            sources.require(spec.location, spec.endpoint)
            yield from _jsonl(spec, spec.location, spec.display)
    elif spec.format == "llava":
        sources.require(spec.location, spec.endpoint)
        yield from _llava(spec, spec.location, spec.display)
    elif spec.format == "parquet":
        yield from _tables(spec, _parquet_file)
    elif spec.format == "arrow":
        yield from _tables(spec, _arrow_file)
    elif spec.format == "hf":
        yield from _hf(spec, hf_split)
    elif spec.format == "images":
        yield from _images(spec)
    else:  # pragma: no cover - parse_spec refuses unknown formats
        raise AmaliaError(f"unknown input format {spec.format}")


__all__ = ["FORMATS", "FORMAT_ALIASES", "InputSpec", "Item", "detect_format", "iter_items",
           "iter_json_array", "iter_json_lines", "parse_spec", "split_spec"]
