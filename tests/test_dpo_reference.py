"""The precomputed DPO reference is the step-0 policy as it trains (components/train/dpo.py
`ReferenceScorer`, wired by stages.run_dpo): scored by the prepared model in the training
step's forward context (bf16 autocast here, packed rows with the varlen attention), so the
first step's margins are 0; stored with the config digest and reused on resume, never
rescored from restored weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from components.errors import AmaliaError
from components.settings import load_settings
from components.stages import run_stage
from components.train.dpo import REFERENCE_FILE
from tests.train_helpers import make_mix, overrides

DPO = {"epochs": 2, "global_batch_size": 4, "learning_rate": 1e-3, "beta": 1.0,
       "precompute_ref_log_probs": True}


@pytest.fixture(scope="module")
def sft_done(tmp_path_factory):
    """A run whose align and sft stages are done (fp32, a few steps)."""
    root = tmp_path_factory.mktemp("dporef")
    data, run = make_mix(root, n=12, seed=7)
    common = overrides(data, align={"epochs": 1, "global_batch_size": 4},
                       sft={"epochs": 2, "global_batch_size": 4, "learning_rate": 3e-3})
    settings = load_settings("tiny", overrides=common)
    for stage in ("align", "sft"):
        run_stage(stage, settings, run, lambda m, s: None, progress=False)
    return data, run, common


def _dpo_settings(common, **train):
    return load_settings("tiny", overrides={**common, "dpo": DPO,
                                            "train": {**common["train"], **train}})


def _steps(run):
    return json.loads((run / "dpo" / "metrics.json").read_text())["step_metrics"]


@pytest.mark.parametrize("packing,precompute", [(False, True), (True, True), (False, False)],
                         ids=["padded", "packed", "frozen-copy"])
def test_step0_margins_are_zero_under_bf16(sft_done, packing, precompute):
    """bf16 on CPU: the Trainer autocasts the forward; a reference scored in fp32 before
    the Trainer (the old order) gives first-step rewards of ~6e-4 here (beta 1), and with
    packing a reference scored on padded rows with plain attention differs again. The
    frozen copy (`precompute_ref_log_probs: false`) runs in the policy's dtype under the
    same autocast (a bf16 copy without autocast computes something else)."""
    data, run, common = sft_done
    settings = load_settings("tiny", overrides={
        **common, "dpo": {**DPO, "precompute_ref_log_probs": precompute},
        "train": {**common["train"], "precision": "bf16", "packing": packing}})
    run_stage("dpo", settings, run, lambda m, s: None, progress=False, restart=True)
    first = _steps(run)[0]
    # exactly 0 here; the old order gives rewards/chosen 6e-4 (padded) on this model, so
    # the bound is tighter than the 1e-3
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(first[key]) < 1e-4, (key, first[key])
    out = json.loads((run / "dpo" / "metrics.json").read_text())
    assert out["margin_before"] == 0.0 and out["margin_after"] > out["margin_before"]


def test_resume_reuses_the_step0_reference(sft_done):
    """An interrupted run resumed from a checkpoint trains exactly like the uninterrupted
    one: the reference is the stored step-0 table, not the restored weights rescored."""
    data, run, common = sft_done
    settings = _dpo_settings(common, save_steps=2, save_total_limit=10,
                             keep_checkpoints=True)
    run_stage("dpo", settings, run, lambda m, s: None, progress=False, restart=True)
    whole = _steps(run)
    assert len(whole) >= 4
    folder = run / "dpo" / "checkpoints"
    stored = torch.load(folder / REFERENCE_FILE, weights_only=True)
    # the run is cut short after step 2: later checkpoints never happened
    for ckpt in folder.glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > 2:
            shutil.rmtree(ckpt)
    run_stage("dpo", settings, run, lambda m, s: None, progress=False)
    resumed = _steps(run)
    out = json.loads((run / "dpo" / "metrics.json").read_text())
    assert out["engine"]["resumed_from_step"] == 2
    assert len(resumed) == len(whole)  # the trainer state carries steps 1-2 over
    for got, want in zip(resumed[2:], whole[2:], strict=True):  # steps trained after
        for key in ("loss", "rewards/margins", "rewards/chosen"):
            assert got[key] == pytest.approx(want[key], abs=1e-5), key
    again = torch.load(folder / REFERENCE_FILE, weights_only=True)
    torch.testing.assert_close(again["train"], stored["train"])
    torch.testing.assert_close(again["eval"], stored["eval"])
    # the margins before/after still compare with the step-0 eval table
    assert out["margin_before"] == 0.0 and out["margin_after"] != 0.0


def test_a_resume_without_the_stored_reference_stops_with_a_reason(sft_done):
    data, run, common = sft_done
    settings = _dpo_settings(common, save_steps=2, save_total_limit=10,
                             keep_checkpoints=True)
    run_stage("dpo", settings, run, lambda m, s: None, progress=False, restart=True)
    folder = run / "dpo" / "checkpoints"
    (folder / REFERENCE_FILE).unlink()
    kept = sorted(p.name for p in folder.glob("checkpoint-*"))
    with pytest.raises(AmaliaError) as err:
        run_stage("dpo", settings, run, lambda m, s: None, progress=False)
    assert "step-0 reference" in err.value.message and "--restart" in err.value.hint
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == kept  # nothing lost
