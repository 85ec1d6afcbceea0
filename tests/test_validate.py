"""The validate stage: clean data passes, each kind of bad record lands in quarantine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from components.data.synthetic import generate
from components.errors import DataQualityError, MissingInputError
from components.settings import load_settings
from components.stages import run_stage

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
REPORT_KEYS = {"total", "kept", "quarantined", "by_reason", "by_source"}


def settings_for(data_dir: Path, **overrides):
    return load_settings("ci", overrides={"data_dir": str(data_dir), "synthetic": SMALL,
                                          **overrides})


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("validate") / "data"
    generate(root, settings_for(root))
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def first_native(data: Path, kind: str) -> dict:
    """The first native record of `kind` (the generator writes them before any bad line)."""
    with (data / "native" / "records.jsonl").open(encoding="utf-8") as fh:
        return next(r for r in map(json.loads, fh) if r["kind"] == kind)


def add_lines(data: Path, lines: list[str]) -> None:
    with (data / "native" / "records.jsonl").open("a", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")


@pytest.fixture
def dirty_data(clean_data: Path, tmp_path: Path) -> Path:
    """The clean set plus one bad record per failure mode, and two odd-but-fine images."""
    data = tmp_path / "data"
    shutil.copytree(clean_data, data)
    qa = first_native(data, "qa")
    images = data / "native" / "images"
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGBA", (64, 48), (255, 0, 0, 128)).save(images / "rgba.png")
    Image.new("L", (48, 64), 200).save(images / "grey.png")
    Image.new("RGB", (4, 100), (0, 0, 0)).save(images / "thin.png")

    def variant(suffix: str, **change) -> str:
        row = {**qa, "id": f"bad-{suffix}", **change}
        return json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False)

    add_lines(data, [
        "{this is not json",
        variant("missing-image", image="native/images/nope.png"),
        variant("corrupt-image", image="native/images/corrupt.png"),
        variant("wrong-answer", answer="cinco"),
        json.dumps(qa, ensure_ascii=False),  # duplicate id
        variant("no-answer", answer=None),
        variant("empty-question", question="  "),
        variant("bad-kind", kind="essay"),
        variant("thin-image", image="native/images/thin.png"),
        variant("rgba", image="native/images/rgba.png"),
        variant("grey", image="native/images/grey.png"),
    ])
    return data


def test_clean_data_passes_with_great_expectations(clean_data: Path, tmp_path: Path) -> None:
    out, manifest = run_stage("validate", settings_for(clean_data), tmp_path / "run",
                              progress=False)
    stage = tmp_path / "run" / "validate"
    report = json.loads((stage / "report.json").read_text())
    assert set(report) == REPORT_KEYS
    assert report["total"] == 5 * 12 * 3 + 30 == report["kept"]
    assert report["quarantined"] == 0 and (stage / "quarantine.jsonl").read_text() == ""
    assert out.counts == {"total": report["total"], "kept": report["kept"], "quarantined": 0}
    assert out.metrics["gx_success"] == 1.0 and out.metrics["quarantine_ratio"] == 0.0
    gx = json.loads((stage / "gx_result.json").read_text())
    assert gx["success"] is True and gx["statistics"]["evaluated_expectations"] >= 8
    assert len(read_jsonl(stage / "native.jsonl")) == 180
    assert len(read_jsonl(stage / "seed_en.jsonl")) == 30
    assert set(out.artifacts) == {"report.json", "quarantine.jsonl", "gx_result.json"}
    assert "gx_result.json" in manifest["outputs"]


def test_bad_records_land_in_quarantine_with_reasons(dirty_data: Path, tmp_path: Path) -> None:
    out, _ = run_stage("validate", settings_for(dirty_data), tmp_path / "run", progress=False)
    stage = tmp_path / "run" / "validate"
    quarantine = read_jsonl(stage / "quarantine.jsonl")
    reasons = {q["id"]: q["reasons"] for q in quarantine}
    bad_json = next(q for q in quarantine if q["reasons"] == ["json_decode"])
    assert bad_json["file"] == "native/records.jsonl" and bad_json["line"] == 181
    assert reasons["bad-missing-image"] == ["image_missing"]
    assert reasons["bad-corrupt-image"] == ["image_unreadable"]
    assert reasons["bad-wrong-answer"] == ["answer_not_in_options"]
    assert reasons["bad-no-answer"] == ["missing_field:answer"]
    assert reasons["bad-empty-question"] == ["empty_text:question"]
    assert reasons["bad-bad-kind"] == ["schema:kind:literal_error"]
    assert reasons["bad-thin-image"] == ["image_too_small", "aspect_ratio"]
    duplicate = first_native(dirty_data, "qa")["id"]
    assert reasons[duplicate] == ["duplicate_id"]
    assert "bad-rgba" not in reasons and "bad-grey" not in reasons  # odd modes are fine

    report = json.loads((stage / "report.json").read_text())
    assert report["total"] == report["kept"] + report["quarantined"] == 210 + 11
    assert report["quarantined"] == len(quarantine) == 9
    assert report["by_reason"]["duplicate_id"] == 1
    assert report["by_source"]["native"]["quarantined"] == 9
    kept_ids = {r["id"] for r in read_jsonl(stage / "native.jsonl")}
    assert {"bad-rgba", "bad-grey"} <= kept_ids and not kept_ids & set(reasons) - {duplicate}
    assert out.metrics["gx_success"] == 1.0


def test_ratio_gate_raises_after_writing_reports(dirty_data: Path, tmp_path: Path) -> None:
    settings = settings_for(dirty_data, validate={"max_quarantine_ratio": 0.01})
    with pytest.raises(DataQualityError, match="quarantined"):
        run_stage("validate", settings, tmp_path / "run", progress=False)
    stage = tmp_path / "run" / "validate"
    assert json.loads((stage / "report.json").read_text())["quarantined"] == 9
    assert len(read_jsonl(stage / "quarantine.jsonl")) == 9
    assert not (stage / "manifest.json").exists()  # the stage did not complete


def test_missing_input_file_names_the_fix(clean_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(clean_data / "native", data / "native")
    with pytest.raises(MissingInputError, match="seed_en"):
        run_stage("validate", settings_for(data), tmp_path / "run", progress=False)
