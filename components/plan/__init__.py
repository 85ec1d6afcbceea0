"""Pre-flight planning of a training recipe (issue #18): will it fit, what does a step
mean, how long and how much, before any GPU hour is spent.

Plain Python (no Prefect, no torch at import time), small modules:

- `gpus`: GPU peak bf16 FLOP/s and memory, looked up by exact device name;
- `shapes`: the architecture numbers of a stage's model, from settings;
- `flops`: FLOPs per sample/token counting what is computed (frozen parts, recompute);
- `memory`: GiB per GPU per stage, by part, as the strategy shards them;
- `schedule`: tokens/samples/rows per step, steps, hours, GPU-hours, cost;
- `preflight`: all of it per stage, the one-line refusals, and the hook the stages and
  `retrain` call.
"""
