"""The `gpu` work pool's base job template, rendered the way a Prefect worker renders it.

Shared by tests/test_deployments.py (what the template asks of the cluster) and
tests/infra/test_prefect_job_template.py (that the result is a valid Kubernetes Job).
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "prefect" / "gpu-job-template.json"


def render_job_template(values: dict, template: dict | None = None) -> tuple[dict, dict]:
    """(job manifest, environment) of `template` (default: TEMPLATE) with the variables'
    defaults, then `values` as job variables; unset variables drop out."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = template or json.loads(TEMPLATE.read_text())
    variables = BaseJobConfiguration._get_base_config_defaults(
        template["variables"]["properties"])
    variables.update(values)
    config = template["job_configuration"]
    env = {**apply_values(config["env"], variables), **variables.get("env", {})}
    return apply_values(config["job_manifest"], variables), env
