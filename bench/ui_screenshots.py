"""Screenshots of the two UIs a user works in, taken with headless Chromium.

    python bench/ui_screenshots.py            # a few minutes; needs /usr/bin/chromium
    python bench/ui_screenshots.py --out docs/screenshots

What it does, for real and on 127.0.0.1 only: starts `prefect server` and `mlflow server`
(`components.servers`, SQLite, a temporary state dir), creates the `local` and `gpu` work
pools, runs `prefect deploy --all` from `prefect.yaml`, runs `amalia-vl retrain --profile
ci` against both servers (so the flow run has its evaluation artifacts and MLflow a
registered `amalia-vl` version with the `challenger`/`champion` alias), then saves:

- `prefect-deployment.png`: the Prefect UI page of the scheduled `amalia-vl-retrain/retrain`
  deployment (schedule, parameters, work pool);
- `prefect-flow-run.png`: the retrain's flow run (the eight stage tasks, their logs);
- `prefect-evaluation-artifact.png`: its markdown evaluation artifact (per-task table, the
  link to the MLflow parent run);
- `mlflow-model-version.png`: the MLflow model version page (tags: git commit, data
  hashes, params digest, scores, parent run; aliases).

Chromium runs with `--headless --no-sandbox --disable-gpu` and the background-networking
flags off (this machine has no network; without them it keeps dialling out). Install it with
`apt-get install chromium` (Debian's package). The PNGs are checked by eye and kept under
`docs/screenshots/`; this script is not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(url: str, out: Path, size: str = "1500,1100", wait_ms: int = 20000) -> None:
    """Render `url` in headless Chromium (JS given `wait_ms` of virtual time) into `out`."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
                        f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=180)
    print(f"saved {out} ({out.stat().st_size} bytes) <- {url}")


def _api(base: str, path: str, body: dict | None = None) -> dict | list:
    req = urllib.request.Request(f"{base}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--profile", default="ci")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from components import servers

    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="amalia-ui-"))
    state = root / "state"
    ports = {"prefect": _free_port(), "mlflow": _free_port()}
    infos = {i.name: i for i in servers.start(state, ports=ports)}
    try:
        api = f"{infos['prefect'].url}/api"
        mlflow_url = infos["mlflow"].url
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(root / "client"),
               "MLFLOW_TRACKING_URI": mlflow_url, "PYTHONPATH": str(REPO),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

        def run(*cmd: str) -> None:
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=1800)

        prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
        run(*prefect, "work-pool", "create", "local", "--type", "process")
        run(*prefect, "work-pool", "create", "gpu", "--type", "kubernetes",
            "--base-job-template", str(REPO / "infra" / "prefect" / "gpu-job-template.json"))
        run(*prefect, "deploy", "--all")
        params = root / "params.yaml"
        import yaml

        from components.data.synthetic import generate
        from components.settings import load_settings

        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["base"]["runs_dir"] = str(root / "runs")
        # a small synthetic set (as tests/test_e2e.py uses): the pages, not the model, matter
        small = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
        generate(root / "data", load_settings(args.profile, overrides={"synthetic": small}))
        raw["profiles"][args.profile] = {**raw["profiles"][args.profile],
                                         "data_dir": str(root / "data"), "synthetic": small}
        params.write_text(yaml.safe_dump(raw, allow_unicode=True))
        t0 = time.monotonic()
        env["AMALIA_PARAMS"] = str(params)  # runs land in the temporary folder
        run(str(REPO / ".venv" / "bin" / "amalia-vl"), "retrain", "--profile", args.profile)
        print(f"retrain: {time.monotonic() - t0:.0f} s")

        deployment = next(d for d in _api(api, "/deployments/filter", {})
                          if d["name"] == "retrain")
        flow_run = next(r for r in _api(api, "/flow_runs/filter", {"sort": "START_TIME_DESC"})
                        if r["state_type"] == "COMPLETED"
                        and r.get("parent_task_run_id") is None)
        ui = infos["prefect"].url
        screenshot(f"{ui}/deployments/deployment/{deployment['id']}",
                   args.out / "prefect-deployment.png")
        screenshot(f"{ui}/runs/flow-run/{flow_run['id']}", args.out / "prefect-flow-run.png")
        artifact = next(a for a in _api(api, "/artifacts/filter",
                                        {"artifacts": {"key": {"any_": ["amalia-vl-evaluation"]}}})
                        if a["flow_run_id"] == flow_run["id"])
        screenshot(f"{ui}/artifacts/artifact/{artifact['id']}",
                   args.out / "prefect-evaluation-artifact.png")
        versions = _api(mlflow_url, "/api/2.0/mlflow/model-versions/search?"
                        "filter=name%3D%27amalia-vl%27")["model_versions"]
        newest = max(int(v["version"]) for v in versions)
        screenshot(f"{mlflow_url}/#/models/amalia-vl/versions/{newest}",
                   args.out / "mlflow-model-version.png", size="1500,1600")
    finally:
        servers.stop(state)


if __name__ == "__main__":
    main()
