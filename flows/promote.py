"""Gated promotion as a Prefect flow: `champion` <- `challenger` when the registry's gate
says the challenger is better (`components.registry.promote`, the same call as
`amalia-vl promote`). Deployed in `prefect.yaml` to run after a retrain, by hand or on a
schedule. A refusal is a normal outcome (the flow completes and says why); a missing alias
or model ends the run Failed with a one-line message.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from components.errors import AmaliaError
from flows.stage import failed


@flow(name="amalia-vl-promote")
def promote_flow(model_name: str | None = None, profile: str | None = None,
                 params_path: str | None = None) -> Any:
    """Promote the challenger version of `model_name` (default `register.model_name`) to
    champion if the gate of `register.gate` passes; returns the decision."""
    from components.registry import promote
    from components.settings import load_settings

    try:
        reg = load_settings(profile, params_path).register_
        decision = promote(model_name or reg.model_name, from_alias=reg.alias,
                           to_alias=reg.champion_alias, gate=reg.gate)
    except AmaliaError as exc:
        return failed(exc)
    get_run_logger().info("%s: %s", "promoted" if decision.promoted else "kept",
                          decision.reason)
    return {k: v for k, v in asdict(decision).items()
            if isinstance(v, str | int | float | bool | type(None))}
