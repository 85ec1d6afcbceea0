"""Serving the champion: `mlflow.pyfunc.load_model("models:/amalia-vl@champion")` and
`mlflow models serve` answer a photo given as a path, raw bytes or base64, from a tiny
LlavaNext registered and promoted by the real code; bad rows and unknown URIs fail with
one clear line."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from components.errors import AmaliaError, MissingInputError
from tests.train_helpers import REPO, SMALL_MODEL

NAME = "amalia-vl"
URI = f"models:/{NAME}@champion"
QUESTION = "O que se vê na fotografia?"


def make_photo(path: Path) -> Path:
    """A photo-like JPEG: sky gradient, noisy texture, a sun and a house, slightly blurred."""
    w, h = 120, 80
    red = Image.linear_gradient("L").rotate(90).resize((w, h))
    green = Image.radial_gradient("L").resize((w, h))
    blue = Image.effect_noise((w, h), 60).point(lambda v: min(255, v + 60))
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    draw.ellipse([80, 6, 104, 30], fill=(250, 210, 40))
    draw.rectangle([20, 40, 60, 76], fill=(150, 70, 40))
    draw.polygon([(16, 40), (40, 22), (64, 40)], fill=(120, 20, 20))
    image.filter(ImageFilter.GaussianBlur(0.8)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A SQLite store holding one registered tiny model, promoted to `champion`."""
    import mlflow

    from components.model.build import build_tiny_model, save_model
    from components.registry import log_and_register, promote
    from components.settings import load_settings

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("serving")
        settings = load_settings("tiny", REPO / "params.yaml", overrides={"model": SMALL_MODEL})
        model, processor = build_tiny_model(settings, [QUESTION, "Uma casa e o sol.",
                                                       "céu azul"] * 4)
        model_dir = save_model(model, processor, root / "model")
        with mlflow.start_run(run_name="register-serving"):
            log_and_register(model_dir, NAME, "challenger", {})
        assert promote(NAME).promoted
        photo = make_photo(root / "photo.jpg")
        assert len(set(Image.open(photo).getdata())) > 500  # not a flat colour
        yield {"root": root, "uri": uri, "model_dir": model_dir, "photo": photo}


@pytest.fixture(scope="module")
def pyfunc(served):
    import mlflow

    return mlflow.pyfunc.load_model(URI)


def test_champion_answers_a_photo_as_path_bytes_or_base64(served, pyfunc) -> None:
    import pandas as pd

    from components.inference import ask

    photo = served["photo"]
    raw = photo.read_bytes()
    b64 = base64.b64encode(raw).decode()
    answers = pyfunc.predict(pd.DataFrame([{"image": str(photo), "question": QUESTION}]))
    assert len(answers) == 1 and isinstance(answers[0], str)
    # the same greedy answer as the save_pretrained folder itself gives
    assert answers[0] == ask(served["model_dir"], photo, QUESTION, max_new_tokens=16)
    rows = [{"image": photo, "question": QUESTION}, {"image": raw, "question": QUESTION},
            {"image": b64, "question": QUESTION},
            {"image": f"data:image/jpeg;base64,{b64}", "question": QUESTION}]
    assert pyfunc.predict(rows) == answers * 4
    assert pyfunc.predict(pd.DataFrame(rows[1:3])) == answers * 2


def test_rows_without_image_or_question_are_clear_errors(served, pyfunc) -> None:
    photo = str(served["photo"])
    cases = [([{"question": QUESTION}], "row 0 has no 'image'"),
             ([{"image": photo, "question": QUESTION}, {"image": photo}],
              "row 1 has no 'question'"),
             ([{"image": photo, "question": "  "}], "row 0 has no 'question'"),
             ([{"image": "nowhere.jpg", "question": QUESTION}],
              "neither an existing file nor base64"),
             ([{"image": base64.b64encode(b"not an image").decode(), "question": QUESTION}],
              "not a readable image")]
    for rows, needle in cases:
        with pytest.raises(AmaliaError, match=needle):
            pyfunc.predict(rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_mlflow_models_serve_answers_a_base64_photo_over_http(served, pyfunc) -> None:
    port = _free_port()
    log = (served["root"] / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=served["root"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # the server execs `uvicorn` by name: the venv's bin must be on PATH, as when active
        env={**os.environ, "MLFLOW_TRACKING_URI": served["uri"],
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (served["root"] / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not answer /ping in 240 s"
            time.sleep(1)
        b64 = base64.b64encode(served["photo"].read_bytes()).decode()
        status, body = _post(f"{base}/invocations",
                             {"dataframe_records": [{"image": b64, "question": QUESTION}]})
        assert status == 200, body
        expected = pyfunc.predict([{"image": served["photo"], "question": QUESTION}])
        assert isinstance(body["predictions"][0], str) and body["predictions"] == expected
        status, body = _post(f"{base}/invocations",
                             {"dataframe_records": [{"question": QUESTION}]})
        assert status >= 400 and "row 0 has no 'image'" in json.dumps(body), body
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def test_unknown_models_uri_is_a_one_line_error(served) -> None:
    from amalia_vl.cli import app
    from components.registry import resolve_model_dir

    for uri in (f"models:/{NAME}@nope", "models:/never-registered/3"):
        with pytest.raises(MissingInputError, match="cannot resolve") as caught:
            resolve_model_dir(uri)
        assert "\n" not in str(caught.value) and uri in str(caught.value)
    result = CliRunner().invoke(app, ["ask", str(served["photo"]), QUESTION, "--model",
                                      f"models:/{NAME}@nope"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot resolve"), result.output
