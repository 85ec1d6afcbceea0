"""Local Prefect and MLflow servers as detached background processes (plain Python).

`start()` launches `prefect server start` and `mlflow server` on 127.0.0.1, each in its
own process group with its log and pid file in the state folder (`$AMALIA_HOME`, else
`.amalia/` beside `params.yaml` in the repository), and waits until each answers its
health endpoint (Prefect `/api/health`, MLflow `/health`). `status()` and `stop()` read the
pid files; starting twice is a no-op for a server that is already up. Both servers keep
their SQLite databases in the state folder (MLflow artifacts under `mlflow/artifacts/`),
and Prefect's analytics are off (this machine has no network).

`prepare_prefect_env()` is what `amalia-vl retrain` calls before importing Prefect: with
no `PREFECT_API_URL` a flow starts Prefect's temporary server, whose default 20 s start-up
allowance is too short on a loaded machine, so it gets a generous one.

No Prefect or MLflow import here: each server runs in its own interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from components.errors import AmaliaError

HOST = "127.0.0.1"
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000}
PORT_FLAGS = {"prefect": "--prefect-port", "mlflow": "--mlflow-port"}
HEALTH_PATHS = {"prefect": "/api/health", "mlflow": "/health"}
SERVERS = tuple(DEFAULT_PORTS)
START_TIMEOUT_S = 300.0  # a first start migrates both SQLite databases; a busy box is slow
STOP_TIMEOUT_S = 20.0
EPHEMERAL_TIMEOUT_S = "300"
EPHEMERAL_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
_EPHEMERAL_TIMEOUT_TEXT = "Timed out while attempting to connect to ephemeral Prefect API"


@dataclass
class ServerInfo:
    """One server as `status()` sees it."""

    name: str
    state: str  # running | stopped
    pid: int | None
    url: str
    healthy: bool
    log: str

    @property
    def env_line(self) -> str:
        """The variable a client exports to use this server."""
        if self.name == "prefect":
            return f"PREFECT_API_URL={self.url}/api"
        return f"MLFLOW_TRACKING_URI={self.url}"


def state_dir(path: Path | str | None = None) -> Path:
    """Where pid files, logs and databases live: `path`, `$AMALIA_HOME`, else `.amalia/`
    in the repository (beside `params.yaml`), else in the working directory."""
    if path:
        return Path(path).expanduser().resolve()
    if os.environ.get("AMALIA_HOME"):
        return Path(os.environ["AMALIA_HOME"]).expanduser().resolve()
    repo = Path(__file__).resolve().parent.parent
    return (repo if (repo / "params.yaml").exists() else Path.cwd()) / ".amalia"


def _ensure_state(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():  # keep logs and databases out of git without touching the repo's
        ignore.write_text("*\n")
    return root


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def command(name: str, host: str, port: int, root: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start server `name` (same interpreter)."""
    env = dict(os.environ)
    if name == "prefect":
        home = root / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        env.update({
            "PREFECT_HOME": str(home),  # its SQLite database: <state>/prefect/prefect.db
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            # the UI calls the API at this URL (default :4200, wrong on any other port)
            "PREFECT_UI_API_URL": f"{_url(host, port)}/api",
        })
        env.pop("PREFECT_API_URL", None)  # the server must not try to reach itself
        return [sys.executable, "-m", "prefect", "server", "start", "--host", host,
                "--port", str(port), "--analytics-off"], env
    if name == "mlflow":
        store = root / "mlflow"
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # its job runner (GenAI jobs: seven huey consumers) is of no use to this pipeline
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        # one worker: the default four would fight training for two cores
        return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
                "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination", str(store / "artifacts"), "--workers", "1"], env
    raise AmaliaError(f"unknown server '{name}'", f"servers are: {', '.join(SERVERS)}")


def _pid_file(root: Path, name: str) -> Path:
    return root / f"{name}.pid"


def _meta_file(root: Path, name: str) -> Path:
    return root / f"{name}.json"


def _log_file(root: Path, name: str) -> Path:
    return root / f"{name}.log"


def _alive(pid: int) -> bool:
    """True if `pid` runs and still leads its own process group (as our servers do), so a
    pid reused by an unrelated process after a reboot does not count."""
    try:
        os.kill(pid, 0)
        return os.getpgid(pid) == pid
    except (ProcessLookupError, PermissionError):
        return False


def _read(root: Path, name: str) -> tuple[int | None, dict]:
    try:
        pid = int(_pid_file(root, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None, {}
    try:
        meta = json.loads(_meta_file(root, name).read_text())
    except (FileNotFoundError, ValueError):
        meta = {}
    return pid, meta


def _forget(root: Path, name: str) -> None:
    for path in (_pid_file(root, name), _meta_file(root, name)):
        path.unlink(missing_ok=True)


def healthy(name: str, url: str, timeout: float = 2.0) -> bool:
    """True if the server's health endpoint answers 200."""
    try:
        with urllib.request.urlopen(url + HEALTH_PATHS[name], timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port (checked the way uvicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def status(root: Path | str | None = None, names: Iterable[str] = SERVERS) -> list[ServerInfo]:
    """Each server: running or stopped, pid, URL, whether it answers its health check.
    Pid files of dead processes are removed."""
    root = state_dir(root)
    infos = []
    for name in names:
        pid, meta = _read(root, name)
        url = meta.get("url") or _url(HOST, DEFAULT_PORTS[name])
        log = str(_log_file(root, name))
        if pid is not None and _alive(pid):
            infos.append(ServerInfo(name, "running", pid, url, healthy(name, url), log))
        else:
            if pid is not None:
                _forget(root, name)
            infos.append(ServerInfo(name, "stopped", None, url, False, log))
    return infos


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


def _launch(name: str, host: str, port: int, root: Path) -> int:
    cmd, env = command(name, host, port, root)
    log = _log_file(root, name)
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)  # own group: stop kills its children
    _pid_file(root, name).write_text(f"{proc.pid}\n")
    _meta_file(root, name).write_text(json.dumps(
        {"pid": proc.pid, "host": host, "port": port, "url": _url(host, port),
         "command": cmd, "started": time.time()}, indent=1))
    return proc.pid


def _group_gone(pgid: int) -> bool:
    """True once no process of group `pgid` is left (reaps the leader if it is our child,
    so a zombie does not keep the group alive)."""
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _kill_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by `pid` (the server and any workers it forked),
    SIGKILL what is left after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _group_gone(pid):
                return
            time.sleep(0.2)


def start(
    root: Path | str | None = None,
    ports: dict[str, int] | None = None,
    host: str = HOST,
    timeout: float = START_TIMEOUT_S,
    names: Iterable[str] = SERVERS,
) -> list[ServerInfo]:
    """Start the servers not already running and wait until every one is healthy.

    Raises `AmaliaError` (one line) when a port is taken by another program, a server
    exits during start-up, or does not answer within `timeout` seconds (it is then
    stopped again); the log path is in the message.
    """
    root = _ensure_state(state_dir(root))
    ports = {**DEFAULT_PORTS, **(ports or {})}
    names = list(names)
    current = {s.name: s for s in status(root, names)}
    launched: dict[str, int] = {}
    for name in names:
        if current[name].state == "running":
            continue  # idempotent: a second start waits for the one already up
        port = ports[name]
        if not port_free(host, port):
            raise AmaliaError(
                f"port {port} on {host} ({name} server) is already in use by another program",
                f"choose a free one with {PORT_FLAGS[name]} PORT, or stop that program")
    for name in names:
        if current[name].state != "running":
            launched[name] = _launch(name, host, ports[name], root)
    try:
        _wait_healthy(root, names, launched, timeout)
    except BaseException:  # a failed or interrupted start leaves nothing running
        for pid in launched.values():
            _kill_group(pid, timeout=5.0)
        for name in launched:
            _forget(root, name)
        raise
    return status(root, names)


def _wait_healthy(root: Path, names: list[str], launched: dict[str, int],
                  timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            pid, meta = _read(root, name)
            url = meta.get("url", "")
            if healthy(name, url):
                pending.discard(name)
                continue
            if pid is None or not _alive(pid) or _exited(launched.get(name)):
                raise AmaliaError(
                    f"{name} server exited during start-up: {_tail(_log_file(root, name))}",
                    f"full log: {_log_file(root, name)}")
        if pending and time.monotonic() > deadline:
            name = sorted(pending)[0]
            raise AmaliaError(
                f"{name} server did not answer {HEALTH_PATHS[name]} within {timeout:.0f} s",
                f"retry with a longer --timeout; log: {_log_file(root, name)}")
        if pending:
            time.sleep(0.5)


def _exited(pid: int | None) -> bool:
    """True if our child `pid` has exited (reaps it, so a zombie does not look alive)."""
    if pid is None:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


def stop(root: Path | str | None = None, names: Iterable[str] = SERVERS) -> dict[str, str]:
    """Terminate each running server's process group; `{name: stopped | not running}`."""
    root = state_dir(root)
    result = {}
    for name in names:
        pid, _ = _read(root, name)
        if pid is not None and _alive(pid):
            _kill_group(pid)
            result[name] = "stopped"
        else:
            result[name] = "not running"
        _forget(root, name)
    return result


# --- the temporary (ephemeral) Prefect server of `amalia-vl retrain` ---------------------

def prepare_prefect_env(environ: MutableMapping[str, str] | None = None) -> bool:
    """Call before importing Prefect. With no `PREFECT_API_URL` (a flow will start
    Prefect's temporary server) give that server `EPHEMERAL_TIMEOUT_S` seconds to start
    unless the user chose a value, and turn analytics off unless the user turned them on.
    Returns True when the temporary server will be used."""
    env = os.environ if environ is None else environ
    if env.get("PREFECT_API_URL"):
        return False
    env.setdefault(EPHEMERAL_TIMEOUT_VAR, EPHEMERAL_TIMEOUT_S)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return True


def ephemeral_failure(exc: BaseException) -> AmaliaError | None:
    """The one-line error for Prefect's "timed out ... ephemeral ... server", else None."""
    if _EPHEMERAL_TIMEOUT_TEXT not in str(exc):
        return None
    waited = os.environ.get(EPHEMERAL_TIMEOUT_VAR, "20")
    return AmaliaError(
        f"Prefect's temporary server did not start within {waited} s",
        "start real servers with `amalia-vl server start` and export the PREFECT_API_URL "
        f"it prints, or raise {EPHEMERAL_TIMEOUT_VAR}")
