"""Prefect deployments (`prefect.yaml`), the GPU work pool's job template and the flows
they run (`flows/stage.py`, `flows/evaluate.py`, `flows/promote.py`).

- unit: every deployment names a flow that accepts its parameters; the retrain schedule
  is a valid weekly cron; the per-stage deployments cover the chain; the GPU job template
  references only declared variables and renders GPUs, node selector, tolerations, the
  MLflow / S3 / Prefect environment and the torchrun process count;
- slow, real processes: a real `prefect server` (started by `components.servers`), the
  `local` (process) and `gpu` (kubernetes, offline: no prefect-kubernetes needed) work
  pools created by the CLI, `prefect deploy --all` from the repository, a real process
  worker, then the `validate` deployment run on a tiny dataset (COMPLETED, manifest and
  MLflow run written by the worker's flow run) and a run with an unknown profile (FAILED
  with the one-line error as state message and ERROR log). Server and worker are always
  killed (process groups) in teardown.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.stages import ORDER
from components.train.distributed import TRAINING_STAGES
from tests.job_template import TEMPLATE, render_job_template

REPO = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


def _flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO / entrypoint))


# --- unit ------------------------------------------------------------------------------

def test_every_deployment_names_a_flow_that_takes_its_parameters():
    from prefect.cli.deploy._models import PrefectYamlModel

    assert len(PrefectYamlModel.model_validate(SPEC).deployments) == len(DEPLOYMENTS)
    for name, dep in DEPLOYMENTS.items():
        flow = _flow(dep["entrypoint"])
        accepted = inspect.signature(flow.fn).parameters
        assert set(dep.get("parameters", {})) <= set(accepted), name
        assert dep["work_pool"]["name"] in ("local", "gpu"), name


def test_stage_deployments_cover_the_chain_and_gpu_ones_the_training_stages():
    stage_runs = {d["parameters"]["name"]: d for d in DEPLOYMENTS.values()
                  if d["entrypoint"] == "flows/stage.py:stage_flow"
                  and d["work_pool"]["name"] == "local"}
    assert set(stage_runs) == set(ORDER)
    gpu = [d for d in DEPLOYMENTS.values() if d["work_pool"]["name"] == "gpu"]
    assert sorted(d["parameters"]["name"] for d in gpu) == sorted(TRAINING_STAGES)
    for d in gpu:  # code comes from the image, nothing to build here
        assert d["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] \
            == "/app"
        assert d["build"] == []
    # local runs go back to the checkout `prefect deploy` ran in
    assert SPEC["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] \
        == "{{ repo.stdout }}"


def test_retrain_is_scheduled_weekly():
    from prefect.client.schemas.schedules import CronSchedule

    (sched,) = DEPLOYMENTS["retrain"]["schedules"]
    cron = CronSchedule(cron=sched["cron"], timezone=sched["timezone"])
    fields = cron.cron.split()
    assert fields[2] == "*" and fields[3] == "*" and fields[4] not in ("*",), cron.cron
    assert DEPLOYMENTS["retrain"]["parameters"]["profile"]


def test_gpu_job_template_references_only_declared_variables():
    from prefect.utilities.templating import find_placeholders

    template = json.loads(TEMPLATE.read_text())
    declared = set(template["variables"]["properties"])
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= declared, used - declared
    for needed in ("image", "gpus", "nproc", "node_selector", "tolerations",
                   "mlflow_tracking_uri", "s3_endpoint_url", "prefect_api_url"):
        assert needed in used, needed


def test_gpu_job_template_renders_a_gpu_job():
    manifest, env = render_job_template({"gpus": 4, "nproc": 4, "s3_endpoint_url": "http://minio:9000",
                             "env": {"EXTRA": "1"}})
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] and container["name"] == "prefect-job"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"amalia-vl/pool": "h100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in pod["tolerations"]
    # prefect-kubernetes refuses a manifest without these (its base-manifest check)
    assert pod["parallelism"] == 1 and pod["completions"] == 1
    assert pod["restartPolicy"] == "Never"
    # the image's ENTRYPOINT is amalia-vl: run the worker's command through env instead
    assert container["command"] == ["/usr/bin/env"]
    assert "args" not in container  # filled in by the worker (prefect flow-run execute)
    assert env["AMALIA_NPROC"] == 4 and env["EXTRA"] == "1"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    assert "PREFECT_API_URL" not in env  # unset: the worker's own URL is passed on
    assert container["envFrom"][0]["secretRef"]["optional"] is True


def test_nproc_defaults_from_the_pool_for_training_stages_only(monkeypatch):
    from components.errors import ConfigError
    from flows.stage import default_nproc

    monkeypatch.setenv("AMALIA_NPROC", "8")
    assert default_nproc("sft") == 8 and default_nproc("validate") == 1
    monkeypatch.setenv("AMALIA_NPROC", "eight")
    with pytest.raises(ConfigError, match="AMALIA_NPROC"):
        default_nproc("dpo")


# --- real server, pools, deploy, worker -------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_data(root: Path) -> Path:
    """A params.yaml whose `ci` profile reads a freshly generated, very small dataset."""
    from components.data.synthetic import generate
    from components.settings import load_settings

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"]["data_dir"] = str(root / "data")
    params["base"]["runs_dir"] = str(root / "runs")
    params["profiles"]["ci"]["synthetic"] = {"train_per_task": 6, "test_per_task": 4,
                                             "seed_en_per_kind": 4}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    generate(root / "data", load_settings("ci", params_path=path))
    return path


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers (a worker waits on its runs)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, s3_endpoint):
    """Prefect server + both work pools + `prefect deploy --all` + a process worker (with
    the S3 API of `s3_endpoint` in its environment, for dispatched stages)."""
    from components import servers

    root = tmp_path_factory.mktemp("deploy")
    state = root / "state"
    worker = log = None
    try:
        (info,) = servers.start(state, ports={"prefect": _free_port()}, names=["prefect"])
        api = f"{info.url}/api"
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(root / "client"),
               "PYTHONPATH": str(REPO)}

        def prefect(*args: str) -> subprocess.CompletedProcess:
            proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args],
                                  cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            return proc

        prefect("work-pool", "create", "local", "--type", "process")
        prefect("work-pool", "create", "gpu", "--type", "kubernetes",
                "--base-job-template", str(TEMPLATE))
        t0 = time.monotonic()
        prefect("deploy", "--all")
        deploy_s = time.monotonic() - t0

        params = _tiny_data(root)
        log = open(root / "worker.log", "w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "local",
             "--type", "process", "--limit", "1"],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO",
                 "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"})
        yield {"api": api, "root": root, "params": params, "deploy_s": deploy_s,
               "worker_log": root / "worker.log"}
    finally:
        if worker is not None:
            _kill(worker)
        if log is not None:
            log.close()
        servers.stop(state)


def _run(deployed, deployment: str, parameters: dict):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: deployed["api"]}):
        run = run_deployment(deployment, parameters=parameters, timeout=300, poll_interval=2)
    assert run.state is not None and run.state.is_final(), \
        deployed["worker_log"].read_text()[-4000:]
    return run


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


@pytest.mark.slow
def test_deploy_all_creates_every_deployment_with_pools_and_schedule(deployed):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: deployed["api"]}), _client() as client:
        found = {d.name: d for d in client.read_deployments()}
        assert set(found) == set(DEPLOYMENTS)
        assert {d.work_pool_name for d in found.values()} == {"local", "gpu"}
        (schedule,) = found["retrain"].schedules
        assert schedule.schedule.cron == DEPLOYMENTS["retrain"]["schedules"][0]["cron"]
        assert schedule.active
        local_pull = found["validate"].pull_steps[0]
        assert local_pull["prefect.deployments.steps.set_working_directory"]["directory"] \
            == str(REPO)
        assert found["sft-gpu"].job_variables == {"gpus": 8, "nproc": 8}
        pool = client.read_work_pool("gpu")
        assert pool.type == "kubernetes"
        assert "nproc" in pool.base_job_template["variables"]["properties"]


@pytest.mark.slow
def test_stage_deployment_run_writes_the_stage(deployed):
    run_dir = deployed["root"] / "run"
    run = _run(deployed, "amalia-vl-stage/validate",
               {"profile": "ci", "params_path": str(deployed["params"]),
                "run_dir": str(run_dir)})
    assert run.state.is_completed(), (run.state, deployed["worker_log"].read_text()[-4000:])
    manifest = json.loads((run_dir / "validate" / "manifest.json").read_text())
    assert manifest["stage"] == "validate"
    counts = manifest["counts"]
    assert counts["total"] == counts["kept"] + counts["quarantined"] > 0
    # the worker's flow run tracked the stage in the worker's MLflow store
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{deployed['root'] / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`amalia.stage` = 'validate'")
    assert [r.data.tags["amalia.run_dir"] for r in runs] == [str(run_dir)]


@pytest.mark.slow
def test_unknown_profile_fails_the_run_with_one_line(deployed):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run = _run(deployed, "amalia-vl-stage/validate",
               {"profile": "nope", "params_path": str(deployed["params"]),
                "run_dir": str(deployed["root"] / "bad")})
    assert run.state.is_failed(), run.state
    message = run.state.message
    assert message.startswith("unknown profile 'nope'") and "\n" not in message, message
    assert "choose one of" in message
    with temporary_settings({PREFECT_API_URL: deployed["api"]}), _client() as client:
        deadline = time.monotonic() + 30  # logs arrive in batches after the state
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            errors = [lg.message for lg in logs if lg.level >= 40]
            if message in errors or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert message in errors, [lg.message for lg in logs]
    assert not (deployed["root"] / "bad").exists()  # failed before touching anything


@pytest.mark.slow
@pytest.mark.parametrize(("deployment", "parameters", "needle"), [
    ("amalia-vl-promote/promote", {"model_name": "nobody"},
     "no 'challenger' alias on model 'nobody'"),
    ("amalia-vl-evaluate/evaluate-only", {"run_dir": "/nonexistent/run", "profile": "ci"},
     "stage 'mix' has not run in /nonexistent/run (needed by 'evaluate')"),
    ("amalia-vl-retrain/retrain", {"profile": "nope"}, "unknown profile 'nope'"),
    ("amalia-vl-retrain/retrain", {"profile": "ci", "inputs": ["jsonl:/nonexistent/x.jsonl"]},
     "input /nonexistent/x.jsonl not found"),
])
def test_promote_evaluate_and_retrain_deployments_fail_cleanly_without_inputs(
        deployed, deployment, parameters, needle):
    """The promotion, evaluation-only and retrain flows run on the worker and refuse, in
    one line, what they cannot do (no challenger yet; a run dir without the stages
    evaluate reads; an unknown profile; a data input that is not there)."""
    if "params_path" not in parameters and not deployment.endswith("promote"):
        parameters = {**parameters, "params_path": str(deployed["params"])}
    run = _run(deployed, deployment, parameters)
    assert run.state.is_failed(), (run.state, deployed["worker_log"].read_text()[-4000:])
    message = run.state.message
    assert needle in message and "\n" not in message and "Traceback" not in message, message


@pytest.mark.slow
def test_retrain_dispatches_a_training_stage_with_its_data_through_s3(deployed, s3_endpoint):
    """orchestration.training_deployment: `retrain` sends align to the `align-local`
    deployment (the GPU pool's dispatch path on the process pool); the worker pulls mix from
    S3 into its own temporary run dir, trains, pushes align, and the flow pulls it back."""
    import boto3
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.train_helpers import make_mix, overrides, write_params

    root = deployed["root"] / "dispatch"
    data, run = make_mix(root, n=8)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="dispatch-runs")
    params = write_params(root / "params.yaml", {
        **overrides(data, align={"epochs": 1, "global_batch_size": 4}),
        "orchestration": {"training_deployment": "amalia-vl-stage-remote/{stage}-local",
                          "run_store": "s3://dispatch-runs/amalia",
                          "s3_endpoint_url": s3_endpoint}})
    # the retrain runs in its own process: its Prefect log/event workers talk to this
    # module's server only, and end with that process (not at the session's teardown)
    code = ("import json, sys; from flows.retrain import retrain_flow; "
            f"s = retrain_flow(params_path={str(params)!r}, run_dir={str(run)!r}, "
            "start='align', stop='align', progress=False); print(json.dumps(s['counts']))")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PREFECT_API_URL": deployed["api"], "PYTHONPATH": str(REPO),
             "MLFLOW_TRACKING_URI": f"sqlite:///{deployed['root'] / 'mlflow.db'}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["align"]["train_samples"] == 8
    assert (run / "align" / "model" / "config.json").exists()
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
        Bucket="dispatch-runs")["Contents"]]
    assert f"amalia/runs/{run.name}/align/manifest.json" in keys
    assert f"amalia/runs/{run.name}/mix/manifest.json" in keys
    with temporary_settings({PREFECT_API_URL: deployed["api"]}), _client() as client:
        runs = [r for r in client.read_flow_runs() if r.name == f"align-{run.name}"]
    assert len(runs) == 1 and runs[0].state.is_completed()


@pytest.mark.slow
def test_retrain_deployment_completes_with_a_registered_challenger(deployed):
    """The weekly `retrain` deployment, triggered by hand on the `ci` profile, runs the
    whole chain on the worker and ends with amalia-vl@challenger in the worker's store."""
    from mlflow import MlflowClient

    run = _run(deployed, "amalia-vl-retrain/retrain",
               {"profile": "ci", "params_path": str(deployed["params"]),
                "run_dir": str(deployed["root"] / "weekly")})
    assert run.state.is_completed(), (run.state, deployed["worker_log"].read_text()[-4000:])
    registration = json.loads((deployed["root"] / "weekly" / "register" /
                               "registration.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{deployed['root'] / 'mlflow.db'}")
    version = client.get_model_version_by_alias(registration["name"], "challenger")
    assert str(version.version) == str(registration["version"])
    assert version.tags["amalia.registration"] == "complete"
