"""Real DVC: a `git clone` of this repository (what CI and a new engineer start from: no
data/) pulls data/ offline from the remote its DVC config names, every file byte-identical
to what `data.dvc` records, and `dvc repro` reproduces the whole chain from dvc.yaml."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def sh(*cmd: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AMALIA_PARAMS"}  # use the clone's
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    """A real `git clone` of this repository's HEAD: committed files only (no untracked or
    ignored ones, no data/), as CI and a new engineer see it."""
    dst = tmp_path_factory.mktemp("clone") / "amalia-vl"
    sh("git", "clone", "-q", "--no-hardlinks", str(REPO), str(dst), cwd=dst.parent)
    return dst


def md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def test_data_dvc_pull_is_offline_and_byte_identical(fresh_copy):
    assert not (fresh_copy / "data").exists(), "the clone must start without data/"
    assert not (fresh_copy / ".dvc" / "cache").exists(), "the clone must start with no cache"
    out = yaml.safe_load((fresh_copy / "data.dvc").read_text())["outs"][0]
    assert out["path"] == "data" and out["md5"].endswith(".dir")
    # offline: the default remote is a folder committed inside the clone itself
    remote = sh("dvc", "remote", "default", cwd=fresh_copy).stdout.strip()
    url = sh("dvc", "config", f"remote.{remote}.url", cwd=fresh_copy).stdout.strip()
    store = (fresh_copy / ".dvc" / url).resolve()
    assert "://" not in url and store.is_dir() and store.is_relative_to(fresh_copy), url
    sh("dvc", "pull", "-q", "data.dvc", cwd=fresh_copy)
    status = sh("dvc", "data", "status", "--json", cwd=fresh_copy).stdout
    assert "modified" not in json.loads(status or "{}")

    # the directory listing DVC fetched from the remote: every file's path and md5
    digest = out["md5"].removesuffix(".dir")
    listing_path = fresh_copy / ".dvc" / "cache" / "files" / "md5" / digest[:2] / \
        f"{digest[2:]}.dir"
    listing = {e["relpath"]: e["md5"] for e in json.loads(listing_path.read_text())}
    data = fresh_copy / "data"
    pulled = {p.relative_to(data).as_posix(): p for p in data.rglob("*") if p.is_file()}
    assert len(pulled) > 0
    assert len(pulled) == out["nfiles"] == len(listing), (len(pulled), out["nfiles"])
    assert set(pulled) == set(listing)
    assert sum(p.stat().st_size for p in pulled.values()) == out["size"]
    wrong = sorted(rel for rel, path in pulled.items() if md5(path) != listing[rel])
    assert not wrong, f"{len(wrong)} pulled files differ from data.dvc, e.g. {wrong[:3]}"


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
