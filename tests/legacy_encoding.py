"""The encoding of the tiny chat template before issue #8 (single-turn, eos as the end of
turn), frozen here as a reference: tests prove `components.train.chat` and the inference
path give the tiny model exactly these tokens, so the tiny retrain is unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from components.errors import AmaliaError
from components.records import Record
from components.train.data import CAPTION_PROMPT, IGNORE_INDEX


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
