"""Task definitions: every shipped YAML validates, the published suite is complete, each
benchmark uses the split and metric of its lmms-eval task file, and bad YAML fails early."""

from __future__ import annotations

import pytest

from components.errors import ConfigError
from components.evaltasks.spec import (
    LOCAL_TASKS,
    TASKS_DIR,
    list_tasks,
    load_groups,
    load_tasks,
    resolve,
)
from components.metrics import METRICS
from components.settings import load_settings

# benchmark -> (task, hub id, split, headline metric), from the lmms-eval task files
# (lmms_eval/tasks/<name>/*.yaml) the AMALIA-VL suite mirrors.
PUBLISHED = {
    "AI2D": ("ai2d_pt", "amalia-llm/AI2D-PT", "test", "mc_accuracy"),
    "ChartQA": ("chartqa_pt", "amalia-llm/ChartQA-PT", "test", "relaxed_accuracy"),
    "DocVQA": ("docvqa_val_pt", "amalia-llm/DocVQA-PT", "validation", "anls"),
    "InfographicVQA": ("infovqa_val_pt", "amalia-llm/InfographicVQA-PT", "validation", "anls"),
    "TextVQA": ("textvqa_val_pt", "amalia-llm/TextVQA-PT", "validation", "vqa_accuracy"),
    "OCRBench": ("ocrbench_pt", "amalia-llm/OCRBench-PT", "test", "ocrbench_accuracy"),
    "MME": ("mme_pt", "amalia-llm/MME-PT", "test", "mme"),
    "MMMU": ("mmmu_val_pt", "amalia-llm/MMMU-PT", "validation", "mmmu_accuracy"),
    "MMMU-Pro": ("mmmu_pro_standard_pt", "amalia-llm/MMMU-Pro-PT", "test", "mmmu_accuracy"),
    "MMStar": ("mmstar_pt", "amalia-llm/MMStar-PT", "val", "mc_accuracy"),
    "SEED-Bench": ("seedbench_pt", "amalia-llm/SEED-Bench-PT", "test", "mc_accuracy"),
    "MATH-Vision": ("mathvision_test_pt", "amalia-llm/MATH-Vision-PT", "test",
                    "mathvision_accuracy"),
    "RealWorldQA": ("realworldqa_pt", "amalia-llm/RealWorldQA-PT", "test", "mc_accuracy"),
    "EmbSpatial-Bench": ("embspatial_pt", "amalia-llm/EmbSpatial-Bench-PT", "test",
                         "mc_accuracy"),
    "POPE": ("pope_pt", "amalia-llm/POPE-PT", "test", "pope_f1"),
    "COCO-Caption2017": ("coco2017_cap_val_pt", "amalia-llm/COCO-Caption2017-PT", "val",
                         "cider"),
    "RefCOCO (box output)": ("refcoco_bbox_rec_test_pt", "amalia-llm/RefCOCO-PT", "test",
                             "box_iou_accuracy"),
    "RefCOCO (box recognition)": ("refcoco_bbox_test_pt", "amalia-llm/RefCOCO-PT", "test",
                                  "cider"),
}
NATIVE = {
    "portexto": ["portexto_handwritten", "portexto_handwritten_full_page",
                 "portexto_in_the_wild", "portexto_synthetic"],
    "caravela": ["caravela_mcq", "caravela_vqa", "caravela_reasoning"],
}


def test_every_shipped_yaml_validates_and_names_known_metrics() -> None:
    tasks, groups = load_tasks(), load_groups()
    assert len(list(TASKS_DIR.glob("*.yaml"))) == len(tasks) + len(groups)
    for spec in tasks.values():
        assert all(m in METRICS for m in spec.metrics), spec.task
        assert spec.generation.do_sample is False and spec.generation.temperature == 0.0
        assert spec.prompt.template, spec.task


def test_the_published_suite_is_complete_with_upstream_splits_and_metrics() -> None:
    tasks = load_tasks()
    for bench, (name, hub_id, split, metric) in PUBLISHED.items():
        spec = tasks[name]
        assert spec.kind == "translated", bench
        assert (spec.dataset.path, spec.dataset.split, spec.primary_metric) == \
            (hub_id, split, metric), bench
        assert spec.source.lmms_eval_task, bench
    groups = load_groups()
    for group, members in NATIVE.items():
        assert groups[group].tasks == members
        for member in members:
            assert tasks[member].kind == "native"
    assert {t.dataset.path for g in NATIVE.values() for t in resolve(g)} == \
        {"amalia-llm/PorTEXTO", "amalia-llm/CARAVELA"}


def test_paper_profile_lists_the_twenty_benchmarks_and_default_the_five_local() -> None:
    paper = load_settings("paper").evaluate.tasks
    assert len(paper) == 20
    assert {t.task for t in resolve(paper)} == \
        {v[0] for v in PUBLISHED.values()} | {m for ms in NATIVE.values() for m in ms}
    tiny = load_settings("tiny").evaluate.tasks
    assert tuple(tiny) == LOCAL_TASKS
    for spec in resolve(tiny):
        assert spec.kind == "local" and spec.dataset.kind == "run_mix"
        assert spec.dataset.task_family == spec.task and spec.chance == "options"
        assert spec.metrics == ["exact_match"]


def test_list_tasks_rows() -> None:
    rows = {r["task"]: r for r in list_tasks()}
    assert rows["portexto_synthetic"]["group"] == "portexto"
    assert rows["count"]["dataset"] == "<run>/mix/eval.jsonl#count"
    assert rows["mmmu_pro_standard_pt"]["dataset"].endswith("[standard (10 options)]")


def test_resolve_expands_groups_once_and_rejects_unknown_names() -> None:
    names = [t.task for t in resolve(["caravela", "caravela_vqa", "count"])]
    assert names == ["caravela_mcq", "caravela_vqa", "caravela_reasoning", "count"]
    with pytest.raises(ConfigError, match="unknown evaluation task 'chartqa'.*chartqa_pt"):
        resolve(["chartqa"])


GOOD = """task: my_task
title: mine
dataset: {path: some/dataset, split: test}
metrics: [anls]
"""


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("metrics: [anls]", "metrics: [bleu]"), "unknown metrics"),
    (GOOD + "profile: ai2dd\n", "unknown profile 'ai2dd'"),
    (GOOD + "profile: ai2d\n", "profile 'ai2d' is read by mc_accuracy, mmmu_accuracy"),
    (GOOD + "promt: {template: x}\n", "promt"),
    (GOOD + "generation: {do_sample: true}\n", "generation.do_sample"),
    (GOOD.replace("dataset: {path: some/dataset, split: test}", "dataset: {kind: hub}"),
     "needs a path"),
    ("title: no name\n", "neither a 'task' nor a 'group'"),
])
def test_bad_task_files_fail_with_the_file_and_field(tmp_path, text, message) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_tasks([str(tmp_path)])


def test_extra_task_dirs_add_tasks_and_groups(tmp_path) -> None:
    (tmp_path / "mine.yaml").write_text(GOOD)
    (tmp_path / "mine_group.yaml").write_text("group: mine\ntitle: g\ntasks: [my_task, count]\n")
    assert [t.task for t in resolve(["mine"], [str(tmp_path)])] == ["my_task", "count"]
    (tmp_path / "dup.yaml").write_text(GOOD.replace("my_task", "count"))
    with pytest.raises(ConfigError, match="defined twice"):
        load_tasks([str(tmp_path)])


def test_score_scale_defaults_to_the_headline_metrics_best_and_never_below_it(tmp_path) -> None:
    tasks = load_tasks()
    for spec in tasks.values():
        assert spec.score_scale >= METRICS[spec.primary_metric].best, spec.task
    # CIDEr-D runs 0-10: caption summaries are a fraction of 10, not of 1
    assert tasks["coco2017_cap_val_pt"].score_scale == 10.0
    assert tasks["refcoco_bbox_test_pt"].score_scale == 10.0
    assert tasks["mme_pt"].score_scale == 2800.0 and tasks["chartqa_pt"].score_scale == 1.0
    (tmp_path / "cap.yaml").write_text(GOOD.replace("metrics: [anls]", "metrics: [cider]"))
    assert load_tasks([str(tmp_path)])["my_task"].score_scale == 10.0
    (tmp_path / "cap.yaml").write_text(GOOD.replace("metrics: [anls]", "metrics: [cider]")
                                       + "score_scale: 1.0\n")
    with pytest.raises(ConfigError, match="below the best possible cider score"):
        load_tasks([str(tmp_path)])


def test_pope_chance_is_what_always_yes_scores() -> None:
    spec = load_tasks()["pope_pt"]
    gold = [["sim"], ["não"]] * 50  # POPE's balanced split
    always_yes = METRICS[spec.primary_metric].evaluate(["Sim."] * len(gold), gold)
    assert spec.chance == pytest.approx(always_yes.score) == pytest.approx(2 / 3)
