"""The `gpu` work pool's base job template (infra/prefect/gpu-job-template.json) renders into
a batch/v1 Job that the Kubernetes API accepts.

The template is rendered as a Prefect worker does it (the variables' defaults, then the
sample job variables: `tests/job_template.py`, shared with tests/test_deployments.py), then
finished the way prefect-kubernetes finishes it before `create_namespaced_job` (env as a
list of name/value strings, the flow-run command as args), and validated with
kubernetes-validate against the Kubernetes schemas in strict mode (unknown fields fail).
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import kubernetes_validate
import pytest

from tests.job_template import TEMPLATE, render_job_template

REPO = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.31"  # as tests/infra/test_k8s.py: the EKS version the cluster runs

# Fields the template must carry although the Job schema has no place for them, with why
# they are dropped before the strict validation (and only they: anything else unknown fails).
# prefect-kubernetes' `_get_base_job_manifest` check refuses a job manifest without
# parallelism/completions in the *pod* spec (where its default template has them), while the
# API server, called without fieldValidation, drops unknown fields with a warning.
PREFECT_KUBERNETES_QUIRKS = {
    ("spec", "template", "spec", "parallelism"):
        "required by prefect-kubernetes' base-manifest check; dropped by the API server",
    ("spec", "template", "spec", "completions"):
        "required by prefect-kubernetes' base-manifest check; dropped by the API server",
}

SAMPLE = {"gpus": 4, "nproc": 4, "cpu": "32", "memory": "400Gi",
          "node_selector": {"amalia-vl/pool": "l40s"},
          "image": "ghcr.io/amalia-vl/amalia-vl:0.1.0-gpu",
          "s3_endpoint_url": "http://minio.amalia-vl:9000", "profile": "ci",
          "labels": {"prefect.io/flow-run-id": "0b2c"}, "env": {"EXTRA": "1"}}


def _as_submitted(manifest: dict, env: dict,
                  command: str = "prefect flow-run execute") -> dict:
    """What prefect-kubernetes' `prepare_for_flow_run` makes of the rendered manifest: the
    configuration's env (values coerced to strings by BaseJobConfiguration) replaces the
    container's `{{ env }}` dict as a name/value list, and the flow-run command becomes the
    args (the template leaves `command` unset)."""
    job = copy.deepcopy(manifest)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": str(v)} for k, v in env.items() if v is not None]
    container.setdefault("args", shlex.split(command))
    return job


def _strip_quirks(job: dict) -> dict:
    job = copy.deepcopy(job)
    for path in PREFECT_KUBERNETES_QUIRKS:
        parent = job
        for key in path[:-1]:
            parent = parent[key]
        assert parent.pop(path[-1]) == 1, "/".join(path)
    return job


def validate_job(job: dict) -> list[str]:
    try:
        kubernetes_validate.validate(_strip_quirks(job), KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        return [f"{TEMPLATE.name}: {job['kind']}/{job['metadata'].get('generateName')}: "
                f"schema (Kubernetes {KUBE_VERSION}, strict) at {path}: {e.message}"]
    return []


def _container(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("gpus", [1, 4, 8])
def test_sample_values_render_a_valid_gpu_job(gpus):
    job = _as_submitted(*render_job_template({**SAMPLE, "gpus": gpus, "nproc": gpus}))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert validate_job(job) == []
    container = _container(job)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AMALIA_NPROC"] == str(gpus) and env["AMALIA_PROFILE"] == "ci"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.amalia-vl:9000"
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"amalia-vl/pool": "l40s"}
    assert job["metadata"]["labels"] == {"prefect.io/flow-run-id": "0b2c"}


def test_defaults_render_a_valid_job_on_the_h100_pool():
    job = _as_submitted(*render_job_template({}))
    assert validate_job(job) == []
    assert _container(job)["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"amalia-vl/pool": "h100"}
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "amalia-vl-worker"


def test_quirk_fields_are_still_in_the_template():
    # if prefect-kubernetes' check or the template changes, revisit the quirk table
    pod = render_job_template({})[0]["spec"]["template"]["spec"]
    assert pod["parallelism"] == 1 and pod["completions"] == 1


def test_unknown_field_in_the_template_fails():
    template = json.loads(TEMPLATE.read_text())
    manifest = template["job_configuration"]["job_manifest"]
    manifest["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo
    (error,) = validate_job(_as_submitted(*render_job_template(SAMPLE, template)))
    assert error.startswith("gpu-job-template.json: Job/amalia-vl-: schema")
    assert "spec/template/spec/containers/0" in error and "'resource'" in error


def test_wrong_type_from_job_variables_fails():
    wrong = {**SAMPLE, "node_selector": ["h100"]}
    (error,) = validate_job(_as_submitted(*render_job_template(wrong)))
    assert "at spec/template/spec/nodeSelector" in error
    assert "is not of type 'object'" in error


def test_env_left_as_a_dict_fails():
    # what the API would get without the worker's env conversion: the reason for _as_submitted
    manifest, _ = render_job_template(SAMPLE)
    (error,) = validate_job(manifest)
    assert "at spec/template/spec/containers/0/env" in error
