"""Scale-out of validate: shards decide exactly as the stage, and the Prefect flow on Dask.

The data is the embedded synthetic set plus bad records appended to the end of
`native/records.jsonl`, far from the records they clash with, so every cross-record check
(duplicate id, duplicate content, exact copy of an eval image) crosses a shard boundary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from components.data.synthetic import generate
from components.manifest import read_manifest
from components.settings import load_settings
from components.stages import run_stage

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
SPANISH = "Una fotografía de una calle antigua de Madrid con tranvías amarillos y gente."
LATE_QUESTION = "Quantas figuras se veem nesta imagem, contando todas as cores?"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic data; appended: a broken image, a wrong language, a missing field, an
    exact copy of a test image, a copied record under a new id, a reused id whose record is
    new (so the same record again later, under a fresh id, is kept), and two odd images."""
    root = tmp_path_factory.mktemp("validate-flow") / "data"
    generate(root, load_settings("ci", overrides={"synthetic": SMALL}))
    rows = read_jsonl(root / "native" / "records.jsonl")
    qa = next(r for r in rows if r["kind"] == "qa" and r["split"] == "train")
    caption = next(r for r in rows if r["kind"] == "caption" and r["split"] == "train")
    test = next(r for r in rows if r["split"] == "test")
    images = root / "native" / "images"
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.copy(root / test["image"], images / "eval-copy.png")
    bad = [
        {**qa, "id": "late-broken", "image": "native/images/broken.png"},
        {**caption, "id": "late-spanish", "text": SPANISH},
        {k: v for k, v in {**qa, "id": "late-no-answer"}.items() if k != "answer"},
        {**caption, "id": "late-eval-copy", "image": "native/images/eval-copy.png",
         "text": "Uma cópia exata de uma imagem de avaliação."},
        {**caption, "id": "late-copy"},  # the first caption again: duplicate_record
        {**qa, "question": LATE_QUESTION},  # qa's id again: duplicate_id, so not kept...
        {**qa, "id": "late-fresh", "question": LATE_QUESTION},  # ...and this one is
    ]
    with (root / "native" / "records.jsonl").open("a", encoding="utf-8") as fh:
        for row in bad:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return root


EXPECTED = {"late-broken": ["image_unreadable"], "late-spanish": ["language_not_pt:es"],
            "late-no-answer": ["missing_field:answer"], "late-copy": ["duplicate_record"]}


def check_expected(quarantine: list[dict], kept: list[str], data: Path) -> None:
    reasons = {q["id"]: q["reasons"] for q in quarantine}
    for rec_id, why in EXPECTED.items():
        assert reasons[rec_id] == why, rec_id
    qa = next(r for r in read_jsonl(data / "native" / "records.jsonl") if r["kind"] == "qa")
    reused = [q for q in quarantine if q["id"] == qa["id"]]
    assert [q["reasons"] for q in reused] == [["duplicate_id"]]
    assert reasons["late-eval-copy"][0].startswith("near_duplicate_of_eval:")
    assert "late-fresh" in kept and qa["id"] in kept


def outputs(stage: Path) -> dict:
    """What later stages read from a validate directory, and its report."""
    report = json.loads((stage / "report.json").read_text())
    report.pop("shards", None)
    return {
        "report": report,
        "views": {name: (stage / name).read_bytes()
                  for name in ("native.jsonl", "seed_en.jsonl", "quarantine.jsonl")},
        "rows": pq.read_table(stage / "validated").to_pylist(),
    }


def settings_for(data: Path, **validate):
    return load_settings("ci", overrides={"data_dir": str(data), "synthetic": SMALL,
                                          "validate": validate})


@pytest.mark.parametrize("n", [2, 3])
def test_shards_decide_exactly_as_the_stage(data: Path, tmp_path: Path, n: int) -> None:
    from components.validate import validate_stream
    from components.validation.shards import plan_shards, validate_in_shards

    settings = settings_for(data, workers=0, chunk_size=16)
    single = tmp_path / "single"
    tally, sinks, _ = validate_stream(settings, single, with_gx=False)
    (single / "report.json").write_text(json.dumps({**tally.report(), **sinks.facts()}))

    sharded = tmp_path / "sharded"
    out = validate_in_shards(settings, sharded, n, tmp_path / "work", with_gx=False)
    plan = plan_shards(settings, n, tmp_path / "plan")
    assert len(plan["shards"]) == n and plan["records"] == tally.total == 210 + 7
    # the appended records (from index 210 - 30 = 180) all lie in the last shard, the early
    # records they clash with in the first
    assert plan["shards"][0]["records"] > 20
    assert plan["records"] - plan["shards"][-1]["records"] <= 180

    a, b = outputs(single), outputs(sharded)
    for key in ("total", "kept", "quarantined", "by_reason", "by_source", "by_kind",
                "converted", "images_decoded"):
        assert b["report"][key] == a["report"][key], key
    assert b["views"] == a["views"]  # byte for byte, in input order
    assert b["rows"] == a["rows"]
    report = b["report"]
    assert report["total"] == report["kept"] + report["quarantined"] == 217
    assert report["quarantined"] == 6 and out.counts["quarantined"] == 6
    check_expected(read_jsonl(sharded / "quarantine.jsonl"), [r["id"] for r in b["rows"]],
                   data)


def test_prefect_flow_on_dask_and_threads_matches_the_stage(prefect_server, data: Path,
                                                            tmp_path: Path) -> None:
    from flows.validate import validate_shards

    validate = {"workers": 1, "chunk_size": 32}  # several chunks a shard: a pool per worker
    overrides = {"data_dir": str(data), "synthetic": SMALL, "validate": validate}
    settings = load_settings("ci", overrides=overrides)
    single = tmp_path / "single"
    run_stage("validate", settings, single, progress=False)

    sharded = tmp_path / "sharded"
    report = validate_shards(str(sharded), shards=2, profile="ci", overrides=overrides,
                             task_runner="dask")  # validate.dask_workers: 2 processes

    stage = sharded / "validate"
    assert report["shards"] == 2
    assert report["total"] == report["kept"] + report["quarantined"] == 217
    a, b = outputs(single / "validate"), outputs(stage)
    assert b["report"] == a["report"]  # one report, every count as the stage's
    assert b["views"] == a["views"] and b["rows"] == a["rows"]
    check_expected(read_jsonl(stage / "quarantine.jsonl"), [r["id"] for r in b["rows"]], data)

    gx_single = json.loads((single / "validate" / "gx_result.json").read_text())
    gx = json.loads((stage / "gx_result.json").read_text())
    assert gx["success"] is True and set(gx["suites"]) == set(gx_single["suites"])
    assert {s: v["rows"] for s, v in gx["suites"].items()} == \
        {s: v["rows"] for s, v in gx_single["suites"].items()}
    assert "amalia_vl_caption" in (stage / "gx_docs" / "index.html").read_text()
    assert (stage / "gx_docs" / "shard-00001" / "index.html").exists()

    manifest = read_manifest(sharded, "validate")
    assert manifest["shards"] == 2 and manifest["counts"] == {
        "total": 217, "kept": report["kept"], "quarantined": report["quarantined"]}
    assert manifest["by_reason"] == report["by_reason"]
    assert not (sharded / "validate.shards").exists()

    # Prefect's thread pool: three shards in one process (per-thread worker state, GX lock)
    threaded = validate_shards(str(tmp_path / "threaded"), shards=3, profile="ci",
                               overrides=overrides, task_runner="thread")
    assert threaded["shards"] == 3
    c = outputs(tmp_path / "threaded" / "validate")
    assert c["report"] == a["report"] and c["views"] == a["views"] and c["rows"] == a["rows"]

    # later stages read the sharded output like the stage's: the same mix, file for file
    later = load_settings("ci", overrides={**overrides,
                                           "translate": {"cache_dir": str(tmp_path / "tm")}})
    for run in (single, sharded):
        run_stage("translate", later, run, progress=False)
        run_stage("mix", later, run, progress=False)
    mixes = [read_manifest(run, "mix") for run in (single, sharded)]
    assert mixes[0]["counts"] == mixes[1]["counts"]
    assert mixes[0]["outputs_digest"] == mixes[1]["outputs_digest"]


def test_sharded_ratio_gate_raises_after_writing_the_report(data: Path, tmp_path: Path) -> None:
    from components.errors import DataQualityError
    from components.validation.shards import validate_in_shards

    settings = settings_for(data, workers=0, chunk_size=64, max_quarantine_ratio=0.01)
    with pytest.raises(DataQualityError, match="6/217 records quarantined"):
        validate_in_shards(settings, tmp_path / "out", 2, tmp_path / "work", with_gx=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["quarantined"] == 6 and report["shards"] == 2
    assert len(read_jsonl(tmp_path / "out" / "quarantine.jsonl")) == 6


def test_retrain_and_stage_run_sharded_data_stages_in_tracked_runs(
        prefect_server, mlflow_uri, data: Path, tmp_path: Path) -> None:
    """`validate.shards` / `translate.shards` above 1 select the sharded subflow in the
    retrain (and in a single stage run), inside the usual MLflow stage run and cache."""
    import mlflow
    import yaml

    from components.settings import default_params_path
    from flows.retrain import retrain_flow
    from flows.stage import stage_flow

    raw = yaml.safe_load(default_params_path().read_text())
    raw["profiles"]["ci"] = {**raw["profiles"]["ci"], "data_dir": str(data),
                             "synthetic": SMALL,
                             "validate": {**raw["profiles"]["ci"].get("validate", {}),
                                          "shards": 2, "workers": 1, "chunk_size": 32},
                             "translate": {**raw["profiles"]["ci"].get("translate", {}),
                                           "shards": 2, "cache_dir": str(tmp_path / "tm")}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, allow_unicode=True))

    run = tmp_path / "run"
    summary = retrain_flow(profile="ci", run_dir=str(run), params_path=str(params),
                           stop="translate", progress=False, cache=True)
    for name in ("validate", "translate"):
        manifest = read_manifest(run, name)
        assert manifest["shards"] == 2, name  # the sharded path ran, not the stage
        assert summary["counts"][name] == manifest["counts"], name
        tracked = mlflow.get_run(manifest["mlflow_run_id"])
        assert tracked.data.tags["mlflow.parentRunId"] == summary["mlflow_parent_run_id"]
        assert tracked.data.metrics["count.kept"] == manifest["counts"]["kept"], name
    assert "quarantine_ratio" in mlflow.get_run(
        read_manifest(run, "validate")["mlflow_run_id"]).data.metrics
    single = tmp_path / "single"
    same = {"data_dir": str(data), "synthetic": SMALL,
            "validate": {"workers": 1, "chunk_size": 32}}
    run_stage("validate", load_settings("ci", overrides=same), single, progress=False)
    assert outputs(run / "validate")["report"] == outputs(single / "validate")["report"]

    # an unchanged rerun reuses the sharded stages from the cache
    again = retrain_flow(profile="ci", run_dir=str(tmp_path / "again"),
                         params_path=str(params), stop="translate", progress=False)
    assert again["reused"] == ["translate", "validate"]

    # the stage deployment's code path: one stage in shards
    stage = stage_flow(name="validate", profile="ci", run_dir=str(tmp_path / "one"),
                       params_path=str(params))
    assert read_manifest(tmp_path / "one", "validate")["shards"] == 2
    assert stage["counts"] == summary["counts"]["validate"]
