"""The normalised record schema every stage reads and writes, and its JSONL I/O.

One flat record serves all kinds:
- `caption`:    `image`, `text`
- `qa`:         `image`, `question`, `answer`, `options` (the closed answer set, if any)
- `preference`: `image`, `question` (the prompt), `chosen`, `rejected`

Every record has `id`, `source`, `language` (`pt-PT` or `en`), `split` (`train`/`test`),
`task_family` and `kind`. `image` is a path relative to the data root (`settings.data_dir`),
so run directories stay portable. Stage-to-stage files go through `read_records` /
`write_records`, the one place that knows the on-disk format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from components.errors import AmaliaError, MissingInputError

Kind = Literal["caption", "qa", "preference"]
TEXT_FIELDS = ("text", "question", "answer", "chosen", "rejected")


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

    def texts(self) -> dict[str, str]:
        """The non-empty free-text fields, by name."""
        return {f: getattr(self, f) for f in TEXT_FIELDS if getattr(self, f)}


def write_records(path: Path, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records as JSONL (one object a line, UTF-8); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            row = rec.model_dump(exclude_none=True) if isinstance(rec, Record) else rec
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
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


def read_records(path: Path) -> list[Record]:
    """Read a JSONL file of already-validated records."""
    return [Record.model_validate(obj) for _, obj in iter_jsonl(path)]
