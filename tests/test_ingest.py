"""Ingestion of every source format (LLaVA JSON, JSONL, Hugging Face datasets, parquet with
image bytes, image folders; local and S3) through the validate stage, with mixed good and
bad rows: total = kept + quarantined and every input row lands in exactly one of the two."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest
from PIL import Image

from components.errors import AmaliaError, ConfigError
from components.ingest import iter_items, iter_json_array, parse_spec
from components.ingest.normalise import normalise
from components.records import read_records
from components.settings import load_settings
from components.stages import run_stage
from components.validate import validate_stream


def png(seed: int, size=(48, 40), mode="RGB", fmt="PNG") -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    (img.convert(mode) if mode != "RGB" else img).save(buf, format=fmt)
    return buf.getvalue()


CORRUPT = b"\x89PNG\r\n\x1a\n definitely not a png"


def run_inputs(tmp_path: Path, inputs: list[str], **validate) -> tuple[dict, dict, dict]:
    """Validate `inputs` (no GX: fast); check the partition invariants; return
    (report, quarantine reasons by id, kept records by id)."""
    settings = load_settings("ci", overrides={"data_dir": str(tmp_path),
                                              "ingest": {"inputs": inputs},
                                              "validate": {"max_quarantine_ratio": 1.0,
                                                           **validate}})
    out = tmp_path / "out"
    tally, _, _ = validate_stream(settings, out, with_gx=False)
    report = tally.report()
    quarantine = [json.loads(line) for line in
                  (out / "quarantine.jsonl").read_text().splitlines()]
    kept = read_records(out / "validated") if (out / "validated").exists() else []
    assert report["total"] == report["kept"] + report["quarantined"]
    assert report["kept"] == len(kept) and report["quarantined"] == len(quarantine)
    kept_ids = [r.id for r in kept]
    q_ids = [q["id"] for q in quarantine if q["id"] is not None]
    assert len(set(kept_ids)) == len(kept_ids) and not set(kept_ids) & set(q_ids)
    return report, {q["id"]: q["reasons"] for q in quarantine}, {r.id: r for r in kept}


def assert_partition(report: dict, reasons: dict, kept: dict, ids: list[str]) -> None:
    """Every input id is in exactly one of kept / quarantine, and nothing else is."""
    assert sorted([*kept, *reasons]) == sorted(ids)
    assert report["total"] == len(ids)


# ----------------------------------------------------------------------------- specs


def test_parse_spec_formats_and_options(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.parquet").write_bytes(b"")
    spec = parse_spec(f"llava:{tmp_path}/a.json?source=llava150k&language=en&split=test")
    assert (spec.format, spec.source, spec.options["split"]) == ("llava", "llava150k", "test")
    assert parse_spec(f"{tmp_path}/r.jsonl").format == "jsonl"
    assert parse_spec(f"{tmp_path}/a.json").format == "llava"
    assert parse_spec(str(tmp_path / "d")).format == "parquet"
    assert parse_spec("s3://bucket/x/data.parquet").format == "parquet"
    hub = parse_spec("hf://HuggingFaceM4/FineVision?split=train")
    assert hub.hub and hub.format == "hf" and hub.location == "HuggingFaceM4/FineVision"
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        parse_spec(f"{tmp_path}/r.jsonl?colour=red")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    with pytest.raises(ConfigError, match="no records found in"):
        parse_spec(str(tmp_path / "notes"))
    with pytest.raises(ConfigError, match="cannot tell the format"):
        parse_spec(str(tmp_path / "notes" / "readme.txt"))
    # Hugging Face's name for an image folder, as in the README
    assert parse_spec(f"imagefolder:{tmp_path / 'notes'}").format == "images"
    assert parse_spec(f"images:{tmp_path / 'notes'}").format == "images"


def test_normalise_layouts() -> None:
    d = {"source": "src", "language": "en"}
    rec, _, _ = normalise({"id": 7, "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]},
        d, "f#1")
    assert rec["kind"] == "conversation" and rec["id"] == "src/7"
    assert rec["conversations"][0] == {"role": "user", "content": "<image>\nWhat?"}
    rec, inline, _ = normalise({"images": [{"bytes": b"x", "path": "p.png"}],
                                "texts": [{"user": "Q?", "assistant": "A."}]}, d, "f#2")
    assert rec["conversations"][0]["content"] == "<image>\nQ?" and rec["image"] in inline
    rec, _, _ = normalise({"question": "Q", "choices": ["a", "b", "c"], "answer": 2}, d, "f#3")
    assert (rec["kind"], rec["answer"]) == ("multiple_choice", "c")
    rec, _, _ = normalise({"question": "Q", "options": ["a", "b"], "answer": "B"}, d, "f#4")
    assert rec["answer"] == "b"
    rec, _, _ = normalise({"question": "Q", "answers": [{"answer": "2"}, {"answer": "3"},
                                                        {"answer": "3"}]}, d, "f#5")
    assert (rec["kind"], rec["answer"]) == ("qa", "3")
    rec, _, _ = normalise({"prompt": "P", "chosen": "c", "rejected": "r"}, d, "f#6")
    assert (rec["kind"], rec["question"]) == ("preference", "P")
    rec, _, _ = normalise({"image": "i.png", "expression": "the dog",
                           "bbox": [1, 2, 10, 20]}, {**d, "box_format": "xywh"}, "f#7")
    assert rec["kind"] == "grounding" and rec["boxes"] == [{"bbox": [1.0, 2.0, 11.0, 22.0]}]
    rec, _, _ = normalise({"instruction": "Traduz", "input": "cat", "output": "gato"}, d, "f#8")
    assert (rec["kind"], rec["task_family"]) == ("qa", "text_instruction")
    rec, _, _ = normalise({"image": "i.png", "caption": "A dog.", "split": "validation"},
                          d, "f#9")
    assert (rec["kind"], rec["split"], rec["task_family"]) == ("caption", "test", "captioning")
    _, _, hints = normalise({"foo": 1}, d, "f#10")
    assert hints["unknown_layout"]


def test_json_array_streams_and_names_the_bad_line(tmp_path: Path) -> None:
    good = '[\n {"a": 1},\n {"b": [1,\n 2]}\n]\n'
    assert list(iter_json_array(io.StringIO(good), "x")) == [(2, {"a": 1}), (3, {"b": [1, 2]})]
    bad = '[\n {"a": 1},\n {"b": 2,,}\n]\n'
    with pytest.raises(AmaliaError, match=r"^x:3: not valid JSON"):
        list(iter_json_array(io.StringIO(bad), "x"))
    with pytest.raises(AmaliaError, match=r"^x:1: not a JSON array"):
        list(iter_json_array(io.StringIO('"hello"'), "x"))


@pytest.mark.parametrize("read_chars", [1 << 20, 3])
def test_json_array_error_names_line_and_column(monkeypatch, read_chars: int) -> None:
    """The column is right also when the line spans several read blocks."""
    import components.ingest as ingest

    monkeypatch.setattr(ingest, "READ_CHARS", read_chars)
    bad = '[\n {"a": 1},\n {"b": 2,,}\n]\n'
    with pytest.raises(AmaliaError, match=r"^x:3: not valid JSON \(Expecting property name "
                                          r"enclosed in double quotes, column 10\)$"):
        list(iter_json_array(io.StringIO(bad), "x"))
    one_line = '[{"a": 1}, {"b": 2} {"c": 3}]'
    with pytest.raises(AmaliaError, match=r"^x:1: not valid JSON \(expected ',' or ']', "
                                          r"column 21\)$"):
        list(iter_json_array(io.StringIO(one_line), "x"))


# ----------------------------------------------------------------------------- formats


def llava_rows() -> list[dict]:
    def conv(q: str, a: str) -> list[dict]:
        return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]

    return [
        {"id": "ok", "image": "imgs/a.png", "conversations": conv("<image>\nWhat is it?", "A.")},
        {"id": "two", "image": ["imgs/a.png", "imgs/b.png"],
         "conversations": conv("<image> vs <image>?", "Different.")},
        {"id": "missing", "image": "imgs/nope.png", "conversations": conv("<image>\nQ?", "A.")},
        {"id": "corrupt", "image": "imgs/bad.png", "conversations": conv("<image>\nQ?", "A.")},
        {"id": "placeholders", "image": "imgs/b.png",
         "conversations": conv("<image><image> Q?", "A.")},
        {"id": "roles", "image": "imgs/b.png",
         "conversations": [{"from": "gpt", "value": "A."}, {"from": "human", "value": "Q"}]},
        {"id": "textonly", "conversations": conv("Say hi.", "Hi.")},
        {"id": "grey", "image": "imgs/grey.png", "conversations": conv("<image>\nQ?", "A.")},
        {"conversations": "not a list"},
    ]


def write_images(root: Path) -> None:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "imgs" / "a.png").write_bytes(png(1))
    (root / "imgs" / "b.png").write_bytes(png(2))
    (root / "imgs" / "grey.png").write_bytes(png(3, mode="L"))
    (root / "imgs" / "bad.png").write_bytes(CORRUPT)


LLAVA_REASONS = {
    "llava/missing": ["image_missing"], "llava/corrupt": ["image_unreadable"],
    "llava/placeholders": ["image_placeholder_mismatch"], "llava/roles": ["conversation_roles"],
}


def test_llava_json_with_mixed_rows(tmp_path: Path) -> None:
    write_images(tmp_path)
    path = tmp_path / "llava.json"
    # one element a line: element i sits on line i + 2
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in llava_rows()) + "\n]\n")
    report, reasons, kept = run_inputs(tmp_path, [f"{path}?source=llava"])
    no_id = f"{path}#10"  # a row without an id is named by its file and line
    assert reasons.pop(no_id) == ["schema:conversations:list_type"]
    assert reasons == LLAVA_REASONS
    ids = [f"llava/{r['id']}" for r in llava_rows() if "id" in r]
    assert_partition(report, {**reasons, no_id: []}, kept, [*ids, no_id])
    assert kept["llava/two"].images == [str(tmp_path / "imgs" / "a.png"),
                                        str(tmp_path / "imgs" / "b.png")]
    assert kept["llava/ok"].language == "en" and kept["llava/ok"].kind == "conversation"
    assert kept["llava/textonly"].task_family == "text_instruction"


def test_unparseable_llava_file_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n {"id": "a", "conversations": []},\n {"id": "b", oops}\n]')
    with pytest.raises(AmaliaError, match=r"broken\.json:3: not valid JSON"):
        run_inputs(tmp_path, [str(path)])
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 nope")
    with pytest.raises(AmaliaError, match=r"bad\.parquet: not a readable parquet file"):
        run_inputs(tmp_path, [str(bad)])


def test_jsonl_with_a_broken_line_quarantines_that_line(tmp_path: Path) -> None:
    write_images(tmp_path)
    rows = [json.dumps({"id": "c1", "image": "imgs/a.png", "caption": "A red thing."}),
            "{broken json",
            json.dumps({"id": "c2", "image": "imgs/b.png", "caption": ""}),
            json.dumps({"id": "c3", "question": "2+2?", "answer": "4"}),
            json.dumps({"nothing": "useful"}),
            json.dumps([1, 2])]
    path = tmp_path / "web.jsonl"
    path.write_text("\n".join(rows) + "\n")
    settings_out = run_inputs(tmp_path, [str(path)])
    report, reasons, kept = settings_out
    quarantine = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text()
                  .splitlines()]
    assert [(q["line"], q["reasons"]) for q in quarantine] == [
        (2, ["json_decode"]), (3, ["empty_text:text"]), (5, ["unknown_layout"]),
        (6, ["json_decode"])]
    assert set(kept) == {"web/c1", "web/c3"} and report["total"] == 6


def test_unparseable_jsonl_file_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    """Not JSON Lines at all: one error naming the file and the first bad line (not a
    quarantine line per line); a few bad lines before good ones are still quarantined."""
    pretty = tmp_path / "pretty.jsonl"  # a pretty-printed JSON array saved as .jsonl
    pretty.write_text(json.dumps([{"id": "a", "caption": "x"}], indent=2))
    with pytest.raises(AmaliaError, match=r"pretty\.jsonl:1: cannot parse as JSON Lines "
                                          r"\(Expecting value, column 2\); no line"):
        run_inputs(tmp_path, [str(pretty)])
    pretty.write_text("\n" + json.dumps([{"id": "a", "caption": "x"}]) + "\n")
    with pytest.raises(AmaliaError, match=r"pretty\.jsonl:2: cannot parse as JSON Lines "
                                          r"\(a JSON array, not an object\)"):
        run_inputs(tmp_path, [str(pretty)])
    binary = tmp_path / "shard.jsonl"
    binary.write_bytes(b"\n\n" + b"PAR1\x00\x15\x04garbage\n" * 30)
    with pytest.raises(AmaliaError, match=r"shard\.jsonl:3: cannot parse as JSON Lines "
                                          r"\(Expecting value, column 1\); none of its first "
                                          r"20 lines"):
        list(iter_items(parse_spec(str(binary))))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text("file_name,text\na.png,A cat.\n")  # a CSV
    with pytest.raises(AmaliaError, match=r"metadata\.jsonl:1: cannot parse as JSON Lines"):
        list(iter_items(parse_spec(f"imagefolder:{folder}")))
    head = tmp_path / "head.jsonl"
    head.write_text("oops\n\n[1]\n" + json.dumps({"id": "q", "question": "Q?", "answer": "A"})
                    + "\n{bad\n")
    report, reasons, kept = run_inputs(tmp_path, [str(head)])
    quarantine = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text()
                  .splitlines()]
    assert [(q["line"], q["reasons"]) for q in quarantine] == [
        (1, ["json_decode"]), (3, ["json_decode"]), (5, ["json_decode"])]
    assert set(kept) == {"head/q"} and report["total"] == 4


def test_hf_saved_dataset_with_image_bytes(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({
        "id": ["q1", "q2", "q3", "q4"],
        "image": [{"bytes": png(1), "path": None}, {"bytes": png(2, mode="RGBA"), "path": None},
                  {"bytes": CORRUPT, "path": None}, {"bytes": png(4, size=(300, 10)),
                                                     "path": None}],
        "question": ["Qual é a cor?", "Quantos?", "Onde?", "O quê?"],
        "answer": ["azul", "3", "ali", "isso"],
    }).cast_column("image", datasets.Image())
    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "hfds"))
    report, reasons, kept = run_inputs(
        tmp_path, [f"hf://{tmp_path / 'hfds'}?source=ptvqa&language=pt-PT"])
    assert reasons == {"ptvqa/q3": ["image_unreadable"], "ptvqa/q4": ["aspect_ratio"]}
    assert_partition(report, reasons, kept, ["ptvqa/q1", "ptvqa/q2", "ptvqa/q3", "ptvqa/q4"])
    assert kept["ptvqa/q1"].kind == "qa" and kept["ptvqa/q1"].language == "pt-PT"
    assert "#1/image[0]" in kept["ptvqa/q1"].image  # bytes: a locator naming the row
    # the validation split becomes held-out test data
    report, reasons, kept = run_inputs(tmp_path, [f"{tmp_path / 'hfds'}?split=validation"])
    assert [r.split for r in kept.values()] == ["test"]


def test_parquet_with_image_bytes_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "question_id": [1, 2, 3],
        "image": pa.array([{"bytes": png(5), "path": "x.png"}, {"bytes": CORRUPT, "path": None},
                           {"bytes": png(6, fmt="JPEG"), "path": None}], type=image_type),
        "question": ["What?", "Why?", "Who?"],
        "options": [["a", "b"], ["a", "b"], ["a", "b"]],
        "answer": ["a", "b", "c"],
    })
    pq.write_table(table, tmp_path / "mc.parquet")
    report, reasons, kept = run_inputs(tmp_path, [str(tmp_path / "mc.parquet")])
    assert reasons == {"mc/2": ["image_unreadable"], "mc/3": ["answer_not_in_options"]}
    assert_partition(report, reasons, kept, ["mc/1", "mc/2", "mc/3"])
    assert kept["mc/1"].kind == "multiple_choice"


def arrow_stream(table, path: Path, batch_rows: int) -> None:
    """`table` as an Arrow IPC stream (what `datasets` writes), `batch_rows` a batch."""
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)


def test_truncated_arrow_file_is_an_error_naming_file_and_batch(tmp_path: Path) -> None:
    import pyarrow as pa

    table = pa.table({"id": [str(i) for i in range(40)],
                      "caption": [f"caption number {i} " * 20 for i in range(40)]})
    path = tmp_path / "cut.arrow"
    arrow_stream(table, path, batch_rows=10)
    data = path.read_bytes()
    path.write_bytes(data[:-200])  # ends inside the fourth (last) batch of ~4 kB
    with pytest.raises(AmaliaError, match=r"cut\.arrow:31: unreadable arrow data in record "
                                          r"batch 4 \("):
        list(iter_items(parse_spec(str(path))))
    path.write_bytes(b"ARROW1 nope")
    with pytest.raises(AmaliaError, match=r"cut\.arrow: not a readable arrow file"):
        list(iter_items(parse_spec(str(path))))


def test_arrow_and_parquet_with_image_paths_only(tmp_path: Path) -> None:
    """Image columns holding paths, no bytes (`{bytes: null, path}` structs or strings):
    relative paths resolve against the folder of the data file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = tmp_path / "tables"
    write_images(tables)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({
        "id": ["ok", "missing", "abs"],
        "image": pa.array([{"bytes": None, "path": "imgs/a.png"},
                           {"bytes": None, "path": "imgs/nope.png"},
                           {"bytes": None, "path": str(tables / "imgs" / "b.png")}],
                          type=image_type),
        "caption": ["A red thing.", "Nothing.", "A blue thing."]}), tables / "p.parquet")
    arrow_stream(pa.table({"id": ["s1", "s2"], "image_path": ["imgs/grey.png", "imgs/bad.png"],
                           "question": ["What?", "Why?"], "answer": ["x", "y"]}),
                 tables / "s.arrow", batch_rows=1)
    file_table = pa.table({"id": ["f1"], "image": ["imgs/a.png"], "text": ["Again."]})
    with pa.OSFile(str(tables / "f.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, file_table.schema) as writer:  # the IPC file format
        writer.write_table(file_table)
    assert parse_spec(str(tables / "s.arrow")).format == "arrow"
    report, reasons, kept = run_inputs(tmp_path, [
        str(tables / "p.parquet"), str(tables / "s.arrow"), f"arrow:{tables / 'f.arrow'}"])
    assert reasons == {"p/missing": ["image_missing"], "s/s2": ["image_unreadable"]}
    assert_partition(report, reasons, kept, ["p/ok", "p/missing", "p/abs", "s/s1", "s/s2",
                                             "f/f1"])
    assert kept["p/ok"].image == str(tables / "imgs" / "a.png")
    assert kept["p/abs"].image == str(tables / "imgs" / "b.png")
    assert kept["s/s1"].image == str(tables / "imgs" / "grey.png") and kept["s/s1"].kind == "qa"
    assert kept["f/f1"].image == str(tables / "imgs" / "a.png")


def test_image_folder_with_sidecars(tmp_path: Path) -> None:
    folder = tmp_path / "pd12m"
    folder.mkdir()
    (folder / "001.jpg").write_bytes(png(7, fmt="JPEG"))
    (folder / "001.txt").write_text("A lighthouse at dusk.")
    (folder / "002.png").write_bytes(png(8))
    (folder / "002.json").write_text(json.dumps({"caption": "Two boats.", "split": "test"}))
    (folder / "003.png").write_bytes(png(9))  # no text at all
    (folder / "004.png").write_bytes(CORRUPT)
    (folder / "004.txt").write_text("Broken.")
    report, reasons, kept = run_inputs(tmp_path, [str(folder)])
    assert reasons == {"pd12m/003": ["missing_field:text"], "pd12m/004": ["image_unreadable"]}
    assert_partition(report, reasons, kept, [f"pd12m/00{i}" for i in range(1, 5)])
    assert kept["pd12m/002"].split == "test" and kept["pd12m/001"].text.startswith("A light")


def test_hub_id_goes_through_load_dataset_streaming(tmp_path: Path, monkeypatch) -> None:
    """The hub path is real code; here `load_dataset` is replaced, nothing is downloaded."""
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, streaming=False):
        calls.append((name, split, streaming))
        return datasets.Dataset.from_dict({"question": ["Q?"], "answer": ["A."]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = list(iter_items(parse_spec("hf://lmms-lab/textvqa?split=validation")))
    assert calls == [("lmms-lab/textvqa", "validation", True)]
    assert items[0].payload == {"question": "Q?", "answer": "A."}


def test_hub_id_streams_real_image_rows_from_the_datasets_cache(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The hub path end to end, nothing replaced: a dataset with an `Image()` column is
    prepared into a private `datasets` cache (as a first online `load_dataset` leaves it),
    its source files are deleted, and `hf://<id>` then goes through the real
    `datasets.load_dataset(id, streaming=True)` (offline: the cached copy). The images must
    arrive as bytes the validate stage decodes (a corrupt one is quarantined as
    unreadable, a too-thin one by its aspect ratio: both need the decoded image), be embedded
    in validated/ (RGB as it came, RGBA and grey converted to RGB) and be counted."""
    import shutil

    import datasets
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    images = {"h1": png(11), "h2": png(12, size=(64, 32), mode="RGBA"),
              "h3": png(13, mode="L", fmt="JPEG"), "h4": CORRUPT, "h5": png(15, size=(400, 10))}
    ds = datasets.Dataset.from_dict({
        "id": list(images),
        "image": [{"bytes": b, "path": None} for b in images.values()],
        "question": ["Qual é a cor?", "Quantos há?", "Onde está?", "O quê?", "Qual?"],
        "answer": ["azul", "3", "ali", "isso", "aquilo"],
    }).cast_column("image", datasets.Image())
    repo = tmp_path / "hub" / "amalia_hub_stream"
    (repo / "data").mkdir(parents=True)
    ds.to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    datasets.load_dataset(str(repo), split="train")  # prepare the cache, as a download would
    shutil.rmtree(tmp_path / "hub")  # only the cache is left
    monkeypatch.chdir(tmp_path)

    real, calls = datasets.load_dataset, []

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(datasets, "load_dataset", spy)
    spec = parse_spec("hf://amalia_hub_stream?source=hubvqa&language=pt-PT")
    assert spec.hub and spec.format == "hf"
    rows = list(iter_items(spec))
    (args, kwargs, streamed), = calls
    assert args == ("amalia_hub_stream",) and kwargs["streaming"] is True
    assert kwargs["split"] == "train"
    assert isinstance(streamed, datasets.IterableDataset)
    assert isinstance(streamed.features["image"], datasets.Image)
    assert [r.file for r in rows] == ["hf://amalia_hub_stream[train]"] * 5
    assert [r.payload["image"]["bytes"] for r in rows] == list(images.values())

    report, reasons, kept = run_inputs(tmp_path, [
        "hf://amalia_hub_stream?source=hubvqa&language=pt-PT"])
    assert reasons == {"hubvqa/h4": ["image_unreadable"], "hubvqa/h5": ["aspect_ratio"]}
    assert_partition(report, reasons, kept, [f"hubvqa/{k}" for k in images])
    assert (report["kept"], report["quarantined"]) == (3, 2)
    assert report["by_source"]["hubvqa"]["kept"] == 3
    out = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "validated").to_pylist()}
    assert out["hubvqa/h1"]["image_bytes"] == [images["h1"]]  # RGB: embedded as it came
    for key in ("h1", "h2", "h3"):  # RGBA and grey: decoded and converted to RGB
        rec = kept[f"hubvqa/{key}"]
        assert rec.kind == "qa" and rec.language == "pt-PT"
        assert "hf://amalia_hub_stream[train]#" in rec.image
        (embedded,) = out[f"hubvqa/{key}"]["image_bytes"]
        decoded = Image.open(io.BytesIO(embedded))
        assert decoded.mode == "RGB"
        assert decoded.size == Image.open(io.BytesIO(images[key])).size


def test_hub_config_is_passed_to_load_dataset(tmp_path: Path, monkeypatch) -> None:
    """Multi-subset hub datasets (FineVision, the Cauldron): `?config=` (alias `?subset=`)
    becomes `load_dataset(id, name=...)`; nothing is downloaded."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return datasets.Dataset.from_dict({"question": ["Q?"], "answer": ["A."]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = parse_spec("hf://HuggingFaceM4/FineVision?config=chartqa&split=train")
    items = list(iter_items(spec))
    assert calls == [("HuggingFaceM4/FineVision", "chartqa", "train", True)]
    assert items[0].file == "hf://HuggingFaceM4/FineVision:chartqa[train]"
    assert spec.source == "FineVision-chartqa"  # subsets do not share ids by default
    list(iter_items(parse_spec("hf://HuggingFaceM4/the_cauldron?subset=ai2d&source=ai2d")))
    assert calls[-1] == ("HuggingFaceM4/the_cauldron", "ai2d", "train", True)
    with pytest.raises(ConfigError, match=r"\?config= applies to hub ids only"):
        parse_spec(f"{tmp_path}/x.parquet?config=chartqa")


def test_hub_rows_with_relative_image_paths_need_an_image_root(tmp_path: Path,
                                                               monkeypatch) -> None:
    import datasets

    write_images(tmp_path)
    rows = {"id": ["1", "2"], "image": ["imgs/a.png", str(tmp_path / "imgs" / "b.png")],
            "caption": ["A red thing.", "A blue thing."]}
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, split=None, streaming=False: datasets.Dataset.from_dict(rows))
    with pytest.raises(AmaliaError, match=r"^hf://org/caps\[train\]:1: image path 'imgs/a\.png' "
                                          r"is relative .*add \?image_root=DIR"):
        list(iter_items(parse_spec("hf://org/caps")))
    report, reasons, kept = run_inputs(tmp_path, [f"hf://org/caps?image_root={tmp_path}"])
    assert reasons == {} and report["total"] == 2
    assert kept["caps/1"].image == str(tmp_path / "imgs" / "a.png")


def test_all_formats_in_one_stage_run_with_gx(tmp_path: Path, mlflow_uri: str) -> None:
    import mlflow

    from components.pipeline import run_tracked_stage

    write_images(tmp_path)
    (tmp_path / "llava.json").write_text(json.dumps(llava_rows()))
    (tmp_path / "pt.jsonl").write_text(json.dumps(
        {"id": "p1", "kind": "caption", "image": "imgs/a.png", "source": "pt", "language":
         "pt-PT", "split": "train", "task_family": "captioning",
         "text": "Um farol ao anoitecer na costa alentejana."}) + "\n")
    settings = load_settings("ci", overrides={
        "data_dir": str(tmp_path), "validate": {"max_quarantine_ratio": 0.6},
        "ingest": {"inputs": [str(tmp_path / "llava.json"), str(tmp_path / "pt.jsonl")]}})
    manifest = run_tracked_stage("validate", settings, tmp_path / "run", progress=False)
    stage = tmp_path / "run" / "validate"
    client = mlflow.MlflowClient(mlflow_uri)
    docs = {a.path for a in client.list_artifacts(manifest["mlflow_run_id"], "gx_docs")}
    assert "gx_docs/index.html" in docs  # the Data Docs HTML is logged to MLflow
    params = client.get_run(manifest["mlflow_run_id"]).data.params
    assert "llava.json" in params["inputs"]
    report = json.loads((stage / "report.json").read_text())
    assert report["total"] == 10 == report["kept"] + report["quarantined"]
    assert report["kept"] == 5 and report["gx_success"] is True
    assert (stage / "gx_docs" / "index.html").exists()
    assert [r["id"] for r in map(json.loads, (stage / "native.jsonl").read_text()
                                 .splitlines())] == ["p1"]
    assert len((stage / "seed_en.jsonl").read_text().splitlines()) == 4  # the translate queue
    # the gate: fails with a clear message, reports written
    strict = load_settings("ci", overrides={
        "data_dir": str(tmp_path), "validate": {"max_quarantine_ratio": 0.1},
        "ingest": {"inputs": [str(tmp_path / "llava.json")]}})
    from components.errors import DataQualityError

    with pytest.raises(DataQualityError, match=r"5/9 records quarantined \(55.6% > "
                                               r"max_quarantine_ratio 10.0%\)"):
        run_stage("validate", strict, tmp_path / "run2", progress=False)
    assert json.loads((tmp_path / "run2" / "validate" / "report.json").read_text())[
        "quarantined"] == 5


# ----------------------------------------------------------------------------- S3


def test_inputs_on_s3_through_moto(tmp_path: Path, s3_endpoint: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="raw")
    client.put_object(Bucket="raw", Key="vqa/imgs/a.png", Body=png(1))
    client.put_object(Bucket="raw", Key="vqa/imgs/b.png", Body=CORRUPT)
    rows = [{"id": "1", "image": "imgs/a.png", "question": "What?", "answer": "x"},
            {"id": "2", "image": "imgs/b.png", "question": "What?", "answer": "y"},
            {"id": "3", "image": "imgs/c.png", "question": "What?", "answer": "z"}]
    client.put_object(Bucket="raw", Key="vqa/data.jsonl",
                      Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    client.put_object(Bucket="raw", Key="vqa/llava.json", Body=json.dumps(llava_rows()[:2]))
    client.put_object(Bucket="raw", Key="folder/x.png", Body=png(2))
    client.put_object(Bucket="raw", Key="folder/x.txt", Body=b"A caption.")
    report, reasons, kept = run_inputs(tmp_path, [
        "s3://raw/vqa/data.jsonl", "s3://raw/vqa/llava.json?source=llava", "images:s3://raw/folder"])
    assert reasons == {"data/2": ["image_unreadable"], "data/3": ["image_missing"],
                       "llava/two": ["image_unreadable"]}  # its second image is b.png
    assert set(kept) == {"data/1", "llava/ok", "folder/x"}
    assert kept["folder/x"].image == "s3://raw/folder/x.png"
    assert kept["data/1"].image == "s3://raw/vqa/imgs/a.png"
    import pyarrow.parquet as pq

    rows_out = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "validated").to_pylist()}
    assert rows_out["data/1"]["image_bytes"] == [png(1)]  # fetched from S3, embedded


def test_finevision_style_rows_with_image_lists(tmp_path: Path) -> None:
    """FineVision / the Cauldron: `images` (a list) and `texts` of {user, assistant} pairs."""
    import datasets

    ds = datasets.Dataset.from_dict({
        "images": [[{"bytes": png(1), "path": None}, {"bytes": png(2), "path": None}],
                   [{"bytes": png(3), "path": None}], []],
        "texts": [[{"user": "Compare.", "assistant": "Left is darker."}],
                  [{"user": "<image> What is it?", "assistant": "A chart."},
                   {"user": "And the title?", "assistant": "Sales."}],
                  [{"user": "Write a haiku.", "assistant": "Old pond, frog jumps in."}]],
        "source": ["docvqa", "chartqa", "text"],
    }).cast_column("images", datasets.List(datasets.Image()))
    ds.to_parquet(str(tmp_path / "fv.parquet"))
    ds.save_to_disk(str(tmp_path / "fv"))
    for spec in (str(tmp_path / "fv.parquet"), f"hf://{tmp_path / 'fv'}"):
        report, reasons, kept = run_inputs(tmp_path, [spec])
        assert reasons == {} and report["total"] == 3
        by_source = {r.source: r for r in kept.values()}
        first, second, third = by_source["docvqa"], by_source["chartqa"], by_source["text"]
        assert len(first.images) == 2 and first.conversations[0].content.count("<image>") == 2
        assert second.conversations[0].content == "<image> What is it?"  # kept as written
        assert third.image is None and third.task_family == "text_instruction"


def test_normalised_boxes_are_converted_to_pixels(tmp_path: Path) -> None:
    write_images(tmp_path)  # a.png is 48 x 40
    rows = [{"id": "in", "image": "imgs/a.png", "phrase": "the sky", "bbox": [0.1, 0.1, 0.5, 0.5]},
            {"id": "out", "image": "imgs/a.png", "phrase": "the sea",
             "bbox": [0.5, 0.5, 1.2, 0.9]}]
    path = tmp_path / "refcoco.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, reasons, kept = run_inputs(tmp_path, [f"{path}?box_format=xyxy_norm"])
    assert reasons == {"refcoco/out": ["box_outside_image"]}
    box = kept["refcoco/in"].boxes[0]
    assert box.bbox == pytest.approx([4.8, 4.0, 24.0, 20.0])
    assert kept["refcoco/in"].kind == "grounding"
