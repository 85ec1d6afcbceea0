"""Evaluation tasks as data: the YAML schema, the shipped task folder, name resolution.

One YAML file per task (in the spirit of lmms-eval) under `components/evaltasks/tasks/`
(shipped as package data), plus any folders named in `settings.evaluate.task_dirs`. A file
holds either a task (`task:` key) or a group (`group:` + `tasks:`, expanded where named).

A task says where its documents come from (`dataset`), which document fields hold the
image(s), question, references and options (`fields`), how the pt-PT prompt is built
(`prompt`), how the answer is cut out of the generation (`extract`), how long greedy
generation may run (`generation`), which standard metrics score it (`metrics`, names of
`components.metrics`; the first is the headline score), which lmms-eval task's answer
reading those metrics follow (`profile`: `ai2d`, `mmstar`, `seedbench`, `realworldqa`,
`embspatial`, `mmmu`, `mmmu_pro`, `mmmu_pro_vision`, `textvqa`, `vqav2`), its chance level
and its score
scale (`score_scale`: the best possible headline score, by default the headline metric's
`best`: 10 for CIDEr-D, 2800 for MME, else 1; summaries divide by it, so a scale below
the metric's best is refused). Every key is
validated (unknown keys are errors), so a typo fails when the suite is loaded, not after
an hour of generation; an unknown metric or a profile none of the task's metrics reads is
refused at load. Every metric is scored in both modes (`pt`, the headline `score`, and
`lmms`, `score_lmms`: see `components.metrics.base`).

`load_tasks()` reads every YAML of the folders; `resolve(names)` expands groups and fails
with the list of known names; `list_tasks()` is the `amalia-vl eval-tasks list` face.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from components.errors import ConfigError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASKS: tuple[str, ...] = ("count", "colour", "position", "chart", "document")
IMAGE_WIDTH, IMAGE_HEIGHT = "$image_width", "$image_height"  # computed extras


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """Where the documents come from.

    `kind`: `hub` (`datasets.load_dataset(path, name, split=split)`), `parquet` / `json`
    (local file or folder, or an `s3://` URI read through fsspec), `run_mix` (the run's
    `<run>/mix/<file>` records, filtered to `task_family`), or `auto` (decided from `path`:
    `s3://`, an existing local path or a `.parquet`/`.jsonl` suffix is a file, else a hub id).
    `explode`: a list-valued field whose every element becomes its own sample (RefCOCO's
    referring expressions, as lmms-eval's `process_docs` does).
    """

    kind: Literal["auto", "hub", "parquet", "json", "run_mix"] = "auto"
    path: str | None = None
    name: str | None = Field(None, description="hub config (subset) name")
    split: str = "test"
    revision: str | None = None
    file: str = "eval.jsonl"
    task_family: str | None = None
    explode: str | None = None

    def model_post_init(self, _ctx: Any) -> None:
        if self.kind != "run_mix" and not self.path:
            raise ValueError(f"dataset kind '{self.kind}' needs a path")


class FieldsSpec(_Strict):
    """Which document fields hold what.

    `image`: one field, or a list of fields (MMMU's image_1..image_7; empty ones skipped);
    a field may hold a PIL image, `{"bytes", "path"}`, a path (relative to the data root)
    or a list of those. `answers`: the reference field, read as `answer_kind`:
    `text` (one string), `list` (several references), `option_index` (an index into the
    options, turned into its letter), `box` (four numbers, written as "[a, b, c, d]").
    `options`: a field holding a list (or its Python/JSON text), or a list of fields (one
    option each: SEED-Bench's choice_a..choice_d). `extras` map a metric keyword (see each
    metric's `fields`) to a document field, `$image_width` / `$image_height`; `constants`
    are fixed metric keywords. `breakdown`: a field whose values get their own headline
    score in the details (ChartQA's human/augmented split).
    """

    image: str | list[str] | None = "image"
    question: str | None = "question"
    answers: str | None = "answer"
    answer_kind: Literal["text", "list", "option_index", "box"] = "text"
    options: str | list[str] | None = None
    id: str | None = None
    extras: dict[str, str] = Field(default_factory=dict)
    constants: dict[str, Any] = Field(default_factory=dict)
    breakdown: str | None = None


class PromptSpec(_Strict):
    """The pt-PT prompt: `pre_prompt + template + post_prompt`.

    `template` is a `str.format` template over the document fields plus `{question}` (the
    question field, with `question_strip` strings removed) and `{options}` (the options
    rendered one per line as `option_format`, led by `options_prefix`; empty when the
    document has no options). `post_prompt_no_options` replaces `post_prompt` for documents
    without options (MMMU's open questions). The image is not written into the text: the
    chat template puts it before the prompt.
    """

    template: str = "{question}"
    pre_prompt: str = ""
    post_prompt: str = ""
    post_prompt_no_options: str | None = None
    option_format: str = "{letter}. {option}"
    options_separator: str = "\n"
    options_prefix: str = "\n"
    question_strip: list[str] = Field(default_factory=list)


class ExtractSpec(_Strict):
    """Cut the answer out of the generation (applied after `generation.until`).

    `first_line`: keep the first non-empty line. `regex`: keep group 1 (or the whole match)
    of the first match; no match keeps the text. Metrics do their own parsing (option
    letters, yes/no, boxes), so most tasks need nothing here.
    """

    first_line: bool = False
    regex: str | None = None


class GenerationSpec(_Strict):
    """Greedy generation settings (lmms-eval `generation_kwargs`).

    `max_new_tokens` null = `settings.evaluate.max_new_tokens`. `until`: stop strings, given
    to `generate` (transformers' `stop_strings`, so decoding ends there) and cut off the
    text afterwards. Sampling is refused: every score here is a greedy score.
    """

    max_new_tokens: int | None = Field(None, ge=1)
    until: list[str] = Field(default_factory=list)
    do_sample: Literal[False] = False
    temperature: float = Field(0.0, ge=0.0, le=0.0)


class VisualSpec(_Strict):
    """Image handling: `draw_box` outlines a box field on the image (RefCOCO region
    description; `box_format` `xywh` or `xyxy`, pixels); several images are combined side
    by side (`multi: concat`) or only the first is kept (`multi: first`), because the
    model's prompt holds one image."""

    draw_box: str | None = None
    box_format: Literal["xywh", "xyxy"] = "xywh"
    multi: Literal["concat", "first"] = "concat"


class SourceSpec(_Strict):
    """Provenance: the lmms-eval task this one mirrors (split, metric and prompt)."""

    lmms_eval_task: str | None = None
    upstream_dataset: str | None = None
    paper: str | None = None


class TaskSpec(_Strict):
    """One evaluation task (see the module docstring).

    `chance`: the expected headline score of a guess: a number, `options` (1 / number of
    options of each document) or `options_in_question` (1 / number of "A." / "(A)" option
    lines written inside the question, 0 for a question without them: RealWorldQA).
    """

    task: str
    title: str
    kind: Literal["local", "translated", "native"] = "translated"
    dataset: DatasetSpec
    fields: FieldsSpec = FieldsSpec()
    prompt: PromptSpec = PromptSpec()
    extract: ExtractSpec = ExtractSpec()
    generation: GenerationSpec = GenerationSpec()
    visual: VisualSpec = VisualSpec()
    metrics: list[str] = Field(min_length=1)
    profile: str | None = Field(None, description="the lmms-eval task whose answer reading "
                                "the metrics follow (components.metrics.PROFILES)")
    chance: float | Literal["options", "options_in_question"] = 0.0
    score_scale: float = Field(1.0, gt=0, description="the best possible headline score")
    source: SourceSpec = SourceSpec()
    notes: str = ""
    path: str | None = Field(None, description="the YAML it was read from (set on load)")

    @field_validator("task")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.replace("_", "").isalnum() or not v[0].isalpha():
            raise ValueError(f"task name {v!r} must be letters, digits and underscores")
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        from components.metrics import METRICS

        unknown = [m for m in v if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(sorted(METRICS))}")
        return v

    @model_validator(mode="after")
    def _known_profile(self) -> TaskSpec:
        from components.metrics import PROFILES

        if self.profile is None:
            return self
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: "
                             f"{', '.join(sorted(PROFILES))}")
        readers = PROFILES[self.profile]
        if not any(m in readers for m in self.metrics):
            raise ValueError(f"profile {self.profile!r} is read by {', '.join(readers)}, "
                             f"none of which is in metrics {self.metrics}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_scale(cls, data: Any) -> Any:
        """No `score_scale` given: the headline metric's best possible score."""
        if not isinstance(data, dict) or data.get("score_scale") is not None:
            return data
        from components.metrics import METRICS

        metrics = data.get("metrics")
        first = metrics[0] if isinstance(metrics, list) and metrics else None
        if isinstance(first, str) and first in METRICS:
            return {**data, "score_scale": METRICS[first].best}
        return data

    @model_validator(mode="after")
    def _scale_reaches_best(self) -> TaskSpec:
        from components.metrics import METRICS

        best = METRICS[self.primary_metric].best
        if self.score_scale < best:
            raise ValueError(f"score_scale {self.score_scale} is below the best possible "
                             f"{self.primary_metric} score {best}: summaries would exceed 1")
        return self

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]


class GroupSpec(_Strict):
    """A named list of tasks (PorTEXTO's four subsets, CARAVELA's three)."""

    group: str
    title: str
    tasks: list[str] = Field(min_length=1)
    notes: str = ""
    path: str | None = None


def _read_yaml(path: Path) -> TaskSpec | GroupSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"task file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not ({"task", "group"} & set(raw)):
        raise ConfigError(f"task file {path} has neither a 'task' nor a 'group' key")
    model = GroupSpec if "group" in raw and "task" not in raw else TaskSpec
    try:
        return model.model_validate({**raw, "path": str(path)})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid task file {path}: {where}: {first['msg']}") from None


def _load(dirs: tuple[str, ...]) -> tuple[dict[str, TaskSpec], dict[str, GroupSpec]]:
    """Every task and group of `dirs`, re-read when a file was added, removed or changed."""
    signature = []
    for folder in dirs:
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"task folder {root} not found", "fix evaluate.task_dirs")
        signature += [(str(p), p.stat().st_mtime_ns, p.stat().st_size)
                      for p in sorted(root.glob("*.yaml"))]
    return _load_files(dirs, tuple(signature))


@lru_cache(maxsize=8)
def _load_files(dirs: tuple[str, ...],
                _signature: tuple) -> tuple[dict[str, TaskSpec], dict[str, GroupSpec]]:
    tasks: dict[str, TaskSpec] = {}
    groups: dict[str, GroupSpec] = {}
    for folder in dirs:
        for path in sorted(Path(folder).glob("*.yaml")):
            spec = _read_yaml(path)
            name = spec.task if isinstance(spec, TaskSpec) else spec.group
            if name in tasks or name in groups:
                raise ConfigError(f"task or group '{name}' defined twice (again in {path})")
            if isinstance(spec, TaskSpec):
                tasks[name] = spec
            else:
                groups[name] = spec
    for group in groups.values():
        missing = [t for t in group.tasks if t not in tasks]
        if missing:
            raise ConfigError(f"group '{group.group}' ({group.path}) names unknown tasks "
                              f"{missing}")
    return tasks, groups


def load_tasks(extra_dirs: list[str] | tuple[str, ...] = ()) -> dict[str, TaskSpec]:
    """Every task of the shipped folder plus `extra_dirs`, by name."""
    return dict(_load((str(TASKS_DIR), *map(str, extra_dirs)))[0])


def load_groups(extra_dirs: list[str] | tuple[str, ...] = ()) -> dict[str, GroupSpec]:
    return dict(_load((str(TASKS_DIR), *map(str, extra_dirs)))[1])


def resolve(names: list[str], extra_dirs: list[str] | tuple[str, ...] = ()) -> list[TaskSpec]:
    """The tasks named (groups expanded), in order, each once; unknown names fail."""
    tasks, groups = _load((str(TASKS_DIR), *map(str, extra_dirs)))
    out: list[TaskSpec] = []
    for name in names:
        if name in groups:
            members = groups[name].tasks
        elif name in tasks:
            members = [name]
        else:
            raise ConfigError(f"unknown evaluation task '{name}'",
                              "known: " + ", ".join(sorted([*tasks, *groups])))
        out += [tasks[m] for m in members if tasks[m] not in out]
    return out


def list_tasks(extra_dirs: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per task for `amalia-vl eval-tasks list`: name, title, kind, dataset, split,
    metrics, group (if any)."""
    tasks, groups = _load((str(TASKS_DIR), *map(str, extra_dirs)))
    member_of = {t: g for g, spec in groups.items() for t in spec.tasks}
    rows = []
    for name, spec in sorted(tasks.items(), key=lambda kv: (kv[1].kind != "local", kv[0])):
        ds = spec.dataset
        where = ds.path if ds.kind != "run_mix" else f"<run>/mix/{ds.file}#{ds.task_family}"
        rows.append({
            "task": name, "title": spec.title, "kind": spec.kind, "group": member_of.get(name),
            "dataset": where + (f" [{ds.name}]" if ds.name else ""), "split": ds.split,
            "metrics": list(spec.metrics),
        })
    return rows
