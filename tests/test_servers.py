"""Local servers (`components/servers.py`, `amalia-vl server ...`) and the patient temporary
Prefect server of `amalia-vl retrain`.

- unit: the environment `retrain` prepares before importing Prefect; a taken port is one
  line naming the port and the flag;
- slow, real processes: `amalia-vl server start` / `status` / `start` again / `stop` with
  a real Prefect server and a real MLflow server on free ports in a temporary state dir
  (always stopped in the fixture's teardown); `retrain` whose temporary server cannot
  start in time stops with one line pointing at `amalia-vl server start`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from components import servers
from components.errors import AmaliaError

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amalia_vl", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a failed command (no traceback)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# --- unit ------------------------------------------------------------------------------

def test_retrain_env_gives_the_temporary_server_time_and_no_analytics():
    env: dict[str, str] = {}
    assert servers.prepare_prefect_env(env) is True
    assert env == {servers.EPHEMERAL_TIMEOUT_VAR: "300",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def test_retrain_env_keeps_the_users_choices():
    env = {servers.EPHEMERAL_TIMEOUT_VAR: "45", "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}
    servers.prepare_prefect_env(env)
    assert env[servers.EPHEMERAL_TIMEOUT_VAR] == "45"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    remote = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    assert servers.prepare_prefect_env(remote) is False
    assert remote == {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}


def test_ephemeral_timeout_becomes_one_line_pointing_at_server_start():
    exc = RuntimeError("Timed out while attempting to connect to ephemeral Prefect API "
                       "server. stdout: lots\nof\nlines")
    failure = servers.ephemeral_failure(exc)
    assert failure is not None and "\n" not in str(failure)
    assert "amalia-vl server start" in str(failure)
    assert servers.ephemeral_failure(RuntimeError("something else")) is None


def test_taken_port_is_one_line_naming_port_and_flag(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AmaliaError) as err:
            servers.start(tmp_path, ports={"prefect": free_port(), "mlflow": port})
    text = str(err.value)
    assert f"port {port}" in text and "--mlflow-port" in text and "\n" not in text
    assert not list(tmp_path.glob("*.pid"))  # nothing was started


def test_server_help_explains():
    out = cli("server", "--help", timeout=60).stdout
    for word in ("start", "stop", "status", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        assert word in out
    start_help = cli("server", "start", "--help", timeout=60).stdout
    assert "--prefect-port" in start_help and "--mlflow-port" in start_help


# --- real servers ----------------------------------------------------------------------

@pytest.fixture()
def state(tmp_path):
    """A temporary state dir; whatever was started in it is stopped afterwards."""
    root = tmp_path / "state"
    try:
        yield root
    finally:
        servers.stop(root)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_server_start_status_stop_round_trip(state):
    prefect_port, mlflow_port = free_port(), free_port()
    ports = ["--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)]
    started = cli("server", "start", "--state-dir", str(state), *ports)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api" in started.stdout
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in started.stdout

    assert _get(f"http://127.0.0.1:{prefect_port}/api/health") == (200, "true")
    # the UI is told where its API is (Prefect's default is :4200 whatever the port)
    ui = json.loads(_get(f"http://127.0.0.1:{prefect_port}/ui-settings")[1])
    assert ui["api_url"] == f"http://127.0.0.1:{prefect_port}/api", ui
    assert _get(f"http://127.0.0.1:{mlflow_port}/health")[0] == 200
    status, body = _get(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search"
                        "?max_results=5")
    assert status == 200 and "experiments" in json.loads(body)
    # SQLite databases and the MLflow artifact folder live in the state dir, out of git
    assert (state / "prefect" / "prefect.db").exists()
    assert (state / "mlflow" / "mlflow.db").exists() and (state / "mlflow" / "artifacts").is_dir()
    assert (state / ".gitignore").read_text().strip() == "*"

    infos = {i.name: i for i in servers.status(state)}
    assert all(i.state == "running" and i.healthy for i in infos.values())
    pids = {name: i.pid for name, i in infos.items()}

    again = cli("server", "start", "--state-dir", str(state), *ports)  # idempotent
    assert again.returncode == 0, again.stderr
    assert {i.name: i.pid for i in servers.status(state)} == pids

    shown = cli("server", "status", "--state-dir", str(state))
    assert shown.returncode == 0 and shown.stdout.count("running") == 2, shown.stdout
    assert str(pids["prefect"]) in shown.stdout and str(pids["mlflow"]) in shown.stdout

    # the port is ours now: a second state dir asking for it gets the one-line error
    clash = cli("server", "start", "--state-dir", str(state.parent / "other"),
                "--prefect-port", str(prefect_port), "--mlflow-port", str(free_port()))
    line = one_error_line(clash)
    assert f"port {prefect_port}" in line and "--prefect-port" in line

    stopped = cli("server", "stop", "--state-dir", str(state))
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 2, stopped.stdout
    assert all(_gone(pid) for pid in pids.values())  # whole process groups
    assert not list(state.glob("*.pid"))
    assert all(i.state == "stopped" for i in servers.status(state))
    assert cli("server", "stop", "--state-dir", str(state)).stdout.count("not running") == 2


@pytest.mark.slow
def test_retrain_whose_temporary_server_is_too_slow_says_to_start_servers(tmp_path):
    """A temporary server that cannot start in time (here: 1 s on a fresh PREFECT_HOME,
    which must migrate its database first) ends in one line, not a traceback."""
    env = {"PREFECT_HOME": str(tmp_path / "prefect"),
           servers.EPHEMERAL_TIMEOUT_VAR: "1",  # the user's value wins over our 300
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env_without_api = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "amalia_vl", "retrain", "--profile", "ci",
         "--run-dir", str(tmp_path / "run"), "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**env_without_api, "PYTHONPATH": str(REPO), **env})
    line = one_error_line(proc)
    assert "did not start within 1 s" in line and "amalia-vl server start" in line
