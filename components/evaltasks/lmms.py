"""lmms-eval interop: export our task YAMLs as an lmms-eval include path.

AMALIA's own numbers come from lmms-eval's `llava_hf` model; users who already run
lmms-eval can run our suite there unchanged:

    amalia-vl eval-tasks export-lmms lmms_tasks/          # export_lmms_eval("lmms_tasks")
    pip install "amalia-vl[lmms]"                          # lmms-eval (torch 2.14, CUDA)
    python -m lmms_eval --model llava_hf \\
        --model_args pretrained=runs/<run>/dpo/model,device=cuda --batch_size 1 \\
        --include_path lmms_tasks --tasks chartqa_pt,pope_pt,portexto

`export_lmms_eval(out_dir)` writes, per task, `<task>.yaml` with the keys lmms-eval's
`TaskConfig` reads (`task`, `dataset_path`, `dataset_name`, `dataset_kwargs`,
`test_split`, `output_type: generate_until`, `doc_to_visual`, `doc_to_text`,
`doc_to_target`, `process_results`, `process_docs` when rows must be filtered or
exploded, `generation_kwargs`, `metric_list` with `aggregation` and `higher_is_better`,
`lmms_eval_specific_kwargs`, `metadata`), one YAML per group (`group`, `task`,
`aggregate_metric_list` when the members share a headline metric), `amalia_vl_suite.yaml`
(every exported task), `utils.py` (the `!function` hooks) and `amalia_specs.json` (the task
specs the hooks read). The hooks call this package: `render_prompt` for `doc_to_text` and
`components.metrics` in the aggregations, in the `lmms` scoring mode (lmms-eval's own
reading of the answers), so an lmms-eval score and the `score_lmms` of an `amalia-vl stage
evaluate` run on the same generations are the same number. `amalia-vl` must be importable
in the lmms-eval environment.

Prompt parity with llava_hf: lmms-eval's `llava_hf` prepends "<image>\\n" to a prompt that
holds no "<image>"; our training and harness render "<image>" + prompt (no newline). The
`llava_hf` entry of `lmms_eval_specific_kwargs` therefore sets `image_prefix: "<image>"`,
so llava_hf sends exactly the token ids our harness sends; other models get
`image_prefix: ""` (the `default` entry) and place the image their own way.

Embedded tasks (`run_mix`) are exported only when `run_dir` is given: they then read
`<run>/mix/eval.jsonl` through the `json` builder and images from `data_root`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from components.evaltasks.harness import _docs_exploded
from components.evaltasks.prompts import (
    doc_answers,
    doc_options,
    extract_answer,
    metric_extras,
    render_prompt,
)
from components.evaltasks.spec import TaskSpec, load_groups, load_tasks, resolve
from components.evaltasks.visuals import doc_pil

SPECS_FILE = "amalia_specs.json"
SUITE_GROUP = "amalia_vl_suite"
LLAVA_HF_PREFIX = "<image>"


class FunctionRef(str):
    """A `!function utils.name` tag in the exported YAML."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = '"' if "\n" in value else None  # "\nResponde ..." stays on one line
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(FunctionRef,
                        lambda d, v: d.represent_scalar("!function", str(v)))
_QUOTED_FUNCTION = re.compile(r"!function '(utils\.\w+)'")


def _fn(name: str) -> FunctionRef:
    return FunctionRef(f"utils.{name}")


class TaskBridge:
    """The lmms-eval hooks of one task, built from its spec (see the module docstring)."""

    def __init__(self, spec: TaskSpec, image_root: str | None = None):
        self.spec = spec
        self.image_root = Path(image_root) if image_root else None

    @classmethod
    def from_export(cls, specs_path: str | Path, task: str) -> TaskBridge:
        return _bridge(str(specs_path), task)

    # -- lmms-eval hooks ------------------------------------------------------------
    def _image(self, doc: dict[str, Any]):
        v = self.spec.visual
        box = doc.get(v.draw_box) if v.draw_box else None
        image, _ = doc_pil(doc, self.spec.fields.image, root=self.image_root, box=box,
                           box_format=v.box_format, multi=v.multi)
        return image

    def doc_to_visual(self, doc: dict[str, Any]) -> list:
        image = self._image(doc)
        return [image] if image is not None else []

    def doc_to_text(self, doc: dict[str, Any],
                    lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
        kw = lmms_eval_specific_kwargs or {}
        prompt = render_prompt(self.spec, doc, pre_prompt=kw.get("pre_prompt"),
                               post_prompt=kw.get("post_prompt"),
                               post_prompt_no_options=kw.get("post_prompt_no_options"))
        return f"{kw.get('image_prefix', '')}{prompt}"

    def doc_to_target(self, doc: dict[str, Any]) -> str | list[str]:
        answers = doc_answers(self.spec, doc, doc_options(self.spec, doc))
        return answers[0] if len(answers) == 1 else answers

    def item(self, doc: dict[str, Any], raw: str) -> dict[str, Any]:
        """What the aggregations need of one scored document."""
        options = doc_options(self.spec, doc)
        size = None
        if any(v.startswith("$") for v in self.spec.fields.extras.values()):
            image = self._image(doc)
            size = image.size if image is not None else None
        return {"prediction": extract_answer(self.spec, raw),
                "answers": doc_answers(self.spec, doc, options),
                "extras": metric_extras(self.spec, doc, options, size)}

    def process_results(self, doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
        item = self.item(doc, results[0] if results else "")
        return {metric: item for metric in self.spec.metrics}

    def process_docs(self, dataset):
        """Filter to the task family (run_mix) and explode list fields (RefCOCO)."""
        family = self.spec.dataset.task_family if self.spec.dataset.kind == "run_mix" else None
        if family is not None:
            dataset = dataset.filter(lambda d: d.get("task_family") == family)
        if self.spec.dataset.explode is None:
            return dataset
        import datasets

        return datasets.Dataset.from_list([d for _, _, d in _docs_exploded(self.spec, dataset)])

    def aggregation(self, metric: str, mode: str = "lmms"):
        """An lmms-eval aggregation: the metric over every item (corpus metrics included),
        in the `lmms` scoring mode by default."""
        from components.metrics import check_mode, get_metric

        scorer = get_metric(metric)
        check_mode(mode)

        def aggregate(items: list[dict[str, Any]]) -> float:
            result = scorer.evaluate([i["prediction"] for i in items],
                                     [i["answers"] for i in items],
                                     [i["extras"] for i in items], mode=mode)
            return float(result.score)

        aggregate.__name__ = f"{self.spec.task}_{metric}"
        return aggregate


@lru_cache(maxsize=256)
def _bridge(specs_path: str, task: str) -> TaskBridge:
    entry = _read_specs(specs_path)[task]
    return TaskBridge(TaskSpec.model_validate(entry["spec"]), entry.get("image_root"))


@lru_cache(maxsize=8)
def _read_specs(specs_path: str) -> dict[str, Any]:
    return json.loads(Path(specs_path).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------ export


def _dataset_keys(spec: TaskSpec, location: str | None, run_dir: Path | None) -> dict[str, Any]:
    ds = spec.dataset
    if ds.kind == "run_mix" and location is None:
        path = (Path(run_dir) / "mix" / ds.file).resolve()
        return {"dataset_path": "json",
                "dataset_kwargs": {"data_files": {ds.split: str(path)}}, "test_split": ds.split}
    where = location or ds.path or ""
    from components.evaltasks.loaders import location_kind

    kind = location_kind(where, "auto" if location else ds.kind)
    if kind in ("hub", "folder"):
        out: dict[str, Any] = {"dataset_path": str(Path(where).resolve()) if kind == "folder"
                               else where}
        if ds.name:
            out["dataset_name"] = ds.name
        if ds.revision:
            out["dataset_kwargs"] = {"revision": ds.revision}
        out["test_split"] = ds.split
        return out
    files = where if where.startswith("s3://") else str(Path(where).resolve())
    return {"dataset_path": kind, "dataset_kwargs": {"data_files": {ds.split: files}},
            "test_split": ds.split}


def task_config(spec: TaskSpec, *, location: str | None = None, run_dir: Path | None = None,
                default_max_new_tokens: int = 8) -> dict[str, Any]:
    """The lmms-eval YAML mapping of one task (function hooks as `FunctionRef`s)."""
    t = spec.task
    p = spec.prompt
    prompt_kwargs = {"pre_prompt": p.pre_prompt, "post_prompt": p.post_prompt}
    if p.post_prompt_no_options is not None:
        prompt_kwargs["post_prompt_no_options"] = p.post_prompt_no_options
    config: dict[str, Any] = {"task": t, **_dataset_keys(spec, location, run_dir),
                              "output_type": "generate_until"}
    needs_docs = spec.dataset.explode is not None or (spec.dataset.kind == "run_mix"
                                                      and location is None)
    if needs_docs:
        config["process_docs"] = _fn(f"{t}_process_docs")
    config.update({
        "doc_to_visual": _fn(f"{t}_doc_to_visual"),
        "doc_to_text": _fn(f"{t}_doc_to_text"),
        "doc_to_target": _fn(f"{t}_doc_to_target"),
        "process_results": _fn(f"{t}_process_results"),
        "generation_kwargs": {
            "max_new_tokens": spec.generation.max_new_tokens or default_max_new_tokens,
            "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
            "until": list(spec.generation.until),
        },
        "metric_list": [{"metric": m, "aggregation": _fn(f"{t}_agg_{m}"),
                         "higher_is_better": True} for m in spec.metrics],
        "lmms_eval_specific_kwargs": {
            "default": {**prompt_kwargs, "image_prefix": ""},
            "llava_hf": {**prompt_kwargs, "image_prefix": LLAVA_HF_PREFIX},
        },
        "metadata": {"version": 0.0, "amalia_vl_task": t, "title": spec.title,
                     "lmms_eval_original": spec.source.lmms_eval_task},
    })
    return config


def _utils_source(tasks: list[TaskSpec], needs_docs: set[str]) -> str:
    lines = [
        '"""lmms-eval hooks of the AMALIA-VL pt-PT tasks. Generated by amalia-vl',
        "(components.evaltasks.lmms.export_lmms_eval); regenerate rather than edit.",
        "Needs the `amalia-vl` package importable in the lmms-eval environment.",
        '"""',
        "",
        "from pathlib import Path",
        "",
        "from components.evaltasks.lmms import TaskBridge",
        "",
        f'_SPECS = Path(__file__).resolve().parent / "{SPECS_FILE}"',
        "",
    ]
    for spec in tasks:
        t = spec.task
        lines.append(f'_{t} = TaskBridge.from_export(_SPECS, "{t}")')
        if t in needs_docs:
            lines.append(f"{t}_process_docs = _{t}.process_docs")
        for hook in ("doc_to_visual", "doc_to_text", "doc_to_target", "process_results"):
            lines.append(f"{t}_{hook} = _{t}.{hook}")
        for m in spec.metrics:
            lines.append(f'{t}_agg_{m} = _{t}.aggregation("{m}")')
        lines.append("")
    return "\n".join(lines)


def dump_yaml(config: dict[str, Any]) -> str:
    """YAML text with `!function utils.name` tags written plain, as lmms-eval's files do."""
    text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return _QUOTED_FUNCTION.sub(r"!function \1", text)


def export_lmms_eval(
    out_dir: str | Path,
    tasks: list[str] | None = None,
    *,
    extra_dirs: list[str] | tuple[str, ...] = (),
    datasets: dict[str, str] | None = None,
    run_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    default_max_new_tokens: int = 8,
) -> list[Path]:
    """Write the tasks (default: every non-embedded task; with `run_dir`, the embedded
    ones too) as an lmms-eval include path into `out_dir`; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_tasks = load_tasks(extra_dirs)
    if tasks is None:
        chosen = [s for s in all_tasks.values()
                  if s.dataset.kind != "run_mix" or run_dir is not None]
    else:
        chosen = resolve(tasks, extra_dirs)
    skipped_mix = [s.task for s in chosen if s.dataset.kind == "run_mix" and run_dir is None
                   and not (datasets or {}).get(s.task)]
    if skipped_mix:
        from components.errors import ConfigError

        raise ConfigError(f"embedded tasks {skipped_mix} read a run's eval set",
                          "pass run_dir (and data_root) to export them")
    datasets = datasets or {}
    written: list[Path] = []
    specs: dict[str, Any] = {}
    needs_docs: set[str] = set()
    for spec in chosen:
        location = datasets.get(spec.task)
        config = task_config(spec, location=location,
                             run_dir=Path(run_dir) if run_dir else None,
                             default_max_new_tokens=default_max_new_tokens)
        if "process_docs" in config:
            needs_docs.add(spec.task)
        root = None
        if spec.dataset.kind == "run_mix" and location is None and data_root is not None:
            root = str(Path(data_root).resolve())
        elif location and not location.startswith("s3://") and Path(location).exists():
            root = str(Path(location).resolve().parent if Path(location).is_file()
                       else Path(location).resolve())
        specs[spec.task] = {"spec": spec.model_dump(mode="json"), "image_root": root}
        path = out / f"{spec.task}.yaml"
        path.write_text(dump_yaml(config), encoding="utf-8")
        written.append(path)
    names = {s.task for s in chosen}
    for group in load_groups(extra_dirs).values():
        if not set(group.tasks) <= names:
            continue
        config = {"group": group.group, "task": list(group.tasks)}
        primaries = {all_tasks[t].primary_metric for t in group.tasks}
        if len(primaries) == 1:
            config["aggregate_metric_list"] = [{"metric": primaries.pop(), "aggregation": "mean",
                                                "weight_by_size": True}]
        config["metadata"] = {"version": 0.0, "title": group.title}
        path = out / f"{group.group}.yaml"
        path.write_text(dump_yaml(config), encoding="utf-8")
        written.append(path)
    suite = {"group": SUITE_GROUP, "task": [s.task for s in chosen],
             "metadata": {"version": 0.0, "title": "AMALIA-VL pt-PT evaluation suite"}}
    (out / f"{SUITE_GROUP}.yaml").write_text(dump_yaml(suite), encoding="utf-8")
    written.append(out / f"{SUITE_GROUP}.yaml")
    (out / SPECS_FILE).write_text(json.dumps(specs, indent=1, ensure_ascii=False),
                                  encoding="utf-8")
    (out / "utils.py").write_text(_utils_source(chosen, needs_docs), encoding="utf-8")
    written += [out / SPECS_FILE, out / "utils.py"]
    return written
