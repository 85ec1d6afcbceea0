"""The evaluation suite: tasks as YAML data, loaders, pt-PT prompts, a harness, reports and
lmms-eval interop (issue #5).

- `spec`: the task YAML schema; `load_tasks`, `resolve`, `list_tasks`.
- `loaders`: hub / parquet / JSON / S3 / run-mix documents; `TaskUnavailable` = skipped.
- `prompts`: `render_prompt`, references, metric keywords, answer extraction.
- `visuals`: dataset images -> cached files for `generate_answers`.
- `harness`: `prepare_task`, `generate`, `score_task`, dialect fidelity.
- `report`: markdown table, comparison plot, Prefect table rows.
- `lmms`: `export_lmms_eval(out_dir)`: the task YAMLs as an lmms-eval include path.

The `evaluate` stage (`components/evaluate.py`) runs the tasks of
`settings.evaluate.tasks` through this package. Names are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TaskSpec": "spec", "GroupSpec": "spec", "load_tasks": "spec", "load_groups": "spec",
    "resolve": "spec", "list_tasks": "spec", "LOCAL_TASKS": "spec",
    "TaskUnavailable": "loaders", "load_docs": "loaders",
    "render_prompt": "prompts",
    "prepare_task": "harness", "score_task": "harness", "dialect_shares": "harness",
    "export_lmms_eval": "lmms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
