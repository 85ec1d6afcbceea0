"""Prompts: every task's pt-PT prompt is frozen in a snapshot (silent drift fails here),
reads as European Portuguese, and the building blocks (options, references, extraction)
behave as the lmms-eval task files they mirror.

A deliberate prompt change: `AMALIA_UPDATE_SNAPSHOTS=1 pytest tests/test_evaltasks_prompts.py`
rewrites tests/snapshots/prompts/<task>.txt; review the diff and commit it with the change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.errors import ConfigError
from components.evaltasks.examples import example_prompt
from components.evaltasks.prompts import (
    doc_answers,
    doc_options,
    extract_answer,
    metric_extras,
    render_prompt,
)
from components.evaltasks.spec import TaskSpec, load_tasks

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots" / "prompts"
UPDATE = os.environ.get("AMALIA_UPDATE_SNAPSHOTS") == "1"
TASKS = load_tasks()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompt_matches_snapshot(name: str) -> None:
    prompt = example_prompt(TASKS[name])
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(parents=True, exist_ok=True)
        path.write_text(prompt, encoding="utf-8")
    assert path.exists(), f"no snapshot for {name}: run with AMALIA_UPDATE_SNAPSHOTS=1"
    assert prompt == path.read_text(encoding="utf-8"), (
        f"the prompt of task {name} changed; if intended, update the snapshot "
        "(AMALIA_UPDATE_SNAPSHOTS=1) and review the diff")


def test_no_snapshot_is_orphaned() -> None:
    assert {p.stem for p in SNAPSHOTS.glob("*.txt")} == set(TASKS)


def test_no_prompt_reads_as_brazilian_portuguese() -> None:
    from components.variety import make_detector

    detector = make_detector("cues")
    texts = {n: example_prompt(s) for n, s in TASKS.items()}
    labels = dict(zip(texts, (r["label"] for r in detector.classify(list(texts.values()))),
                      strict=True))
    assert not [n for n, label in labels.items() if label == "pt-BR"]


def _spec(**over) -> TaskSpec:
    base = {"task": "t", "title": "t", "dataset": {"path": "x/y"}, "metrics": ["exact_match"]}
    return TaskSpec.model_validate({**base, **over})


def test_options_render_like_lmms_eval_mcq() -> None:
    spec = _spec(fields={"options": "options"}, prompt={
        "template": "{question}{options}", "post_prompt": "\nResponde com a letra."})
    doc = {"question": "Qual?", "options": "['um', 'dois']"}  # MMMU stores a Python list text
    assert render_prompt(spec, doc) == "Qual?\nA. um\nB. dois\nResponde com a letra."
    open_doc = {"question": "Quanto?", "options": "[]"}
    spec_open = _spec(fields={"options": "options"}, prompt={
        "template": "{question}{options}", "post_prompt": "\nletra",
        "post_prompt_no_options": "\nnúmero"})
    assert render_prompt(spec_open, open_doc) == "Quanto?\nnúmero"
    seed = _spec(fields={"options": ["choice_a", "choice_b"]}, prompt={
        "template": "{question}{options}", "option_format": "{letter}) {option}"})
    assert render_prompt(seed, {"question": "Q", "choice_a": "x", "choice_b": "y"}) == \
        "Q\nA) x\nB) y"


def test_template_fields_strip_and_image_placeholders() -> None:
    spec = _spec(fields={"question": None}, prompt={"template": "Descreve: {answer}"})
    assert render_prompt(spec, {"answer": "o gato"}) == "Descreve: o gato"
    mme = _spec(prompt={"question_strip": [" Please answer yes or no."],
                        "post_prompt": "\nResponde."})
    assert render_prompt(mme, {"question": "Há um gato? Please answer yes or no."}) == \
        "Há um gato?\nResponde."
    # a literal <image> would add image tokens without an image
    assert render_prompt(_spec(), {"question": "Vê <image> aqui"}) == "Vê <imagem> aqui"
    with pytest.raises(ConfigError, match="names field 'missing'"):
        render_prompt(_spec(prompt={"template": "{missing}"}), {"question": "q"})


def test_references_in_every_kind() -> None:
    assert doc_answers(_spec(), {"answer": 3}) == ["3"]
    lst = _spec(fields={"answers": "answers", "answer_kind": "list"})
    assert doc_answers(lst, {"answers": ["a", "b"]}) == ["a", "b"]
    idx = _spec(fields={"answer_kind": "option_index", "options": "options"})
    assert doc_answers(idx, {"answer": "2", "options": ["x", "y", "z"]}) == ["C"]
    box = _spec(fields={"answers": "bbox", "answer_kind": "box"})
    assert doc_answers(box, {"bbox": [1, 2, 3, 4]}) == ["[1.0, 2.0, 3.0, 4.0]"]
    with pytest.raises(ValueError, match="no reference"):
        doc_answers(_spec(), {"question": "q"})


def test_metric_extras_fields_constants_and_image_size() -> None:
    spec = _spec(fields={"options": "options", "extras": {
        "category": "cat", "image_width": "$image_width", "image_height": "$image_height"},
        "constants": {"box_format": "norm1"}})
    doc = {"cat": "OCR", "options": ["a", "b"]}
    assert metric_extras(spec, doc, doc_options(spec, doc), (640, 480)) == {
        "box_format": "norm1", "options": ["a", "b"], "category": "OCR",
        "image_width": 640, "image_height": 480}


def test_extraction_stops_first_line_and_regex() -> None:
    spec = _spec(generation={"until": ["ASSISTANT:"]}, extract={"first_line": True})
    assert extract_answer(spec, "\n Lisboa\nPorto ASSISTANT: x") == "Lisboa"
    boxed = _spec(extract={"regex": "\\\\boxed\\{([^{}]*)\\}"})
    assert extract_answer(boxed, "Passo 1... logo \\boxed{12,5}.") == "12,5"
    assert extract_answer(boxed, "sem caixa") == "sem caixa"
    # the benchmark tasks leave the reading of the answer to their metric's profile
    for name in ("ai2d_pt", "realworldqa_pt", "mathvision_test_pt"):
        assert TASKS[name].extract.regex is None, name
        assert extract_answer(TASKS[name], " A resposta é (B). ") == "A resposta é (B)."


def test_ai2d_reads_the_option_letter_like_lmms_eval_flexible_extract() -> None:
    from components.metrics import get_metric

    ai2d = TASKS["ai2d_pt"]
    assert ai2d.profile == "ai2d" and ai2d.primary_metric == "mc_accuracy"
    metric = get_metric(ai2d.primary_metric)
    options = ["Lisboa", "Porto", "Coimbra", "Faro"]
    extras = metric_extras(ai2d, {"options": options}, options, None)
    assert extras == {"profile": "ai2d", "options": options}

    def score(answer: str, gold: str, mode: str) -> float:
        return metric.score(answer, [gold], mode=mode, **extras)

    # lmms-eval ai2d MultiChoiceRegexFilter: a leading "X." is the letter, else kept as is,
    # then exact_match ignoring case and punctuation
    assert score("B. Porto", "B", "lmms") == 1.0
    assert score("  C. Coimbra, a cidade dos estudantes", "C", "lmms") == 1.0
    assert score("**B**", "B", "lmms") == 1.0
    assert score("B) Porto", "B", "lmms") == 0.0
    assert score("Porto", "B", "lmms") == 0.0
    # pt: the same, plus option texts and explicit answers
    assert score("Porto", "B", "pt") == 1.0
    assert score("B) Porto", "B", "pt") == 1.0
    assert score("A resposta é C", "C", "pt") == 1.0


def test_chance_from_options_listed_in_the_question() -> None:
    from components.evaltasks.prompts import chance_of, options_in_text

    three = "Para onde vira o carro?\nA. Esquerda\nB. Em frente\nC. Direita\nResponde com a letra."
    assert options_in_text(three) == 3
    assert options_in_text("Qual?\n(A) sim\n(B) não") == 2
    assert options_in_text("Quantos carros há? Responde com um número.") == 0
    assert options_in_text("B. só a segunda\nC. e a terceira") == 0  # must start at A
    rwqa = TASKS["realworldqa_pt"]
    assert chance_of(rwqa, None, {"question": three}) == pytest.approx(1 / 3)
    assert chance_of(rwqa, None, {"question": "Quantos carros há?"}) == 0.0
    assert chance_of(_spec(chance="options"), ["a", "b", "c", "d"]) == 0.25
