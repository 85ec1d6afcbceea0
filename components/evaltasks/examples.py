"""A fixed example document for any task: what its prompt looks like, without its dataset.

`example_doc(spec)` fills every field the task reads (image, question, options, references,
template fields, exploded and box fields) with the same pt-PT values, so the rendered
prompt of every task can be shown offline (`amalia-vl eval-tasks show TASK`) and frozen in
prompt snapshots (tests/snapshots/prompts/): a changed template, post prompt or option
format shows up as a snapshot diff instead of a silent score change.
"""

from __future__ import annotations

import string
from typing import Any

from PIL import Image, ImageDraw

from components.evaltasks.spec import TaskSpec

QUESTION = "Qual é a cidade assinalada no mapa?"
OPTIONS = ["Lisboa", "Porto", "Coimbra", "Faro"]


def example_image(width: int = 64, height: int = 48) -> Image.Image:
    """A small deterministic RGB image (a blue square on white)."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).rectangle([8, 8, 31, 31], fill=(30, 70, 225))
    return image


def example_doc(spec: TaskSpec) -> dict[str, Any]:
    """A document with every field `spec` reads (see the module docstring)."""
    f = spec.fields
    doc: dict[str, Any] = {}
    images = [f.image] if isinstance(f.image, str) else list(f.image or [])
    for i, name in enumerate(images):
        doc[name] = example_image() if i == 0 else None
    if f.question:
        doc[f.question] = QUESTION
    if isinstance(f.options, list):
        doc.update(zip(f.options, OPTIONS, strict=False))
    elif f.options:
        doc[f.options] = list(OPTIONS)
    if f.answers:
        doc[f.answers] = {"text": "Lisboa", "list": ["Lisboa", "lisboa", "Lisboa"],
                          "option_index": 0, "box": [8.0, 8.0, 24.0, 24.0]}[f.answer_kind]
    if f.id:
        doc[f.id] = "exemplo-0001"
    for field in f.extras.values():
        if not field.startswith("$"):
            doc.setdefault(field, "exemplo")
    if f.breakdown:
        doc.setdefault(f.breakdown, "exemplo")
    if spec.visual.draw_box:
        doc[spec.visual.draw_box] = [8.0, 8.0, 24.0, 24.0]
    if spec.dataset.explode:
        doc[spec.dataset.explode] = ["a cidade mais a sul", "a capital"]
    for _, name, _, _ in string.Formatter().parse(spec.prompt.template):
        if name and name not in ("question", "options"):
            doc.setdefault(name, f"<{name}>")
    return doc


def example_prompt(spec: TaskSpec) -> str:
    """The prompt of the example document (the first sample when rows are exploded)."""
    from components.evaltasks.prompts import render_prompt

    doc = example_doc(spec)
    if spec.dataset.explode:
        doc = {**doc, spec.dataset.explode: doc[spec.dataset.explode][0]}
    return render_prompt(spec, doc)
