"""Small run directories for the training tests: coloured-disc PNGs and a `mix/` with the
parquet shards the trainers read, plus settings and a params.yaml for subprocesses."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw

from components.manifest import write_manifest
from components.mix import mix_schema
from components.records import Record, ShardWriter, write_records

REPO = Path(__file__).resolve().parent.parent
COLOURS = {"vermelho": (220, 30, 30), "azul": (30, 60, 220), "verde": (30, 170, 60),
           "amarelo": (230, 200, 20)}
QUESTION = "De que cor é a forma?"

# a model small enough for multi-process tests on 2 cores, but the real architecture
SMALL_MODEL = {
    "tokenizer_vocab_size": 300,
    "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
               "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1,
             "max_position_embeddings": 256},
    "image_grid_pinpoints": [[16, 16], [16, 32], [32, 16], [32, 32]],
    "max_length": 128,
}


def shard(folder: Path, records: list[Record], data: Path, embed: bool) -> None:
    writer = ShardWriter(folder, mix_schema(), group_rows=8)
    for rec in records:
        blobs = [(data / p).read_bytes() for p in rec.image_list()] if embed else None
        writer.add({**rec.model_dump(), "image_bytes": blobs or None})
    writer.close()


def make_mix(root: Path, n: int = 16, seed: int = 0, extra_sft: list[Record] | None = None,
             embed: bool = True) -> tuple[Path, Path]:
    """`(data_dir, run_dir)`: `n` PNGs of one coloured disc and a finished `mix/` stage
    (shards for align, sft, dpo, dpo_eval, eval; the eval JSONL view; a manifest)."""
    rng = random.Random(seed)
    data = root / "data"
    (data / "img").mkdir(parents=True, exist_ok=True)
    caps, qas, prefs = [], [], []
    for i in range(n):
        w, h = rng.randint(24, 64), rng.randint(24, 64)
        colour = list(COLOURS)[i % len(COLOURS)]
        image = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(image).ellipse([w * 0.2, h * 0.2, w * 0.8, h * 0.8], fill=COLOURS[colour])
        rel = f"img/{i}.png"
        image.save(data / rel)
        base = {"source": "native", "language": "pt-PT", "task_family": "cor", "image": rel}
        caps.append(Record(id=f"c{i}", kind="caption", text=f"Um círculo {colour}.", **base))
        qas.append(Record(id=f"q{i}", kind="qa", question=QUESTION, answer=colour,
                          options=list(COLOURS), **base))
        wrong = list(COLOURS)[(i + 1) % len(COLOURS)]
        prefs.append(Record(id=f"p{i}", kind="preference", question=QUESTION, chosen=colour,
                            rejected=wrong, **base))
    run = root / "run"
    mix = run / "mix"
    outputs = {"align": caps, "sft": qas + (extra_sft or []), "dpo": prefs,
               "dpo_eval": prefs[: n // 2],
               "eval": [r.model_copy(update={"split": "test"}) for r in qas[:4]]}
    for name, rows in outputs.items():
        shard(mix / "shards" / name, rows, data, embed)
    write_records(mix / "eval.jsonl", outputs["eval"])
    for stage in ("validate", "translate"):
        (run / stage).mkdir(parents=True, exist_ok=True)
        write_manifest(run / stage, stage, inputs={}, counts={}, metrics={},
                       config_digest="test", started="now")
    write_manifest(mix, "mix", inputs={}, counts={}, metrics={}, config_digest="test",
                   started="now")
    return data, run


def overrides(data: Path, **sections: Any) -> dict[str, Any]:
    """Settings overrides for the small model on `data`, merged with `sections`."""
    out: dict[str, Any] = {"data_dir": str(data), "model": SMALL_MODEL,
                           "train": {"logging_steps": 1, "save_steps": 1000}}
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def write_params(path: Path, over: dict[str, Any], profile: str = "tiny") -> Path:
    """A params.yaml whose `profile` is the repo's `profile` with `over` merged in."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = profile
    raw["profiles"][profile] = over
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path
