"""Real DVC: a fresh copy of the repository pulls data/ offline from the repo-local
remote byte-identically, and `dvc repro` reproduces the whole chain from dvc.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def sh(*cmd: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AMALIA_PARAMS"}  # use the copy's
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    """The repository as a fresh clone sees it: tracked and unignored files, no data/."""
    dst = tmp_path_factory.mktemp("clone") / "amalia-vl"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith("data/"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    sh("git", "init", "-q", cwd=dst)
    return dst


def test_data_dvc_pull_is_offline_and_byte_identical(fresh_copy):
    assert not (fresh_copy / "data").exists()
    sh("dvc", "pull", "-q", "data.dvc", cwd=fresh_copy)
    status = sh("dvc", "data", "status", "--json", cwd=fresh_copy).stdout
    assert "modified" not in json.loads(status or "{}")
    for path in (REPO / "data").rglob("*"):
        if path.is_file():
            twin = fresh_copy / path.relative_to(REPO)
            assert twin.read_bytes() == path.read_bytes(), path


@pytest.mark.e2e
def test_dvc_repro_runs_the_chain(fresh_copy):
    if not (fresh_copy / "data").exists():
        sh("dvc", "pull", "-q", "data.dvc", cwd=fresh_copy)
    params = yaml.safe_load((fresh_copy / "params.yaml").read_text())
    params["profile"] = "ci"
    (fresh_copy / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    env_uri = f"sqlite:///{fresh_copy / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"], old = env_uri, os.environ.get("MLFLOW_TRACKING_URI")
    try:
        sh("dvc", "repro", cwd=fresh_copy, timeout=1500)
        results = json.loads((fresh_copy / "repro" / "evaluate" / "results.json").read_text())
        assert {"count", "colour", "position", "chart", "document"} <= set(results)
        status = sh("dvc", "status", "--json", cwd=fresh_copy).stdout
        assert json.loads(status) == {}, status  # everything up to date after repro
        assert (fresh_copy / "dvc.lock").exists()
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
