"""The `translate` stage: EN -> pt-PT translation of the validated translation queue.

Input: `<run>/validate/seed_en.jsonl` (the English seed and every other kept record whose
language is in `validate.translate_languages`). Every text of every record kind goes
through the translator named by `translate.backend` (`memory` - the embedded default -,
`hf_seq2seq` or `hf_llm`; see `components.translation`): `text`, `question`, `answer`,
`chosen`, `rejected`, each of `options`, conversation turn contents and box labels, behind
the content-addressed cache at `translate.cache_dir` (a re-run, or a run resumed after a
crash, only translates what is missing). Outputs in `<out_dir>/`:
- `seed_pt.jsonl`: kept records, id suffixed `-pt`, `language = target_lang`; kind,
  source, split, images, box coordinates and turn roles unchanged; an answer that was one
  of the options is the translated option at the same index;
- `quarantine.jsonl`: `{"id", "source", "reasons", "file", "line", "texts"}` per rejected
  record (`texts`: each failing text with its `field`, `source`, `target`, `reasons`);
- `report.json`: `total`, `kept`, `quarantined`, `by_reason`, `by_source` (as `validate`),
  plus `cache_hits`, `cache_misses`, `source_tokens`, `tokens_per_s`, `variety_flagged`,
  `language_check`, `variety` and the backend's identity.

Reasons (`components.translation.quality`): `untranslated`, `copied`, `placeholder_lost`,
`number_lost`, `length_ratio`, `wrong_language`, `variety_pt_br`, and per record
`answer_not_in_options`. The stage fails with `DataQualityError` when the quarantine
ratio exceeds `translate.max_quarantine_ratio` (default: `validate.max_quarantine_ratio`);
reports are written first. The stage is single-process; `flows/translate.py` maps shards
of the same input over Prefect tasks with `translate_shard`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.errors import DataQualityError
from components.settings import Settings
from components.stages import StageContext, StageOutput
from components.translation.backends import (
    MemoryTranslator,
    Translator,
    make_translator,
    memory_path,
)
from components.translation.engine import (
    QUARANTINE_FILE,
    REPORT_FILE,
    record_texts,
    translate_file,
    translate_record,
)
from components.translation.quality import pair_reasons

__all__ = ["MemoryTranslator", "Translator", "make_translator", "memory_path", "pair_reasons",
           "record_texts", "run", "translate_record", "translate_shard"]

SOURCE = "validate/seed_en.jsonl"


def translate_shard(shard_path: Path | str, settings: Settings, out_path: Path | str, *,
                    origin: str = SOURCE, line_offset: int = 0,
                    translator: Translator | None = None) -> dict[str, Any]:
    """Translate one shard (or a whole file) into `out_path`; returns its report.

    The unit of work of a Prefect shard task and of the stage itself; no quality gate
    here (the gate judges the merged whole).
    """
    return translate_file(Path(shard_path), settings, Path(out_path), translator=translator,
                          origin=origin, line_offset=line_offset)


def quality_gate(report: dict[str, Any], settings: Settings, out: Path) -> None:
    """Raise `DataQualityError` when too many records were quarantined."""
    limit = settings.translate.max_quarantine_ratio
    if limit is None:
        limit = settings.validate_.max_quarantine_ratio
    total, quarantined = report["total"], report["quarantined"]
    ratio = quarantined / total if total else 0.0
    if ratio > limit:
        raise DataQualityError(
            f"{quarantined}/{total} seed records failed translation "
            f"({ratio:.1%} > {limit:.1%}); reasons: {report['by_reason']}",
            f"see {out / QUARANTINE_FILE}",
        )


def stage_output(report: dict[str, Any], settings: Settings) -> StageOutput:
    """Counts, metrics and params of a translation report, for the manifest and MLflow."""
    total = report["total"]
    metrics = {
        "quarantine_ratio": report["quarantined"] / total if total else 0.0,
        "cache_hit_ratio": report["cache_hit_ratio"],
        "tokens_per_s": report["tokens_per_s"],
        "source_tokens": float(report["source_tokens"]),
        "variety_flagged": float(report["variety_flagged"]),
    }
    return StageOutput(
        counts={"total": total, "kept": report["kept"], "quarantined": report["quarantined"]},
        metrics=metrics,
        params={"translate_backend": settings.translate.backend,
                "translate_model": report.get("model")},
        artifacts=[REPORT_FILE, QUARANTINE_FILE],
    )


def run(ctx: StageContext) -> StageOutput:
    """The `translate` stage (see the module docstring)."""
    settings, out = ctx.settings, ctx.out_dir
    report = translate_file(ctx.stage_dir("validate") / "seed_en.jsonl", settings, out,
                            origin=SOURCE, progress=ctx.progress)
    quality_gate(report, settings, out)
    output = stage_output(report, settings)
    ctx.log_metrics(output.metrics, None)
    return output
