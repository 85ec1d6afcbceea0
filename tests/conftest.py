"""Test-wide isolation: offline hubs, a private Prefect home, a throw-away MLflow store.

Nothing in the suite may reach a hub: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE /
HF_DATASETS_OFFLINE make any accidental download fail loudly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="amalia-tests-"))

os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_HOME": str(_SESSION_TMP / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_TRACKING_URI": f"sqlite:///{_SESSION_TMP / 'mlflow.db'}",
    "AMALIA_PARAMS": str(REPO / "params.yaml"),
})
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store (artifacts beside it) for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # default artifact root ./mlruns lands in tmp_path
    # MLflow's fluent API remembers the last active experiment id process-wide; an id from
    # an earlier test's store does not exist in this one
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("Default")
    return uri


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API server for the whole session (real, not mocked)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto server) on 127.0.0.1 for boto3, DVC and MLflow artifacts."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield endpoint
    finally:
        server.stop()


def _postgres_user() -> tuple[int, int, str] | None:
    """Who runs the test PostgreSQL: the current user, or, as root (which `postgres`
    refuses), the `postgres` account, else `nobody`. None when there is no such account."""
    import pwd

    if os.geteuid() != 0:
        return os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid, name
    return None


@pytest.fixture(scope="session")
def postgres_server():
    """A real throw-away PostgreSQL (initdb into a temporary folder, `postgres` on a free
    port of 127.0.0.1, trust authentication for its superuser `amalia`), stopped and removed
    at the end of the session. Yields `{"host", "port", "user", "os_user", "log"}`.

    As root the server runs as an unprivileged account (`postgres`, else `nobody`; see
    `_postgres_user`): its folder is a fresh `mkdtemp` owned by that account, outside
    pytest's root-only tmp dirs. Skipped when `initdb`/`postgres` or psycopg2 are missing.
    """
    import shutil
    import signal
    import socket
    import subprocess
    import time

    psycopg2 = pytest.importorskip("psycopg2", reason="PostgreSQL tests need psycopg2-binary")
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if not (initdb and postgres):
        pytest.skip("PostgreSQL binaries (initdb, postgres) are not on PATH")
    who = _postgres_user()
    if who is None:
        pytest.skip("running as root and no unprivileged account (postgres, nobody) exists")
    uid, gid, os_user = who
    root = Path(tempfile.mkdtemp(prefix="amalia-pg-"))
    os.chown(root, uid, gid)
    data, log = root / "data", root / "postgres.log"
    as_user = {"user": uid, "group": gid, "extra_groups": []} if os.geteuid() == 0 else {}
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "HOME": str(root)}
    init = subprocess.run([initdb, "-D", str(data), "-U", "amalia", "--auth=trust",
                           "--encoding=UTF8", "--locale=C", "--no-sync"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, **as_user)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed (as {os_user}): {init.stderr.strip()[-2000:]}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:
        # fsync off: a throw-away cluster; own session so teardown reaches every backend
        proc = subprocess.Popen([postgres, "-D", str(data), "-k", str(root), "-p", str(port),
                                 "-h", "127.0.0.1", "-c", "fsync=off"], cwd=root, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **as_user)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"postgres exited: {log.read_text()[-2000:]}"
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="amalia",
                                 dbname="postgres", connect_timeout=2).close()
                break
            except psycopg2.OperationalError:
                assert time.monotonic() < deadline, f"postgres not up: {log.read_text()[-2000:]}"
                time.sleep(0.2)
        yield {"host": "127.0.0.1", "port": port, "user": "amalia", "os_user": os_user,
               "log": log}
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, then checkpoints
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever backend outlived the postmaster
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_db(postgres_server) -> str:
    """A fresh, empty database on `postgres_server`; its SQLAlchemy URL
    `postgresql+psycopg2://amalia@127.0.0.1:PORT/NAME` (SQLAlchemy 2.1 reads a bare
    `postgresql://` as psycopg 3, which is not installed)."""
    import uuid

    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(host=postgres_server["host"], port=postgres_server["port"],
                            user=postgres_server["user"], dbname="postgres")
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return (f"postgresql+psycopg2://{postgres_server['user']}@{postgres_server['host']}:"
            f"{postgres_server['port']}/{name}")
