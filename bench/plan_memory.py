"""Benchmark: the planner's memory model (components/plan/memory.py) against a measured
training step on CPU.

    .venv/bin/python bench/plan_memory.py   # ~1-2 min, 2 cores: bench/results/plan_memory.json

For each configuration (the `tiny` profile's model, and a ~75M-parameter one), in a fresh
interpreter: build the LlavaNext from settings (`build_tiny_model`, fp32, CPU), make the
stage's parts trainable (`set_trainable`: sft = connector + LM + vision tower, align =
connector), collate a real micro-batch with the model's processor (`per_device` samples,
each an image of 96x96 = 5 tiles and text, padded to `model.max_length`), and run one
training step: forward with labels (the plain loss: `loss_chunk_tokens: 0` in the
prediction), backward, AdamW step, zero_grad; the second such step is measured (steady
state: AdamW's state exists from the first).

Measured: the allocator-level peak of live tensors over that step, from the torch
profiler's memory timeline (`profile_memory=True`; `MemoryProfileTimeline` sums the
sizes of every live tensor, the weights that existed before included). RSS is not used:
on these small models glibc's arena caching and the ~600 MB of imported libraries dwarf
the tensors, and ru_maxrss cannot be reset between phases. Predicted: `plan_memory` for
ddp, fp32, world 1, no overhead (CPU), the same tokens and tiles. Target: within 25%.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "plan_memory.json"

CONFIGS = {
    "tiny-sft": {"stage": "sft", "per_device": 2, "model": {}},
    "tiny-align": {"stage": "align", "per_device": 2, "model": {}},
    "75M-sft": {"stage": "sft", "per_device": 2, "model": {
        "vision": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6,
                   "num_attention_heads": 6},
        "text": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 10,
                 "num_attention_heads": 12, "num_key_value_heads": 4}}},
}


def child(name: str) -> dict:
    import torch
    from PIL import Image
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    from components.accel import detect_runtime
    from components.model.build import build_tiny_model
    from components.model.freeze import set_trainable
    from components.plan.memory import plan_memory
    from components.plan.shapes import ModelShapes
    from components.settings import load_settings

    cfg = CONFIGS[name]
    settings = load_settings("tiny", overrides={"model": cfg["model"]})
    trainable = list(settings.stage_train(cfg["stage"]).trainable)
    texts = [f"uma imagem {i} com um gato vermelho e quadrados azuis" for i in range(50)]
    rt = detect_runtime()
    model, processor = build_tiny_model(settings, texts, rt)
    model.float().train()
    set_trainable(model, trainable)
    n = cfg["per_device"]
    images = [Image.new("RGB", (96, 96), (10 * i, 200, 30)) for i in range(n)]
    prompts = [processor.image_token + " " + texts[i] for i in range(n)]
    batch = processor(images=images, text=prompts, return_tensors="pt",
                      padding="max_length", max_length=settings.model.max_length)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    tokens = int(batch["input_ids"].numel())
    tiles = int(batch["pixel_values"].shape[0] * batch["pixel_values"].shape[1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    # step 1 unmeasured: AdamW's state exists from then on, as in every later step
    model(**batch, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline(torch.device("cpu"))
    measured = max(sum(row) for row in sizes) / float(1 << 30)
    shapes = ModelShapes.from_model(model)
    plan = plan_memory(shapes, trainable=trainable, strategy="ddp", world=1, precision="fp32",
                       micro_batch_tokens=tokens, micro_batch_tiles=tiles,
                       checkpointing=False, loss_chunk_tokens=0, overhead_gib=0.0,
                       attn_implementation=settings.model.attn_implementation)
    params = sum(p.numel() for p in model.parameters())
    predicted = plan.peak_gib
    return {"config": name, "stage": cfg["stage"], "trainable": trainable,
            "params": params, "params_predicted": sum(shapes.part_params().values()),
            "tokens": tokens, "tiles": tiles,
            "measured_peak_mib": round(measured * 1024, 2),
            "predicted_peak_mib": round(predicted * 1024, 2),
            "predicted_parts_mib": {k: round(v * 1024, 2) for k, v in plan.parts_gib.items()},
            "ratio": round(predicted / measured, 3), "within_25pct": abs(predicted / measured
                                                                         - 1) <= 0.25,
            "step_seconds_profiled": round(seconds, 1)}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return
    results = []
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--child", name], cwd=REPO,
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    OUT.write_text(json.dumps({
        "what": "planner memory model vs allocator-level peak of one CPU training step",
        "method": "torch.profiler memory timeline (live tensors), fresh process per config",
        "command": ".venv/bin/python bench/plan_memory.py",
        "results": results}, indent=2))


if __name__ == "__main__":
    main()
