"""The `mix` stage: per-training-stage data mixes from validated native and translated seed data.

Inputs: `<run>/validate/native.jsonl`, `<run>/translate/seed_pt.jsonl`. Outputs in
`<out_dir>/` (all `Record` JSONL):
- `align.jsonl`: `caption` records, split `train`  (weights `settings.mix.align`)
- `sft.jsonl`:   `qa` records, split `train`       (weights `settings.mix.sft`)
- `dpo.jsonl`:   `preference` records, split `train` (weights `settings.mix.dpo`)
- `eval.jsonl`:  `qa` records, split `test`, native only, unweighted
- `dpo_eval.jsonl`: `preference` records, split `test`, native only, unweighted
- `mix_report.json` (rows per output by source and task family, plus the weights) and
  `mix_report.png` (bar plot).

A weight `w` per source family (`native` for source `native`, `seed` for `seed_*`) keeps
`floor(w)` copies of every record plus a deterministic sample of `round(frac(w) * n)` records
(so 1.0 = each once, 0.5 = half, 2.0 = twice). Each training file is then shuffled; all
randomness derives from `settings.seed`. The stage fails with `DataQualityError` if any
evaluation image also appears in a training file.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from components.data.synthetic import derived_rng
from components.errors import ConfigError, DataQualityError
from components.records import Record, read_records, write_records
from components.settings import Settings
from components.stages import StageContext, StageOutput

TRAIN_OUTPUTS: dict[str, str] = {"align": "caption", "sft": "qa", "dpo": "preference"}
EVAL_OUTPUTS: dict[str, str] = {"eval": "qa", "dpo_eval": "preference"}


def source_family(source: str) -> str:
    """The `settings.mix` key of a record source: `native` or `seed`."""
    if source == "native":
        return "native"
    if source.startswith("seed"):
        return "seed"
    raise DataQualityError(f"record source '{source}' has no mix family (native | seed_*)")


def weighted(records: list[Record], weight: float, rng: random.Random) -> list[Record]:
    """`floor(weight)` copies of `records` plus a sample of `round(frac * n)` of them."""
    if weight < 0 or not math.isfinite(weight):
        raise ConfigError(f"mix weight {weight} must be a finite number >= 0")
    whole = int(weight)
    extra = round((weight - whole) * len(records))
    return records * whole + rng.sample(records, extra)


def stage_mix(name: str, kind: str, pool: list[Record], settings: Settings) -> list[Record]:
    """The shuffled training mix of one stage."""
    weights: dict[str, float] = getattr(settings.mix, name)
    by_family: dict[str, list[Record]] = {}
    for rec in pool:
        if rec.kind == kind and rec.split == "train":
            by_family.setdefault(source_family(rec.source), []).append(rec)
    rows: list[Record] = []
    for family in sorted(by_family):
        if family not in weights:
            raise ConfigError(f"mix.{name} has no weight for source family '{family}'",
                              f"add mix.{name}.{family} to params.yaml")
        rng = derived_rng(settings.seed, "mix", name, family)
        rows += weighted(by_family[family], weights[family], rng)
    derived_rng(settings.seed, "mix", name, "shuffle").shuffle(rows)
    return rows


def eval_set(kind: str, pool: list[Record]) -> list[Record]:
    return [r for r in pool if r.kind == kind and r.split == "test" and r.source == "native"]


def check_no_leak(outputs: dict[str, list[Record]]) -> None:
    train = {r.image for n in TRAIN_OUTPUTS for r in outputs[n]}
    for name in EVAL_OUTPUTS:
        leaked = sorted({r.image for r in outputs[name]} & train)
        if leaked:
            raise DataQualityError(f"{len(leaked)} images of {name} are also in training "
                                   f"data (e.g. {leaked[0]})")


def summarise(outputs: dict[str, list[Record]], settings: Settings) -> dict[str, Any]:
    return {
        "weights": settings.mix.model_dump(),
        "stages": {
            name: {
                "rows": len(rows),
                "by_source": dict(sorted(Counter(r.source for r in rows).items())),
                "by_language": dict(sorted(Counter(r.language for r in rows).items())),
                "by_task_family": dict(sorted(Counter(r.task_family for r in rows).items())),
            }
            for name, rows in outputs.items()
        },
    }


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Stacked bars: rows per output file, by source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(report["stages"])
    sources = sorted({s for v in report["stages"].values() for s in v["by_source"]})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0] * len(stages)
    for source in sources:
        values = [report["stages"][s]["by_source"].get(source, 0) for s in stages]
        ax.bar(stages, values, bottom=bottom, label=source)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("rows")
    ax.set_title("amalia-vl data mix")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def run(ctx: StageContext) -> StageOutput:
    """The `mix` stage (see the module docstring)."""
    settings, out = ctx.settings, ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    pool = read_records(ctx.stage_dir("validate") / "native.jsonl")
    pool += read_records(ctx.stage_dir("translate") / "seed_pt.jsonl")
    outputs: dict[str, list[Record]] = {
        name: stage_mix(name, kind, pool, settings) for name, kind in TRAIN_OUTPUTS.items()
    }
    outputs.update({name: eval_set(kind, pool) for name, kind in EVAL_OUTPUTS.items()})
    check_no_leak(outputs)
    counts = {name: write_records(out / f"{name}.jsonl", rows) for name, rows in outputs.items()}
    report = summarise(outputs, settings)
    (out / "mix_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    plot_report(report, out / "mix_report.png")
    params = {f"mix.{stage}.{fam}": w for stage in TRAIN_OUTPUTS
              for fam, w in getattr(settings.mix, stage).items()}
    return StageOutput(counts=counts, params=params,
                       artifacts=["mix_report.json", "mix_report.png"])
