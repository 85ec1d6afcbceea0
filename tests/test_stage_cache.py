"""The cross-run stage cache (components/stage_cache.py): what changes a stage's key and
what does not, and that only an intact, finished stage is ever reused."""

from __future__ import annotations

import json

import pytest

from components import stage_cache
from components.manifest import write_manifest
from components.settings import load_settings


def _finished(run, stage, content="x", inputs=None):
    folder = run / stage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "out.txt").write_text(content)
    write_manifest(folder, stage, inputs=inputs or {}, counts={}, metrics={},
                   config_digest="t", started="now")
    return folder


@pytest.fixture
def run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": 1}\n')
    run = tmp_path / "runs" / "r1"
    for stage in ("validate", "translate", "mix", "align"):
        _finished(run, stage)
    return run, data


def _settings(data, **sections):
    return load_settings("tiny", overrides={"data_dir": str(data), **sections})


def test_a_stage_key_ignores_later_stages_and_logging_but_not_its_own_settings(run):
    run, data = run
    base = _settings(data)
    sft = stage_cache.stage_key("sft", base, run)
    validate = stage_cache.stage_key("validate", base, run)
    later = _settings(data, dpo={"beta": 0.5}, evaluate={"batch_size": 3})
    assert stage_cache.stage_key("sft", later, run) == sft
    assert stage_cache.stage_key("validate", later, run) == validate
    assert stage_cache.stage_key("sft", _settings(data, train={"logging_steps": 3}),
                                 run) == sft
    own = _settings(data, sft={"learning_rate": 0.5})
    assert stage_cache.stage_key("sft", own, run) != sft
    assert stage_cache.stage_key("validate", own, run) == validate
    engine = _settings(data, train={"packing": True})
    assert stage_cache.stage_key("sft", engine, run) != sft
    assert stage_cache.stage_key("mix", engine, run) == stage_cache.stage_key("mix", base, run)


def test_changed_upstream_outputs_data_or_code_change_the_key(run, monkeypatch):
    run, data = run
    settings = _settings(data)
    sft, validate = (stage_cache.stage_key(s, settings, run) for s in ("sft", "validate"))
    _finished(run, "align", content="other weights")
    assert stage_cache.stage_key("sft", settings, run) != sft
    (data / "a.jsonl").write_text('{"id": 2, "more": true}\n')
    assert stage_cache.stage_key("validate", settings, run) != validate
    before = stage_cache.stage_key("validate", settings, run)
    monkeypatch.setattr(stage_cache, "code_digest", lambda: "another commit")
    assert stage_cache.stage_key("validate", settings, run) != before


def test_only_an_intact_finished_stage_is_reused_and_linked_not_shared(run):
    run, data = run
    settings = _settings(data)
    key = stage_cache.stage_key("align", settings, run)
    assert stage_cache.lookup("align", key, run) is None  # never recorded
    stage_cache.record("align", key, run, "mlflow-run-1")
    hit = stage_cache.lookup("align", key, run)
    assert hit is not None and hit.mlflow_run_id == "mlflow-run-1"

    new_run = run.parent / "r2"
    manifest = stage_cache.materialise(hit, "align", new_run)
    copied, original = new_run / "align" / "out.txt", run / "align" / "out.txt"
    assert copied.read_text() == "x" and copied.stat().st_ino == original.stat().st_ino
    assert manifest["cache"]["reused_from"] == str(run / "align")
    assert json.loads((new_run / "align" / "manifest.json").read_text())["cache"]["key"] == key
    assert "cache" not in json.loads((run / "align" / "manifest.json").read_text())

    original.write_text("truncat")  # a changed / half-written output: not reused
    assert stage_cache.lookup("align", key, run) is None
    original.write_text("x")
    assert stage_cache.lookup("align", key, run) is not None
    (run / "align" / "manifest.json").unlink()  # not finished
    assert stage_cache.lookup("align", key, run) is None
