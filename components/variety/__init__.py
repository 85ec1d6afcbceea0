"""pt-PT vs pt-BR: detect the variety of a text and normalise pt-BR towards pt-PT.

- `detector`: the `VarietyDetector` contract, the offline `CueDetector` (default) and the
  optional transformers `HFClassifierDetector`; `make_detector(kind, model)`.
- `normalise`: `normalise_br_to_pt(text)`, conservative pt-BR -> pt-PT rewriting.
- `report`: `evaluate_detector`, `classify_lines` and `variety_command` (the CLI face).

Names are imported lazily, so `python -m components.variety.detector --fit` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PT_BR": "detector", "PT_PT": "detector", "UNKNOWN": "detector",
    "CueDetector": "detector", "HFClassifierDetector": "detector",
    "VarietyDetector": "detector", "load_samples": "detector", "make_detector": "detector",
    "normalise_br_to_pt": "normalise",
    "evaluate_detector": "report", "classify_lines": "report", "variety_command": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
