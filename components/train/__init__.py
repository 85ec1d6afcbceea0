"""Training of amalia-vl on the transformers Trainer.

- `chat`: records of every kind -> the language model's own chat template, labels on the
  assistant turns only, budgets (`max_length`, `max_tiles`);
- `dataset`: samples streamed from the mix's parquet shards, seeded block shuffle,
  collation;
- `engine`: `TrainingArguments` from params.yaml, the Trainer's hooks (objective, per-part
  learning rates, statistics), DeepSpeed / FSDP configs, precision;
- `checkpoints`: sealed checkpoints, verified resume; `distributed`/`worker`: torchrun;
- `dpo`: the DPO objective; `stages`: the align / sft / dpo stage functions.
"""
