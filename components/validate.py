"""The `validate` stage: stream every input through per-record checks, quarantine the bad,
shard the kept, and certify them with Great Expectations suites per record kind.

Inputs: `settings.ingest.inputs` (any format of `components.ingest`: JSONL, LLaVA JSON,
Hugging Face datasets / parquet / arrow, image folders; local, `s3://` or `hf://`), or, when
empty, the embedded `<data_dir>/native/records.jsonl` and `<data_dir>/seed_en/records.jsonl`
(whose records must carry those sources and relative, safe image paths).

Every input record ends in exactly one of (so `total == kept + quarantined`):
- `<out>/validated/part-NNNNN.parquet`: kept records (`RECORD_SCHEMA` columns, images as
  locators) plus facts: `image_bytes` (the image files, RGB-converted when they were not
  RGB; with `embed_images`), `image_width` / `image_height` / `image_mode` / `image_phash`
  (64-bit pHash, hex, as `imagehash.phash`) / `image_digest` (sha256 of the image file)
  per image, `detected_language`. Kept records are also written as JSONL views that today's
  readers use: `seed_en.jsonl` (language in `translate_languages`: the translate queue) and
  `native.jsonl` (the rest).
- `<out>/quarantine.jsonl`: `{"id", "source", "reasons": [...], "file", "line"}`.

Checks, in order (reasons; a record keeps every reason that applies):
`json_decode` / `unknown_layout` / `schema:<field>:<type>` stop the record; then
`source_mismatch`, `missing_field:<f>`, `empty_text:<f>`, `answer_not_in_options`,
`too_few_options`, `chosen_equals_rejected`, `conversation_roles`, `text_too_long`,
`image_placeholder_mismatch` (`<image>` count != image count; none with one image is fine),
`language_not_pt:<detected>` (records declared `pt*` whose texts hold >= `language_min_chars`
letters and score P(pt) < `language_min_pt_prob` with py3langid over
`language_candidates`), `image_path_unsafe` / `image_missing` /
`image_unreadable` (Pillow verify + full load) / `image_decompression_bomb` / `image_too_small`
/ `image_too_large` (side over `max_image_side` or pixels over `max_image_pixels`, judged from
the header before decoding) / `aspect_ratio`, `box_invalid` / `box_outside_image`,
`near_duplicate_of_eval:<eval id>`
(train images within `near_dup_max_distance` pHash bits of an eval image, or the same file
content), `duplicate_id` (the first occurrence owns an id) and `duplicate_record` (same kind,
texts and image file contents as a kept record; several questions on one image are distinct
records).
Greyscale, palette, RGBA and CMYK images are converted to RGB, never rejected for it.

Streaming: records go to worker processes in chunks of `chunk_size` (`workers`, image
decode, hashing and language ID), at most `2 * workers + 2` chunks in flight, results taken
in input order, so output is deterministic and memory is bounded by the chunks in flight,
one parquet row group and one GX batch; the only state that grows with the input is the
set of seen id/record digests (8 + 16 bytes each, plus set overhead) and the eval hashes.
A first pass collects the eval images (`split: test` records and `eval_images`).

`<out>/report.json`: `total`, `kept`, `quarantined`, `by_reason` (near-duplicate reasons
counted without their eval id), `by_source`, `by_kind` (kept), `converted` (image modes
converted to RGB), `images_decoded`, `inputs`, `gx_success`. Great Expectations 1.x suites,
one per kind (`caption`, `qa`, `multiple_choice` (also `qa` records with options),
`conversation`, `grounding`, `preference`), run on the kept records in batches of
`gx_batch_rows` (ephemeral context, imported lazily); results go to `gx_result.json` and
HTML Data Docs to `<out>/gx_docs/`. Finally, when `quarantined / total >
max_quarantine_ratio` (or nothing was read) the stage raises `DataQualityError`; every
report is written first. An input file that cannot be parsed at all raises `AmaliaError`
naming the file and the line.

At scale, `flows/validate.py` cuts the input stream into contiguous chunk ranges validated
by parallel Prefect tasks and merges them into this same layout
(`components.validation.shards`); the order-dependent checks (`duplicate_id`,
`duplicate_record`) go through `SeenKeys` in input order there as here, and the report,
gate and outputs through `conclude`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageFile
from pydantic import ValidationError

from components.errors import DataQualityError, MissingInputError
from components.ingest import InputSpec, Item, iter_items, parse_spec
from components.ingest import sources as src
from components.ingest.normalise import TEST_SPLITS, normalise
from components.records import PLACEHOLDER, Record, ShardWriter, record_arrow_schema
from components.settings import Settings, ValidateSettings
from components.stages import StageContext, StageOutput

# (label = expected `source`, path relative to the data dir) of the embedded data
INPUTS: tuple[tuple[str, str], ...] = (
    ("native", "native/records.jsonl"),
    ("seed_en", "seed_en/records.jsonl"),
)
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "caption": ("image", "text"),
    "qa": ("question", "answer"),
    "multiple_choice": ("question", "options", "answer"),
    "conversation": ("conversations",),
    "grounding": ("image", "question", "boxes"),
    "preference": ("question", "chosen", "rejected"),
}
SUITES: tuple[str, ...] = tuple(REQUIRED_FIELDS)
SPLITS = ("train", "test")
EVAL_REASON = "near_duplicate_of_eval"
GX_COLUMNS = ("id", "source", "language", "split", "task_family", "kind", "question", "text",
              "answer", "chosen", "rejected", "n_images", "min_side", "max_side", "aspect",
              "n_placeholders", "placeholders_ok", "text_min_chars", "text_max_chars",
              "n_options", "answer_in_options", "n_turns", "roles_ok", "n_boxes",
              "boxes_inside", "chosen_differs", "pt_prob")


def fact_fields():
    """The columns the validated shards add after the record columns."""
    import pyarrow as pa

    return [
        pa.field("image_bytes", pa.list_(pa.binary())),
        pa.field("image_width", pa.list_(pa.int32())),
        pa.field("image_height", pa.list_(pa.int32())),
        pa.field("image_mode", pa.list_(pa.string())),
        pa.field("image_phash", pa.list_(pa.string())),
        pa.field("image_digest", pa.list_(pa.string())),
        pa.field("detected_language", pa.string()),
    ]


def validated_schema():
    schema = record_arrow_schema()
    for f in fact_fields():
        schema = schema.append(f)
    return schema


def suite_of(rec: Record) -> str:
    """The GX suite of a record: its kind, except `qa` with options -> `multiple_choice`."""
    return "multiple_choice" if rec.kind == "qa" and rec.options else rec.kind


# ----------------------------------------------------------------------------- images


# rows 0..7 of the unnormalised DCT-II matrix of size 32 (`scipy.fftpack.dct`'s type 2):
# the low 8x8 coefficients are `_DCT8 @ X @ _DCT8.T`, without importing scipy (1.3 s)
_DCT8 = 2 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(32) + 1) / 64)
PHASH_SIDE = 32


def phash_int(image: Image.Image, exact: bool = False) -> int:
    """64-bit perceptual hash as an int: `imagehash.phash` (DCT of a 32x32 greyscale LANCZOS
    thumbnail, low 8x8 coefficients against their median). `exact=True` is bit for bit
    imagehash; the default shrinks with Pillow's `reducing_gap=2` first (5x faster on 256 px
    images; the same bits for ~96% of images, at most 2 bits apart otherwise)."""
    grey = image if image.mode == "L" else image.convert("L")
    small = grey if grey.size == (PHASH_SIDE, PHASH_SIDE) else grey.resize(
        (PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS, reducing_gap=None if exact else 2.0)
    dct = (_DCT8 @ np.asarray(small, dtype=np.float64) @ _DCT8.T).ravel()
    middle = np.partition(dct, (31, 32))[31:33]  # the median of 64 values, as np.median
    bits = dct > (middle[0] + middle[1]) / 2
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode as RGB: transparency flattened onto white, high bit depth stretched."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


_NO_OP_VERIFY = (Image.Image.verify, ImageFile.ImageFile.verify)


class ImageFacts(NamedTuple):
    reasons: tuple[str, ...]
    width: int = 0
    height: int = 0
    mode: str = ""
    phash: int = 0
    digest: str = ""
    data: bytes | None = None  # as embedded: the original file, or RGB PNG if converted


def inspect_image(data: bytes, cfg: ValidateSettings, embed: bool) -> ImageFacts:
    """Decode (Pillow verify + full load), convert to RGB, bound-check and hash one image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if type(img).verify not in _NO_OP_VERIFY:
                # formats with a verify (PNG: chunk CRCs) check the file structure; the
                # image must then be reopened to decode. For the others verify is a no-op.
                img.verify()
                img = Image.open(io.BytesIO(data))
            width, height, mode = img.width, img.height, img.mode
            if max(width, height) > cfg.max_image_side or width * height > cfg.max_image_pixels:
                return ImageFacts(("image_too_large",), width, height, mode)
            if img.format == "JPEG" and mode == "RGB":
                # kept as is (no conversion), so only the pHash reads pixels: let libjpeg
                # decode greyscale at 1/2..1/8 scale. It still reads every entropy-coded
                # block (a truncated or corrupt file fails `load` as before); the hash is
                # within 2 bits of a full decode's (3x faster on 256 px photos).
                img.draft("L", (PHASH_SIDE, PHASH_SIDE))
            img.load()
            pixels = img if mode == "RGB" else to_rgb(img)  # drafted JPEGs read as L
    except Image.DecompressionBombError:  # Pillow's own limit, past max_image_pixels
        return ImageFacts(("image_decompression_bomb",))
    except (OSError, SyntaxError, ValueError, EOFError):
        return ImageFacts(("image_unreadable",))
    reasons = []
    if min(width, height) < cfg.min_image_side:
        reasons.append("image_too_small")
    if max(width, height) / max(min(width, height), 1) > cfg.max_aspect_ratio:
        reasons.append("aspect_ratio")
    if reasons:
        return ImageFacts(tuple(reasons), width, height, mode)
    digest = hashlib.sha256(data).hexdigest()  # the file's content
    embedded = None
    if embed:
        if mode == "RGB":
            embedded = data
        else:
            buf = io.BytesIO()
            pixels.save(buf, format="PNG", compress_level=1)
            embedded = buf.getvalue()
    return ImageFacts((), width, height, mode, phash_int(pixels), digest, embedded)


# ----------------------------------------------------------------------------- workers


@dataclass
class EvalIndex:
    """Hashes of the evaluation images: pHash array, file digests, ids, exact-only mask."""

    phash: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    ids: list[str] = field(default_factory=list)
    exact_only: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    digests: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def match(self, phash: int, digest: str, source: str, cfg: ValidateSettings) -> str | None:
        """The id of the eval image this one duplicates, if any."""
        if digest in self.digests:
            return self.digests[digest]
        if cfg.near_dup_max_distance is None or not len(self.ids):
            return None
        dist = np.bitwise_count(self.phash ^ np.uint64(phash)).astype(np.int16)
        if source in cfg.exact_only_sources:
            dist[self.exact_only] = 99
        j = int(np.argmin(dist))
        return self.ids[j] if dist[j] <= cfg.near_dup_max_distance else None


@dataclass
class WorkerConfig:
    """Everything a worker needs (inherited on fork, pickled otherwise)."""

    cfg: ValidateSettings
    data_dir: str
    specs: list[InputSpec]
    endpoint: str | None = None
    eval_index: EvalIndex = field(default_factory=EvalIndex)


# per thread: a pool process runs chunks on one thread, and the in-process path of
# `ordered_map` on its caller's (the shards of the sharded flow may share a process)
_LOCAL = threading.local()


def _worker() -> dict[str, Any]:
    if not hasattr(_LOCAL, "state"):
        _LOCAL.state = {}
    return _LOCAL.state


def init_worker(config: WorkerConfig) -> None:
    _LOCAL.state = {"config": config}


def _language_identifier(candidates: tuple[str, ...]):
    key, state = ("langid", candidates), _worker()
    if key not in state:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        ident.set_languages(list(candidates))
        state[key] = ident
    return state[key]


class Parsed(NamedTuple):
    rec: Record | None
    raw: dict[str, Any]
    inline: dict[str, bytes]
    hints: dict[str, Any]
    reasons: list[str]


def parse_item(item: Item, spec: InputSpec) -> Parsed:
    """JSON-decode (if needed), normalise and schema-check one raw row."""
    payload = item.payload
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError:
            return Parsed(None, {}, {}, {}, ["json_decode"])
    if not isinstance(payload, dict):
        return Parsed(None, {}, {}, {}, ["json_decode"])
    raw, inline, hints = normalise(payload, spec.defaults(), f"{item.file}#{item.line}")
    if hints.get("unknown_layout"):
        return Parsed(None, raw, inline, hints, ["unknown_layout"])
    try:
        return Parsed(Record.model_validate(raw), raw, inline, hints, [])
    except ValidationError as exc:
        reasons = []
        for e in exc.errors():
            reason = f"schema:{'.'.join(str(p) for p in e['loc']) or 'record'}:{e['type']}"
            if reason not in reasons:
                reasons.append(reason)
        return Parsed(None, raw, inline, hints, reasons)


def _present(value: Any) -> bool:
    return value is not None


def record_reasons(rec: Record, spec: InputSpec, cfg: ValidateSettings) -> list[str]:
    """The checks that need no image: fields, texts, options, turns, length, placeholders."""
    reasons: list[str] = []
    if spec.expected_source is not None and rec.source != spec.expected_source:
        reasons.append("source_mismatch")
    reasons += [f"missing_field:{f}" for f in REQUIRED_FIELDS[rec.kind]
                if not _present(getattr(rec, f))]
    for f in (*REQUIRED_FIELDS[rec.kind], "text", "question", "answer", "chosen", "rejected",
              "image"):
        value = getattr(rec, f)
        if isinstance(value, str) and not value.strip() and f"empty_text:{f}" not in reasons:
            reasons.append(f"empty_text:{f}")
    if any(not i.strip() for i in rec.images or []):
        reasons.append("empty_text:images")
    if rec.options is not None and (not rec.options or any(not o.strip() for o in rec.options)):
        reasons.append("empty_text:options")
    if rec.conversations is not None and any(not t.content.strip() for t in rec.conversations):
        reasons.append("empty_text:conversations")
    if rec.options and rec.answer is not None and rec.answer not in rec.options:
        reasons.append("answer_not_in_options")
    if rec.kind == "multiple_choice" and rec.options is not None and len(rec.options) < 2:
        reasons.append("too_few_options")
    if rec.kind == "preference" and rec.chosen is not None and rec.chosen == rec.rejected:
        reasons.append("chosen_equals_rejected")
    if rec.kind == "conversation" and rec.conversations is not None \
            and not roles_alternate(rec):
        reasons.append("conversation_roles")
    if any(len(t) > cfg.max_text_chars for t in rec.all_texts()):
        reasons.append("text_too_long")
    if not placeholders_ok(rec):
        reasons.append("image_placeholder_mismatch")
    return reasons


def roles_alternate(rec: Record) -> bool:
    """System turns first, then user/assistant alternating, from a user to an assistant."""
    roles = [t.role for t in rec.conversations or []]
    while roles and roles[0] == "system":
        roles.pop(0)
    if len(roles) < 2 or len(roles) % 2:
        return False
    return all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))


def placeholders_ok(rec: Record) -> bool:
    n_ph, n_img = rec.placeholder_count(), len(rec.image_list())
    return n_ph == n_img or (n_ph == 0 and n_img == 1)


def language_reasons(rec: Record,
                     cfg: ValidateSettings) -> tuple[list[str], str | None, float | None]:
    """`language_not_pt:<code>` for a `pt*` record whose texts read as another language;
    also the detected language and P(pt) (None when the record is not judged)."""
    if not cfg.language_check or not rec.language.lower().startswith("pt"):
        return [], None, None
    text = " ".join(t.replace(PLACEHOLDER, " ") for t in rec.all_texts())
    if sum(map(str.isalpha, text)) < cfg.language_min_chars:
        return [], None, None
    ranked = _language_identifier(tuple(cfg.language_candidates)).rank(text)
    label = ranked[0][0]
    p_pt = next((float(p) for lang, p in ranked if lang == "pt"), 0.0)
    if label != "pt" and p_pt < cfg.language_min_pt_prob:
        return [f"language_not_pt:{label}"], label, p_pt
    return [], label, p_pt


def _unsafe(raw: str, spec: InputSpec, inline: dict[str, bytes]) -> bool:
    """An image path that could escape its root: absolute or `..` for the embedded data
    (paths stay relative to `data_dir`), `..` in a relative path for other inputs."""
    if raw in inline:
        return False
    path = Path(raw)
    if spec.relative_images:
        return path.is_absolute() or ".." in path.parts
    return not src.is_s3(raw) and not path.is_absolute() and ".." in path.parts


def resolve(raw: str, spec: InputSpec, inline: dict[str, bytes]) -> str:
    """The output locator of an image value (relative paths under the input's image root)."""
    if raw in inline or src.is_s3(raw) or spec.relative_images or Path(raw).is_absolute():
        return raw
    root = spec.image_root
    return src.join(root, raw) if root else raw


def fetch(locator: str, spec: InputSpec, inline: dict[str, bytes], data_dir: str,
          endpoint: str | None) -> bytes:
    if locator in inline:
        return inline[locator]
    if spec.relative_images:
        return (Path(data_dir) / locator).read_bytes()
    return src.read_bytes(locator, endpoint)


class Outcome(NamedTuple):
    """A worker's verdict on one item."""

    file: str
    line: int
    id: Any
    source: Any
    reasons: list[str]
    id_key: int | None = None
    content_key: int | None = None
    row: dict[str, Any] | None = None  # parquet row (record + facts) of a kept candidate
    jsonl: str | None = None  # the record as one JSONL line
    gx: dict[str, Any] | None = None
    suite: str | None = None
    modes: tuple[str, ...] = ()
    decoded: int = 0


def _key(*parts: Any, size: int = 8) -> int:
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=size).digest(), "big")


def box_reasons(rec: Record, width: int, height: int, norm: bool) -> list[str]:
    reasons: list[str] = []
    for box in rec.boxes or []:
        if norm:
            box.bbox = [box.bbox[0] * width, box.bbox[1] * height,
                        box.bbox[2] * width, box.bbox[3] * height]
        x0, y0, x1, y1 = box.bbox
        if not all(math.isfinite(v) for v in box.bbox) or x1 <= x0 or y1 <= y0:
            reason = "box_invalid"
        elif x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            reason = "box_outside_image"
        else:
            continue
        if reason not in reasons:
            reasons.append(reason)
    return reasons


def check_item(item: Item, spec: InputSpec, config: WorkerConfig,
               cache: dict[str, ImageFacts]) -> Outcome:
    """Every per-record check of one item (see the module docstring)."""
    cfg = config.cfg
    parsed = parse_item(item, spec)
    raw = parsed.raw
    if parsed.rec is None:
        return Outcome(item.file, item.line, raw.get("id"), raw.get("source", spec.source),
                       parsed.reasons)
    rec = parsed.rec
    reasons = record_reasons(rec, spec, cfg)
    lang_reasons, detected, p_pt = language_reasons(rec, cfg)
    reasons += lang_reasons
    locators: list[str] = []
    facts: list[ImageFacts] = []
    decoded = 0
    for value in rec.image_list():
        if not value.strip():
            continue
        if _unsafe(value, spec, parsed.inline):
            if "image_path_unsafe" not in reasons:
                reasons.append("image_path_unsafe")
            continue
        locator = resolve(value, spec, parsed.inline)
        locators.append(locator)
        if locator not in cache:
            try:
                data = fetch(locator, spec, parsed.inline, config.data_dir, config.endpoint)
                cache[locator] = inspect_image(data, cfg, cfg.embed_images)
                decoded += 1
            except FileNotFoundError:
                cache[locator] = ImageFacts(("image_missing",))
            except (OSError, ValueError):
                cache[locator] = ImageFacts(("image_unreadable",))
        fact = cache[locator]
        facts.append(fact)
        reasons += [r for r in fact.reasons if r not in reasons]
    images_ok = facts and len(facts) == len(rec.image_list()) and not any(
        f.reasons for f in facts)
    if rec.kind == "grounding" and images_ok:
        reasons += box_reasons(rec, facts[0].width, facts[0].height,
                               bool(parsed.hints.get("norm_boxes")))
    if rec.split == "train" and images_ok and (len(config.eval_index)
                                               or config.eval_index.digests):
        for fact in facts:
            hit = config.eval_index.match(fact.phash, fact.digest, rec.source, cfg)
            if hit is not None:
                reasons.append(f"{EVAL_REASON}:{hit}")
                break
    id_key = _key(rec.id)
    if reasons:
        return Outcome(item.file, item.line, rec.id, rec.source, reasons, id_key,
                       decoded=decoded)
    if not spec.relative_images and locators:
        rec.images = locators if rec.images else None
        rec.image = locators[0]
    record = rec.model_dump()
    content_key = _key(rec.kind, [f.digest for f in facts], rec.text, rec.question,
                       rec.answer, rec.options, rec.chosen, rec.rejected,
                       record["conversations"], record["boxes"], size=16)
    row = {**record,
           "image_bytes": [f.data for f in facts] if cfg.embed_images else None,
           "image_width": [f.width for f in facts], "image_height": [f.height for f in facts],
           "image_mode": [f.mode for f in facts],
           "image_phash": [f"{f.phash:016x}" for f in facts],
           "image_digest": [f.digest for f in facts], "detected_language": detected}
    jsonl = json.dumps(rec.model_dump(exclude_none=True), ensure_ascii=False)
    return Outcome(item.file, item.line, rec.id, rec.source, [], id_key, content_key, row,
                   jsonl, gx_facts(rec, facts, p_pt), suite_of(rec),
                   tuple(f.mode for f in facts if f.mode != "RGB"), decoded)


def gx_facts(rec: Record, facts: list[ImageFacts], p_pt: float | None) -> dict[str, Any]:
    """The scalar row the GX suites check for one kept record."""
    texts = [t for t in rec.all_texts()]
    sides = [s for f in facts for s in (f.width, f.height)]
    aspects = [max(f.width, f.height) / max(min(f.width, f.height), 1) for f in facts]
    n_ph = rec.placeholder_count()
    inside = None
    if rec.kind == "grounding" and facts:
        w, h = facts[0].width, facts[0].height
        inside = all(0 <= b.bbox[0] < b.bbox[2] <= w and 0 <= b.bbox[1] < b.bbox[3] <= h
                     for b in rec.boxes or [])
    return {
        "id": rec.id, "source": rec.source, "language": rec.language, "split": rec.split,
        "task_family": rec.task_family, "kind": rec.kind, "question": rec.question,
        "text": rec.text, "answer": rec.answer, "chosen": rec.chosen,
        "rejected": rec.rejected, "n_images": len(facts),
        "min_side": min(sides) if sides else None, "max_side": max(sides) if sides else None,
        "aspect": max(aspects) if aspects else None, "n_placeholders": n_ph,
        "placeholders_ok": placeholders_ok(rec),
        "text_min_chars": min((len(t.strip()) for t in texts), default=0),
        "text_max_chars": max((len(t) for t in texts), default=0),
        "n_options": len(rec.options) if rec.options is not None else None,
        "answer_in_options": (rec.answer in rec.options) if rec.options else None,
        "n_turns": len(rec.conversations) if rec.conversations is not None else None,
        "roles_ok": roles_alternate(rec) if rec.kind == "conversation" else None,
        "n_boxes": len(rec.boxes) if rec.boxes is not None else None,
        "boxes_inside": inside,
        "chosen_differs": (rec.chosen != rec.rejected) if rec.kind == "preference" else None,
        "pt_prob": p_pt,
    }


def check_chunk(chunk: list[tuple[int, Item]]) -> list[Outcome]:
    """Worker entry point: the outcomes of one chunk, in order."""
    config: WorkerConfig = _worker()["config"]
    cache: dict[str, ImageFacts] = {}  # images shared by records of one chunk decode once
    out = []
    for index, item in chunk:
        spec = config.specs[index]
        try:
            out.append(check_item(item, spec, config, cache))
        except Exception as exc:  # noqa: BLE001 - odd data must quarantine, not crash
            out.append(Outcome(item.file, item.line, None, spec.source,
                               [f"check_error:{type(exc).__name__}"]))
    return out


class EvalHash(NamedTuple):
    id: str
    source: str
    phash: int
    digest: str


def _may_be_test(item: Item, spec: InputSpec) -> bool:
    """False only when a JSON-text row cannot be `split: test`: no test-split name appears
    in it as a JSON string and the input sets no test split. Spares the first pass shipping
    and parsing every training row."""
    if not isinstance(item.payload, str):
        return True
    split = spec.defaults().get("split")
    if isinstance(split, str) and split.lower() in TEST_SPLITS:
        return True
    text = item.payload.lower()
    return any(f'"{name}"' in text for name in TEST_SPLITS)


def hash_eval_chunk(chunk: list[tuple[int, Item]]) -> list[EvalHash]:
    """Worker entry point of the first pass: hashes of the test-split images of a chunk
    (index -1: a bare eval image file, `payload` = its locator)."""
    config: WorkerConfig = _worker()["config"]
    out: list[EvalHash] = []
    for index, item in chunk:
        if index < 0:
            targets = [(Path(item.payload).name, "eval_images", item.payload, {})]
            spec = InputSpec(location="", format="images")
        else:
            spec = config.specs[index]
            parsed = parse_item(item, spec)
            if parsed.rec is None or parsed.rec.split != "test":
                continue
            targets = [(parsed.rec.id, parsed.rec.source, resolve(v, spec, parsed.inline),
                        parsed.inline) for v in parsed.rec.image_list()
                       if v.strip() and not _unsafe(v, spec, parsed.inline)]
        for eval_id, source, locator, inline in targets:
            try:
                data = fetch(locator, spec, inline, config.data_dir, config.endpoint)
            except (OSError, ValueError):
                continue
            fact = inspect_image(data, config.cfg, embed=False)
            if not fact.reasons:
                out.append(EvalHash(eval_id, source, fact.phash, fact.digest))
    return out


def ordered_map(fn: Callable[[Any], Any], chunks: Iterable[Any], config: WorkerConfig,
                workers: int, start_method: str) -> Iterator[Any]:
    """`fn` over `chunks` in worker processes, results in input order, at most
    `2 * workers + 2` chunks in flight. A single chunk (or `workers == 0`) runs in-process:
    small inputs do not pay for a pool; so does a daemonic process (e.g. a Dask worker left
    at `distributed.worker.daemon: true`), which may not start children."""
    it = iter(chunks)
    head = [c for c in (next(it, None), next(it, None)) if c is not None]
    if workers <= 0 or len(head) < 2 or multiprocessing.current_process().daemon:
        init_worker(config)
        for chunk in head:
            yield fn(chunk)
        for chunk in it:
            yield fn(chunk)
        return
    if start_method == "auto":  # fork only where no other thread could hold a lock
        start_method = "fork" if threading.active_count() == 1 else "forkserver"
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":  # workers fork from a server that imported us once
        ctx.set_forkserver_preload(["components.validate"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                             initargs=(config,)) as pool:
        pending: deque = deque(pool.submit(fn, chunk) for chunk in head)
        for chunk in it:
            pending.append(pool.submit(fn, chunk))
            while len(pending) > 2 * workers + 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ----------------------------------------------------------------------------- inputs


def input_specs(settings: Settings) -> list[InputSpec]:
    """`settings.ingest.inputs`, or the embedded native + seed_en data."""
    endpoint = settings.ingest.s3_endpoint_url
    if settings.ingest.inputs:
        return [parse_spec(text, endpoint) for text in settings.ingest.inputs]
    data_dir = Path(settings.data_dir)
    specs = []
    for label, rel in INPUTS:
        if not (data_dir / rel).is_file():
            raise MissingInputError(f"{data_dir / rel} not found",
                                    "run: amalia-vl data generate  (or dvc pull)")
        specs.append(InputSpec(location=str(data_dir / rel), format="jsonl",
                               options={"source": label, "image_root": str(data_dir),
                                        "_display": rel},
                               relative_images=True, expected_source=label))
    return specs


def chunked(specs: list[InputSpec], size: int, hf_split: str,
            keep: Callable[[Item, InputSpec], bool] | None = None,
            ) -> Iterator[list[tuple[int, Item]]]:
    """`(input index, item)` pairs of every input in chunks of `size` (only the items
    `keep` accepts, when given)."""
    chunk: list[tuple[int, Item]] = []
    for index, spec in enumerate(specs):
        for item in iter_items(spec, hf_split):
            if keep is not None and not keep(item, spec):
                continue
            chunk.append((index, item))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def eval_image_chunks(settings: Settings, size: int) -> Iterator[list[tuple[int, Item]]]:
    endpoint = settings.ingest.s3_endpoint_url
    files: list[str] = []
    for entry in settings.validate_.eval_images:
        if src.exists_dir(entry, endpoint):
            files += src.list_files(entry, src.IMAGE_SUFFIXES, endpoint)
        else:
            src.require(entry, endpoint)
            files.append(entry)
    for i in range(0, len(files), size):
        yield [(-1, Item(f, 0, f)) for f in files[i:i + size]]


def build_eval_index(settings: Settings, config: WorkerConfig) -> EvalIndex:
    """First pass: hash every eval image (test-split records, then `eval_images`)."""
    cfg = settings.validate_
    index = EvalIndex()
    if cfg.near_dup_max_distance is None:
        return index
    hashes: list[EvalHash] = []
    streams = [chunked(config.specs, cfg.chunk_size, settings.ingest.hf_split, _may_be_test),
               eval_image_chunks(settings, cfg.chunk_size)]
    for stream in streams:
        for result in ordered_map(hash_eval_chunk, stream, config, cfg.workers,
                                  cfg.start_method):
            hashes.extend(result)
    seen: dict[str, str] = {}
    kept: list[EvalHash] = []
    for h in hashes:
        if h.digest not in seen:
            seen[h.digest] = h.id
            kept.append(h)
    index.digests = seen
    index.ids = [h.id for h in kept]
    index.phash = np.array([h.phash for h in kept], dtype=np.uint64)
    index.exact_only = np.array([h.source in cfg.exact_only_sources for h in kept], dtype=bool)
    return index


# ----------------------------------------------------------------------------- tally


@dataclass
class Tally:
    total: int = 0
    kept: int = 0
    quarantined: int = 0
    by_reason: Counter = field(default_factory=Counter)
    by_source: dict[str, Counter] = field(default_factory=dict)

    def add(self, source: str, reasons: list[str]) -> None:
        per = self.by_source.setdefault(str(source), Counter(total=0, kept=0, quarantined=0))
        self.total += 1
        per["total"] += 1
        if reasons:
            self.quarantined += 1
            per["quarantined"] += 1
            self.by_reason.update(reason_class(r) for r in reasons)
        else:
            self.kept += 1
            per["kept"] += 1

    @property
    def ratio(self) -> float:
        return self.quarantined / self.total if self.total else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "quarantined": self.quarantined,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_source": {s: dict(c) for s, c in sorted(self.by_source.items())},
        }


def reason_class(reason: str) -> str:
    """The `by_reason` key: near-duplicate reasons lose their per-record eval id."""
    return EVAL_REASON if reason.startswith(EVAL_REASON + ":") else reason


# ----------------------------------------------------------------------------- GX


def add_suite_expectations(gx: Any, suite: Any, name: str, cfg: ValidateSettings) -> None:
    """The expectations of one record kind (`name` in `SUITES`)."""
    gxe = gx.expectations
    for column in ("id", "source", "language", "split", "task_family", "kind"):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
        suite.add_expectation(gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="id"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    kinds = ["qa", "multiple_choice"] if name == "multiple_choice" else [name]
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=kinds))
    suite.add_expectation(gxe.ExpectColumnValuesToMatchRegex(
        column="language", regex=r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="text_min_chars", min_value=1))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="text_max_chars", max_value=cfg.max_text_chars))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="placeholders_ok",
                                                          value_set=[True]))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(  # judged pt* records only
        column="pt_prob", min_value=cfg.language_min_pt_prob))
    # image bounds (text-only records have nulls here, which GX leaves out)
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="min_side", min_value=cfg.min_image_side))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="max_side", max_value=cfg.max_image_side))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="aspect", max_value=cfg.max_aspect_ratio))
    required = {"caption": ("text",), "qa": ("question", "answer"),
                "multiple_choice": ("question", "answer"), "conversation": (),
                "grounding": ("question",), "preference": ("question", "chosen", "rejected")}
    for column in required[name]:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
        suite.add_expectation(gxe.ExpectColumnValueLengthsToBeBetween(
            column=column, min_value=1, max_value=cfg.max_text_chars))
    if name in ("caption", "grounding"):
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_images",
                                                                min_value=1))
    if name == "multiple_choice":
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_options",
                                                                min_value=2))
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="answer_in_options",
                                                              value_set=[True]))
    if name == "conversation":
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_turns", min_value=2))
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="roles_ok",
                                                              value_set=[True]))
    if name == "grounding":
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_boxes", min_value=1))
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="boxes_inside",
                                                              value_set=[True]))
    if name == "preference":
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="chosen_differs",
                                                              value_set=[True]))


# One GX call at a time per process: shards of the sharded flow on Prefect's thread runner
# each hold a context, and GX does not promise thread safety.
_GX_LOCK = threading.RLock()


class GxRunner:
    """Great Expectations 1.x over the kept records: one suite per kind, a checkpoint per
    suite that updates HTML Data Docs in `docs_dir`, batches of at most `gx_batch_rows`.

    Importing GX and building its context costs ~3 s of CPU; with `background=True` that
    happens on a thread while the stream starts (worker start-up leaves the cores idle),
    and the first `validate`/`finish` waits for it (re-raising any error)."""

    def __init__(self, settings: Settings, docs_dir: Path, background: bool = False):
        self._settings, self._docs_dir = settings, Path(docs_dir)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._setup_catching, name="gx-setup",
                                            daemon=True)
            self._thread.start()
        else:
            self._setup(settings, self._docs_dir)

    def _setup_catching(self) -> None:
        try:
            self._setup(self._settings, self._docs_dir)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in _ready()
            self._error = exc

    def _ready(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def _setup(self, settings: Settings, docs_dir: Path) -> None:
        with _GX_LOCK:
            self._setup_locked(settings, docs_dir)

    def _setup_locked(self, settings: Settings, docs_dir: Path) -> None:
        os.environ["GX_ANALYTICS_ENABLED"] = "false"  # no network here; before the import
        import great_expectations as gx  # slow import: only when the stage runs
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx, self.cfg = gx, settings.validate_
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False)
        self.docs_dir = Path(docs_dir)
        for site in (self.context.variables.data_docs_sites or {}).values():
            # the ephemeral context's own site: an empty temporary folder nobody reads
            base = Path(site.get("store_backend", {}).get("base_directory", ""))
            if base.is_absolute() and base.is_dir() and not any(base.iterdir()):
                base.rmdir()
        self.context.variables.data_docs_sites = {"amalia_vl": {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(self.docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }}
        asset = self.context.data_sources.add_pandas(name="records").add_dataframe_asset(
            name="kept")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("kept_batch")
        self.checkpoints: dict[str, Any] = {}
        self.results: list[dict[str, Any]] = []

    def _checkpoint(self, name: str) -> Any:
        if name not in self.checkpoints:
            gx = self.gx
            suite = self.context.suites.add(gx.ExpectationSuite(name=f"amalia_vl_{name}"))
            add_suite_expectations(gx, suite, name, self.cfg)
            definition = self.context.validation_definitions.add(gx.ValidationDefinition(
                name=f"validate_{name}", data=self.batch_definition, suite=suite))
            self.checkpoints[name] = self.context.checkpoints.add(gx.Checkpoint(
                name=f"checkpoint_{name}", validation_definitions=[definition], actions=[],
                result_format="SUMMARY"))  # Data Docs are built once, in finish()
        return self.checkpoints[name]

    def validate(self, name: str, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        self._ready()

        frame = pd.DataFrame(rows, columns=list(GX_COLUMNS))
        with _GX_LOCK:
            result = self._checkpoint(name).run(batch_parameters={"dataframe": frame})
        for run_result in result.run_results.values():
            as_json = run_result.to_json_dict()
            as_json["suite"] = name
            as_json["rows"] = len(rows)
            self.results.append(as_json)

    def finish(self) -> dict[str, Any]:
        """Build the Data Docs; the combined result (`success`, `statistics`, `suites`)."""
        self._ready()
        if self.results:
            with _GX_LOCK:
                self.context.build_data_docs(site_names=["amalia_vl"])
        return summarise_gx(self.results, "gx_docs/index.html" if self.results else None)


def summarise_gx(results: list[dict[str, Any]], docs: str | None) -> dict[str, Any]:
    """One GX result over the per-batch `results` (each with its `suite` and `rows`):
    `success`, summed `statistics`, per-`suites` batches, rows and failed expectations."""
    stats = Counter()
    suites: dict[str, dict[str, Any]] = {}
    for res in results:
        st = res.get("statistics", {})
        for key in ("evaluated_expectations", "successful_expectations",
                    "unsuccessful_expectations"):
            stats[key] += int(st.get(key) or 0)
        per = suites.setdefault(res["suite"], {"batches": 0, "rows": 0, "success": True,
                                               "failed": []})
        per["batches"] += 1
        per["rows"] += res["rows"]
        per["success"] = per["success"] and bool(res.get("success"))
        for r in res.get("results", []):
            if not r.get("success"):
                cfg = r.get("expectation_config", {})
                per["failed"].append({"type": cfg.get("type"),
                                      "column": cfg.get("kwargs", {}).get("column"),
                                      "unexpected_count": r.get("result", {}).get(
                                          "unexpected_count")})
    evaluated = stats["evaluated_expectations"]
    return {
        "success": all(r.get("success") for r in results),
        "statistics": {**stats, "success_percent": (
            100.0 * stats["successful_expectations"] / evaluated if evaluated else None)},
        "suites": suites,
        "docs": docs,
        "results": results,
    }


# ----------------------------------------------------------------------------- stage


@dataclass
class Sinks:
    """Where a validate run writes: shards, JSONL views, quarantine, GX batches."""

    out: Path
    settings: Settings
    gx: GxRunner | None = None
    writer: ShardWriter = field(init=False)
    gx_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    by_kind: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    decoded: int = 0

    def __post_init__(self) -> None:
        cfg = self.settings.validate_
        self.writer = ShardWriter(self.out / "validated", validated_schema(),
                                  shard_rows=cfg.shard_rows, shard_bytes=cfg.shard_bytes,
                                  group_rows=min(1024, cfg.shard_rows))
        self.quarantine = (self.out / "quarantine.jsonl").open("w", encoding="utf-8")
        self.native = (self.out / "native.jsonl").open("w", encoding="utf-8")
        self.seed = (self.out / "seed_en.jsonl").open("w", encoding="utf-8")

    def keep(self, o: Outcome) -> None:
        assert o.row is not None and o.jsonl is not None and o.gx is not None
        self.writer.add(o.row)
        queue = o.row["language"] in self.settings.validate_.translate_languages
        (self.seed if queue else self.native).write(o.jsonl + "\n")
        self.by_kind[o.row["kind"]] += 1
        self.converted.update(o.modes)
        if self.gx is not None and o.suite is not None:
            rows = self.gx_rows.setdefault(o.suite, [])
            rows.append(o.gx)
            if len(rows) >= self.settings.validate_.gx_batch_rows:
                self.gx.validate(o.suite, rows)
                self.gx_rows[o.suite] = []

    def reject(self, o: Outcome, reasons: list[str]) -> None:
        row = {"id": o.id, "source": o.source, "reasons": reasons, "file": o.file,
               "line": o.line}
        self.quarantine.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def facts(self) -> dict[str, Any]:
        """The report fields the sinks count: `by_kind`, `converted`, `images_decoded`."""
        return {"by_kind": dict(sorted(self.by_kind.items())),
                "converted": dict(sorted(self.converted.items())),
                "images_decoded": self.decoded}

    def close(self, run_gx: bool = True) -> list[Path]:
        for fh in (self.quarantine, self.native, self.seed):
            fh.close()
        if self.gx is not None and run_gx:
            for suite in sorted(self.gx_rows):
                if self.gx_rows[suite]:
                    self.gx.validate(suite, self.gx_rows[suite])
            self.gx_rows.clear()
        return self.writer.close()


@dataclass
class SeenKeys:
    """The order-dependent checks: the first record with an id owns it (`duplicate_id`), and a
    record whose content equals a kept record's is a `duplicate_record`. Fed in input order,
    by the stage and by the sharded flow alike, so both decide the same."""

    ids: set[int] = field(default_factory=set)
    records: set[int] = field(default_factory=set)

    def check(self, rejected: bool, id_key: int | None,
              content_key: int | None) -> list[str]:
        """The duplicate reasons of the next record (`rejected`: it has reasons of its own);
        notes its keys."""
        extra: list[str] = []
        if id_key is not None:
            if id_key in self.ids:
                extra.append("duplicate_id")
            else:
                self.ids.add(id_key)
        if not rejected and not extra and content_key is not None:
            if content_key in self.records:
                extra.append("duplicate_record")
            else:
                self.records.add(content_key)
        return extra


def settle(o: Outcome, reasons: list[str], sinks: Sinks, tally: Tally) -> None:
    """Count one record with its final `reasons` and write it where it belongs."""
    sinks.decoded += o.decoded
    tally.add(o.source if o.source is not None else "?", reasons)
    if reasons:
        sinks.reject(o, reasons)
    else:
        sinks.keep(o)


def validate_stream(settings: Settings, out: Path, progress: bool = False,
                    with_gx: bool = True) -> tuple[Tally, Sinks, list[InputSpec]]:
    """Run the checks over every input into `out` (the body of the stage, minus the gates)."""
    cfg = settings.validate_
    specs = input_specs(settings)
    gx = GxRunner(settings, (out / "gx_docs").resolve(), background=True) if with_gx else None
    config = WorkerConfig(cfg=cfg, data_dir=str(settings.data_dir), specs=specs,
                          endpoint=settings.ingest.s3_endpoint_url)
    config.eval_index = build_eval_index(settings, config)
    out.mkdir(parents=True, exist_ok=True)
    sinks = Sinks(out, settings, gx)
    tally = Tally()
    seen = SeenKeys()
    results: Iterable[list[Outcome]] = ordered_map(
        check_chunk, chunked(specs, cfg.chunk_size, settings.ingest.hf_split), config,
        cfg.workers, cfg.start_method)
    if progress:
        from rich.progress import track

        results = track(results, description="validate (chunks)")
    try:
        for outcomes in results:
            for o in outcomes:
                settle(o, [*o.reasons, *seen.check(bool(o.reasons), o.id_key, o.content_key)],
                       sinks, tally)
    except BaseException:
        sinks.close(run_gx=False)  # e.g. an unparseable input file: no GX on a partial set
        raise
    sinks.close()
    return tally, sinks, specs


def run(ctx: StageContext) -> StageOutput:
    """The `validate` stage (see the module docstring)."""
    settings, out = ctx.settings, ctx.out_dir
    tally, sinks, specs = validate_stream(settings, out, ctx.progress)
    gx_result = sinks.gx.finish() if sinks.gx is not None else {"success": True,
                                                                "statistics": {}}
    return conclude(settings, out, tally, sinks.facts(), specs, gx_result, ctx.log_metrics)


def conclude(settings: Settings, out: Path, tally: Tally, facts: dict[str, Any],
             specs: list[InputSpec], gx_result: dict[str, Any],
             log_metrics: Callable[[dict[str, float], int | None], None] | None = None,
             report_extra: dict[str, Any] | None = None) -> StageOutput:
    """Write `gx_result.json` and `report.json` into `out`, log the metrics, apply the gates
    (`DataQualityError` when nothing was read or too much was quarantined) and return the
    stage output. `facts`: `Sinks.facts()` (summed over shards by the sharded flow)."""
    (out / "gx_result.json").write_text(json.dumps(gx_result, indent=2, ensure_ascii=False,
                                                   default=str))
    report = tally.report()
    report.update({
        **facts,
        "inputs": [{"location": s.display, "format": s.format, "source": s.source}
                   for s in specs],
        "gx_success": bool(gx_result.get("success")),
        **(report_extra or {}),
    })
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    stats = gx_result.get("statistics", {})
    metrics = {
        "quarantine_ratio": tally.ratio,
        "gx_success": 1.0 if gx_result.get("success") else 0.0,
        "gx_evaluated_expectations": float(stats.get("evaluated_expectations", 0)),
        "gx_successful_expectations": float(stats.get("successful_expectations", 0)),
        "gx_success_percent": float(stats.get("success_percent") or 0.0),
    }
    if log_metrics is not None:
        log_metrics(metrics, None)

    limit = settings.validate_.max_quarantine_ratio
    where = ", ".join(s.display for s in specs)
    if tally.total == 0:
        raise DataQualityError(f"no records found in {where}",
                               "run: amalia-vl data generate  (or check --input)")
    if tally.ratio > limit:
        top = ", ".join(f"{r}={n}" for r, n in tally.by_reason.most_common(3))
        raise DataQualityError(
            f"{tally.quarantined}/{tally.total} records quarantined "
            f"({tally.ratio:.1%} > max_quarantine_ratio {limit:.1%}); top reasons: {top}",
            f"see {out / 'quarantine.jsonl'} and {out / 'report.json'}",
        )
    artifacts = ["report.json", "quarantine.jsonl", "gx_result.json"]
    if (out / "gx_docs" / "index.html").exists():
        artifacts.append("gx_docs")
    return StageOutput(
        counts={"total": tally.total, "kept": tally.kept, "quarantined": tally.quarantined},
        metrics=metrics,
        params={"inputs": [s.display for s in specs]},
        artifacts=artifacts,
        extra={"by_reason": report["by_reason"], "inputs": report["inputs"]},
    )
