"""The `translate` stage: EN -> pt-PT translation of the validated English seed set.

Input: `<run>/validate/seed_en.jsonl`. Every text field (`text`, `question`, `answer`,
`chosen`, `rejected`) and every entry of `options` goes through a `Translator`
(`make_translator(settings)`; the `memory` backend looks strings up in the translation
memory at `settings.translate.memory_path`). Outputs in `<out_dir>/`:
- `seed_pt.jsonl`: kept records, id suffixed `-pt`, `language = target_lang`,
  `source = "seed_en"`, image unchanged;
- `quarantine.jsonl`: `{"id", "source", "reasons", "file", "line"}` per rejected record;
- `report.json`: `total`, `kept`, `quarantined`, `by_reason`, `by_source` (as `validate`).

Checks per record, in order: `untranslated` (the translator returned an empty string: a
text is never passed through untranslated; stops the other checks), `placeholder_lost`
(`<image>` count changed), `number_lost` (the digit runs differ: `12.40` -> `12,40` keeps
them), `length_ratio` (target/source length outside `[min_length_ratio, max_length_ratio]`,
for source texts of at least `MIN_RATIO_CHARS` characters; short labels such as
`red` -> `vermelho` vary too much), `answer_not_in_options` (the translated answer is not
one of the translated options). The stage fails with `DataQualityError` when the quarantine
ratio exceeds `validate.max_quarantine_ratio` (reports written first).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from components.errors import AmaliaError, ConfigError, DataQualityError, MissingInputError
from components.records import TEXT_FIELDS, Record, iter_jsonl, write_records
from components.settings import Settings
from components.stages import StageContext, StageOutput
from components.validate import Tally

PLACEHOLDER = "<image>"
MIN_RATIO_CHARS = 12
BATCH_RECORDS = 256
_DIGITS = re.compile(r"\d+")


@runtime_checkable
class Translator(Protocol):
    """Translates a batch of texts; an empty string means "could not translate this one"."""

    def translate_batch(self, texts: list[str]) -> list[str]: ...


class MemoryTranslator:
    """Exact-match lookups in a translation memory (`{"source", "target"}` JSONL)."""

    def __init__(self, memory: dict[str, str]):
        self.memory = memory

    @classmethod
    def from_jsonl(cls, path: Path) -> MemoryTranslator:
        if not path.is_file():
            raise MissingInputError(f"translation memory {path} not found",
                                    "run: amalia-vl data generate  (or dvc pull)")
        memory: dict[str, str] = {}
        for lineno, row in iter_jsonl(path):
            src, tgt = row.get("source"), row.get("target")
            if not isinstance(src, str) or not isinstance(tgt, str):
                raise DataQualityError(f"{path}:{lineno}: needs string 'source' and 'target'")
            if memory.setdefault(src, tgt) != tgt:
                raise DataQualityError(f"{path}:{lineno}: conflicting targets for {src!r}")
        return cls(memory)

    def translate_batch(self, texts: list[str]) -> list[str]:
        return [self.memory.get(t, "") for t in texts]


def memory_path(settings: Settings) -> Path:
    """`translate.memory_path`, relative to `data_dir` unless absolute."""
    return Path(settings.data_dir) / settings.translate.memory_path


def make_translator(settings: Settings) -> Translator:
    """The translator named by `settings.translate.backend`."""
    cfg = settings.translate
    if cfg.backend == "memory":
        return MemoryTranslator.from_jsonl(memory_path(settings))
    if not cfg.model_id:
        raise ConfigError(f"translate.backend={cfg.backend} needs translate.model_id")
    raise AmaliaError(
        f"translate backend {cfg.backend} ({cfg.model_id}) needs a GPU worker; "
        "not implemented yet (issue #4)",
        "use translate.backend=memory",
    )


# ----------------------------------------------------------------------------- checks


def digit_runs(text: str) -> list[str]:
    return sorted(_DIGITS.findall(text))


def pair_reasons(src: str, tgt: str, settings: Settings) -> list[str]:
    """Reasons a single translation `src -> tgt` is unacceptable."""
    if not tgt.strip():
        return ["untranslated"]
    reasons = []
    if src.count(PLACEHOLDER) != tgt.count(PLACEHOLDER):
        reasons.append("placeholder_lost")
    if digit_runs(src) != digit_runs(tgt):
        reasons.append("number_lost")
    cfg = settings.translate
    if len(src) >= MIN_RATIO_CHARS and not (
        cfg.min_length_ratio <= len(tgt) / len(src) <= cfg.max_length_ratio
    ):
        reasons.append("length_ratio")
    return reasons


def record_texts(rec: Record) -> list[str]:
    return [*rec.texts().values(), *(rec.options or [])]


def translate_record(rec: Record, table: dict[str, str],
                     settings: Settings) -> tuple[Record | None, list[str]]:
    """The pt-PT twin of `rec` (or None) and the reasons it was rejected."""
    reasons: list[str] = []
    for src in record_texts(rec):
        for reason in pair_reasons(src, table.get(src, ""), settings):
            if reason not in reasons:
                reasons.append(reason)
    if "untranslated" in reasons:
        return None, ["untranslated"]
    update: dict[str, Any] = {f: table[getattr(rec, f)] for f in TEXT_FIELDS if getattr(rec, f)}
    if rec.options is not None:
        update["options"] = [table[o] for o in rec.options]
    if rec.kind == "qa" and update.get("options") and update.get("answer") not in update["options"]:
        reasons.append("answer_not_in_options")
    if reasons:
        return None, reasons
    update.update(id=f"{rec.id}-pt", language=settings.translate.target_lang, source="seed_en")
    return rec.model_copy(update=update), []


# ----------------------------------------------------------------------------- stage


def batches(path: Path, size: int) -> Iterator[list[tuple[int, Record]]]:
    batch: list[tuple[int, Record]] = []
    for lineno, obj in iter_jsonl(path):
        batch.append((lineno, Record.model_validate(obj)))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def translate_batch_table(batch: list[tuple[int, Record]],
                          translator: Translator) -> dict[str, str]:
    """One translator call per batch, on its distinct texts: `source -> target`."""
    texts = sorted({t for _, rec in batch for t in record_texts(rec)})
    targets = translator.translate_batch(texts)
    if len(targets) != len(texts):
        raise AmaliaError(f"translator returned {len(targets)} texts for {len(texts)}")
    return dict(zip(texts, targets, strict=True))


def run(ctx: StageContext) -> StageOutput:
    """The `translate` stage (see the module docstring)."""
    settings, out = ctx.settings, ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    src_path = ctx.stage_dir("validate") / "seed_en.jsonl"
    translator = make_translator(settings)
    tally = Tally()

    def kept(quarantine) -> Iterator[Record]:
        stream: Any = batches(src_path, BATCH_RECORDS)
        if ctx.progress:
            from rich.progress import track

            stream = track(stream, description="translate seed_en")
        for batch in stream:
            table = translate_batch_table(batch, translator)
            for lineno, rec in batch:
                new, reasons = translate_record(rec, table, settings)
                tally.add(rec.source, reasons)
                if new is not None:
                    yield new
                else:
                    quarantine.write(json.dumps(
                        {"id": rec.id, "source": rec.source, "reasons": reasons,
                         "file": "validate/seed_en.jsonl", "line": lineno},
                        ensure_ascii=False) + "\n")

    with (out / "quarantine.jsonl").open("w", encoding="utf-8") as quarantine:
        write_records(out / "seed_pt.jsonl", kept(quarantine))
    (out / "report.json").write_text(json.dumps(tally.report(), indent=2, ensure_ascii=False)
                                     + "\n")
    limit = settings.validate_.max_quarantine_ratio
    if tally.ratio > limit:
        raise DataQualityError(
            f"{tally.quarantined}/{tally.total} seed records failed translation "
            f"({tally.ratio:.1%} > {limit:.1%}); reasons: {dict(tally.by_reason)}",
            f"see {out / 'quarantine.jsonl'}",
        )
    metrics = {"quarantine_ratio": tally.ratio}
    ctx.log_metrics(metrics, None)
    return StageOutput(
        counts={"total": tally.total, "kept": tally.kept, "quarantined": tally.quarantined},
        metrics=metrics,
        params={"translate_backend": settings.translate.backend},
        artifacts=["report.json", "quarantine.jsonl"],
    )
