"""Secrets never reach an output: not MLflow (params, tags, dataset inputs, artifacts),
not the run directory (manifests, reports), not Prefect (flow and task run logs, states,
events), not stdout/stderr.

`test_a_real_chain_leaks_no_canary` plants canary secrets where a user keeps them (the
environment: AWS, Hugging Face, MLflow credentials; params.yaml: credentials in URLs),
runs a real `amalia-vl retrain --stop mix` (validate -> translate -> mix, as a Prefect flow
with its temporary server, tracked in MLflow) and then reads every byte it left behind.
The canaries are asserted present in the inputs first, so that the test fails if one is
ever logged, and the outputs are asserted non-trivial (the params were logged, Prefect
stored the flow's log lines), so that a silent output does not pass for a clean one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from components.redact import (
    MASK,
    env_secrets,
    install_log_redaction,
    is_secret_name,
    redact,
    redact_mapping,
)

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "amalia-vl")
PREFIX = "amalia-canary-"


def canary(what: str) -> str:
    return f"{PREFIX}{what}-{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize("name", [
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "translate.api_key", "apiKey",
    "X-Amz-Signature", "client_secret", "db_password"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "max_new_tokens", "max_source_tokens", "tokenizer_vocab_size", "TOKENIZERS_PARALLELISM",
    "keep_checkpoints", "language_min_pt_prob", "model_id", "SSH_AUTH_SOCK", "seed", "PWD",
    "OLDPWD", "HOME"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_urls_assignments_and_env_values() -> None:
    env = {"HF_TOKEN": "hf_" + "x" * 20, "TOKENIZERS_PARALLELISM": "false-but-long"}
    assert redact("s3://user:pw12@bucket/k.parquet", env) == f"s3://{MASK}@bucket/k.parquet"
    assert redact("https://tok@host/p?token=abc&x=1", env) == \
        f"https://{MASK}@host/p?token={MASK}&x=1"
    assert redact(f"loaded with {env['HF_TOKEN']}!", env) == f"loaded with {MASK}!"
    assert redact("AWS_SECRET_ACCESS_KEY=abc123 next", env) == \
        f"AWS_SECRET_ACCESS_KEY={MASK} next"
    assert redact('{"api_key": "two words", "n": 3}', env) == f'{{"api_key": "{MASK}", "n": 3}}'
    # ordinary text, URLs and non-secret environment values are left alone
    for text in ("max_new_tokens=8", "http://127.0.0.1:5000/#/x", "s3://b/a@b/c",
                 "false-but-long", "user@host:/path"):
        assert redact(text, env) == text
    assert env_secrets(env) == [env["HF_TOKEN"]]
    assert redact_mapping({"api_key": "k", "nested": {"password": "p", "url": "s3://a:b@c/d"},
                           "list": ["https://u:p@h/"], "n": 1}) == {
        "api_key": MASK, "nested": {"password": MASK, "url": f"s3://{MASK}@c/d"},
        "list": [f"https://{MASK}@h/"], "n": 1}


def test_bad_config_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    """An unknown secret-named key (`translate.api_key`) is refused without its value; a
    credential URL in a wrong-typed field is shown masked."""
    from components.errors import ConfigError
    from components.settings import load_settings

    secret = canary("param")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"]["translate"]["api_key"] = secret
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="unknown key 'base.translate.api_key'") as info:
        load_settings("ci", path)
    assert secret not in str(info.value)
    del params["base"]["translate"]["api_key"]
    params["base"]["evaluate"]["limit"] = f"s3://u:{secret}@bucket/x"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="evaluate.limit") as info:
        load_settings("ci", path)
    assert secret not in str(info.value)


def test_importing_any_flow_installs_the_redaction() -> None:
    """Every flow module is in the `flows` package, whose import installs it; so does
    opening a tracked run (`components.tracking.configure`: the CLI and DVC stages)."""
    code = ("import logging, components.redact as r; before = bool(r._INSTALLED); "
            "import flows.retrain; import components.tracking as t; "
            "print(before, bool(r._INSTALLED))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.split() == ["False", "True"], proc.stderr


def test_log_records_are_redacted(caplog) -> None:
    install_log_redaction()
    secret = canary("log")
    os.environ["AMALIA_TEST_SECRET_TOKEN"] = secret
    try:
        with caplog.at_level(logging.INFO, logger="amalia.test"):
            logging.getLogger("amalia.test").info("reading s3://key:%s@b/x with %s", "pw",
                                                   secret)
            try:
                raise RuntimeError(f"failed with token={secret}")
            except RuntimeError:
                logging.getLogger("amalia.test").exception("boom")
    finally:
        del os.environ["AMALIA_TEST_SECRET_TOKEN"]
    text = caplog.text
    assert "reading s3://***@b/x with ***" in text and "boom" in text
    assert secret not in text and "key:pw" not in text


def test_prefect_run_logs_are_redacted(prefect_server) -> None:
    """Flow run logs reach the Prefect API (its API log handler) masked."""
    import asyncio

    from prefect import flow, get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    install_log_redaction()

    secret = canary("prefect")

    @flow(name="amalia-redaction-probe")
    def probe() -> None:
        get_run_logger().warning("endpoint http://minio:%s@127.0.0.1:9000 HF_TOKEN=%s",
                                 secret, secret)

    state = probe(return_state=True)
    flow_run_id = state.state_details.flow_run_id

    async def logs() -> list[str]:
        async with get_client() as client:
            found = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[flow_run_id])))
            return [log.message for log in found]

    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the API log worker sends in the background
    for _ in range(50):
        messages = asyncio.run(logs())
        probe_lines = [m for m in messages if "endpoint http://" in m]
        if probe_lines:
            break
        time.sleep(0.2)
    assert probe_lines, messages  # the line was stored...
    assert all(secret not in m for m in messages), messages  # ...masked
    assert f"http://{MASK}@127.0.0.1:9000 HF_TOKEN={MASK}" in probe_lines[0]


# ----------------------------------------------------------------------------- the chain


def _files(root: Path, skip: set[Path]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p not in skip)


def test_a_real_chain_leaks_no_canary(tmp_path: Path) -> None:
    from components.data.synthetic import generate
    from components.settings import load_settings

    root = tmp_path
    env_canaries = {name: canary(name.lower()) for name in (
        "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "MLFLOW_TRACKING_PASSWORD")}
    param_canaries = {k: canary(k) for k in ("dataset", "endpoint", "store")}

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "ci"
    base = params["base"]
    base["data_dir"], base["runs_dir"] = str(root / "data"), str(root / "runs")
    # credentials inside URLs, where they end up when a config is copied from a notebook
    base["evaluate"]["datasets"] = {
        "count": f"s3://canary-user:{param_canaries['dataset']}@canary-bucket/count.parquet"}
    base["orchestration"]["s3_endpoint_url"] = \
        f"http://minio:{param_canaries['endpoint']}@127.0.0.1:9"
    base["orchestration"]["run_store"] = \
        f"s3://canary-user:{param_canaries['store']}@canary-bucket/runs"
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))
    generate(root / "data", load_settings(params_path=params_path))

    env = {k: v for k, v in os.environ.items() if k not in ("AMALIA_PROFILE", "PREFECT_API_URL")}
    env.update(env_canaries)
    env.update({
        "AMALIA_PARAMS": str(params_path),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PREFECT_HOME": str(root / "prefect"),  # the temporary server's database lands here
        "PREFECT_LOGGING_LEVEL": "INFO",  # so that the flow's own lines reach the server
    })
    # the canaries are really in the inputs: otherwise finding none proves nothing
    text_in = params_path.read_text()
    assert all(value in text_in for value in param_canaries.values())
    assert all(env[name] == value for name, value in env_canaries.items())

    proc = subprocess.run([CLI, "retrain", "--stop", "mix", "--no-progress",
                           "--run-dir", str(root / "run")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = root / "run"
    for stage in ("validate", "translate", "mix"):
        assert (run_dir / stage / "manifest.json").exists(), stage

    canaries = [*env_canaries.values(), *param_canaries.values()]
    leaks: list[str] = []
    for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        leaks += [f"{stream}: {c}" for c in canaries if c in text]
        if PREFIX in text:
            leaks.append(f"{stream}: {PREFIX}")
    # every byte the run left: MLflow's store and artifacts, the run dir (manifests,
    # reports), the translation cache, Prefect's database (logs, states, events)
    outputs = _files(root, skip={params_path} | set(_files(root / "data", set())))
    for path in outputs:
        blob = path.read_bytes()
        leaks += [f"{path.relative_to(root)}: {c}" for c in canaries if c.encode() in blob]
        if PREFIX.encode() in blob:
            leaks.append(f"{path.relative_to(root)}: {PREFIX}")
    assert not leaks, "secrets leaked:\n" + "\n".join(sorted(set(leaks)))

    # ... and the outputs are the real thing, not empty
    names = {p.relative_to(root).as_posix() for p in outputs}
    assert "mlflow.db" in names and any(n.startswith("mlruns/") for n in names)
    assert any(n.startswith("run/validate/") for n in names)
    prefect_db = root / "prefect" / "prefect.db"
    assert prefect_db.exists(), sorted(n for n in names if n.startswith("prefect"))
    assert b"retrain: profile=ci" in prefect_db.read_bytes(), "Prefect stored no flow log"

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    logged = parent.data.params
    assert logged["evaluate.datasets.count"] == f"s3://{MASK}@canary-bucket/count.parquet"
    assert logged["orchestration.s3_endpoint_url"] == f"http://{MASK}@127.0.0.1:9"
    assert logged["orchestration.run_store"] == f"s3://{MASK}@canary-bucket/runs"
    assert sorted(r.data.tags.get("amalia.stage") for r in runs if r is not parent) == \
        ["mix", "translate", "validate"]
