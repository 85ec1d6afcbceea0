"""lmms-eval interop without installing lmms-eval: the exported include path is checked
against lmms-eval's task schema (the `TaskConfig` fields and group keys of its published
task files), loaded the way lmms-eval loads it (`!function` imports `utils.py` beside the
YAML), and driven through its hooks as `llava_hf` would: same prompts, same pixels, same
token ids as our harness, and the same scores from the same generations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from components.errors import ConfigError
from components.evaltasks.harness import prepare_task, score_task
from components.evaltasks.lmms import SUITE_GROUP, export_lmms_eval
from components.evaltasks.spec import load_groups, load_tasks

TASKS = load_tasks()

# lmms_eval/api/task.py `TaskConfig` fields (plus `include`, resolved by its loader)
TASK_CONFIG_KEYS = {
    "task", "task_alias", "tag", "group", "group_alias", "dataset_path", "dataset_name",
    "dataset_kwargs", "training_split", "validation_split", "test_split", "fewshot_split",
    "full_docs", "process_results_use_image", "process_docs", "doc_to_visual", "doc_to_text",
    "doc_to_target", "doc_to_choice", "doc_to_messages", "process_results", "use_prompt",
    "description", "target_delimiter", "fewshot_delimiter", "fewshot_config", "num_fewshot",
    "metric_list", "output_type", "generation_kwargs", "repeats", "filter_list",
    "should_decontaminate", "doc_to_decontamination_query", "cluster_key", "score_key",
    "metadata", "lmms_eval_specific_kwargs", "model_specific_generation_kwargs",
    "model_specific_target_kwargs", "reasoning_tags", "include",
}
REQUIRED = {"task", "dataset_path", "test_split", "output_type", "doc_to_visual",
            "doc_to_text", "doc_to_target", "process_results", "generation_kwargs",
            "metric_list", "lmms_eval_specific_kwargs"}
GROUP_KEYS = {"group", "group_alias", "task", "aggregate_metric_list", "metadata"}


def load_lmms_yaml(path: Path) -> dict:
    """Load a task YAML as lmms_eval.utils.load_yaml_config does: `!function a.b` imports
    `a.py` from the YAML's folder and returns its attribute `b`."""

    class Loader(yaml.SafeLoader):
        pass

    def import_function(loader, node):
        *module, name = loader.construct_scalar(node).split(".")
        module_path = path.parent / f"{'.'.join(module)}.py"
        spec = importlib.util.spec_from_file_location(".".join(module), module_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return getattr(mod, name)

    Loader.add_constructor("!function", import_function)
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)


def model_kwargs(config: dict, model_name: str) -> dict:
    """lmms-eval's `_prepare_model_specific_config` for `lmms_eval_specific_kwargs`."""
    kwargs = dict(config["lmms_eval_specific_kwargs"])
    if model_name in kwargs:
        return kwargs[model_name]
    kwargs.update(kwargs.get("default", {}))
    return kwargs


def lmms_docs(config: dict):
    """The test split as lmms-eval's `download` + `process_docs` build it."""
    import datasets

    data = datasets.load_dataset(path=config["dataset_path"], name=config.get("dataset_name"),
                                 **config.get("dataset_kwargs", {}))[config["test_split"]]
    return config["process_docs"](data) if "process_docs" in config else data


def lmms_scores(config: dict, docs, generations: list[str]) -> dict[str, float]:
    """process_results per document, then each metric's aggregation."""
    per_doc = [config["process_results"](doc, [g]) for doc, g in zip(docs, generations,
                                                                       strict=True)]
    return {m["metric"]: m["aggregation"]([r[m["metric"]] for r in per_doc])
            for m in config["metric_list"]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms_tasks")
    export_lmms_eval(out)
    return out


def test_export_writes_an_include_path(exported) -> None:
    names = {p.stem for p in exported.glob("*.yaml")}
    remote = {n for n, s in TASKS.items() if s.dataset.kind != "run_mix"}
    assert names == remote | set(load_groups()) | {SUITE_GROUP}
    assert (exported / "utils.py").exists() and (exported / "amalia_specs.json").exists()
    with pytest.raises(ConfigError, match="read a run's eval set"):
        export_lmms_eval(exported / "again", ["count"])


def test_every_exported_task_matches_lmms_eval_task_schema(exported) -> None:
    for name in sorted(n for n, s in TASKS.items() if s.dataset.kind != "run_mix"):
        spec = TASKS[name]
        text = (exported / f"{name}.yaml").read_text()
        assert f"doc_to_text: !function utils.{name}_doc_to_text" in text
        config = load_lmms_yaml(exported / f"{name}.yaml")
        assert set(config) <= TASK_CONFIG_KEYS, set(config) - TASK_CONFIG_KEYS
        assert REQUIRED <= set(config), REQUIRED - set(config)
        assert config["task"] == name and config["output_type"] == "generate_until"
        assert config["dataset_path"] == spec.dataset.path
        assert config.get("dataset_name") == spec.dataset.name
        assert config["test_split"] == spec.dataset.split
        for hook in ("doc_to_visual", "doc_to_text", "doc_to_target", "process_results"):
            assert callable(config[hook]), (name, hook)
        gen = config["generation_kwargs"]
        assert gen["do_sample"] is False and gen["temperature"] == 0
        assert gen["max_new_tokens"] == spec.generation.max_new_tokens
        assert gen["until"] == spec.generation.until
        assert [m["metric"] for m in config["metric_list"]] == spec.metrics
        for m in config["metric_list"]:
            assert callable(m["aggregation"]) and m["higher_is_better"] is True
        assert callable(config.get("process_docs")) == (spec.dataset.explode is not None)
        for model in ("llava_hf", "some_other_model"):
            kw = model_kwargs(config, model)
            assert kw["post_prompt"] == spec.prompt.post_prompt
            assert kw["image_prefix"] == ("<image>" if model == "llava_hf" else "")


def test_groups_match_lmms_eval_group_schema(exported) -> None:
    for group in (*load_groups(), SUITE_GROUP):
        config = yaml.safe_load((exported / f"{group}.yaml").read_text())
        assert set(config) <= GROUP_KEYS and {"group", "task"} <= set(config)
        assert all((exported / f"{t}.yaml").exists() for t in config["task"])
    portexto = yaml.safe_load((exported / "portexto.yaml").read_text())
    assert portexto["aggregate_metric_list"] == [
        {"metric": "anls", "aggregation": "mean", "weight_by_size": True}]
    caravela = yaml.safe_load((exported / "caravela.yaml").read_text())
    assert "aggregate_metric_list" not in caravela  # members have different headlines


CHART_ROWS = [
    {"question": "Qual é o valor de 2020?", "answer": "12,5", "type": "human_test"},
    {"question": "Que cidade tem a barra mais alta?", "answer": "Lisboa", "type": "human_test"},
    {"question": "Quantas barras há?", "answer": "3", "type": "augmented_test"},
    {"question": "Qual é a percentagem de 2019?", "answer": "40%", "type": "augmented_test"},
]
GENERATIONS = ["12.5", "lisboa", "4", "0,4"]


@pytest.fixture(scope="module")
def chart_export(tmp_path_factory):
    import datasets
    from PIL import Image

    root = tmp_path_factory.mktemp("lmms_chart")
    rows = [{**r, "image": Image.new("RGB", (40 + 8 * i, 48), (40 * i, 90, 200))}
            for i, r in enumerate(CHART_ROWS)]
    parquet = root / "chartqa_pt.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    out = root / "tasks"
    export_lmms_eval(out, ["chartqa_pt"], datasets={"chartqa_pt": str(parquet)})
    config = load_lmms_yaml(out / "chartqa_pt.yaml")
    task = prepare_task(TASKS["chartqa_pt"], run_dir=None, data_root=None,
                        cache_dir=root / "cache", location=str(parquet))
    return config, task


def test_lmms_hooks_give_our_prompts_pixels_and_scores(chart_export) -> None:
    from PIL import Image

    config, task = chart_export
    assert config["dataset_path"] == "parquet"
    docs = lmms_docs(config)
    kwargs = model_kwargs(config, "llava_hf")
    for doc, sample in zip(docs, task.samples, strict=True):
        assert config["doc_to_text"](doc, kwargs) == "<image>" + sample.prompt
        assert config["doc_to_text"](doc, model_kwargs(config, "qwen2_vl")) == sample.prompt
        (visual,) = config["doc_to_visual"](doc)
        assert visual.tobytes() == Image.open(sample.image).convert("RGB").tobytes()
        assert config["doc_to_target"](doc) == sample.answers[0]
    ours = score_task(task, GENERATIONS).result
    theirs = lmms_scores(config, docs, GENERATIONS)
    # the exported aggregations score in the lmms mode: "12,5" and "0,4" are no numbers to
    # lmms-eval's float(), so only "lisboa" counts there; pt reads the decimal commas
    assert theirs == {"relaxed_accuracy": pytest.approx(ours["score_lmms"])}
    assert ours["score_lmms"] == pytest.approx(0.25)
    assert ours["score"] == pytest.approx(0.75)


def test_llava_hf_sends_the_token_ids_our_harness_sends(chart_export) -> None:
    """llava_hf renders [{"role": "user", "content": doc_to_text(...)}] with the tokenizer's
    chat template and calls the processor; our saved model folder must give the ids and
    tiles that `generate_answers` gives."""
    import torch

    from components.model.build import build_tiny_model
    from components.settings import load_settings
    from components.train.chat import ChatFormat, pixel_inputs
    from components.train.data import load_image

    config, task = chart_export
    _, processor = build_tiny_model(load_settings("tiny"),
                                    [r["question"] for r in CHART_ROWS] * 4)
    kwargs = model_kwargs(config, "llava_hf")
    for doc, sample in zip(lmms_docs(config), task.samples, strict=True):
        context = config["doc_to_text"](doc, kwargs)
        assert "<image>" in context  # so llava_hf does not prepend "<image>\n"
        text = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True)
        theirs = processor(images=config["doc_to_visual"](doc), text=text, return_tensors="pt")
        image = load_image(sample.image)
        ours = ChatFormat(processor).generation_prompt(sample.prompt,
                                                       [(image.height, image.width)])
        tiles, _ = pixel_inputs(processor, [image], ours.image_sizes)
        assert theirs["input_ids"][0].tolist() == ours.input_ids.tolist()
        assert torch.equal(theirs["pixel_values"][0], tiles[0])


def test_exploded_box_task_scores_like_the_harness(tmp_path) -> None:
    import datasets
    from PIL import Image

    rows = [{"image": Image.new("RGB", (200, 100)), "question_id": "r1",
             "answer": ["o carro vermelho", "o carro à esquerda"],
             "bbox": [20.0, 10.0, 80.0, 40.0]}]
    parquet = tmp_path / "ref.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    export_lmms_eval(tmp_path / "tasks", ["refcoco_bbox_rec_test_pt"],
                     datasets={"refcoco_bbox_rec_test_pt": str(parquet)})
    config = load_lmms_yaml(tmp_path / "tasks" / "refcoco_bbox_rec_test_pt.yaml")
    docs = lmms_docs(config)
    assert [d["answer"] for d in docs] == ["o carro vermelho", "o carro à esquerda"]
    generations = ["[0.1, 0.1, 0.5, 0.5]", "[0.6, 0.6, 0.9, 0.9]"]
    task = prepare_task(TASKS["refcoco_bbox_rec_test_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path, location=str(parquet))
    ours = score_task(task, generations).result["metrics_lmms"]
    theirs = lmms_scores(config, docs, generations)
    assert theirs == {k: pytest.approx(v) for k, v in ours.items()}
    assert theirs["box_iou_accuracy"] == pytest.approx(0.5)
    assert theirs["box_center_accuracy"] == pytest.approx(0.5)


def test_embedded_tasks_export_with_a_run_dir(tmp_path) -> None:
    from PIL import Image

    data, run = tmp_path / "data", tmp_path / "run"
    (data / "img").mkdir(parents=True)
    (run / "mix").mkdir(parents=True)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(data / "img" / "a.png")
    rows = [{"id": f"r{i}", "source": "native", "language": "pt-PT", "split": "test",
             "task_family": fam, "kind": "qa", "image": "img/a.png",
             "question": "De que cor é a forma?", "answer": "azul",
             "options": ["vermelho", "verde", "azul", "amarelo"]}
            for i, fam in enumerate(["colour", "count", "colour"])]
    (run / "mix" / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    export_lmms_eval(tmp_path / "tasks", ["colour"], run_dir=run, data_root=data,
                     default_max_new_tokens=8)
    config = load_lmms_yaml(tmp_path / "tasks" / "colour.yaml")
    assert config["dataset_path"] == "json"
    assert config["generation_kwargs"]["max_new_tokens"] == 8
    docs = lmms_docs(config)
    assert [d["id"] for d in docs] == ["r0", "r2"]
    assert config["doc_to_visual"](docs[0])[0].size == (32, 32)
    assert config["doc_to_text"](docs[0], model_kwargs(config, "llava_hf")) == \
        "<image>De que cor é a forma?"
    assert lmms_scores(config, docs, ["Azul.", "verde"]) == {"exact_match": 0.5}


def test_exported_profile_task_gives_the_lmms_mode_numbers(tmp_path) -> None:
    """AI2D reads letters the lmms-eval way in the export (the profile travels in the
    specs), so the exported aggregation equals our `score_lmms`, not our `score`."""
    import datasets
    from PIL import Image

    rows = [{"image": Image.new("RGB", (32, 32), (9 * i, 40, 90)), "question": "Qual?",
             "options": ["Porto", "Lisboa", "Faro"], "answer": "1"} for i in range(4)]
    parquet = tmp_path / "ai2d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    export_lmms_eval(tmp_path / "tasks", ["ai2d_pt"], datasets={"ai2d_pt": str(parquet)})
    config = load_lmms_yaml(tmp_path / "tasks" / "ai2d_pt.yaml")
    generations = ["B. Lisboa", "**B**", "Lisboa", "B) Lisboa"]
    task = prepare_task(TASKS["ai2d_pt"], run_dir=None, data_root=None, cache_dir=tmp_path,
                        location=str(parquet))
    ours = score_task(task, generations).result
    theirs = lmms_scores(config, lmms_docs(config), generations)
    assert theirs == {"mc_accuracy": pytest.approx(ours["score_lmms"])}
    assert ours["score_lmms"] == pytest.approx(0.5)  # the filter and exact_match: 2 of 4
    assert ours["score"] == pytest.approx(1.0)  # pt also reads the option text and "B)"
