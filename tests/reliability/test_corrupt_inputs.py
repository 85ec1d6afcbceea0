"""Corrupted inputs: every bad record is quarantined with its reason, counts conserve, and a
decompression bomb costs no memory.

The data is the embedded synthetic set (ci profile, small) plus one record per fault,
appended to `native/records.jsonl`: a truncated PNG, a text file named `.jpg`, a wrong
schema, an empty and a huge text, Spanish in a pt-PT record, a reused id, a 1 x 4000 strip,
an 8000 x 8000 photo-sized image (kept: the processor's tile budget resizes it), and two
crafted PNG headers that claim 12000 x 12000 and 100000 x 100000 pixels over a few bytes of
data (the first is over `validate.max_image_pixels`, the second over Pillow's own bomb
limit). `validate` runs through the real CLI in a subprocess, so its peak RSS (and its
decode workers') is measured.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from components.data.synthetic import generate
from components.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
SPANISH = "Una fotografía de una calle antigua de Madrid con tranvías amarillos y mucha gente."
# peak RSS of the validate stage (CLI, decode workers, GX) over the whole corrupted set
STAGE_RSS_LIMIT_MB = 1500


def png_header_only(width: int, height: int) -> bytes:
    """A structurally valid PNG (CRCs right) that claims `width` x `height` RGB pixels but
    carries a few bytes of image data: what a decompression bomb looks like to a reader."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# id -> the reason (prefix) it must be quarantined with; None: kept
EXPECTED = {
    "bad-truncated": "image_unreadable",
    "bad-not-an-image": "image_unreadable",
    "bad-schema": "schema:question",
    "bad-empty-text": "empty_text:question",
    "bad-huge-text": "text_too_long",
    "bad-spanish": "language_not_pt",
    "bad-strip": "image_too_small",
    "bad-pixel-budget": "image_too_large",
    "bad-bomb": "image_decompression_bomb",
    "big-photo": None,
}


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("corrupt")
    data = root / "data"
    generate(data, load_settings("ci", overrides={"synthetic": SMALL}))
    records = data / "native" / "records.jsonl"
    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()]
    qa = next(r for r in rows if r["kind"] == "qa" and r["split"] == "train")
    caption = next(r for r in rows if r["kind"] == "caption" and r["split"] == "train")
    images = data / "native" / "images"
    good_png = (data / qa["image"]).read_bytes()
    (images / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (images / "not-an-image.jpg").write_text("isto não é uma imagem\n")
    Image.new("RGB", (1, 4000), (90, 120, 30)).save(images / "strip.png")
    Image.new("RGB", (8000, 8000), (200, 180, 160)).save(images / "big.png")
    (images / "pixel-budget.png").write_bytes(png_header_only(12000, 12000))
    (images / "bomb.png").write_bytes(png_header_only(100000, 100000))

    def img(name: str) -> str:
        return f"native/images/{name}"

    bad = [
        {**qa, "id": "bad-truncated", "image": img("truncated.png")},
        {**qa, "id": "bad-not-an-image", "image": img("not-an-image.jpg")},
        {**qa, "id": "bad-schema", "question": 12345},
        {**qa, "id": "bad-empty-text", "question": ""},
        {**qa, "id": "bad-huge-text", "question": "Quantas pessoas se veem aqui? " * 40000},
        {**caption, "id": "bad-spanish", "text": SPANISH},
        {**qa, "id": "bad-strip", "image": img("strip.png")},
        {**qa, "id": "bad-pixel-budget", "image": img("pixel-budget.png")},
        {**qa, "id": "bad-bomb", "image": img("bomb.png")},
        {**caption, "id": "big-photo", "image": img("big.png"),
         "text": "Uma parede bege lisa, fotografada de perto e sem mais nada à vista."},
        {**qa, "question": "Que cor tem o objeto maior desta imagem, visto de frente?"},
    ]  # the last reuses qa's id: duplicate_id
    with records.open("a", encoding="utf-8") as fh:
        for row in bad:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.write("{not json at all\n")

    params = root / "params.yaml"
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    ci = raw["profiles"]["ci"]
    raw["profiles"]["ci"] = {**ci, "data_dir": str(data), "synthetic": SMALL,
                             "validate": {**ci.get("validate", {}),
                                          "max_quarantine_ratio": 0.5}}
    params.write_text(yaml.safe_dump(raw, allow_unicode=True))
    run = root / "run"
    env = {**os.environ, "AMALIA_PARAMS": str(params), "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "amalia_vl", "stage", "validate",
                           "--profile", "ci", "--run-dir", str(run), "--no-progress"],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = len(records.read_text(encoding="utf-8").splitlines())
    return run / "validate", {"peak_mb": peak_mb, "before_mb": before / 1024,
                              "native_lines": lines}


def _quarantine(stage: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (stage / "quarantine.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rid = (row.get("record") or {}).get("id") if isinstance(row.get("record"), dict) \
            else row.get("id")
        out.setdefault(str(rid), []).extend(row["reasons"])
    return out


def test_every_corrupted_record_is_quarantined_with_its_reason(corrupted):
    stage, _ = corrupted
    reasons = _quarantine(stage)
    for rid, expected in EXPECTED.items():
        if expected is None:
            assert rid not in reasons, (rid, reasons.get(rid))
            continue
        assert rid in reasons, f"{rid} was not quarantined"
        assert any(r.startswith(expected) for r in reasons[rid]), (rid, reasons[rid])
    report = json.loads((stage / "report.json").read_text())
    assert report["by_reason"].get("duplicate_id", 0) >= 1
    assert report["by_reason"].get("json_decode", 0) == 1
    kept_ids = {json.loads(line)["id"] for line in
                (stage / "native.jsonl").read_text(encoding="utf-8").splitlines()}
    assert "big-photo" in kept_ids


def test_counts_conserve(corrupted):
    stage, facts = corrupted
    report = json.loads((stage / "report.json").read_text())
    assert report["total"] == report["kept"] + report["quarantined"]
    quarantined = len((stage / "quarantine.jsonl").read_text(encoding="utf-8").splitlines())
    assert quarantined == report["quarantined"]
    assert sum(report["by_reason"].values()) >= report["quarantined"]  # a record may have 2
    native = report["inputs"] if isinstance(report.get("inputs"), list) else None
    assert report["total"] >= facts["native_lines"], (report["total"], native)


_INSPECT = """
import resource, sys
from pathlib import Path
from components.settings import load_settings
from components.validate import inspect_image
cfg = load_settings("ci").validate_
facts = inspect_image(Path(sys.argv[1]).read_bytes(), cfg, embed=True)
print(",".join(facts.reasons) or "kept", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _inspect_peak(path: Path) -> tuple[str, float]:
    """(verdict, peak RSS in MB) of one `inspect_image` call in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _INSPECT, str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=300).stdout.split()
    return out[0], int(out[1]) / 1024


def test_bombs_cost_no_memory(corrupted, tmp_path):
    """Each bomb is judged from its header: inspecting it peaks no higher than inspecting a
    48 px image (decoding would add 432 MB and 30 GB). The stage's own peak over the whole
    set (the 8000 x 8000 photo is decoded: 192 MB) is reported and loosely bounded."""
    stage, facts = corrupted
    images = stage.parents[1] / "data" / "native" / "images"
    small = tmp_path / "small.png"
    Image.new("RGB", (48, 48), (1, 2, 3)).save(small)
    verdict, base = _inspect_peak(small)
    assert verdict == "kept"
    for name, reason in (("pixel-budget.png", "image_too_large"),
                         ("bomb.png", "image_decompression_bomb")):
        got, peak = _inspect_peak(images / name)
        print(f"{name}: {got}, peak RSS {peak:.0f} MB vs {base:.0f} MB for a 48 px image")
        assert got == reason
        assert peak - base < 40, (name, peak, base)
    print(f"validate stage peak RSS over the corrupted set: {facts['peak_mb']:.0f} MB")
    assert facts["peak_mb"] < STAGE_RSS_LIMIT_MB


def test_extreme_images_fit_the_tile_budget():
    """What validate keeps (8000 x 8000) and what a looser `max_aspect_ratio` would keep
    (1 x 4000, 4000 x 1) still become a bounded number of tiles and tokens: the budget
    steps them down instead of failing."""
    from components.model.build import make_processor
    from components.model.tokenizer import train_tokenizer
    from components.records import Record
    from components.train.chat import Budget, ChatFormat, pixel_inputs

    settings = load_settings("tiny")
    processor = make_processor(train_tokenizer(["uma imagem", "um texto"], 300), settings)
    chat = ChatFormat(processor)
    record = Record(id="r", source="native", language="pt-PT", task_family="test",
                    kind="qa", question="O que se vê?", answer="nada", image="a.png")
    budget = Budget(max_length=2048, max_tiles=5)
    for h, w in [(8000, 8000), (4000, 1), (1, 4000)]:
        t = chat.encode(record, [(h, w)], budget)
        assert len(t.input_ids) <= budget.max_length
        image = Image.new("RGB", (w, h), (10, 20, 30))
        tiles, sizes = pixel_inputs(processor, [image], t.image_sizes)
        assert tiles[0].shape[0] <= budget.max_tiles, (h, w, tiles[0].shape)
        assert tiles[0].shape[1:] == (3, processor.image_processor.size["height"],
                                      processor.image_processor.size["width"])
