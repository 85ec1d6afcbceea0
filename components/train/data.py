"""Chat-formatted training batches: records -> token ids, labels and image tiles.

One sample is one chat turn pair, rendered with the processor's chat template:

    user:      <image> + question      (caption records: the fixed prompt `CAPTION_PROMPT`)
    assistant: answer                  (caption records: the caption)

`labels` are -100 everywhere except the assistant's answer tokens and its end token, so
the loss (and DPO's sequence log-probability) counts only what the model must say.

Samples are encoded once, when a dataset is built (images are read and tiled once, not
every epoch). Nothing is ever truncated: a sample longer than `model.max_length` raises
an `AmaliaError` naming the record, because cutting it could drop image tokens and break
the image-token/feature agreement.

`collate` pads to the longest sample: `padding_side="right"` for training, `"left"` for
generation. Image tiles are zero-padded to the most tiles in the batch (the model reads
only each image's own tiles, from `image_sizes`). Preference batches hold 2B rows: the B
prompt+chosen samples first, then the same B prompts with their rejected answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from components.errors import AmaliaError
from components.records import Record

IGNORE_INDEX = -100
CAPTION_PROMPT = "Descreve a imagem."
# Larger photos are shrunk on load (aspect kept): the tiles are far smaller anyway, and a
# 50-megapixel upload should not cost seconds of resizing or gigabytes of memory.
MAX_IMAGE_SIDE = 2048


def load_image(path: Path | str, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """Any readable image as RGB: transparency flattened onto white, greyscale, palette,
    16-bit and CMYK converted, EXIF rotation applied, the longer side capped at `max_side`.

    Raises `AmaliaError("cannot read image PATH: reason")` for a missing or broken file.
    """
    try:
        with Image.open(path) as raw:
            raw.load()
            image = ImageOps.exif_transpose(raw) or raw
            image = _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
        raise AmaliaError(f"cannot read image {path}: {reason}") from None
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # high bit depth: stretch to 8 bits (a plain convert would clip everything to white)
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(arr.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def user_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def prompt_and_target(record: Record) -> tuple[str, str]:
    """(user question, assistant answer) of a caption or qa record."""
    if record.kind == "caption":
        return CAPTION_PROMPT, record.text or ""
    if record.kind == "qa":
        return record.question or "", record.answer or ""
    raise AmaliaError(f"record {record.id}: kind '{record.kind}' is not caption or qa")


@dataclass
class Encoded:
    """One tokenised sample (1-D tensors) and its image tiles."""

    id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor  # (tiles, 3, side, side)
    image_size: torch.Tensor  # (height, width) of the image as read

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def encode_prompt(processor, image: Image.Image, question: str) -> dict[str, torch.Tensor]:
    """The generation prompt: `input_ids` (1-D, image tokens expanded), `pixel_values`
    (tiles, 3, side, side) and `image_sizes` (2,)."""
    text = processor.apply_chat_template(user_messages(question), add_generation_prompt=True,
                                         tokenize=False)
    batch = processor(images=image, text=text, add_special_tokens=False, return_tensors="pt")
    return {"input_ids": batch["input_ids"][0], "pixel_values": batch["pixel_values"][0],
            "image_sizes": batch["image_sizes"][0]}


def answer_suffix(processor, question: str, answer: str) -> str:
    """The text the template puts after the generation prompt for `answer` (answer + end)."""
    prompt = processor.apply_chat_template(user_messages(question), add_generation_prompt=True,
                                           tokenize=False)
    full = processor.apply_chat_template(
        [*user_messages(question),
         {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        tokenize=False,
    )
    if not full.startswith(prompt):
        raise AmaliaError("the chat template renders the prompt differently with an answer",
                          "the template must extend the generation prompt with the answer")
    return full[len(prompt):]


def _with_answer(processor, prompt: dict, question: str, answer: str, record_id: str,
                 max_length: int) -> Encoded:
    suffix = answer_suffix(processor, question, answer)
    target = processor.tokenizer(suffix, add_special_tokens=False, return_tensors="pt")
    target_ids = target["input_ids"][0]
    input_ids = torch.cat([prompt["input_ids"], target_ids])
    if len(input_ids) > max_length:
        n_image = int((prompt["input_ids"] == processor.image_token_id).sum())
        raise AmaliaError(
            f"record {record_id}: {len(input_ids)} tokens ({n_image} image tokens) exceed "
            f"model.max_length={max_length}; truncating would cut image tokens or the answer",
            "raise model.max_length, use smaller image_grid_pinpoints, or drop the record",
        )
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[len(prompt["input_ids"]):] = target_ids
    return Encoded(record_id, input_ids, labels, prompt["pixel_values"], prompt["image_sizes"])


def encode_example(processor, image: Image.Image, question: str, answer: str,
                   max_length: int, record_id: str = "?") -> Encoded:
    """prompt + answer, labels on the answer and end tokens only."""
    prompt = encode_prompt(processor, image, question)
    return _with_answer(processor, prompt, question, answer, record_id, max_length)


class ChatDataset(Dataset):
    """Caption and qa records, encoded once for supervised training."""

    def __init__(self, records: Sequence[Record], data_dir: Path, processor, max_length: int):
        self.examples: list[Encoded] = []
        for rec in records:
            question, answer = prompt_and_target(rec)
            image = load_image(Path(data_dir) / (rec.image or ""))
            self.examples.append(
                encode_example(processor, image, question, answer, max_length, rec.id)
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Encoded:
        return self.examples[i]


class PreferenceDataset(Dataset):
    """Preference records as (prompt+chosen, prompt+rejected) pairs, encoded once."""

    def __init__(self, records: Sequence[Record], data_dir: Path, processor, max_length: int):
        self.pairs: list[tuple[Encoded, Encoded]] = []
        for rec in records:
            if rec.kind != "preference" or rec.chosen is None or rec.rejected is None:
                raise AmaliaError(f"record {rec.id}: not a preference record with chosen and "
                                  "rejected answers")
            question = rec.question or ""
            image = load_image(Path(data_dir) / (rec.image or ""))
            prompt = encode_prompt(processor, image, question)
            self.pairs.append((
                _with_answer(processor, prompt, question, rec.chosen, rec.id, max_length),
                _with_answer(processor, prompt, question, rec.rejected, rec.id, max_length),
            ))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Encoded, Encoded]:
        return self.pairs[i]


def _pad(seqs: Sequence[torch.Tensor], value: int, side: str) -> torch.Tensor:
    longest = max(len(s) for s in seqs)
    out = torch.full((len(seqs), longest), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if side == "left":
            out[i, longest - len(s):] = s
        else:
            out[i, : len(s)] = s
    return out


def collate(examples: Sequence[Encoded], pad_token_id: int,
            padding_side: str = "right") -> dict[str, torch.Tensor]:
    """A model-ready batch: input_ids, attention_mask, labels, pixel_values, image_sizes."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, not {padding_side!r}")
    ids = [e.input_ids for e in examples]
    mask = [torch.ones_like(e.input_ids) for e in examples]
    tiles = max(e.pixel_values.shape[0] for e in examples)
    pixel_values = torch.zeros((len(examples), tiles, *examples[0].pixel_values.shape[1:]),
                               dtype=examples[0].pixel_values.dtype)
    for i, e in enumerate(examples):
        pixel_values[i, : e.pixel_values.shape[0]] = e.pixel_values
    return {
        "input_ids": _pad(ids, pad_token_id, padding_side),
        "attention_mask": _pad(mask, 0, padding_side),
        "labels": _pad([e.labels for e in examples], IGNORE_INDEX, padding_side),
        "pixel_values": pixel_values,
        "image_sizes": torch.stack([e.image_size for e in examples]),
    }


def collate_preference(pairs: Sequence[tuple[Encoded, Encoded]], pad_token_id: int,
                       padding_side: str = "right") -> dict[str, torch.Tensor]:
    """2B rows: the B chosen samples, then the B rejected ones (same order)."""
    chosen = [c for c, _ in pairs]
    rejected = [r for _, r in pairs]
    return collate([*chosen, *rejected], pad_token_id, padding_side)


class Collator:
    """Picklable `collate_fn` for DataLoader (chat or preference samples)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right",
                 preference: bool = False):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.preference = preference

    def __call__(self, items):
        fn = collate_preference if self.preference else collate
        return fn(items, self.pad_token_id, self.padding_side)
