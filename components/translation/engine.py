"""Translate a JSONL file of records: cache -> backend -> quality filter -> records.

`translate_file(src, settings, out_dir)` is the whole single-process translation of one
file (the `translate` stage and each Prefect shard task call it). Per batch of
`translate.batch_records` records:

1. the distinct texts of the batch (`record_texts`) are resolved by `resolve_texts`:
   texts with nothing to translate pass through (numbers localised), then cache hits,
   then the backend for the misses, whose targets are committed to the cache at once;
2. `QualityFilter.assess` checks every distinct pair;
3. `translate_record` assembles each record's pt-PT twin, or its quarantine reasons.

Every record kind is covered (`text_fields`): free-text fields, options, conversation
turns and box labels; kind, source, images, box coordinates and roles are kept.
Alignment rules: multiple-choice options are translated as a batch and an answer that is
one of the options becomes the translated option at the same index (so it stays equal to
one of them); a bare option-letter answer (`B`, `(B)`) is kept verbatim; any other
answer is translated and must then match a translated option (`answer_not_in_options`).
Outputs in `out_dir`: `seed_pt.jsonl`, `quarantine.jsonl` (`id`, `source`, `reasons`,
`file`, `line`, and per failing text its `field`, `source`, `target`, `reasons`) and
`report.json` (see `TranslationStats.report`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import AmaliaError
from components.records import Record, iter_jsonl, write_records
from components.settings import Settings
from components.translation import protect
from components.translation.backends import (
    Identity,
    Translator,
    identity_of,
    load_memory,
    make_translator,
    memory_path,
)
from components.translation.cache import NoCache, TranslationCache
from components.translation.quality import LANGID_LIBRARY, QualityFilter, pair_reasons

log = logging.getLogger(__name__)

OUTPUT_FILE = "seed_pt.jsonl"
QUARANTINE_FILE = "quarantine.jsonl"
REPORT_FILE = "report.json"
_TOKEN = re.compile(r"\w+|[^\w\s]")
_LETTER_ANSWER = re.compile(r"\(?[A-H]\)?\.?")


def count_tokens(text: str) -> int:
    """Source tokens, backend-independent: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def open_cache(settings: Settings) -> TranslationCache | NoCache:
    """The cache under `translate.cache_dir` (relative to the working directory)."""
    where = settings.translate.cache_dir
    return TranslationCache(Path(where)) if where else NoCache()


# ----------------------------------------------------------------------------- records


def answer_index(rec: Record) -> int | None:
    """Index of the answer among the options, when it is exactly one of them."""
    if rec.options and rec.answer is not None and rec.answer in rec.options:
        return rec.options.index(rec.answer)
    return None


def is_letter_answer(rec: Record) -> bool:
    return bool(rec.options and rec.answer and _LETTER_ANSWER.fullmatch(rec.answer.strip()))


def text_fields(rec: Record) -> list[tuple[str, str]]:
    """`(field, text)` pairs that need a translation, for every record kind: the free-text
    fields, `options[i]`, `conversations[i]` (turn contents) and `boxes[i]` (labels)."""
    pairs = [(f, t) for f, t in rec.texts().items()
             if not (f == "answer" and (answer_index(rec) is not None or is_letter_answer(rec)))]
    pairs += [(f"options[{i}]", o) for i, o in enumerate(rec.options or [])]
    pairs += [(f"conversations[{i}]", turn.content)
              for i, turn in enumerate(getattr(rec, "conversations", None) or [])
              if turn.content]
    pairs += [(f"boxes[{i}]", box.label) for i, box in enumerate(getattr(rec, "boxes", None)
                                                                  or []) if box.label]
    return pairs


def record_texts(rec: Record) -> list[str]:
    return [t for _, t in text_fields(rec)]


def translate_record(
    rec: Record, table: dict[str, str], settings: Settings,
    text_reasons: dict[str, list[str]] | None = None,
) -> tuple[Record | None, list[str]]:
    """The pt-PT twin of `rec` (or None) and the reasons it was rejected.

    `table` maps source texts to targets; `text_reasons` the reasons per source text
    (computed here with the structural `pair_reasons` when not given). The twin keeps the
    record's kind, source, split, images, box coordinates and conversation roles.
    """
    reasons: list[str] = []
    for src in record_texts(rec):
        found = (text_reasons[src] if text_reasons is not None and src in text_reasons
                 else pair_reasons(src, table.get(src, ""), settings))
        for reason in found:
            if reason not in reasons:
                reasons.append(reason)
    if "untranslated" in reasons:
        return None, ["untranslated"]
    update: dict[str, Any] = {f: table[t] for f, t in rec.texts().items() if f != "answer"}
    if rec.options is not None:
        update["options"] = [table[o] for o in rec.options]
    if rec.answer:
        idx = answer_index(rec)
        if idx is not None:
            update["answer"] = update["options"][idx]
        elif is_letter_answer(rec):
            update["answer"] = rec.answer
        else:
            update["answer"] = table[rec.answer]
            if update.get("options") and update["answer"] not in update["options"]:
                reasons.append("answer_not_in_options")
    if getattr(rec, "conversations", None):
        update["conversations"] = [
            turn.model_copy(update={"content": table[turn.content]}) if turn.content else turn
            for turn in rec.conversations]
    if getattr(rec, "boxes", None):
        update["boxes"] = [box.model_copy(update={"label": table[box.label]}) if box.label
                           else box for box in rec.boxes]
    if reasons:
        return None, reasons
    update.update(id=f"{rec.id}-pt", language=settings.translate.target_lang)
    return rec.model_copy(update=update), []


# ----------------------------------------------------------------------------- batches


def batches(path: Path, size: int) -> Iterator[list[tuple[int, Record]]]:
    """`(line number, record)` lists of at most `size`, streamed."""
    batch: list[tuple[int, Record]] = []
    for lineno, obj in iter_jsonl(path):
        batch.append((lineno, Record.model_validate(obj)))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Tally:
    """Kept / quarantined counts, overall, by reason and by source (as `validate`'s)."""

    total: int = 0
    kept: int = 0
    quarantined: int = 0
    by_reason: Counter = field(default_factory=Counter)
    by_source: dict[str, Counter] = field(default_factory=dict)

    def add(self, source: str, reasons: list[str]) -> None:
        per = self.by_source.setdefault(source, Counter(total=0, kept=0, quarantined=0))
        self.total += 1
        per["total"] += 1
        key = "quarantined" if reasons else "kept"
        setattr(self, key, getattr(self, key) + 1)
        per[key] += 1
        self.by_reason.update(reasons)

    def report(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.kept, "quarantined": self.quarantined,
                "by_reason": dict(sorted(self.by_reason.items())),
                "by_source": {s: dict(c) for s, c in sorted(self.by_source.items())}}


@dataclass
class TranslationStats:
    """Counters of one translation run (one file or shard)."""

    backend: str = ""
    model: str = ""
    texts: int = 0
    passthrough: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_seeded: int = 0
    backend_failed: int = 0
    source_tokens: int = 0
    backend_source_tokens: int = 0
    seconds: float = 0.0
    backend_seconds: float = 0.0
    generated_tokens: int = 0  # model backends only: tokens the model generated
    quality: Counter = field(default_factory=Counter)
    variety_available: bool = False
    variety_detector: str | None = None

    def report(self) -> dict[str, Any]:
        def rate(tokens: int, seconds: float) -> float:
            return round(tokens / seconds, 1) if seconds > 0 else 0.0

        looked_up = self.cache_hits + self.cache_misses
        return {
            "backend": self.backend,
            "model": self.model,
            "texts": self.texts,
            "passthrough": self.passthrough,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_hit_ratio": round(self.cache_hits / looked_up, 4) if looked_up else 0.0,
            "cache_seeded": self.cache_seeded,
            "backend_failed": self.backend_failed,
            "source_tokens": self.source_tokens,
            "backend_source_tokens": self.backend_source_tokens,
            "seconds": round(self.seconds, 3),
            "backend_seconds": round(self.backend_seconds, 3),
            "tokens_per_s": rate(self.source_tokens, self.seconds),
            "backend_tokens_per_s": rate(self.backend_source_tokens, self.backend_seconds),
            "generated_tokens": self.generated_tokens,
            "generated_tokens_per_s": rate(self.generated_tokens, self.backend_seconds),
            "language_check": {"library": LANGID_LIBRARY,
                               "checked": self.quality["language_checked"],
                               "flagged": self.quality["language_flagged"]},
            "variety": {"available": self.variety_available,
                        "detector": self.variety_detector,
                        "checked": self.quality["variety_checked"],
                        "flagged": self.quality["variety_flagged"],
                        "normalised_br": self.quality["normalised_br"]},
            "variety_flagged": self.quality["variety_flagged"],
        }


def resolve_texts(texts: list[str], translator: Translator, identity: Identity, cache: Any,
                  stats: TranslationStats, decimal_comma: bool = True) -> dict[str, str]:
    """`source -> target` for distinct `texts`: pass-throughs, cache, then the backend.

    Backend targets are committed to the cache before returning (resume point).
    """
    table: dict[str, str] = {}
    lookup = []
    for text in texts:
        if protect.protect(text).translatable:
            lookup.append(text)
        else:
            table[text] = protect.passthrough(text, decimal_comma)
    stats.passthrough += len(texts) - len(lookup)
    hits = cache.get_many(lookup, identity)
    table.update(hits)
    misses = [t for t in lookup if t not in hits]
    stats.cache_hits += len(hits)
    stats.cache_misses += len(misses)
    if misses:
        t0 = time.perf_counter()
        targets = translator.translate_batch(misses)
        stats.backend_seconds += time.perf_counter() - t0
        if len(targets) != len(misses):
            raise AmaliaError(f"translator returned {len(targets)} texts for {len(misses)}")
        stats.backend_source_tokens += sum(count_tokens(t) for t in misses)
        stats.backend_failed += sum(1 for t in targets if not t.strip())
        fresh = dict(zip(misses, targets, strict=True))
        cache.put_many(fresh, identity)
        table.update(fresh)
    return table


def translate_file(
    src_path: Path, settings: Settings, out_dir: Path, *,
    translator: Translator | None = None,
    origin: str | None = None,
    line_offset: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Translate the records of `src_path` into `out_dir` (see the module docstring).

    `origin` / `line_offset` name the original file and shift line numbers in the
    quarantine (shards point back at the file they were cut from). Returns the report.
    """
    cfg = settings.translate
    out_dir.mkdir(parents=True, exist_ok=True)
    translator = translator or make_translator(settings)
    identity = identity_of(translator)
    stats = TranslationStats(backend=identity.backend, model=identity.model)
    quality = QualityFilter(settings)
    stats.variety_available = quality.variety_available
    stats.variety_detector = cfg.variety_detector if quality.variety_available else None
    tally = Tally()
    origin = origin or src_path.name
    t_start = time.perf_counter()

    with open_cache(settings) as cache:
        if identity.backend != "memory" and cfg.seed_cache_from_memory:
            path = memory_path(settings)
            if path.is_file():
                stats.cache_seeded = cache.seed(load_memory(path), identity)
            else:
                log.info("no translation memory at %s: cache not seeded", path)

        def kept(quarantine) -> Iterator[Record]:
            stream: Any = batches(src_path, cfg.batch_records)
            if progress:
                from rich.progress import track

                stream = track(stream, description=f"translate {origin}")
            for batch in stream:
                texts = sorted({t for _, rec in batch for t in record_texts(rec)})
                stats.texts += len(texts)
                stats.source_tokens += sum(count_tokens(t) for t in texts)
                table = resolve_texts(texts, translator, identity, cache, stats,
                                      cfg.decimal_comma)
                final, text_reasons = quality.assess(table)
                for lineno, rec in batch:
                    new, reasons = translate_record(rec, final, settings, text_reasons)
                    tally.add(rec.source, reasons)
                    if new is not None:
                        yield new
                        continue
                    details = [{"field": f, "source": t, "target": final.get(t, ""),
                                "reasons": text_reasons.get(t, [])}
                               for f, t in text_fields(rec) if text_reasons.get(t)]
                    quarantine.write(json.dumps(
                        {"id": rec.id, "source": rec.source, "reasons": reasons,
                         "file": origin, "line": line_offset + lineno, "texts": details},
                        ensure_ascii=False) + "\n")
                    quarantine.flush()

        with (out_dir / QUARANTINE_FILE).open("w", encoding="utf-8") as quarantine:
            write_records(out_dir / OUTPUT_FILE, kept(quarantine))

    stats.seconds = time.perf_counter() - t_start
    model = getattr(translator, "inner", translator)
    stats.generated_tokens = int(getattr(model, "generated_tokens", 0))
    stats.quality = quality.stats
    report = {**tally.report(), **stats.report()}
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
