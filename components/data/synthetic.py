"""Deterministic generator of the embedded pt-PT multimodal dataset (no downloads).

Contract of `generate(out_dir, settings) -> counts`:

- `out_dir/native/records.jsonl` + `out_dir/native/images/*.png`: five task families
  (`FAMILIES`), each with `settings.synthetic.train_per_task` train images and
  `test_per_task` test images (all images distinct, pixel-for-pixel). Every image yields
  three records: `caption` (`text`), `qa` (`question`, `answer`, `options`; the answer is
  exactly one of the options, answers balanced over the options) and `preference`
  (`question`, `chosen` = the correct option, `rejected` = a wrong option). Language
  `pt-PT`, source `native`.
- `out_dir/seed_en/records.jsonl` + `out_dir/seed_en/images/*.png`: the English seed set
  (`seed_en_per_kind` records of each kind, split `train`, source `seed_en`, language `en`),
  drawn by the same renderers with English text, on images of its own.
- `out_dir/seed_en/translation_memory.jsonl`: `{"source": en, "target": pt-PT}`, one line per
  distinct English string of the seed (questions, options, answers, captions, chosen,
  rejected); each target is the very string the native data uses for that meaning.
- `out_dir/README.md`: what the data is and how it was made.

Ids are `<source>-<family>-<split>-<NNNN>-<kind>`; `image` is relative to `out_dir`, e.g.
`native/images/count-train-0001.png`. Same `settings.seed` and sizes -> byte-identical
files (every random draw comes from a `random.Random` seeded by sha256 of seed + namespace;
PNGs carry no metadata). `generate` replaces `native/` and `seed_en/` whole.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from components.records import Record, write_records
from components.settings import Settings

FAMILIES: tuple[str, ...] = ("count", "colour", "position", "chart", "document")
LANGS: tuple[str, ...] = ("pt", "en")
LANGUAGE_TAG = {"pt": "pt-PT", "en": "en"}
WHITE = (255, 255, 255)
INK = (25, 25, 25)

# (name per language, RGB). Order = option order.
COLOURS: tuple[dict, ...] = (
    {"pt": "vermelho", "pt_pl": "vermelhos", "en": "red", "rgb": (220, 30, 30)},
    {"pt": "verde", "pt_pl": "verdes", "en": "green", "rgb": (20, 150, 50)},
    {"pt": "azul", "pt_pl": "azuis", "en": "blue", "rgb": (30, 70, 225)},
    {"pt": "amarelo", "pt_pl": "amarelos", "en": "yellow", "rgb": (245, 200, 0)},
)
SHAPES: tuple[dict, ...] = (
    {"id": "circle", "pt": "círculo", "pt_pl": "círculos", "en": "circle", "en_pl": "circles"},
    {"id": "square", "pt": "quadrado", "pt_pl": "quadrados", "en": "square", "en_pl": "squares"},
    {"id": "triangle", "pt": "triângulo", "pt_pl": "triângulos", "en": "triangle",
     "en_pl": "triangles"},
)
NUMBER_WORDS = {"pt": ("Um", "Dois", "Três", "Quatro"), "en": ("One", "Two", "Three", "Four")}

QUESTIONS: dict[str, dict[str, str]] = {
    "count": {"pt": "Quantas formas há na imagem?", "en": "How many shapes are in the image?"},
    "colour": {"pt": "De que cor é a forma?", "en": "What colour is the shape?"},
    "position": {"pt": "Onde está o círculo?", "en": "Where is the circle?"},
    "chart": {"pt": "Qual é a barra mais alta?", "en": "Which bar is the tallest?"},
    "document": {"pt": "Quantas linhas de artigos tem a fatura?",
                 "en": "How many item lines does the invoice have?"},
}
OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "count": {"pt": ("1", "2", "3", "4"), "en": ("1", "2", "3", "4")},
    "colour": {"pt": tuple(c["pt"] for c in COLOURS), "en": tuple(c["en"] for c in COLOURS)},
    "position": {"pt": ("à esquerda", "à direita", "em cima", "em baixo"),
                 "en": ("on the left", "on the right", "at the top", "at the bottom")},
    "chart": {"pt": ("a primeira", "a segunda", "a terceira", "a quarta"),
              "en": ("the first", "the second", "the third", "the fourth")},
    "document": {"pt": ("1", "2", "3", "4"), "en": ("1", "2", "3", "4")},
}
POSITION_PHRASES = {
    "pt": ("no lado esquerdo da imagem", "no lado direito da imagem",
           "na parte de cima da imagem", "na parte de baixo da imagem"),
    "en": ("on the left side of the image", "on the right side of the image",
           "at the top of the image", "at the bottom of the image"),
}
# PIL's bundled default font is ASCII-only: words drawn into images carry no diacritics and
# the euro sign is drawn by `draw_euro`.
CITIES = ("Lisboa", "Porto", "Braga", "Faro", "Coimbra", "Leiria", "Aveiro", "Viseu")
ITEMS = ("Leite", "Arroz", "Queijo", "Fruta", "Azeite", "Ovos", "Sal", "Vinho", "Peixe", "Massa")
BAR_COLOURS = ((30, 70, 225), (220, 30, 30), (20, 150, 50), (120, 40, 160))

# (width, height) per family: 48..96 px a side, varied aspect ratios to exercise anyres.
SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "count": ((64, 64), (48, 80), (80, 48), (96, 64), (64, 96), (96, 96), (48, 48)),
    "colour": ((64, 64), (48, 80), (80, 48), (96, 64), (64, 96), (48, 48), (96, 96)),
    "position": ((64, 64), (96, 64), (64, 96), (80, 80), (96, 96), (48, 80), (80, 48)),
    "chart": ((96, 64), (96, 80), (80, 64), (96, 96), (64, 64), (80, 80)),
    "document": ((64, 96), (80, 96), (96, 96)),
}
KINDS: tuple[str, ...] = ("caption", "qa", "preference")
MAX_DRAW_TRIES = 200


@dataclass(frozen=True)
class Sample:
    """One rendered image with its verifiable answer and a caption per language."""

    family: str
    image: Image.Image
    answer: int  # index into OPTIONS[family][lang]
    caption: dict[str, str]  # lang -> caption


# ----------------------------------------------------------------------------- helpers


def derived_rng(seed: int, *namespace: str) -> random.Random:
    """A `random.Random` seeded by sha256(seed | namespace), stable across processes."""
    blob = "|".join([str(seed), *namespace]).encode()
    return random.Random(int.from_bytes(hashlib.sha256(blob).digest()[:8], "big"))


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in default font (bundled with Pillow, nothing downloaded)."""
    return ImageFont.load_default(size=size)


def decimal_pt(value: float, places: int) -> str:
    """`12.5` -> `12,5` (pt-PT decimal comma)."""
    return f"{value:.{places}f}".replace(".", ",")


def nif_check_digit(first8: str) -> int:
    """Check digit of a Portuguese NIF from its first eight digits (mod-11 rule)."""
    total = sum(int(d) * (9 - i) for i, d in enumerate(first8))
    rest = total % 11
    return 0 if rest < 2 else 11 - rest


def is_valid_nif(nif: str) -> bool:
    return len(nif) == 9 and nif.isdigit() and nif_check_digit(nif[:8]) == int(nif[8])


def make_nif(rng: random.Random) -> str:
    """A valid company NIF starting with 5."""
    first8 = "5" + "".join(str(rng.randrange(10)) for _ in range(7))
    return first8 + str(nif_check_digit(first8))


def balanced_answers(rng: random.Random, n: int, n_options: int) -> list[int]:
    """`n` answer indices spread evenly over the options, in random order."""
    answers = [i % n_options for i in range(n)]
    rng.shuffle(answers)
    return answers


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
               fill: tuple[int, int, int]) -> None:
    """A filled shape with a dark outline (so yellow on white stays high-contrast)."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=INK, width=2)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=INK, width=2)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill,
                     outline=INK, width=2)


def _canvas(rng: random.Random, family: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    w, h = rng.choice(SIZES[family])
    img = Image.new("RGB", (w, h), WHITE)
    return img, ImageDraw.Draw(img)


# ----------------------------------------------------------------------------- renderers


def render_count(rng: random.Random, answer: int) -> Sample:
    """1-4 shapes of one kind and colour, one per cell of a 2x2 grid."""
    n = answer + 1
    img, draw = _canvas(rng, "count")
    w, h = img.size
    shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
    cw, ch = w / 2, h / 2
    r = min(cw, ch) * rng.uniform(0.30, 0.38)
    for cell in sorted(rng.sample(range(4), n)):
        col, row = cell % 2, cell // 2
        jx = rng.uniform(-1, 1) * (cw / 2 - r - 1)
        jy = rng.uniform(-1, 1) * (ch / 2 - r - 1)
        draw_shape(draw, shape["id"], cw * (col + 0.5) + jx, ch * (row + 0.5) + jy, r,
                   colour["rgb"])
    plural = n > 1
    cap = {
        "pt": f"{NUMBER_WORDS['pt'][answer]} {shape['pt_pl' if plural else 'pt']} "
              f"{colour['pt_pl' if plural else 'pt']} sobre fundo branco.",
        "en": f"{NUMBER_WORDS['en'][answer]} {colour['en']} "
              f"{shape['en_pl' if plural else 'en']} on a white background.",
    }
    return Sample("count", img, answer, cap)


def render_colour(rng: random.Random, answer: int) -> Sample:
    """One big shape whose fill colour is the answer."""
    colour = COLOURS[answer]
    img, draw = _canvas(rng, "colour")
    w, h = img.size
    shape = rng.choice(SHAPES)
    r = min(w, h) * rng.uniform(0.28, 0.40)
    cx = w / 2 + rng.uniform(-1, 1) * (w / 2 - r - 2)
    cy = h / 2 + rng.uniform(-1, 1) * (h / 2 - r - 2)
    draw_shape(draw, shape["id"], cx, cy, r, colour["rgb"])
    cap = {
        "pt": f"Um {shape['pt']} {colour['pt']} grande sobre fundo branco.",
        "en": f"A large {colour['en']} {shape['en']} on a white background.",
    }
    return Sample("colour", img, answer, cap)


def render_position(rng: random.Random, answer: int) -> Sample:
    """One circle on the left / right / top / bottom side (answer order of OPTIONS)."""
    img, draw = _canvas(rng, "position")
    w, h = img.size
    colour = rng.choice(COLOURS)
    r = min(w, h) * rng.uniform(0.17, 0.22)
    along = rng.uniform(-0.08, 0.08)
    side = rng.uniform(0.0, 0.08)
    if answer in (0, 1):  # left / right: centred vertically, in the outer quarter
        cx = w * (0.25 - side) if answer == 0 else w * (0.75 + side)
        cx = min(max(cx, r + 2), w - r - 2)
        cy = h * (0.5 + along)
    else:  # top / bottom: centred horizontally
        cy = h * (0.25 - side) if answer == 2 else h * (0.75 + side)
        cy = min(max(cy, r + 2), h - r - 2)
        cx = w * (0.5 + along)
    draw_shape(draw, "circle", cx, cy, r, colour["rgb"])
    cap = {
        "pt": f"Um círculo {colour['pt']} {POSITION_PHRASES['pt'][answer]}.",
        "en": f"A {colour['en']} circle {POSITION_PHRASES['en'][answer]}.",
    }
    return Sample("position", img, answer, cap)


def draw_euro(draw: ImageDraw.ImageDraw, x: float, y: float, h: float = 6) -> float:
    """Draw a small euro sign with its top-left at (x, y); returns its width."""
    w = h * 0.85
    draw.arc([x + 1, y, x + w + 1, y + h], start=40, end=320, fill=INK, width=1)
    for frac in (0.38, 0.62):
        draw.line([(x, y + h * frac), (x + w * 0.7, y + h * frac)], fill=INK, width=1)
    return w + 1


def draw_amount(draw: ImageDraw.ImageDraw, right: float, y: float, cents: int, fnt) -> None:
    """`3,50 €` right-aligned at `right` (the euro sign drawn, not typed)."""
    x = right - draw_euro(draw, right - 6, y + 1.5)
    draw.text((x - 2, y), decimal_pt(cents / 100, 2), fill=INK, font=fnt, anchor="ra")


def _fit_text(text: str, fnt, max_width: float) -> str:
    while text and fnt.getlength(text) > max_width:
        text = text[:-1]
    return text


def render_chart(rng: random.Random, answer: int) -> Sample:
    """3-4 bars with city labels and decimal-comma values; `answer` = tallest bar's index."""
    n_bars = 4 if answer == 3 else rng.choice((3, 4))
    img, draw = _canvas(rng, "chart")
    w, h = img.size
    labels = rng.sample(CITIES, n_bars)
    top = round(rng.uniform(10.0, 20.0), 1)
    values = [round(rng.uniform(2.0, top * 0.8), 1) for _ in range(n_bars)]
    values[answer] = top
    small = font(7)
    base_y, top_y = h - 10, 10  # room for labels below and values above
    slot = (w - 4) / n_bars
    colour = rng.choice(BAR_COLOURS)
    draw.line([(2, base_y), (w - 2, base_y)], fill=INK, width=1)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0 = 2 + slot * i + slot * 0.18
        x1 = 2 + slot * (i + 1) - slot * 0.18
        y = base_y - (base_y - top_y) * value / top
        draw.rectangle([x0, y, x1, base_y], fill=colour, outline=INK)
        cx = (x0 + x1) / 2
        val = _fit_text(decimal_pt(value, 1), small, slot)
        draw.text((cx, y - 1), val, fill=INK, font=small, anchor="md")
        draw.text((cx, base_y + 1), _fit_text(label, small, slot), fill=INK, font=small,
                  anchor="ma")
    best = labels[answer]
    cap = {
        "pt": f"Gráfico de barras com {n_bars} barras; a mais alta é {best}, com "
              f"{decimal_pt(top, 1)}.",
        "en": f"Bar chart with {n_bars} bars; the tallest is {best}, at {top:.1f}.",
    }
    return Sample("chart", img, answer, cap)


def render_document(rng: random.Random, answer: int) -> Sample:
    """An invoice: FATURA, a valid NIF, 1-4 item lines (shaded rows), IVA 23%, Total."""
    n_items = answer + 1
    img, draw = _canvas(rng, "document")
    w, _ = img.size
    title, small = font(9), font(7)
    y = 2
    draw.text((3, y), "FATURA", fill=INK, font=title)
    draw.text((4, y), "FATURA", fill=INK, font=title)  # poor man's bold
    y += 12
    draw.text((3, y), f"NIF {make_nif(rng)}", fill=INK, font=small)
    y += 10
    cents = [rng.randrange(50, 1500, 10) for _ in range(n_items)]
    for name, price in zip(rng.sample(ITEMS, n_items), cents, strict=True):
        draw.rectangle([1, y, w - 2, y + 8], fill=(215, 215, 215))
        draw.text((3, y), name, fill=INK, font=small)
        draw_amount(draw, w - 3, y, price, small)
        y += 10
    draw.line([(2, y + 1), (w - 3, y + 1)], fill=INK, width=1)
    y += 3
    total_cents = sum(cents)
    total = total_cents / 100
    draw.text((3, y), "IVA 23%", fill=INK, font=small)
    y += 9
    draw.text((3, y), "Total", fill=INK, font=small)
    draw_amount(draw, w - 3, y, total_cents, small)
    one = n_items == 1
    noun = {"pt": "artigo" if one else "artigos", "en": "item" if one else "items"}
    cap = {
        "pt": f"Fatura com {n_items} {noun['pt']}, IVA 23% e total de {decimal_pt(total, 2)} €.",
        "en": f"Invoice with {n_items} {noun['en']}, VAT 23% and a total of {total:.2f} €.",
    }
    return Sample("document", img, answer, cap)


RENDERERS: dict[str, Callable[[random.Random, int], Sample]] = {
    "count": render_count,
    "colour": render_colour,
    "position": render_position,
    "chart": render_chart,
    "document": render_document,
}


# ----------------------------------------------------------------------------- records


def render_unique(family: str, rng: random.Random, answer: int, seen: set[str]) -> Sample:
    """Render until the pixels differ from every image drawn so far (train/test disjoint)."""
    for _ in range(MAX_DRAW_TRIES):
        sample = RENDERERS[family](rng, answer)
        digest = hashlib.sha256(repr(sample.image.size).encode() + sample.image.tobytes())
        key = digest.hexdigest()
        if key not in seen:
            seen.add(key)
            return sample
    raise RuntimeError(f"could not draw a new {family} image after {MAX_DRAW_TRIES} tries")


def records_for(sample: Sample, *, source: str, lang: str, split: str, stem: str,
                image: str, rng: random.Random) -> list[Record]:
    """The caption, qa and preference records of one image, in language `lang`."""
    options = list(OPTIONS[sample.family][lang])
    answer = options[sample.answer]
    wrong = rng.choice([o for i, o in enumerate(options) if i != sample.answer])
    common = {"source": source, "language": LANGUAGE_TAG[lang], "split": split,
              "task_family": sample.family, "image": image}
    question = QUESTIONS[sample.family][lang]
    return [
        Record(id=f"{stem}-caption", kind="caption", text=sample.caption[lang], **common),
        Record(id=f"{stem}-qa", kind="qa", question=question, answer=answer, options=options,
               **common),
        Record(id=f"{stem}-preference", kind="preference", question=question, chosen=answer,
               rejected=wrong, **common),
    ]


def save_png(img: Image.Image, path: Path) -> None:
    """PNG without metadata, so equal pixels give equal bytes."""
    img.save(path, format="PNG", optimize=False, compress_level=6)


def _native_records(root: Path, settings: Settings, seen: set[str],
                    progress: bool) -> Iterator[tuple[Record, Sample]]:
    sizes = {"train": settings.synthetic.train_per_task, "test": settings.synthetic.test_per_task}
    jobs = [(f, s) for f in FAMILIES for s in ("train", "test")]
    if progress:
        from rich.progress import track

        jobs = track(jobs, description="native images")
    for family, split in jobs:
        rng = derived_rng(settings.seed, "native", family, split)
        for i, answer in enumerate(balanced_answers(rng, sizes[split], 4), start=1):
            sample = render_unique(family, rng, answer, seen)
            name = f"{family}-{split}-{i:04d}"
            save_png(sample.image, root / "native" / "images" / f"{name}.png")
            for rec in records_for(sample, source="native", lang="pt", split=split,
                                   stem=f"native-{name}", image=f"native/images/{name}.png",
                                   rng=rng):
                yield rec, sample


def _seed_records(root: Path, settings: Settings, seen: set[str],
                  pairs: dict[str, str]) -> Iterator[Record]:
    """English seed records; fills `pairs` (English -> pt-PT) for the translation memory."""
    n = settings.synthetic.seed_en_per_kind
    rng = derived_rng(settings.seed, "seed_en")
    families = [FAMILIES[i % len(FAMILIES)] for i in range(n)]
    answers = {f: iter(balanced_answers(rng, families.count(f), 4)) for f in FAMILIES}
    for i, family in enumerate(families, start=1):
        sample = render_unique(family, rng, next(answers[family]), seen)
        name = f"{family}-train-{i:04d}"
        save_png(sample.image, root / "seed_en" / "images" / f"{name}.png")
        state = rng.getstate()
        en = records_for(sample, source="seed_en", lang="en", split="train",
                         stem=f"seed_en-{name}", image=f"seed_en/images/{name}.png", rng=rng)
        rng.setstate(state)  # the pt twin must draw the same wrong option
        pt = records_for(sample, source="seed_en", lang="pt", split="train",
                         stem=f"seed_en-{name}", image=f"seed_en/images/{name}.png", rng=rng)
        for rec_en, rec_pt in zip(en, pt, strict=True):
            _pair_texts(rec_en, rec_pt, pairs)
            yield rec_en


def _pair_texts(en: Record, pt: Record, pairs: dict[str, str]) -> None:
    """Record every English text of `en` with its pt-PT twin; one target per source."""
    couples = list(zip(en.texts().values(), pt.texts().values(), strict=True))
    couples += list(zip(en.options or [], pt.options or [], strict=True))
    for src, tgt in couples:
        if pairs.setdefault(src, tgt) != tgt:
            raise RuntimeError(f"translation memory conflict for {src!r}: "
                               f"{pairs[src]!r} vs {tgt!r}")


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


README = """# amalia-vl embedded dataset

Synthetic, deterministic pt-PT multimodal data generated by `amalia-vl data generate`
(`components/data/synthetic.py`, seed {seed}, profile `{profile}`). Nothing is downloaded:
shapes, bar charts and invoices are drawn with Pillow and its bundled default font.

## Layout
- `native/records.jsonl`, `native/images/*.png`: native pt-PT data ({native_records} records,
  {native_images} images). Five task families: `count` (1-4 shapes), `colour` (one big shape),
  `position` (a circle on the left/right/top/bottom), `chart` (3-4 bars, tallest by
  position), `document` (an invoice with a valid NIF, 1-4 item lines, IVA 23%, total).
  Splits: `train` ({train_per_task} images per family) and `test` ({test_per_task} per family,
  distinct images). Each image yields one `caption`, one `qa` and one `preference` record.
- `seed_en/records.jsonl`, `seed_en/images/*.png`: a small English seed set
  ({seed_records} records, split `train`) drawn by the same renderers.
- `seed_en/translation_memory.jsonl`: `{{"source": English, "target": pt-PT}}` for every
  English string of the seed ({memory} entries); targets are the native data's own strings.

## Record fields (`components/records.py`)
`id` (`<source>-<family>-<split>-<NNNN>-<kind>`), `source` (`native` | `seed_en`),
`language` (`pt-PT` | `en`), `split` (`train` | `test`), `task_family`, `kind`
(`caption` | `qa` | `preference`), `image` (path relative to this folder), and by kind:
`text` (caption); `question`, `answer`, `options` (qa; the answer is exactly one option,
answers are balanced, chance = 1/4); `question`, `chosen` (correct), `rejected` (a wrong
option) (preference).

Images are 48-96 px a side with varied aspect ratios (64x64, 48x80, 96x64, 64x96, ...).
Regenerating with the same seed and sizes gives byte-identical files.
"""


def generate(out_dir: Path, settings: Settings, progress: bool = False) -> dict[str, int]:
    """Write the dataset into `out_dir` (replacing `native/` and `seed_en/`); returns counts."""
    out_dir = Path(out_dir)
    for sub in ("native", "seed_en"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / sub / "images").mkdir(parents=True)
    seen: set[str] = set()
    native_images: set[str] = set()

    def native_stream() -> Iterator[Record]:
        for rec, _ in _native_records(out_dir, settings, seen, progress):
            native_images.add(rec.image or "")
            yield rec

    n_native = write_records(out_dir / "native" / "records.jsonl", native_stream())
    pairs: dict[str, str] = {}
    n_seed = write_records(out_dir / "seed_en" / "records.jsonl",
                           _seed_records(out_dir, settings, seen, pairs))
    n_memory = _write_jsonl(out_dir / "seed_en" / "translation_memory.jsonl",
                            ({"source": s, "target": pairs[s]} for s in sorted(pairs)))
    counts = {
        "native_records": n_native,
        "native_images": len(native_images),
        "seed_en_records": n_seed,
        "seed_en_images": n_seed // len(KINDS),
        "translation_memory": n_memory,
    }
    (out_dir / "README.md").write_text(README.format(
        seed=settings.seed, profile=settings.profile, native_records=n_native,
        native_images=counts["native_images"], seed_records=n_seed, memory=n_memory,
        train_per_task=settings.synthetic.train_per_task,
        test_per_task=settings.synthetic.test_per_task,
    ), encoding="utf-8")
    return counts
