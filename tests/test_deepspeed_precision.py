"""ZeRO accumulates gradients in fp32 under bf16 (engine.deepspeed_config), read back by
DeepSpeed's own config parser; a user's config that would accumulate in bf16 is logged."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from components.train.batching import BatchPlan
from components.train.engine import check_deepspeed_config, deepspeed_config

PLAN = BatchPlan(world_size=2, per_device_batch_size=2, gradient_accumulation_steps=4,
                 global_batch_size=16)
TRAIN = SimpleNamespace(max_grad_norm=1.0)


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_zero_accumulates_gradients_in_fp32_as_deepspeed_reads_it(stage):
    import torch
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DtypeEnum

    config = deepspeed_config(stage, PLAN, "bf16", TRAIN)
    assert config["data_types"] == {"grad_accum_dtype": "fp32"}
    parsed = DeepSpeedConfig({**config, "train_batch_size": 8})  # this process: world 1
    assert parsed.zero_optimization_stage == stage
    assert DtypeEnum(parsed.grad_accum_dtype).value == torch.float32


def test_fp32_and_fp16_configs_leave_accumulation_to_deepspeed():
    assert "data_types" not in deepspeed_config(2, PLAN, "fp32", TRAIN)
    assert "data_types" not in deepspeed_config(3, PLAN, "fp16", TRAIN)


def test_a_user_config_accumulating_in_bf16_is_logged(caplog):
    user = {"train_batch_size": "auto", "zero_optimization": {"stage": 3},
            "bf16": {"enabled": True}}
    with caplog.at_level(logging.WARNING, logger="components.train.engine"):
        check_deepspeed_config(user, PLAN, "my_ds.json", "zero3", "bf16")
    assert any("grad_accum_dtype" in r.getMessage() and "my_ds.json" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="components.train.engine"):
        check_deepspeed_config({**user, "data_types": {"grad_accum_dtype": "fp32"}}, PLAN,
                               "my_ds.json", "zero3", "bf16")
    assert not caplog.records
