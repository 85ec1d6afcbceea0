"""The `validate` stage: per-record quality checks, a quarantine, then a Great Expectations run.

Inputs: `<data_dir>/native/records.jsonl` and `<data_dir>/seed_en/records.jsonl` (streamed
line by line). Every input line ends in exactly one of:
- `<out_dir>/native.jsonl` / `<out_dir>/seed_en.jsonl`: kept `Record`s (via `write_records`);
- `<out_dir>/quarantine.jsonl`: `{"id", "source", "reasons": [...], "file", "line"}`.

Record checks run in order (`RECORD_CHECKS`; each returns reason strings, empty = pass):
`json_decode` (the line is not a JSON object) and `schema:<field>:<error type>`
(`Record.model_validate`) stop the checks; then `source_mismatch`, `missing_field:<f>`,
`empty_text:<f>`, `answer_not_in_options`, `chosen_equals_rejected`, `text_too_long`,
`image_path_unsafe` / `image_missing` / `image_unreadable` / `image_too_small` /
`aspect_ratio`, `duplicate_id` (the first occurrence of an id owns it).

`<out_dir>/report.json` holds exactly `total`, `kept`, `quarantined`, `by_reason`,
`by_source` (with `total == kept + quarantined`). Then a Great Expectations 1.x suite runs on
a DataFrame of the kept records (ephemeral context, imported lazily) and its result goes to
`<out_dir>/gx_result.json`. Finally, when `quarantined / total > max_quarantine_ratio` (or
nothing was read) the stage raises `DataQualityError`; the reports are written first.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from components.errors import DataQualityError, MissingInputError
from components.records import TEXT_FIELDS, Record, write_records
from components.settings import Settings
from components.stages import StageContext, StageOutput

# (label = expected `source`, path relative to the data dir, kept-records file name)
INPUTS: tuple[tuple[str, str, str], ...] = (
    ("native", "native/records.jsonl", "native.jsonl"),
    ("seed_en", "seed_en/records.jsonl", "seed_en.jsonl"),
)
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "caption": ("image", "text"),
    "qa": ("image", "question", "answer"),
    "preference": ("image", "question", "chosen", "rejected"),
}
KINDS = tuple(REQUIRED_FIELDS)
SPLITS = ("train", "test")
LANGUAGES = ("pt-PT", "en")
GX_COLUMNS = ("id", "source", "language", "split", "task_family", "kind", "image",
              "question", "text", "answer")


@dataclass
class CheckContext:
    """State shared by the record checks of one stage run."""

    settings: Settings
    data_dir: Path
    expected_source: str = ""
    seen_ids: set[str] = field(default_factory=set)
    image_cache: dict[str, list[str]] = field(default_factory=dict)


RecordCheck = Callable[[Record, CheckContext], list[str]]


# ----------------------------------------------------------------------------- checks


def check_source(rec: Record, ctx: CheckContext) -> list[str]:
    return [] if rec.source == ctx.expected_source else ["source_mismatch"]


def check_required_fields(rec: Record, _ctx: CheckContext) -> list[str]:
    return [f"missing_field:{f}" for f in REQUIRED_FIELDS[rec.kind] if getattr(rec, f) is None]


def check_non_empty(rec: Record, _ctx: CheckContext) -> list[str]:
    reasons = [f"empty_text:{f}" for f in (*TEXT_FIELDS, "image")
               if isinstance(getattr(rec, f), str) and not getattr(rec, f).strip()]
    if rec.options is not None and (not rec.options or any(not o.strip() for o in rec.options)):
        reasons.append("empty_text:options")
    return reasons


def check_answer(rec: Record, _ctx: CheckContext) -> list[str]:
    if rec.kind == "qa" and rec.options and rec.answer is not None:
        return [] if rec.answer in rec.options else ["answer_not_in_options"]
    return []


def check_preference(rec: Record, _ctx: CheckContext) -> list[str]:
    if rec.kind == "preference" and rec.chosen is not None and rec.chosen == rec.rejected:
        return ["chosen_equals_rejected"]
    return []


def check_text_length(rec: Record, ctx: CheckContext) -> list[str]:
    limit = ctx.settings.validate_.max_text_chars
    texts = [*rec.texts().values(), *(rec.options or [])]
    return ["text_too_long"] if any(len(t) > limit for t in texts) else []


def inspect_image(path: Path, settings: Settings) -> list[str]:
    """Reasons the image file at `path` is unusable (decode, min side, aspect ratio)."""
    if not path.is_file():
        return ["image_missing"]
    try:
        with Image.open(path) as img:
            img.verify()  # structure check; the file must be reopened to decode
        with Image.open(path) as img:
            img.load()
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return ["image_unreadable"]
    reasons = []
    cfg = settings.validate_
    if min(width, height) < cfg.min_image_side:
        reasons.append("image_too_small")
    if max(width, height) / max(min(width, height), 1) > cfg.max_aspect_ratio:
        reasons.append("aspect_ratio")
    return reasons


def check_image(rec: Record, ctx: CheckContext) -> list[str]:
    if not rec.image or not rec.image.strip():
        return []  # reported by check_required_fields / check_non_empty
    rel = Path(rec.image)
    if rel.is_absolute() or ".." in rel.parts:
        return ["image_path_unsafe"]
    if rec.image not in ctx.image_cache:  # images are shared by several records
        ctx.image_cache[rec.image] = inspect_image(ctx.data_dir / rel, ctx.settings)
    return list(ctx.image_cache[rec.image])


def check_duplicate_id(rec: Record, ctx: CheckContext) -> list[str]:
    if rec.id in ctx.seen_ids:
        return ["duplicate_id"]
    ctx.seen_ids.add(rec.id)
    return []


RECORD_CHECKS: tuple[RecordCheck, ...] = (
    check_source,
    check_required_fields,
    check_non_empty,
    check_answer,
    check_preference,
    check_text_length,
    check_image,
    check_duplicate_id,
)


def schema_reasons(exc: ValidationError) -> list[str]:
    return [f"schema:{'.'.join(str(p) for p in e['loc']) or 'record'}:{e['type']}"
            for e in exc.errors()]


def check_line(line: str, ctx: CheckContext) -> tuple[Record | None, dict[str, Any], list[str]]:
    """Parse and check one JSONL line: `(record or None, raw object, reasons)`."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None, {}, ["json_decode"]
    if not isinstance(obj, dict):
        return None, {}, ["json_decode"]
    try:
        rec = Record.model_validate(obj)
    except ValidationError as exc:
        return None, obj, schema_reasons(exc)
    reasons: list[str] = []
    for check in RECORD_CHECKS:
        reasons.extend(r for r in check(rec, ctx) if r not in reasons)
    return rec, obj, reasons


# ----------------------------------------------------------------------------- tally


@dataclass
class Tally:
    total: int = 0
    kept: int = 0
    quarantined: int = 0
    by_reason: Counter = field(default_factory=Counter)
    by_source: dict[str, Counter] = field(default_factory=dict)

    def add(self, source: str, reasons: list[str]) -> None:
        per = self.by_source.setdefault(source, Counter(total=0, kept=0, quarantined=0))
        self.total += 1
        per["total"] += 1
        if reasons:
            self.quarantined += 1
            per["quarantined"] += 1
            self.by_reason.update(reasons)
        else:
            self.kept += 1
            per["kept"] += 1

    @property
    def ratio(self) -> float:
        return self.quarantined / self.total if self.total else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "quarantined": self.quarantined,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_source": {s: dict(c) for s, c in sorted(self.by_source.items())},
        }


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, streamed."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, line


def validate_file(path: Path, label: str, display: str, ctx: CheckContext, tally: Tally,
                  quarantine, gx_rows: list[dict[str, Any]],
                  progress: bool = False) -> Iterator[Record]:
    """Yield the kept records of one input file; quarantine lines go to `quarantine`."""
    ctx.expected_source = label
    lines: Any = iter_lines(path)
    if progress:
        from rich.progress import track

        lines = track(lines, description=f"validate {display}")
    for lineno, line in lines:
        rec, obj, reasons = check_line(line, ctx)
        tally.add(label, reasons)
        if reasons:
            row = {"id": obj.get("id"), "source": obj.get("source", label), "reasons": reasons,
                   "file": display, "line": lineno}
            quarantine.write(json.dumps(row, ensure_ascii=False) + "\n")
            continue
        assert rec is not None
        gx_rows.append({c: getattr(rec, c) for c in GX_COLUMNS})
        yield rec


# ----------------------------------------------------------------------------- GX


def build_suite(gx: Any, settings: Settings) -> Any:
    """The expectation suite run on the kept records."""
    gxe = gx.expectations
    limit = settings.validate_.max_text_chars
    suite = gx.ExpectationSuite(name="amalia_vl_records")
    for column in ("id", "source", "language", "split", "task_family", "kind", "image"):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="id"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(KINDS)))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="split",
                                                          value_set=list(SPLITS)))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="language",
                                                          value_set=list(LANGUAGES)))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(
        column="source", value_set=[label for label, _, _ in INPUTS]))
    for column in ("question", "text", "answer"):  # nulls are ignored by GX here
        suite.add_expectation(gxe.ExpectColumnValueLengthsToBeBetween(
            column=column, min_value=1, max_value=limit))
    return suite


def run_great_expectations(rows: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Validate the kept records with Great Expectations 1.x; returns the result as JSON."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # no network here; set before the import
    import great_expectations as gx  # slow import: only when the stage runs
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
    asset = context.data_sources.add_pandas(name="records").add_dataframe_asset(name="kept")
    batch_definition = asset.add_batch_definition_whole_dataframe("all_kept")
    suite = context.suites.add(build_suite(gx, settings))
    frame = pd.DataFrame(rows, columns=list(GX_COLUMNS))
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(suite).to_json_dict()


# ----------------------------------------------------------------------------- stage


def run(ctx: StageContext) -> StageOutput:
    """The `validate` stage (see the module docstring)."""
    settings, data_dir, out = ctx.settings, ctx.data_dir, ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for _, rel, _ in INPUTS:
        if not (data_dir / rel).is_file():
            raise MissingInputError(f"{data_dir / rel} not found",
                                    "run: amalia-vl data generate  (or dvc pull)")
    checks = CheckContext(settings=settings, data_dir=data_dir)
    tally = Tally()
    gx_rows: list[dict[str, Any]] = []
    with (out / "quarantine.jsonl").open("w", encoding="utf-8") as quarantine:
        for label, rel, kept_name in INPUTS:
            write_records(out / kept_name, validate_file(
                data_dir / rel, label, rel, checks, tally, quarantine, gx_rows, ctx.progress))
    report = tally.report()
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    gx_result = run_great_expectations(gx_rows, settings)
    (out / "gx_result.json").write_text(json.dumps(gx_result, indent=2, ensure_ascii=False))
    stats = gx_result.get("statistics", {})
    metrics = {
        "quarantine_ratio": tally.ratio,
        "gx_success": 1.0 if gx_result.get("success") else 0.0,
        "gx_evaluated_expectations": float(stats.get("evaluated_expectations", 0)),
        "gx_successful_expectations": float(stats.get("successful_expectations", 0)),
        "gx_success_percent": float(stats.get("success_percent") or 0.0),
    }
    ctx.log_metrics(metrics, None)

    limit = settings.validate_.max_quarantine_ratio
    if tally.total == 0:
        raise DataQualityError(f"no records found under {data_dir}",
                               "run: amalia-vl data generate")
    if tally.ratio > limit:
        top = ", ".join(f"{r}={n}" for r, n in tally.by_reason.most_common(3))
        raise DataQualityError(
            f"{tally.quarantined}/{tally.total} records quarantined "
            f"({tally.ratio:.1%} > max_quarantine_ratio {limit:.1%}); top reasons: {top}",
            f"see {out / 'quarantine.jsonl'} and {out / 'report.json'}",
        )
    return StageOutput(
        counts={"total": tally.total, "kept": tally.kept, "quarantined": tally.quarantined},
        metrics=metrics,
        artifacts=["report.json", "quarantine.jsonl", "gx_result.json"],
        extra={"by_reason": report["by_reason"]},
    )
