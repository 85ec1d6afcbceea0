"""Answering questions about images with a trained amalia-vl model (greedy decoding).

`generate_answers` is the batch path (evaluation, serving): prompts are built with the
same chat template and encoding as training (`components.train.chat.ChatFormat`, the
model's own template), left-padded so every row's answer starts at the same column,
decoded greedily until the template's end-of-turn token (`ChatFormat.stop_token_ids`:
`</s>` for the tiny template, `<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3, plus
eos) or `max_new_tokens`, and returned stripped. `ask` answers one question from a saved model
folder (the CLI face; MLflow `models:/` URIs are resolved to a folder before the call).

Any readable image works: RGBA, greyscale, palette, 16-bit, 1x1 or 4000x3000 (anyres
tiling picks the best grid); an unreadable one raises `AmaliaError("cannot read image
PATH: reason")`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from components.accel import configure_threads
from components.train.chat import ChatFormat, collate_tokenized, pixel_inputs
from components.train.data import load_image, to_device


@torch.no_grad()
def generate_answers(
    model,
    processor,
    items: list[tuple[Path, str]],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    stop_strings: list[str] | None = None,
    chat: ChatFormat | None = None,
) -> list[str]:
    """Greedy answers, in order, to `(image_path, question)` items; decoding of an answer
    ends at the template's end of turn, end-of-sequence, `max_new_tokens` or any of
    `stop_strings`. `chat`: the `ChatFormat` the model was trained with (its system
    prompt); default: `ChatFormat(processor)`."""
    configure_threads()
    model.eval()
    first = next(model.parameters())
    tokenizer = processor.tokenizer
    chat = chat or ChatFormat(processor)
    answers: list[str] = []
    bar = task = None
    if progress and items:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("generate", total=len(items))
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start: start + batch_size]
            prompts, pixels = [], []
            for path, question in chunk:
                image = load_image(path)
                prompt = chat.generation_prompt(question, [(image.height, image.width)])
                prompts.append(prompt)
                pixels.append(pixel_inputs(processor, [image], prompt.image_sizes)[0])
            batch = collate_tokenized(prompts, pixels, tokenizer.pad_token_id,
                                      padding_side="left")
            batch.pop("labels")
            batch = to_device(batch, first.device, first.dtype)
            stop = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} \
                if stop_strings else {}
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=chat.stop_token_ids,
                **stop,
            )
            new = out[:, batch["input_ids"].shape[1]:]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new,
                                                                     skip_special_tokens=True))
            if bar:
                bar.update(task, advance=len(chunk))
    finally:
        if bar:
            bar.stop()
    return answers


@lru_cache(maxsize=2)
def _cached_model(directory: str) -> tuple[Any, Any]:
    from components.model.build import load_model

    return load_model(Path(directory))


def ask(model_ref: str | Path, image_path: Path, question: str, max_new_tokens: int = 32) -> str:
    """One greedy answer from the save_pretrained folder `model_ref` (loaded once per
    process). Reads the image first, so a bad path fails before the model loads."""
    load_image(image_path)
    model, processor = _cached_model(str(Path(model_ref).resolve()))
    return generate_answers(model, processor, [(Path(image_path), question)],
                            max_new_tokens=max_new_tokens, batch_size=1)[0]
