"""The CLI's faces: --help explains, bad input is one line with the fix, exit code 1."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amalia_vl", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    text = lines[-1]  # the error is the last line, unwrapped; library logs may precede it
    assert text.startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, \
        proc.stderr
    for needle in needles:
        assert needle in text, (needle, proc.stderr)


def test_help_lists_every_command_and_stage():
    out = cli("--help").stdout
    for cmd in ("retrain", "stage", "promote", "ask", "data"):
        assert cmd in out
    stage_help = cli("stage", "--help").stdout
    for name in ("validate", "translate", "mix", "align", "sft", "dpo", "evaluate", "register"):
        assert name in stage_help


def test_unknown_stage():
    assert_one_line_error(cli("stage", "bogus"), "unknown stage 'bogus'", "validate")


def test_missing_prerequisite_names_the_command(tmp_path):
    proc = cli("stage", "sft", "--run-dir", str(tmp_path))
    assert_one_line_error(proc, "stage 'mix' has not run", "amalia-vl stage mix")


def test_missing_data_dir(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "amalia_vl", "stage", "validate", "--run-dir", "r"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "AMALIA_PARAMS": str(tmp_path / "params.yaml")},
    )
    assert_one_line_error(proc, "data directory 'data' not found", "dvc pull")


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_ask_unreadable_image(tmp_path, content):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(content)
    assert_one_line_error(cli("ask", str(bad), "O que se vê?"), "cannot read image", "photo.jpg")


def test_ask_missing_image(tmp_path):
    assert_one_line_error(cli("ask", str(tmp_path / "nope.png"), "?"), "file not found")


def test_unknown_profile():
    assert_one_line_error(cli("retrain", "--profile", "huge"), "unknown profile 'huge'")


def test_score_json_contract(tmp_path):
    import json

    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"prediction": "1.050,5", "answers": ["1050.5"]}\n'
                     '{"prediction": "Porto", "answers": "Lisboa"}\n')
    proc = cli("score", "--metric", "relaxed_accuracy", str(preds), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"metric": "relaxed_accuracy", "score": 0.5, "n": 2, "scores": [1.0, 0.0]}


def test_score_bad_line_names_file_and_line(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"prediction": "a", "answers": ["a"]}\n{broken\n')
    assert_one_line_error(cli("score", "-m", "exact_match", str(preds)), "preds.jsonl", "2")


def test_variety_reads_stdin_writes_json_lines():
    import json

    proc = subprocess.run([sys.executable, "-m", "amalia_vl", "variety"], cwd=REPO,
                          input="Estou a apanhar o autocarro.\nEstou pegando o ônibus.\n\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["pt-PT", "pt-BR", "unknown"]
    assert rows[0]["score"] > 0.5 > rows[1]["score"]


def test_eval_tasks_list_show_export(tmp_path):
    listing = cli("eval-tasks", "list").stdout
    for name in ("count", "chartqa_pt", "docvqa_val_pt", "portexto", "caravela_mcq"):
        assert name in listing
    shown = cli("eval-tasks", "show", "chartqa_pt")
    assert shown.returncode == 0 and "chartqa_pt" in shown.stdout
    out = tmp_path / "lmms"
    proc = cli("eval-tasks", "export-lmms", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "chartqa_pt.yaml").exists() and (out / "utils.py").exists()


def test_validate_input_llava_json_quarantines_and_gates(tmp_path):
    import json

    from PIL import Image

    Image.new("RGBA", (64, 40), (255, 0, 0, 128)).save(tmp_path / "x.png")
    turns = [{"from": "human", "value": "<image>\nQue cor tem o quadrado?"},
             {"from": "gpt", "value": "O quadrado é vermelho."}]
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "a1", "image": "x.png", "conversations": turns},
        {"id": "a2", "image": "missing.png", "conversations": turns},
    ]))
    run_dir = tmp_path / "run"
    proc = cli("stage", "validate", "--no-progress", "--run-dir", str(run_dir), "--input",
               f"llava:{tmp_path / 'llava.json'}?source=t&language=pt-PT")
    assert_one_line_error(proc, "max_quarantine_ratio", "quarantine.jsonl")
    report = json.loads((run_dir / "validate" / "report.json").read_text())
    assert (report["total"], report["kept"], report["quarantined"]) == (2, 1, 1)
    assert report["by_reason"] == {"image_missing": 1}
    assert "--input applies" in cli("stage", "mix", "--input", "x").stderr
