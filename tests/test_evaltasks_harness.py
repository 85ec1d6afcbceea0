"""The harness on real-format benchmark rows built locally (no hub): loaders (hub offline ->
skipped, parquet with image bytes, JSON, S3), the image adapter, exact scoring through the
task YAMLs, dialect fidelity, and a tiny model answering a ChartQA-like parquet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from components.evaltasks.harness import (
    dialect_shares,
    generate,
    max_new_tokens_for,
    prepare_task,
    score_task,
)
from components.evaltasks.loaders import TaskUnavailable, load_docs, location_kind
from components.evaltasks.spec import load_tasks
from components.metrics import get_metric

TASKS = load_tasks()


def image(colour=(200, 30, 30), size=(48, 32)) -> Image.Image:
    return Image.new("RGB", size, colour)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """Rows with PIL images as a hub-style parquet (image feature in the schema metadata)."""
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


CHART_ROWS = [
    {"image": image((200, 30, 30), (64, 48)), "question": "Qual é o valor de 2020?",
     "answer": "12,5", "type": "human_test"},
    {"image": image((30, 200, 30), (48, 64)), "question": "Que cidade tem a barra mais alta?",
     "answer": "Lisboa", "type": "human_test"},
    {"image": image((30, 30, 200), (96, 48)), "question": "Quantas barras há?",
     "answer": "3", "type": "augmented_test"},
    {"image": image((90, 90, 90), (40, 40)), "question": "Qual é a percentagem de 2019?",
     "answer": "40%", "type": "augmented_test"},
    {"image": image((250, 200, 0), (80, 60)), "question": "Em que ano foi o máximo?",
     "answer": "2020", "type": "human_test"},
]


@pytest.fixture(scope="module")
def chart_parquet(tmp_path_factory) -> Path:
    return write_parquet(tmp_path_factory.mktemp("chart") / "chartqa_pt.parquet", CHART_ROWS)


def test_hub_dataset_offline_is_unavailable_with_the_reason() -> None:
    with pytest.raises(TaskUnavailable, match=r"amalia-llm/ChartQA-PT split test not "
                                              r"reachable: ConnectionError.*Offline"):
        load_docs(TASKS["chartqa_pt"])


def test_location_kinds(tmp_path) -> None:
    assert location_kind("amalia-llm/ChartQA-PT") == "hub"
    assert location_kind("s3://bucket/bench/chartqa") == "parquet"
    assert location_kind("s3://bucket/bench/x.jsonl") == "json"
    assert location_kind(str(tmp_path)) == "folder"
    assert location_kind(str(tmp_path / "x.parquet")) == "parquet"


def test_chartqa_parquet_scores_relaxed_accuracy_through_the_yaml(chart_parquet, tmp_path):
    task = prepare_task(TASKS["chartqa_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path / "cache", location=str(chart_parquet))
    assert len(task.samples) == 5 and task.dropped == 0
    first = task.samples[0]
    assert first.prompt == ("Qual é o valor de 2020?\n"
                            "Responde à pergunta com uma única palavra ou expressão.")
    assert first.image.parent == tmp_path / "cache" / "images" / "chartqa_pt"
    assert first.image.exists()
    assert Image.open(first.image).size == (64, 48)
    # 12.5 = 12,5; case-insensitive text; 4 != 3; 0,4 = 40 %; 2021 is within 5 % of 2020
    raw = ["12.5", "lisboa", "4", "0,4", "2021"]
    scored = score_task(task, raw)
    assert scored.result["metric"] == "relaxed_accuracy"
    assert scored.result["score"] == pytest.approx(0.8)
    assert scored.result["n"] == 5 and scored.result["chance"] == 0.0
    assert scored.result["details"]["by_type"] == {"augmented_test": 0.5, "human_test": 1.0}
    assert scored.item_scores == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_limit_and_json_locations(tmp_path) -> None:
    buf = io.BytesIO()
    image().save(buf, format="PNG")
    (tmp_path / "img.png").write_bytes(buf.getvalue())
    rows = [{"image": "img.png", "question": f"q{i}", "answer": str(i), "type": "h"}
            for i in range(4)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    docs = load_docs(TASKS["chartqa_pt"], location=str(path), limit=2)
    assert len(docs) == 2
    task = prepare_task(TASKS["chartqa_pt"], run_dir=None, data_root=tmp_path,
                        cache_dir=tmp_path / "cache", location=str(path))
    assert [s.image for s in task.samples] == [tmp_path / "img.png"] * 4  # paths: no copies


def test_s3_parquet(tmp_path, s3_endpoint, chart_parquet) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="amalia-bench")
    client.upload_file(str(chart_parquet), "amalia-bench", "pt/chartqa/test.parquet")
    spec = TASKS["chartqa_pt"]
    for uri in ("s3://amalia-bench/pt/chartqa/test.parquet", "s3://amalia-bench/pt/chartqa"):
        task = prepare_task(spec, run_dir=None, data_root=None, cache_dir=tmp_path,
                            location=uri, s3_endpoint=s3_endpoint)
        assert len(task.samples) == 5
    with pytest.raises(TaskUnavailable, match="FileNotFoundError"):
        load_docs(spec, location="s3://amalia-bench/none.parquet", s3_endpoint=s3_endpoint,
                  download_dir=tmp_path / "dl")


def test_unusable_rows_are_dropped_with_reasons(tmp_path) -> None:
    rows = [{"image": image(), "question": "q", "answer": "1", "type": "h"},
            {"image": None, "question": "q", "answer": "1", "type": "h"},
            {"image": image(), "question": "q", "answer": None, "type": "h"}]
    path = write_parquet(tmp_path / "rows.parquet", rows)
    task = prepare_task(TASKS["chartqa_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path / "c", location=str(path))
    assert len(task.samples) == 1 and task.dropped == 2
    assert any("no image" in r for r in task.drop_reasons)
    assert any("no reference" in r for r in task.drop_reasons)
    only_bad = write_parquet(tmp_path / "bad.parquet", rows[1:])
    with pytest.raises(TaskUnavailable, match="no usable samples"):
        prepare_task(TASKS["chartqa_pt"], run_dir=None, data_root=None,
                     cache_dir=tmp_path / "c", location=str(only_bad))


def test_mme_pairs_and_pope_scores_equal_the_metrics(tmp_path) -> None:
    mme_rows = []
    for k, cat in enumerate(["existence", "count", "OCR", "code_reasoning"]):
        for ans in ("Sim", "Não"):
            mme_rows.append({"image": image((k * 50, 0, 0)), "category": cat,
                             "question_id": f"{cat}/{k}.png", "answer": ans,
                             "question": f"Há {k}? Please answer yes or no."})
    task = prepare_task(TASKS["mme_pt"], run_dir=None, data_root=None, cache_dir=tmp_path,
                        location=str(write_parquet(tmp_path / "mme.parquet", mme_rows)))
    assert "Please answer" not in task.samples[0].prompt
    raw = ["sim", "não", "sim", "sim", "não", "não", "Sim.", "Não."]
    scored = score_task(task, raw)
    direct = get_metric("mme").evaluate(raw, [[r["answer"]] for r in mme_rows],
                                        [{"category": r["category"],
                                          "question_id": r["question_id"]} for r in mme_rows])
    assert scored.result["score"] == pytest.approx(direct.score) == pytest.approx(500.0)
    assert scored.result["metrics"]["mme_perception"] == pytest.approx(300.0)
    assert scored.result["metrics"]["mme_cognition"] == pytest.approx(200.0)
    assert scored.result["chance"] == 1050.0 and scored.result["scale"] == 2800.0

    pope_rows = [{"image": image(), "question": "Há um gato na imagem?", "answer": a,
                  "question_id": str(i), "category": "random"}
                 for i, a in enumerate(["sim", "sim", "não", "não"])]
    task = prepare_task(TASKS["pope_pt"], run_dir=None, data_root=None, cache_dir=tmp_path,
                        location=str(write_parquet(tmp_path / "pope.parquet", pope_rows)))
    scored = score_task(task, ["Sim, há.", "Não.", "Não há.", "Sim"])
    assert scored.result["metric"] == "pope_f1"
    assert scored.result["score"] == pytest.approx(0.5)
    assert scored.result["metrics"]["pope_accuracy"] == pytest.approx(0.5)


def test_refcoco_rec_explodes_expressions_and_scores_normalised_boxes(tmp_path) -> None:
    rows = [{"image": image(size=(200, 100)), "question_id": "r1",
             "answer": ["o carro vermelho", "o carro à esquerda"],
             "bbox": [20.0, 10.0, 80.0, 40.0]}]  # COCO x, y, w, h in pixels
    task = prepare_task(TASKS["refcoco_bbox_rec_test_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path,
                        location=str(write_parquet(tmp_path / "ref.parquet", rows)))
    assert [s.id for s in task.samples] == ["r1#0", "r1#1"]
    assert task.samples[1].prompt.endswith("por esta frase: o carro à esquerda")
    # [0.1, 0.1, 0.5, 0.5] of 200x100 = [20, 10, 100, 50] = the reference box exactly
    scored = score_task(task, ["[0.1, 0.1, 0.5, 0.5]", "[0.6, 0.6, 0.9, 0.9]"])
    assert scored.result["score"] == pytest.approx(0.5)
    assert scored.item_scores == [1.0, 0.0]


def test_region_description_draws_the_box(tmp_path) -> None:
    rows = [{"image": image((255, 255, 255), (60, 40)), "question_id": "r1",
             "answer": ["o gato", "um gato"], "bbox": [10, 10, 20, 10]}]
    task = prepare_task(TASKS["refcoco_bbox_test_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path,
                        location=str(write_parquet(tmp_path / "ref.parquet", rows)))
    pixels = Image.open(task.samples[0].image).convert("RGB")
    assert pixels.getpixel((10, 10)) == (255, 0, 0) and pixels.getpixel((5, 5)) == (255,) * 3


def test_multi_image_documents_are_combined(tmp_path) -> None:
    rows = [{"image_1": image((255, 0, 0), (30, 20)), "image_2": image((0, 0, 255), (10, 40)),
             "image_3": None, "image_4": None, "image_5": None, "image_6": None,
             "image_7": None, "question": "Compara <image 1> e <image 2>.",
             "options": "['sim', 'não']", "answer": "A", "id": "m1",
             "question_type": "multiple-choice", "subfield": "arte"}]
    task = prepare_task(TASKS["mmmu_val_pt"], run_dir=None, data_root=None, cache_dir=tmp_path,
                        location=str(write_parquet(tmp_path / "mmmu.parquet", rows)))
    sample = task.samples[0]
    assert sample.n_images == 2 and Image.open(sample.image).size == (40, 40)
    assert sample.prompt.startswith("Compara <image 1> e <image 2>.\nA. sim\nB. não\n\n")
    scored = score_task(task, ["A resposta é (A)."])
    assert scored.result["score"] == 1.0 and scored.result["chance"] == 0.5
    assert scored.result["details"]["multi_image_samples"] == 1


def test_dialect_shares_count_each_variety() -> None:
    from components.variety import make_detector

    texts = ["Estou a ver um autocarro e um comboio na estação.",
             "Estou vendo um ônibus e um trem na estação.", "3"]
    shares = dialect_shares(texts, make_detector("cues"))
    assert shares["n"] == 3 and shares["decided"] == 2
    assert shares["pt_PT"] == pytest.approx(1 / 3) and shares["pt_BR"] == pytest.approx(1 / 3)
    assert shares["unknown"] == pytest.approx(1 / 3) and shares["pt_PT_of_decided"] == 0.5


def test_generation_budget() -> None:
    spec = TASKS["chartqa_pt"]
    assert max_new_tokens_for(spec, 8) == 16
    assert max_new_tokens_for(spec, 8, cap=4) == 4
    assert max_new_tokens_for(TASKS["count"], 8) == 8


def test_tiny_model_answers_the_chartqa_parquet(chart_parquet, tmp_path) -> None:
    from components.model.build import build_tiny_model
    from components.settings import load_settings
    from components.variety import make_detector

    settings = load_settings("tiny")
    texts = [r["question"] for r in CHART_ROWS] + [r["answer"] for r in CHART_ROWS]
    model, processor = build_tiny_model(settings, texts * 3)
    task = prepare_task(TASKS["chartqa_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path, location=str(chart_parquet))
    raw = generate(model, processor, task, max_new_tokens=4, batch_size=3)
    assert len(raw) == 5 and all(isinstance(r, str) for r in raw)
    assert raw == generate(model, processor, task, max_new_tokens=4, batch_size=1)  # greedy
    scored = score_task(task, raw, make_detector("cues"))
    assert 0.0 <= scored.result["score"] <= 1.0 and scored.result["n"] == 5
    assert scored.result["dialect"]["n"] == 5 and len(scored.labels) == 5


def test_ai2d_scores_the_extracted_letter_and_realworldqa_chance(tmp_path) -> None:
    rows = [{"image": image(), "question": "Qual é a capital?", "answer": "1",
             "options": ["Porto", "Lisboa", "Faro"]}] * 3
    task = prepare_task(TASKS["ai2d_pt"], run_dir=None, data_root=None, cache_dir=tmp_path,
                        location=str(write_parquet(tmp_path / "ai2d.parquet", rows)))
    scored = score_task(task, ["B. Lisboa", "B", "Lisboa"])
    assert scored.predictions == ["B. Lisboa", "B", "Lisboa"]  # the metric reads the letter
    assert scored.item_scores_lmms == [1.0, 1.0, 0.0]  # lmms-eval's filter + exact_match
    assert scored.item_scores == [1.0, 1.0, 1.0]  # pt: the option's text is its letter
    assert scored.result["score_lmms"] == pytest.approx(2 / 3)
    assert scored.result["score"] == scored.result["metrics"]["mc_accuracy"] == 1.0
    assert scored.result["chance"] == pytest.approx(1 / 3)

    rows = [{"image": image(), "answer": "C", "question": "Para onde?\nA. Esquerda\n"
             "B. Em frente\nC. Direita\nResponde diretamente com a letra."},
            {"image": image(), "answer": "2", "question": "Quantos carros há?"}]
    task = prepare_task(TASKS["realworldqa_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path, location=str(write_parquet(tmp_path / "r.parquet",
                                                                       rows)))
    scored = score_task(task, ["(C)", "dois"])
    assert scored.result["chance"] == pytest.approx((1 / 3 + 0) / 2)
    # an open gold: lmms compares text ("dois" is not "2"), pt reads pt-PT number words
    assert scored.item_scores_lmms == [1.0, 0.0] and scored.item_scores == [1.0, 1.0]


def test_tiny_model_stops_at_the_tasks_stop_strings(chart_parquet, tmp_path,
                                                    monkeypatch) -> None:
    from components.evaltasks.prompts import extract_answer
    from components.model.build import build_tiny_model
    from components.settings import load_settings

    texts = [r["question"] for r in CHART_ROWS] + [r["answer"] for r in CHART_ROWS]
    model, processor = build_tiny_model(load_settings("tiny"), texts * 3)
    task = prepare_task(TASKS["chartqa_pt"], run_dir=None, data_root=None,
                        cache_dir=tmp_path, location=str(chart_parquet))
    free = generate(model, processor, task, max_new_tokens=8, batch_size=5)
    # the untrained model writes bytes; stop at a letter it writes after its first character
    stop = next((ch for a in free for ch in a[1:-1] if ch.isascii() and ch.isalnum()), None)
    if stop is None:
        pytest.skip("the tiny model wrote no letter to stop at")
    task.spec = TASKS["chartqa_pt"].model_copy(update={
        "generation": TASKS["chartqa_pt"].generation.model_copy(update={"until": [stop]})})
    calls = []
    original = model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    stopped = generate(model, processor, task, max_new_tokens=8, batch_size=5)
    assert calls and calls[0]["stop_strings"] == [stop]
    assert calls[0]["tokenizer"] is processor.tokenizer
    # decoding ends at the stop string; the scored answer is the same either way
    assert any(len(s) < len(f) for s, f in zip(stopped, free, strict=True))
    assert [extract_answer(task.spec, s) for s in stopped] == \
        [extract_answer(task.spec, f) for f in free]
