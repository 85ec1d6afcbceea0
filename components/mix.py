"""The `mix` stage: per-training-stage data mixes from validated and translated records.

Inputs: `<run>/validate/validated/` (parquet shards of every kept record; older run dirs:
`validate/native.jsonl`) less the records queued for translation (language in
`validate.translate_languages`), plus `<run>/translate/seed_pt.jsonl`.

Each training stage `S` in (`align`, `sft`, `dpo`) takes the `train` records whose kind is in
`mix.kinds[S]`, grouped by (source, task family). A group's weight is
`w = mix.S[source] * mix.task_weights[S][family]` (source looked up by exact name, else its
family `native` / `seed` for `seed_*`, else `"*"`; unlisted task families weigh 1.0): the
group keeps `floor(w)` copies of every record plus a deterministic sample of
`round(frac(w) * n)` records (1.0 = each once, 0.5 = half, 2.0 = twice). The stage's rows are
then shuffled. Evaluation sets are never re-weighted: `eval` = `qa` / `multiple_choice`
records of split `test` from `mix.eval_sources`, `dpo_eval` = their `preference` records.
All randomness derives from `settings.seed`: same inputs and seed, same bytes.

Outputs in `<out_dir>/`:
- `shards/<name>/part-NNNNN.parquet` for `align`, `sft`, `dpo`, `eval`, `dpo_eval`: every
  row of the mix (all kinds, text-only ones included) in the record schema plus
  `image_bytes` (the validated image bytes, so a shard folder is self-contained), at most
  `mix.shard_rows` rows a shard, row groups of at most 1,024 rows. The trainers stream these
  (`components.train.dataset.ShardDataset`: every kind trains); this is the artifact to
  scale on.
- `<name>.jsonl`: a readable view of the image records of the kinds the evaluation reads
  (`eval.jsonl` feeds the embedded eval tasks: `qa`, with `multiple_choice` written as
  `qa` with options; `caption` for align, `preference` for dpo/dpo_eval), for inspection.
- `mix_report.json`: weights, and per output `rows`, `images` (distinct), `tokens` (text
  tokens: words and punctuation marks, a tokenizer-free estimate), `by_source`,
  `by_language`, `by_task_family` (rows) and `by_source_family` (rows, images and tokens
  per source and task family); `mix_report.png` plots rows, images and tokens per output,
  by source and by task family.

The stage fails with `DataQualityError` if any evaluation image is also in a training mix.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.data.synthetic import derived_rng
from components.errors import ConfigError, DataQualityError
from components.records import (
    Record,
    ShardWriter,
    iter_records,
    read_records,
    record_arrow_schema,
    write_records,
)
from components.settings import Settings
from components.stages import StageContext, StageOutput

TRAIN_STAGES: tuple[str, ...] = ("align", "sft", "dpo")
EVAL_OUTPUTS: dict[str, tuple[str, ...]] = {"eval": ("qa", "multiple_choice"),
                                            "dpo_eval": ("preference",)}
# the kinds each JSONL view keeps (what components/train and evaluate read today)
TRAINER_KINDS: dict[str, tuple[str, ...]] = {
    "align": ("caption",), "sft": ("qa", "multiple_choice"), "dpo": ("preference",),
    "eval": ("qa", "multiple_choice"), "dpo_eval": ("preference",),
}
TOKEN = re.compile(r"\w+|[^\w\s]")


def source_family(source: str) -> str:
    """The family of a record source: `native`, `seed` (for `seed_*`) or the source itself."""
    if source.startswith("seed"):
        return "seed"
    return source


def source_weight(weights: dict[str, float], stage: str, source: str) -> float:
    for key in (source, source_family(source), "*"):
        if key in weights:
            return weights[key]
    raise ConfigError(f"mix.{stage} has no weight for source '{source}'",
                      f"add mix.{stage}.{source_family(source)} (or \"*\") to params.yaml")


def weighted(records: list[Record], weight: float, rng: random.Random) -> list[Record]:
    """`floor(weight)` copies of `records` plus a sample of `round(frac * n)` of them."""
    if weight < 0 or not math.isfinite(weight):
        raise ConfigError(f"mix weight {weight} must be a finite number >= 0")
    whole = int(weight)
    extra = round((weight - whole) * len(records))
    return records * whole + rng.sample(records, extra)


def stage_mix(name: str, pool: list[Record], settings: Settings) -> list[Record]:
    """The shuffled training mix of one stage (see the module docstring).

    Records are taken family by family (`source_family`, sorted), in pool order. A family
    whose records all weigh the same is sampled as one group (so the default config gives
    the very mix of earlier versions); otherwise each (source, task family) group is sampled
    on its own.
    """
    weights: dict[str, float] = getattr(settings.mix, name)
    task_weights = settings.mix.task_weights.get(name, {})
    kinds = set(settings.mix.kinds.get(name, []))
    families: dict[str, list[Record]] = {}
    for rec in pool:
        if rec.kind in kinds and rec.split == "train":
            families.setdefault(source_family(rec.source), []).append(rec)

    def weight(rec: Record) -> float:
        return source_weight(weights, name, rec.source) * task_weights.get(rec.task_family, 1.0)

    rows: list[Record] = []
    for family in sorted(families):
        records = families[family]
        distinct = {weight(r) for r in records}
        if len(distinct) == 1:
            rows += weighted(records, distinct.pop(),
                             derived_rng(settings.seed, "mix", name, family))
            continue
        groups: dict[tuple[str, str], list[Record]] = {}
        for rec in records:
            groups.setdefault((rec.source, rec.task_family), []).append(rec)
        for source, task in sorted(groups):
            rng = derived_rng(settings.seed, "mix", name, source, task)
            rows += weighted(groups[(source, task)], weight(groups[(source, task)][0]), rng)
    derived_rng(settings.seed, "mix", name, "shuffle").shuffle(rows)
    return rows


def eval_set(kinds: tuple[str, ...], pool: list[Record], settings: Settings) -> list[Record]:
    sources = set(settings.mix.eval_sources)
    return [r for r in pool if r.kind in kinds and r.split == "test" and r.source in sources]


def check_no_leak(outputs: dict[str, list[Record]]) -> None:
    train = {i for n in TRAIN_STAGES for r in outputs.get(n, []) for i in r.image_list()}
    for name in EVAL_OUTPUTS:
        leaked = sorted({i for r in outputs.get(name, []) for i in r.image_list()} & train)
        if leaked:
            raise DataQualityError(f"{len(leaked)} images of {name} are also in training "
                                   f"data (e.g. {leaked[0]})")


def trainer_view(name: str, rows: Iterable[Record]) -> list[Record]:
    """The rows of an output that today's trainers read (see the module docstring)."""
    out = []
    for rec in rows:
        if rec.kind in TRAINER_KINDS[name] and rec.image:
            out.append(rec.model_copy(update={"kind": "qa"}) if rec.kind == "multiple_choice"
                       else rec)
    return out


def tokens(rec: Record) -> int:
    return sum(len(TOKEN.findall(t)) for t in rec.all_texts())


def summarise(outputs: dict[str, list[Record]], settings: Settings) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for name, rows in outputs.items():
        cells: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        images: dict[tuple[str, str], set[str]] = defaultdict(set)
        for rec in rows:
            cell = cells[rec.source].setdefault(rec.task_family,
                                                {"rows": 0, "images": 0, "tokens": 0})
            cell["rows"] += 1
            cell["tokens"] += tokens(rec)
            images[(rec.source, rec.task_family)].update(rec.image_list())
        for (source, family), found in images.items():
            cells[source][family]["images"] = len(found)
        stages[name] = {
            "rows": len(rows),
            "images": len({i for r in rows for i in r.image_list()}),
            "tokens": sum(c["tokens"] for fams in cells.values() for c in fams.values()),
            "by_source": dict(sorted(Counter(r.source for r in rows).items())),
            "by_language": dict(sorted(Counter(r.language for r in rows).items())),
            "by_task_family": dict(sorted(Counter(r.task_family for r in rows).items())),
            "by_kind": dict(sorted(Counter(r.kind for r in rows).items())),
            "by_source_family": {s: dict(sorted(f.items())) for s, f in sorted(cells.items())},
        }
    return {"weights": settings.mix.model_dump(), "stages": stages}


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Stacked bars: rows, images and tokens per output, by source (top) and family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(report["stages"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, key in enumerate(("source", "family")):
        for col, metric in enumerate(("rows", "images", "tokens")):
            ax = axes[row][col]
            values: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(stages))
            for i, name in enumerate(stages):
                for source, fams in report["stages"][name]["by_source_family"].items():
                    for family, cell in fams.items():
                        values[source if key == "source" else family][i] += cell[metric]
            bottom = [0.0] * len(stages)
            for label in sorted(values):
                ax.bar(stages, values[label], bottom=bottom, label=label)
                bottom = [b + v for b, v in zip(bottom, values[label], strict=True)]
            ax.set_title(f"{metric} by {key}")
            ax.tick_params(axis="x", labelsize=8)
            if col == 2:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("amalia-vl data mix")
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


# ----------------------------------------------------------------------------- shards


class ImageIndex:
    """Where the validated bytes of each image locator live: `(shard, row group, offset)`,
    so mix shards can embed images without holding a dataset in memory."""

    def __init__(self, validated: Path):
        import pyarrow.parquet as pq

        self.shards: list[Path] = sorted(validated.glob("*.parquet")) if validated.is_dir() \
            else []
        self.where: dict[str, tuple[int, int, int, int]] = {}
        self.has_bytes = False
        for s, path in enumerate(self.shards):
            pf = pq.ParquetFile(path)
            if "image_bytes" not in pf.schema_arrow.names:
                continue
            self.has_bytes = True
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=["image", "images"])
                for r, (image, images) in enumerate(zip(table.column("image").to_pylist(),
                                                        table.column("images").to_pylist(),
                                                        strict=True)):
                    for k, loc in enumerate(images or ([image] if image else [])):
                        self.where.setdefault(loc, (s, g, r, k))

    def gather(self, rows: list[Record]) -> list[list[bytes | None] | None]:
        """The embedded bytes of each row's images (None where not validated)."""
        import pyarrow.parquet as pq

        wanted: dict[tuple[int, int], set[int]] = defaultdict(set)
        for rec in rows:
            for loc in rec.image_list():
                if loc in self.where:
                    s, g, r, _ = self.where[loc]
                    wanted[(s, g)].add(r)
        found: dict[tuple[int, int, int], list[bytes]] = {}
        for (s, g), needed in sorted(wanted.items()):
            column = pq.ParquetFile(self.shards[s]).read_row_group(
                g, columns=["image_bytes"]).column("image_bytes")
            for r in needed:
                found[(s, g, r)] = column[r].as_py() or []
        out: list[list[bytes | None] | None] = []
        for rec in rows:
            locs = rec.image_list()
            if not locs:
                out.append(None)
                continue
            cell = []
            for loc in locs:
                if loc in self.where:
                    s, g, r, k = self.where[loc]
                    data = found.get((s, g, r)) or []
                    cell.append(data[k] if k < len(data) else None)
                else:
                    cell.append(None)
            out.append(cell)
        return out


def mix_schema():
    import pyarrow as pa

    return record_arrow_schema().append(pa.field("image_bytes", pa.list_(pa.binary())))


def write_shards(folder: Path, rows: list[Record], index: ImageIndex, shard_rows: int) -> int:
    """Rows in order into `folder/part-*.parquet`, images embedded, one shard in memory."""
    writer = ShardWriter(folder, mix_schema(), shard_rows=shard_rows,
                         group_rows=min(1024, shard_rows))
    for start in range(0, len(rows), shard_rows):
        part = rows[start:start + shard_rows]
        blobs = index.gather(part) if index.has_bytes else [None] * len(part)
        for rec, data in zip(part, blobs, strict=True):
            writer.add({**rec.model_dump(), "image_bytes": data})
    writer.close()
    return writer.rows


# ----------------------------------------------------------------------------- stage


def load_pool(ctx: StageContext) -> list[Record]:
    """Validated records (not queued for translation) + translated seed records."""
    validate_dir = ctx.stage_dir("validate")
    queued = set(ctx.settings.validate_.translate_languages)
    validated = validate_dir / "validated"
    if validated.is_dir():
        pool = [r for r in iter_records(validated) if r.language not in queued]
    else:  # a run dir from before the parquet shards
        pool = read_records(validate_dir / "native.jsonl")
    pool += read_records(ctx.stage_dir("translate") / "seed_pt.jsonl")
    return pool


def run(ctx: StageContext) -> StageOutput:
    """The `mix` stage (see the module docstring)."""
    settings, out = ctx.settings, ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(settings.mix.kinds) - set(TRAIN_STAGES)
    if unknown:
        raise ConfigError(f"mix.kinds names unknown stages: {', '.join(sorted(unknown))}")
    pool = load_pool(ctx)
    outputs: dict[str, list[Record]] = {name: stage_mix(name, pool, settings)
                                        for name in TRAIN_STAGES}
    outputs.update({name: eval_set(kinds, pool, settings)
                    for name, kinds in EVAL_OUTPUTS.items()})
    check_no_leak(outputs)
    index = ImageIndex(ctx.stage_dir("validate") / "validated")
    counts: dict[str, int] = {}
    for name, rows in outputs.items():
        counts[name] = write_shards(out / "shards" / name, rows, index, settings.mix.shard_rows)
        counts[f"{name}_trainer"] = write_records(out / f"{name}.jsonl", trainer_view(name, rows))
    report = summarise(outputs, settings)
    (out / "mix_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    plot_report(report, out / "mix_report.png")
    params: dict[str, Any] = {f"mix.{stage}.{src}": w for stage in TRAIN_STAGES
                              for src, w in getattr(settings.mix, stage).items()}
    params.update({f"mix.task_weights.{stage}.{fam}": w
                   for stage, fams in settings.mix.task_weights.items()
                   for fam, w in fams.items()})
    metrics = {f"{name}.{key}": float(report["stages"][name][key])
               for name in outputs for key in ("rows", "images", "tokens")}
    return StageOutput(counts=counts, params=params, metrics=metrics,
                       artifacts=["mix_report.json", "mix_report.png"])
