"""The evaluate stage: the five embedded tasks plus a real-format benchmark from a local
parquet and an unreachable hub benchmark (skipped with its reason), on tiny models; the
results contract, comparison, dialect fidelity, predictions, report, plot and metrics;
and the champion comparison through a real MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.data.synthetic import generate
from components.manifest import write_manifest
from components.records import read_records, write_records
from components.settings import load_settings
from components.stages import run_stage

LOCAL = ("count", "colour", "position", "chart", "document")
SMALL = {"train_per_task": 4, "test_per_task": 4, "seed_en_per_kind": 2}
CHART_ROWS = [("Qual é o valor de 2020?", "12,5"), ("Que cidade tem a barra mais alta?",
              "Lisboa"), ("Quantas barras há?", "3")]


def make_settings(data: Path, chart: Path, **evaluate):
    return load_settings("ci", overrides={
        "data_dir": str(data), "synthetic": SMALL,
        "evaluate": {"tasks": [*LOCAL, "chartqa_pt", "docvqa_val_pt"],
                     "datasets": {"chartqa_pt": str(chart)}, "batch_size": 8, **evaluate}})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Data, a run dir with mix/eval.jsonl and tiny sft/dpo models, a ChartQA-like parquet."""
    import datasets
    from PIL import Image

    from components.model.build import build_tiny_model, save_model

    root = tmp_path_factory.mktemp("evaluate")
    data, run, chart = root / "data", root / "run", root / "chartqa_pt.parquet"
    datasets.Dataset.from_list([
        {"image": Image.new("RGB", (48 + 16 * i, 40), (60 * i, 120, 200)), "question": q,
         "answer": a, "type": "human_test"} for i, (q, a) in enumerate(CHART_ROWS)
    ]).to_parquet(str(chart))
    settings = make_settings(data, chart)
    generate(data, settings)
    records = read_records(data / "native" / "records.jsonl")
    write_records(run / "mix" / "eval.jsonl",
                  [r for r in records if r.kind == "qa" and r.split == "test"])
    texts = [t for r in records for t in r.all_texts()] + [q for q, _ in CHART_ROWS]
    for stage, seed in (("sft", 1), ("dpo", 2)):
        model, processor = build_tiny_model(settings.model_copy(update={"seed": seed}), texts)
        save_model(model, processor, run / stage / "model")
    for stage in ("mix", "sft", "dpo"):
        write_manifest(run / stage, stage, inputs={}, counts={}, metrics={},
                       config_digest="test", started="test")
    return data, run, chart


@pytest.fixture(scope="module")
def evaluated(run_dir, tmp_path_factory):
    data, run, chart = run_dir
    import os

    old = os.environ.get("MLFLOW_TRACKING_URI")
    # no tracking store at all: the champion is reported absent without creating one
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('no')}/none.db"
    try:
        output, manifest = run_stage("evaluate", make_settings(data, chart), run,
                                     progress=False)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return run / "evaluate", output, manifest


def test_results_contract(evaluated) -> None:
    out, _, _ = evaluated
    results = json.loads((out / "results.json").read_text())
    tasks = {k: v for k, v in results.items() if not k.startswith("_")}
    assert set(tasks) == {*LOCAL, "chartqa_pt"}
    for r in tasks.values():
        assert set(r) == {"score", "score_lmms", "chance", "n", "metric"}
        assert 0.0 <= r["score"] <= 1.0 and 0.0 <= r["score_lmms"] <= 1.0 and r["n"] > 0
    for name in LOCAL:
        assert tasks[name] == {**tasks[name], "chance": pytest.approx(0.25), "n": 4,
                               "metric": "exact_match"}
    assert tasks["chartqa_pt"]["metric"] == "relaxed_accuracy" and tasks["chartqa_pt"]["n"] == 3
    assert set(results["_summary"]) == {"mean_score", "min_score_over_chance"}
    skipped = results["_skipped"]
    assert list(skipped) == ["docvqa_val_pt"]
    assert skipped["docvqa_val_pt"]["dataset"] == "amalia-llm/DocVQA-PT"
    assert "not reachable" in skipped["docvqa_val_pt"]["reason"]
    assert "OfflineModeIsEnabled" in skipped["docvqa_val_pt"]["reason"]


def test_comparison_dialect_and_predictions(evaluated) -> None:
    out, _, _ = evaluated
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison) == {"dpo", "sft", "_meta"}
    assert comparison["_meta"]["champion"]["status"] == "absent"
    assert comparison["_meta"]["skipped"] == json.loads(
        (out / "results.json").read_text())["_skipped"]
    results = json.loads((out / "results.json").read_text())
    for task in (*LOCAL, "chartqa_pt"):
        entry = comparison["dpo"][task]
        assert {k: entry[k] for k in ("score", "score_lmms", "chance", "n", "metric")} == \
            results[task]
        assert set(entry["metrics_lmms"]) == set(entry["metrics"])
        assert set(entry["dialect"]) >= {"pt_PT", "pt_BR", "unknown", "n"}
        assert entry["dialect"]["pt_PT"] + entry["dialect"]["pt_BR"] + \
            entry["dialect"]["unknown"] == pytest.approx(1.0)
    assert comparison["dpo"]["chartqa_pt"]["details"]["by_type"].keys() == {"human_test"}

    dialect = json.loads((out / "dialect.json").read_text())
    assert set(dialect) == {"dpo", "sft"}
    assert set(dialect["dpo"]) == {*LOCAL, "chartqa_pt", "_all"}
    assert dialect["dpo"]["_all"]["n"] == 4 * 5 + 3

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * (4 * 5 + 3)
    assert {r["model"] for r in rows} == {"dpo", "sft"}
    first = next(r for r in rows if r["task"] == "count")
    assert {"model", "task", "id", "question", "answer", "prediction", "score", "score_lmms",
            "correct", "dialect"} <= set(first)
    assert first["question"] == "Quantas formas há na imagem?"
    local_ids = {r.id for r in read_records(out.parent / "mix" / "eval.jsonl")}
    assert {r["id"] for r in rows if r["task"] in LOCAL} == local_ids


def test_report_plot_table_and_stage_outputs(evaluated) -> None:
    out, output, manifest = evaluated
    md = (out / "results.md").read_text()
    assert "| task | metric | n | chance | dpo | sft |" in md
    assert "| chartqa_pt | relaxed_accuracy | 3 |" in md
    assert "docvqa_val_pt" in md and "OfflineModeIsEnabled" in md
    assert "Champion: no tracking store yet" in md
    assert (out / "results.png").stat().st_size > 5000
    table = json.loads((out / "table.json").read_text())
    assert [r["task"] for r in table] == [*LOCAL, "chartqa_pt"]
    assert not (out / "_cache").exists()  # decoded images are not stage outputs

    m = output.metrics
    for key in ("mean_score", "min_score_over_chance", "dpo.count", "sft.count",
                "dpo.chartqa_pt", "sft.chartqa_pt", "dpo.chartqa_pt.lmms",
                "dpo.dialect.count.pt_PT",
                "dpo.dialect.chartqa_pt.pt_BR", "dialect_pt_PT", "dialect_pt_BR",
                "dpo.mean_score", "sft.min_score_over_chance"):
        assert key in m, key
    assert m["tasks_skipped"] == 1.0
    assert output.counts == {"samples": 23, "models": 2, "tasks": 6, "tasks_skipped": 1}
    assert output.params["skipped"] == ["docvqa_val_pt"]
    for name in output.artifacts:
        assert name in manifest["outputs"], name
    assert manifest["metrics"]["mean_score"] == m["mean_score"]


def test_summary_uses_task_scales() -> None:
    from components.evaluate import summarise

    results = {"a": {"score": 0.5, "chance": 0.25}, "mme": {"score": 1400.0, "chance": 1050.0,
                                                          "scale": 2800.0},
               "caption": {"score": 0.8, "chance": 0.0}, "_skipped": {}}
    assert summarise(results) == {"mean_score": pytest.approx((0.5 + 0.5 + 0.8) / 3),
                                  "min_score_over_chance": pytest.approx(4 / 3)}


def test_champion_from_the_registry_is_compared(run_dir, mlflow_uri) -> None:
    import mlflow

    from components.evaluate import find_champion
    from components.registry import log_and_register

    data, run, chart = run_dir
    settings = make_settings(data, chart, tasks=["count"])
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.MlflowClient(mlflow_uri).search_experiments()  # create the store
    path, status = find_champion(settings)
    assert path is None and status["status"] == "absent"
    assert "does not exist" in status["note"]
    with mlflow.start_run():
        log_and_register(run / "sft" / "model", "amalia-vl", "champion", {})
    path, status = find_champion(settings)
    assert status["status"] == "compared", status
    assert status["version"] == "1"
    assert (path / "config.json").exists()

    output, _ = run_stage("evaluate", settings, run, progress=False)
    out = run / "evaluate"
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison) == {"dpo", "sft", "champion", "_meta"}
    # the champion is the sft weights: same greedy answers, same scores
    assert comparison["champion"]["count"]["score"] == comparison["sft"]["count"]["score"]
    assert "models:/amalia-vl@champion is version 1" in (out / "results.md").read_text()
    assert "| dpo | sft | champion |" in (out / "results.md").read_text()
    assert "champion.count" in output.metrics and output.params["champion"] == "1"
    disabled = make_settings(data, chart, tasks=["count"], champion_alias=None)
    assert find_champion(disabled)[1]["status"] == "disabled"
