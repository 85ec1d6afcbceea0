"""Batch plans (components/train/batching.py): the recipe's global batch keeps its meaning,
samples (pairs) per optimizer step, with and without packing; a packed micro-batch is
bounded by tokens; bad input is one line naming the setting."""

from __future__ import annotations

import pytest

from components.errors import ConfigError
from components.settings import TrainSettings, load_settings
from components.train import engine
from components.train.batching import BatchPlan, PackingShape, resolve_batch


def test_engine_re_exports_the_plan():
    assert engine.BatchPlan is BatchPlan and engine.resolve_batch is resolve_batch


def test_unpacked_plan_counts_samples_as_before():
    plan = resolve_batch(TrainSettings(global_batch_size=16, per_device_batch_size=2), 2, "sft")
    assert plan == BatchPlan(2, 2, 4, 16) and plan.unit == "samples"
    assert plan.samples_per_step is None and plan.as_dict()["global_batch_size"] == 16


def test_packed_plan_turns_the_recipe_samples_into_rows():
    """256 captions per step at 5.3 per 16k row on 8 GPUs, one row per micro-batch: 48 rows
    (6 accumulation steps) = ~254 captions, not 256 rows (~1,360 captions)."""
    shape = PackingShape(samples_per_row=5.3, row_tokens=16384, micro_batch_tokens=16384)
    plan = resolve_batch(TrainSettings(global_batch_size=256), 8, "align", shape)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps,
            plan.global_batch_size, plan.unit) == (1, 6, 48, "rows")
    assert plan.samples_per_step == pytest.approx(48 * 5.3)
    assert plan.micro_batch_tokens == 16384


def test_packed_micro_batch_is_bounded_by_tokens():
    """micro_batch_tokens = 2 rows' worth -> 2 rows per micro-batch; less than a row -> 1."""
    two = resolve_batch(TrainSettings(global_batch_size=64), 2, "sft",
                        PackingShape(4.0, 1024, 2048 + 100))
    assert (two.per_device_batch_size, two.gradient_accumulation_steps,
            two.global_batch_size) == (2, 4, 16)
    one = resolve_batch(TrainSettings(global_batch_size=64), 2, "sft",
                        PackingShape(4.0, 1024, 100))
    assert (one.per_device_batch_size, one.gradient_accumulation_steps) == (1, 8)


def test_packed_plan_never_has_less_than_one_row_per_process():
    plan = resolve_batch(TrainSettings(global_batch_size=8), 4, "dpo",
                         PackingShape(6.0, 512, 512, tolerance=None))
    assert plan.global_batch_size == 4 and plan.gradient_accumulation_steps == 1


def test_a_packed_plan_far_from_the_recipe_is_refused_with_world_sizes_that_keep_it():
    """The paper's sft: 128 samples per step, ~4.9 per 16k row. One row per GPU on 128 GPUs
    is ~620 samples per step (5x the recipe at its learning rate): refused in one line
    naming the batch, the tolerance and the world sizes that keep the recipe."""
    shape = PackingShape(4.87, 16384, 16384, tolerance=0.25)
    with pytest.raises(ConfigError) as err:
        resolve_batch(TrainSettings(global_batch_size=128), 128, "sft", shape)
    text = str(err.value)
    assert "\n" not in text
    assert "sft.global_batch_size=128" in text and "train.packed_batch_tolerance=0.25" in text
    assert "~623 samples" in text and "+387%" in text
    assert "run sft on 26 processes (~127 samples per step)" in text  # 26 rows x 4.87
    assert "or on 24 (~117)" in text  # the closest whole 8-GPU nodes
    # within the tolerance the same recipe plans: 24 rows hold ~117 samples (-9%)
    plan = resolve_batch(TrainSettings(global_batch_size=128), 24, "sft", shape)
    assert plan.global_batch_size == 24 and plan.samples_per_step == pytest.approx(24 * 4.87)
    # and just past it (a 26% miss) is refused: the bound is the tolerance, not a constant
    with pytest.raises(ConfigError):
        resolve_batch(TrainSettings(global_batch_size=100), 1, "sft",
                      PackingShape(126.0, 16384, 16384, tolerance=0.25))
    assert resolve_batch(TrainSettings(global_batch_size=100), 1, "sft",
                         PackingShape(126.0, 16384, 16384, tolerance=0.3)).global_batch_size == 1


def test_a_per_device_batch_under_packing_names_the_setting():
    with pytest.raises(ConfigError) as err:
        resolve_batch(TrainSettings(global_batch_size=256, per_device_batch_size=16), 8,
                      "align", PackingShape(5.0, 16384, 16384))
    text = str(err.value)
    assert "\n" not in text
    assert "align.per_device_batch_size=16" in text and "null" in text


def test_paper_profile_plans_under_packing():
    """The paper's align/sft/dpo set no per-device batch: they plan from tokens."""
    settings = load_settings("paper")
    assert settings.engine.packing
    for stage in ("align", "sft", "dpo"):
        t = settings.stage_train(stage)
        assert t.per_device_batch_size is None
        plan = resolve_batch(t, 8, stage, PackingShape(4.0, settings.model.max_length,
                                                       settings.engine.micro_batch_tokens
                                                       or settings.model.max_length))
        assert plan.unit == "rows" and plan.per_device_batch_size == 1


def test_rows_made_a_multiple_after_planning_equal_rows_packed_to_that_multiple():
    """The stage packs first, plans, then splits rows to the plan's rows per step
    (`PackedDataset.make_multiple`): the same rows and source groups as packing with that
    multiple from the start, every sample once."""
    from types import SimpleNamespace

    import numpy as np

    from components.train.packing import PackedDataset

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=90).astype(np.int32)
    base = SimpleNamespace(row_groups=[np.arange(k, min(k + 16, 90)) for k in range(0, 90, 16)],
                           packed_lengths=lengths)
    direct = PackedDataset(base, 128, multiple=7)
    later = PackedDataset(base, 128)
    assert len(later) % 7
    later.make_multiple(7)
    assert len(later) % 7 == 0
    assert [r.tolist() for r in later.rows] == [r.tolist() for r in direct.rows]
    assert [g.tolist() for g in later._groups] == [g.tolist() for g in direct._groups]
    assert later.row_lengths.tolist() == direct.row_lengths.tolist()
    assert sorted(int(i) for r in later.rows for i in r) == list(range(90))
