"""The validate stage: clean data passes, each kind of bad record lands in quarantine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from components.data.synthetic import generate
from components.errors import DataQualityError, MissingInputError
from components.records import read_records
from components.settings import load_settings
from components.stages import run_stage

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
REPORT_KEYS = {"total", "kept", "quarantined", "by_reason", "by_source", "by_kind", "converted",
               "images_decoded", "inputs", "gx_success"}


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
    assert set(out.artifacts) == {"report.json", "quarantine.jsonl", "gx_result.json", "gx_docs"}
    assert "gx_result.json" in manifest["outputs"]
    assert set(gx["suites"]) == {"caption", "multiple_choice", "preference"}
    html = (stage / "gx_docs" / "index.html").read_text()
    assert "amalia_vl_multiple_choice" in html and "amalia_vl_caption" in html
    # the JSONL views are exactly the input (all kept); the shards hold the same records
    assert (stage / "native.jsonl").read_bytes() == (clean_data / "native" /
                                                     "records.jsonl").read_bytes()
    shard_ids = [r.id for r in read_records(stage / "validated")]
    assert shard_ids == [r["id"] for r in read_jsonl(stage / "native.jsonl")
                         + read_jsonl(stage / "seed_en.jsonl")]


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


# ----------------------------------------------------------------------------- rules


def noise_image(path: Path, seed: int, size=(64, 48), mode: str = "RGB") -> Path:
    """A smooth random image (distinct pHash per seed), saved in `mode`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    (img.convert(mode) if mode != "RGB" else img).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
                            + "\n" for r in rows), encoding="utf-8")
    return path


def stream(tmp_path: Path, inputs: list[str], **validate):
    """validate_stream without Great Expectations (fast); returns (report, quarantine, kept)."""
    from components.validate import validate_stream

    settings = load_settings("ci", overrides={"data_dir": str(tmp_path), "validate": validate,
                                              "ingest": {"inputs": inputs}})
    out = tmp_path / "out"
    tally, sinks, _ = validate_stream(settings, out, with_gx=False)
    quarantine = read_jsonl(out / "quarantine.jsonl")
    kept = read_records(out / "validated") if (out / "validated").exists() else []
    report = tally.report()
    assert report["total"] == report["kept"] + report["quarantined"]
    assert report["kept"] == len(kept) and report["quarantined"] == len(quarantine)
    return report, {q["id"]: q["reasons"] for q in quarantine}, {r.id: r for r in kept}, sinks


PT = {"source": "ptset", "language": "pt-PT", "split": "train", "task_family": "general_vqa"}


def test_record_rules_on_every_kind(tmp_path: Path) -> None:
    img = tmp_path / "imgs"
    a, b = noise_image(img / "a.png", 1), noise_image(img / "b.png", 2)
    grey = noise_image(img / "grey.png", 3, mode="L")
    rgba = noise_image(img / "rgba.png", 4, mode="RGBA")
    odd = noise_image(img / "odd.jpg", 5, size=(37, 191))
    long_pt = "Uma fotografia de uma rua antiga de Lisboa com elétricos amarelos."
    rows = [
        {"id": "cap", "kind": "caption", "image": str(a), "text": long_pt, **PT},
        {"id": "cap-es", "kind": "caption", "image": str(b),
         "text": "Una fotografía de una calle antigua de Madrid con tranvías amarillos.", **PT},
        {"id": "qa-short", "kind": "qa", "image": str(a), "question": "Há elétricos?",
         "answer": "sim", **PT},
        {"id": "qa-other", "kind": "qa", "image": str(a), "question": "De que cor são?",
         "answer": "amarelos", **PT},  # another question on the same image: kept
        {"id": "qa-copy", "kind": "qa", "image": str(a), "question": "De que cor são?",
         "answer": "amarelos", **PT},  # the same record again under a new id
        {"id": "conv", "kind": "conversation", "images": [str(a), str(b)], **PT,
         "conversations": [{"role": "user", "content": "<image> e <image>: diferenças?"},
                           {"role": "assistant", "content": "As cores."}]},
        {"id": "conv-ph", "kind": "conversation", "image": str(a), **PT,
         "conversations": [{"role": "user", "content": "<image> <image> compara"},
                           {"role": "assistant", "content": "Iguais."}]},
        {"id": "conv-roles", "kind": "conversation", "image": str(a), **PT,
         "conversations": [{"role": "assistant", "content": "Olá"},
                           {"role": "user", "content": "Descreve."}]},
        {"id": "box", "kind": "grounding", "image": str(a), "question": "o carro",
         "boxes": [{"bbox": [2, 2, 30, 40], "label": "carro"}], **PT},
        {"id": "box-out", "kind": "grounding", "image": str(a), "question": "o carro",
         "boxes": [{"bbox": [2, 2, 65, 40]}], **PT},
        {"id": "box-bad", "kind": "grounding", "image": str(b), "question": "o carro",
         "boxes": [{"bbox": [30, 2, 10, 40]}], **PT},
        {"id": "mc", "kind": "multiple_choice", "image": str(b), "question": "Quantos?",
         "options": ["1", "2"], "answer": "2", **PT},
        {"id": "mc-bad", "kind": "multiple_choice", "image": str(b), "question": "Quantos?",
         "options": ["1", "2"], "answer": "3", **PT},
        {"id": "mc-one", "kind": "multiple_choice", "image": str(b), "question": "Quantos?",
         "options": ["1"], "answer": "1", **PT},
        {"id": "pref", "kind": "preference", "image": str(b), "question": "Quantos?",
         "chosen": "2", "rejected": "2", **PT},
        {"id": "long", "kind": "qa", "question": "porquê " * 400, "answer": "sim", **PT},
        {"id": "grey", "kind": "caption", "image": str(grey), "text": long_pt + " (cinza)",
         **PT},
        {"id": "rgba", "kind": "caption", "image": str(rgba), "text": long_pt + " (alfa)",
         **PT},
        {"id": "odd", "kind": "caption", "image": str(odd), "text": long_pt + " (estreita)",
         **PT},
        {"id": "text-only", "kind": "qa", "question": "Qual é a capital de Portugal?",
         "answer": "Lisboa", **{**PT, "task_family": "text_instruction"}},
    ]
    report, reasons, kept, sinks = stream(tmp_path, [str(write_jsonl(tmp_path / "r.jsonl",
                                                                      rows))])
    assert reasons == {
        "cap-es": ["language_not_pt:es"],
        "qa-copy": ["duplicate_record"],
        "conv-ph": ["image_placeholder_mismatch"],
        "conv-roles": ["conversation_roles"],
        "box-out": ["box_outside_image"],
        "box-bad": ["box_invalid"],
        "mc-bad": ["answer_not_in_options"],
        "mc-one": ["too_few_options"],
        "pref": ["chosen_equals_rejected"],
        "long": ["text_too_long"],
    }
    assert set(kept) == {r["id"] for r in rows} - set(reasons)
    assert sinks.converted == {"L": 1, "RGBA": 1}  # converted, not rejected
    assert kept["conv"].images == [str(a), str(b)]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "validated").to_pylist()
    by_id = {row["id"]: row for row in table}
    assert by_id["cap"]["image_bytes"] == [a.read_bytes()]  # RGB files are embedded as is
    for name in ("grey", "rgba"):
        embedded = Image.open(__import__("io").BytesIO(by_id[name]["image_bytes"][0]))
        assert embedded.mode == "RGB" and by_id[name]["image_mode"] == [name.upper()
                                                                       .replace("GREY", "L")]
    assert by_id["odd"]["image_width"] == [37] and by_id["odd"]["image_height"] == [191]
    assert by_id["cap"]["detected_language"] == "pt"
    assert by_id["text-only"]["image_bytes"] == []


def test_near_duplicates_of_eval_images_are_quarantined(tmp_path: Path) -> None:
    img = tmp_path / "imgs"
    test_img, other = noise_image(img / "test.png", 10), noise_image(img / "other.png", 11)
    bench = noise_image(tmp_path / "bench" / "b1.png", 12)
    # near copies: resized and JPEG re-encoded, so no byte or pixel equality
    Image.open(test_img).resize((80, 60)).save(img / "test-near.jpg", quality=80)
    Image.open(bench).resize((96, 72)).save(img / "bench-near.jpg", quality=85)
    (img / "test-copy.png").write_bytes(test_img.read_bytes())  # an identical copy
    cap = {"kind": "caption", "language": "en", "task_family": "captioning"}
    rows = [
        {"id": "e1", "source": "web", "split": "test", "image": str(test_img),
         "text": "held-out", **cap},
        {"id": "t1", "source": "web", "split": "train", "image": str(img / "test-near.jpg"),
         "text": "near", **cap},
        {"id": "t2", "source": "web", "split": "train", "image": str(other), "text": "fine",
         **cap},
        {"id": "t3", "source": "web", "split": "train", "image": str(img / "bench-near.jpg"),
         "text": "benchmark", **cap},
        {"id": "s1", "source": "synth", "split": "train", "image": str(img / "test-near.jpg"),
         "text": "synthetic near", **cap},
        {"id": "s2", "source": "synth", "split": "train", "image": str(img / "test-copy.png"),
         "text": "synthetic copy", **cap},
    ]
    src = write_jsonl(tmp_path / "r.jsonl", rows)
    eval_rows = [{"id": "e2", "source": "synth", "split": "test", "image": str(test_img),
                  "text": "synthetic held-out", **cap}]
    synth = write_jsonl(tmp_path / "synth.jsonl", eval_rows)
    report, reasons, kept, _ = stream(tmp_path, [str(src), str(synth)],
                                      eval_images=[str(tmp_path / "bench")],
                                      exact_only_sources=["synth"])
    assert reasons == {"t1": ["near_duplicate_of_eval:e1"],
                       "t3": ["near_duplicate_of_eval:b1.png"],
                       "s1": ["near_duplicate_of_eval:e1"],  # web's eval image: not exempt
                       "s2": ["near_duplicate_of_eval:e1"]}  # an identical file: always
    assert set(kept) == {"e1", "t2", "e2"}
    assert report["by_reason"] == {"near_duplicate_of_eval": 4}
    # off switch
    _, reasons, _, _ = stream(tmp_path, [str(src)], near_dup_max_distance=None)
    assert reasons == {}


def test_synthetic_sources_only_count_exact_duplicates(tmp_path: Path) -> None:
    img = tmp_path / "imgs"
    test_img = noise_image(img / "test.png", 20)
    Image.open(test_img).resize((80, 60)).save(img / "near.jpg", quality=80)
    cap = {"kind": "caption", "language": "en", "task_family": "captioning",
           "source": "synth"}
    rows = [{"id": "e", "split": "test", "image": str(test_img), "text": "eval", **cap},
            {"id": "n", "split": "train", "image": str(img / "near.jpg"), "text": "near", **cap}]
    src = str(write_jsonl(tmp_path / "r.jsonl", rows))
    assert stream(tmp_path, [src], exact_only_sources=["synth"])[1] == {}
    assert stream(tmp_path, [src], exact_only_sources=[])[1] == {
        "n": ["near_duplicate_of_eval:e"]}


def test_worker_pool_gives_the_same_outputs_as_in_process(dirty_data: Path,
                                                          tmp_path: Path) -> None:
    from components.validate import validate_stream

    outputs = []
    for workers in (0, 2):
        settings = settings_for(dirty_data, validate={"workers": workers, "chunk_size": 16,
                                                      "start_method": "fork"})
        out = tmp_path / f"w{workers}"
        validate_stream(settings, out, with_gx=False)
        import pyarrow.parquet as pq

        outputs.append({
            "quarantine": (out / "quarantine.jsonl").read_bytes(),
            "native": (out / "native.jsonl").read_bytes(),
            "shards": pq.read_table(out / "validated").to_pylist(),
        })
    assert outputs[0] == outputs[1]
    assert len(outputs[0]["shards"]) == 212


def test_phash_is_imagehash_phash(tmp_path: Path) -> None:
    import imagehash

    from components.validate import phash_int

    for seed in range(8):
        img = Image.open(noise_image(tmp_path / f"{seed}.png", seed, size=(200 + seed, 256)))
        reference = int(str(imagehash.phash(img)), 16)
        assert phash_int(img, exact=True) == reference
        assert bin(phash_int(img) ^ reference).count("1") <= 2  # the fast default


def test_great_expectations_suites_fail_on_bad_rows(tmp_path: Path) -> None:
    from components.validate import GX_COLUMNS, GxRunner

    settings = load_settings("ci")
    runner = GxRunner(settings, tmp_path / "docs")
    good = {c: None for c in GX_COLUMNS} | {
        "id": "a", "source": "s", "language": "pt-PT", "split": "train", "task_family": "f",
        "kind": "multiple_choice", "question": "Quantos?", "answer": "2", "n_images": 1,
        "min_side": 32, "max_side": 64, "aspect": 2.0, "n_placeholders": 0,
        "placeholders_ok": True, "text_min_chars": 1, "text_max_chars": 8, "n_options": 2,
        "answer_in_options": True}
    runner.validate("multiple_choice", [good, {**good, "id": "b"}])
    runner.validate("multiple_choice", [good, {**good, "answer_in_options": False},
                                        {**good, "min_side": 2, "language": "Portuguese!"}])
    result = runner.finish()
    assert result["success"] is False
    failed = {f["column"] for f in result["suites"]["multiple_choice"]["failed"]}
    assert failed == {"id", "answer_in_options", "min_side", "language"}
    assert (tmp_path / "docs" / "index.html").exists()
