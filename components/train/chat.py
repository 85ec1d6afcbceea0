"""Records -> chat-formatted token ids and labels, rendered with the model's OWN chat template.

`ChatFormat` is built once per processor. It probes the template (never its name) for:

- content form: a template that renders list-of-parts content (`[{"type": "image"},
  {"type": "text", ...}]`, our tiny `CHAT_TEMPLATE`) gets it; one that prints it as a Python
  list or fails on it (ChatML, Llama 3: `{{ message['content'] }}`) gets string content, with
  the image token written LLaVA style: `"<image>\\n" + text` at the start of the user turn
  that owns the image (or where the record's `<image>` placeholders stand);
- system role: a template that refuses or drops a system message gets the system text
  prepended to the first user text ("system\\n\\nuser");
- end of turn (`eot_token_id`): the first special token (else the first token) the template
  writes after an assistant answer: `<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3,
  `</s>` (= eos) for the tiny template. It closes every labelled answer and stops
  generation (`stop_token_ids` = [eot] + eos when different).

Labels (`IGNORE_INDEX` = -100 elsewhere) cover, for EVERY assistant turn, its content and
the template's tokens up to and including the end-of-turn token; system, user, image
tokens, role headers and anything the template writes after the end-of-turn token ("\\n")
are ignored. They are found by incremental rendering: for assistant turn i the prefix is
`render(messages[:i], add_generation_prompt=True)` and the answer segment is what
`render(messages[:i + 1])` adds to it. A template whose renders do not extend each other
raises `AmaliaError` (a template problem, not a data problem). Segments are tokenised
one by one with `add_special_tokens=False` (the template writes bos itself) and joined.

Images: each image is written as ONE image token, and after tokenisation expanded to
`processor._get_num_multimodal_tokens` tokens for its (height, width), exactly what
`processor(images=..., text=...)` emits. `image_sizes` are (height, width) as read; pixels
come separately from `pixel_inputs`, which resizes each image to the size `encode` chose.
Every sample holds at least one image: a text-only sample gets ONE dummy image of the base
tile size at the start of its first user turn, with `attention_mask` 0 and labels ignored
on its tokens (`Tokenized.dummy_image`; `pixel_inputs` makes blank tiles for a `None`
image), so every rank of a multi-GPU run calls the vision tower (ZeRO-3 hangs otherwise).

Record kinds (`components.records`):

- caption: user = images + `CAPTION_PROMPT`; assistant = `text`.
- qa: user = images + `question` (options are NOT shown, as the embedded eval tasks ask
  "{question}" only); assistant = `answer`.
- multiple_choice: user = images + question + the options as the evaluation's default
  `PromptSpec` renders them ("\\nA. opt\\nB. opt") + `MC_POST_PROMPT` (the post prompt of
  the MC eval tasks); assistant = the letter of `answer`.
- conversation: the turns as given, `<image>` placeholders marking where the images go (no
  placeholder: all images at the start of the first user turn); a `system` turn overrides
  `ChatFormat(system_prompt=...)`; trailing non-assistant turns are dropped.
- grounding: user = images + `question`; assistant = `answer` if given, else the boxes,
  normalised to 0-1 of the first image's width/height, 3 decimals, "[x0, y0, x1, y1]"
  (the `box_format: norm1` the RefCOCO eval tasks parse with `metrics.boxes.parse_box`);
  several boxes: one per line, "label: [x0, y0, x1, y1]" when labelled.
- preference: prompt = images + `question`; `encode_preference` gives (chosen, rejected)
  with the same prompt tokens and the same image sizes.

Budgets, not aborts: `Budget(max_length, max_tiles)` bounds a sample's tokens (image tokens
included) and anyres tiles. Over budget, images are downscaled (largest first, one
pinpoint at a time, down to the smallest pinpoint) and recounted; what still does not fit
raises `SkipSample` ("too_long" / "too_many_tiles") for the caller to count and skip. Text
is never truncated and image tokens are never cut. Broken records raise `SkipSample` too
("no_assistant_turn", "bad_record").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from components.errors import AmaliaError
from components.evaltasks.prompts import LETTERS, render_options
from components.evaltasks.spec import PromptSpec
from components.records import PLACEHOLDER, Record
from components.train.data import CAPTION_PROMPT, IGNORE_INDEX
from components.train.tiles import tiler_for

__all__ = [
    "CAPTION_PROMPT", "IGNORE_INDEX", "MC_POST_PROMPT", "Budget", "ChatFormat", "SkipSample",
    "Tokenized", "collate_tokenized", "grounding_answer", "multiple_choice_prompt",
    "pixel_inputs",
]

# The post prompt of the multiple-choice eval tasks (ai2d_pt, mmstar_pt, seedbench_pt,
# caravela_mcq YAMLs; tests/test_chat.py keeps them equal).
MC_POST_PROMPT = "\nResponde diretamente com a letra da opção correta."
# the evaluation's default option rendering ("\nA. opt\nB. opt"), reused, not copied
_DEFAULT_PROMPT = SimpleNamespace(prompt=PromptSpec())
_PROBE, _SYSTEM_PROBE, _SENTINEL = "PROBEUSER", "PROBESYSTEM", "PROBEANSWER"
Size = tuple[int, int]  # (height, width) in pixels


class SkipSample(AmaliaError):
    """One sample that cannot be trained; the caller counts it by `reason` and goes on.

    `reason`: "too_long", "too_many_tiles", "no_assistant_turn" or "bad_record";
    `str(exc)`: the human detail, naming the record.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class Tokenized:
    """One encoded sample (1-D long tensors of equal length)."""

    input_ids: torch.Tensor  # image tokens expanded (one per image feature)
    labels: torch.Tensor  # IGNORE_INDEX except assistant content + its end-of-turn token(s)
    attention_mask: torch.Tensor  # 1, except 0 on the tokens of a dummy image
    image_sizes: list[Size]  # (height, width) per image after any budget downscale
    n_image_tokens: int
    dummy_image: bool = False  # image_sizes holds one blank (tile, tile) image
    record_id: str = "?"

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class Budget:
    """Per-sample limits: `max_length` tokens (image tokens included) and `max_tiles` anyres
    tiles over all the sample's images (a dummy image's tiles count; None = no limit)."""

    max_length: int
    max_tiles: int | None = None


@dataclass
class _Image:
    index: int
    placed: bool  # at a record placeholder (True) or put at the start of the turn (False)


Part = str | _Image


@dataclass
class _Turn:
    role: str
    parts: list[Part]


def multiple_choice_prompt(question: str, options: Sequence[str]) -> str:
    """The user text of a multiple-choice item, as the MC eval tasks render it."""
    return question + render_options(_DEFAULT_PROMPT, list(options)) + MC_POST_PROMPT


def _norm(value: float, scale: int) -> float:
    return min(1.0, max(0.0, value / scale)) if scale > 0 else 0.0


def grounding_answer(boxes: Sequence[Any], image_size: Size) -> str:
    """Boxes (`Box` or `{bbox, label}`, pixels) as the answer text: "[x0, y0, x1, y1]"
    normalised to 0-1 of the image's width/height with 3 decimals; several boxes one per
    line, "label: [..]" when labelled (a single box is written bare)."""
    height, width = image_size
    lines = []
    for box in boxes:
        bbox = box["bbox"] if isinstance(box, dict) else box.bbox
        label = box.get("label") if isinstance(box, dict) else box.label
        x0, y0, x1, y1 = (float(v) for v in bbox)
        text = (f"[{_norm(x0, width):.3f}, {_norm(y0, height):.3f}, "
                f"{_norm(x1, width):.3f}, {_norm(y1, height):.3f}]")
        lines.append(f"{label}: {text}" if label and len(boxes) > 1 else text)
    return "\n".join(lines)


class ChatFormat:
    """Built once per processor. Renders records with the processor's/tokenizer's OWN chat
    template (see the module docstring for the probes, labels and budgets)."""

    def __init__(self, processor, system_prompt: str | None = None):
        """`system_prompt`: the system turn of every sample; None = the one the model was
        trained with (`processor.system_prompt`, set by `build.load_model` from the
        model folder's `chat_format.json`), so evaluation and serving prompt like training."""
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if system_prompt is None:
            system_prompt = getattr(processor, "system_prompt", None)
        self.system_prompt = system_prompt or None
        self.template = getattr(processor, "chat_template", None) or \
            getattr(self.tokenizer, "chat_template", None)
        if not self.template:
            raise AmaliaError("the processor and its tokenizer have no chat template",
                              "set tokenizer.chat_template before building the processor")
        self.image_token: str = processor.image_token
        self.image_token_id: int = int(processor.image_token_id)
        ip = processor.image_processor
        self.tile_side = tile_side(ip)
        self.pinpoints = [list(p) for p in ip.image_grid_pinpoints]
        self._costs: dict[Size, tuple[int, int]] = {}
        self.list_content = self._probe_list_content()
        self.system_role = self._probe_system_role()
        self.eot_token_id = self._probe_end_of_turn()
        eos = self.tokenizer.eos_token_id
        self.stop_token_ids: list[int] = [self.eot_token_id]
        if eos is not None and eos != self.eot_token_id:
            self.stop_token_ids.append(int(eos))
        # a special end-of-turn token written inside a turn would end the answer early
        self._eot_text = self.tokenizer.convert_ids_to_tokens(self.eot_token_id) \
            if self.eot_token_id in self._special_ids() else None

    # -- probes --------------------------------------------------------------------------

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _probe_list_content(self) -> bool:
        probe = [{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": _PROBE}]}]
        try:
            text = self._render(probe, add_generation_prompt=True)
        except Exception:  # any failure means: give it strings
            return False
        return self.image_token in text and _PROBE in text and "{'type'" not in text

    def _content(self, text: str) -> Any:
        return [{"type": "text", "text": text}] if self.list_content else text

    def _probe_system_role(self) -> bool:
        probe = [{"role": "system", "content": self._content(_SYSTEM_PROBE)},
                 {"role": "user", "content": self._content(_PROBE)}]
        try:
            text = self._render(probe, add_generation_prompt=True)
        except Exception:  # a template that raises on system has none
            return False
        return _SYSTEM_PROBE in text

    def _special_ids(self) -> set[int]:
        tok = self.tokenizer
        ids = set(tok.all_special_ids)
        ids |= {i for i, t in getattr(tok, "added_tokens_decoder", {}).items()
                if getattr(t, "special", False)}
        return ids

    def _probe_end_of_turn(self) -> int:
        probe = [{"role": "user", "content": self._content(_PROBE)},
                 {"role": "assistant", "content": self._content(_SENTINEL)}]
        try:
            text = self._render(probe)
        except Exception as exc:
            raise AmaliaError(f"the chat template cannot render a user/assistant exchange: "
                              f"{exc}") from None
        if _SENTINEL not in text:
            raise AmaliaError("the chat template drops the assistant answer",
                              "use a template that renders assistant turns")
        tail = text[text.rindex(_SENTINEL) + len(_SENTINEL):]
        ids = self._tokenize(tail)
        special = self._special_ids()
        for i in ids:
            if i in special:
                return int(i)
        if ids:
            return int(ids[0])
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise AmaliaError("the chat template closes no assistant turn and the tokenizer "
                              "has no eos token: nothing would end an answer")
        return int(eos)

    # -- image costs and budgets ----------------------------------------------------------

    def image_cost(self, size: Size) -> tuple[int, int]:
        """(anyres tiles, image tokens) of one image of `size` (height, width)."""
        key = (max(1, int(size[0])), max(1, int(size[1])))
        if key not in self._costs:
            tokens = self.processor._get_num_multimodal_tokens(image_sizes=[key])
            tiles = image_size_to_num_patches(key, self.pinpoints, self.tile_side)
            self._costs[key] = (int(tiles), int(tokens["num_image_tokens"][0]))
        return self._costs[key]

    def _smaller_sizes(self, size: Size) -> list[Size]:
        """`size` shrunk (aspect kept, floored) to fit inside each pinpoint, largest first."""
        h, w = size
        out: list[Size] = []
        for ph, pw in sorted(self.pinpoints, key=lambda p: -p[0] * p[1]):
            if h <= ph and w <= pw:
                cand = (h, w)
            elif ph * w <= pw * h:  # height is the tighter side
                cand = (ph, max(1, w * ph // h))
            else:
                cand = (max(1, h * pw // w), pw)
            if cand != size and cand not in out:
                out.append(cand)
        return out

    def fit_image_size(self, image_sizes: Sequence[Size], budget: Budget,
                       text_tokens: int = 0, record_id: str = "?") -> list[Size]:
        """The sizes to resize the images to so that `text_tokens` + their image tokens fit
        `budget.max_length` and their tiles `budget.max_tiles`: over budget, the costliest
        image steps down to the next pinpoint it fits, until it fits or nothing can shrink.

        Raises `SkipSample("too_many_tiles" | "too_long")` naming `record_id`."""
        sizes = [(max(1, int(h)), max(1, int(w))) for h, w in image_sizes]
        while True:
            costs = [self.image_cost(s) for s in sizes]
            tiles = sum(c[0] for c in costs)
            image_tokens = sum(c[1] for c in costs)
            total = text_tokens + image_tokens
            over_tiles = budget.max_tiles is not None and tiles > budget.max_tiles
            over_length = total > budget.max_length
            if not (over_tiles or over_length):
                return sizes
            which = 0 if over_tiles else 1
            best: tuple[tuple[int, int, int], int, Size] | None = None
            for i, s in enumerate(sizes):
                step = next((c for c in self._smaller_sizes(s)
                             if self.image_cost(c)[which] < costs[i][which]), None)
                if step is None:
                    continue
                rank = (costs[i][which], costs[i][1 - which], s[0] * s[1])
                if best is None or rank > best[0]:
                    best = (rank, i, step)
            if best is None:
                if over_tiles:
                    raise SkipSample("too_many_tiles", f"record {record_id}: {tiles} tiles > "
                                     f"max_tiles={budget.max_tiles}")
                raise SkipSample("too_long", f"record {record_id}: {total} tokens "
                                 f"({image_tokens} image tokens) > "
                                 f"max_length={budget.max_length}")
            sizes[best[1]] = best[2]

    # -- records -> turns -------------------------------------------------------------------

    def _record_turns(self, record: Record, image_sizes: Sequence[Size] | None,
                      answer: str | None = None) -> list[_Turn]:
        """(role, text) turns of a training record, before images and system are placed."""
        rid = record.id
        kind = record.kind

        def need(value: str | None, what: str) -> str:
            if value is None or value == "":
                raise SkipSample("bad_record", f"record {rid}: {kind} record without {what}")
            return value

        if kind == "caption":
            return [_Turn("user", [CAPTION_PROMPT]), _Turn("assistant", [need(record.text,
                                                                               "text")])]
        if kind == "qa":
            return [_Turn("user", [need(record.question, "question")]),
                    _Turn("assistant", [need(record.answer, "answer")])]
        if kind == "multiple_choice":
            options = record.options or []
            if len(options) < 2:
                raise SkipSample("bad_record", f"record {rid}: multiple_choice needs >= 2 "
                                 "options")
            ans = need(record.answer, "answer")
            if ans in options:
                letter = LETTERS[options.index(ans)]
            elif len(ans) == 1 and ans in LETTERS[: len(options)]:
                letter = ans
            else:
                raise SkipSample("bad_record", f"record {rid}: answer {ans!r} is not one of "
                                 "the options")
            return [_Turn("user", [multiple_choice_prompt(need(record.question, "question"),
                                                          options)]),
                    _Turn("assistant", [letter])]
        if kind == "grounding":
            text = record.answer
            if not text:
                if not record.boxes:
                    raise SkipSample("bad_record", f"record {rid}: grounding without boxes")
                if not image_sizes:
                    raise AmaliaError(f"record {rid}: grounding boxes need the image size")
                text = grounding_answer(record.boxes, image_sizes[0])
            return [_Turn("user", [need(record.question, "question")]),
                    _Turn("assistant", [text])]
        if kind == "preference":
            return [_Turn("user", [need(record.question, "question")]),
                    _Turn("assistant", [need(answer if answer is not None else record.chosen,
                                             "chosen answer")])]
        if kind == "conversation":
            turns = [_Turn(t.role, [t.content]) for t in record.conversations or []]
            while turns and turns[-1].role != "assistant":
                turns.pop()
            if not turns:
                raise SkipSample("no_assistant_turn",
                                 f"record {rid}: conversation without an assistant turn")
            return turns
        raise SkipSample("bad_record", f"record {rid}: unknown kind {kind!r}")

    def _place(self, turns: list[_Turn], n_images: int, record_id: str,
               system: str | None) -> tuple[list[_Turn], bool]:
        """Images into the turns (placeholders, else the first user turn; none: one dummy)
        and the system text (a system role, else prepended to the first user text)."""
        systems = [t for t in turns if t.role == "system"]
        turns = [t for t in turns if t.role != "system"]
        if systems:  # the record's own system turn overrides the configured prompt
            system = "\n\n".join(str(p) for t in systems for p in t.parts if isinstance(p, str))
        n_placeholders = sum(str(p).count(PLACEHOLDER) for t in turns for p in t.parts)
        if n_placeholders and n_placeholders != n_images:
            raise SkipSample("bad_record", f"record {record_id}: {n_placeholders} {PLACEHOLDER} "
                             f"placeholders for {n_images} images")
        dummy = n_images == 0
        first_user = next((i for i, t in enumerate(turns) if t.role == "user"), 0)
        out: list[_Turn] = []
        counter = 0
        for i, turn in enumerate(turns):
            parts: list[Part] = []
            for part in turn.parts:
                pieces = str(part).split(PLACEHOLDER)
                for j, piece in enumerate(pieces):
                    if j:
                        parts.append(_Image(counter, placed=True))
                        counter += 1
                    if piece:
                        parts.append(piece)
            if i == first_user:
                if system and not self.system_role:
                    k = next((k for k, p in enumerate(parts) if isinstance(p, str)), None)
                    if k is None:
                        parts.append(system)
                    else:
                        parts[k] = f"{system}\n\n{parts[k]}"
                if not n_placeholders:
                    parts = [_Image(k, placed=False) for k in range(max(n_images, 1))] + parts
            out.append(_Turn(turn.role, parts))
        if system and self.system_role:
            out.insert(0, _Turn("system", [system]))
        return out, dummy

    def _messages(self, turns: list[_Turn]) -> list[dict]:
        messages = []
        for turn in turns:
            if self.list_content:
                content: Any = [{"type": "image"} if isinstance(p, _Image)
                                else {"type": "text", "text": p} for p in turn.parts]
            else:
                content = "".join(
                    (self.image_token if p.placed else self.image_token + "\n")
                    if isinstance(p, _Image) else p for p in turn.parts)
            messages.append({"role": turn.role, "content": content})
        return messages

    def messages(self, record: Record, image_sizes: Sequence[Size] | None = None) -> list[dict]:
        """The chat messages rendered for a training record, in the template's content form,
        images and system prompt placed (preference: prompt + chosen as the assistant).
        `image_sizes` (height, width) are needed only for grounding boxes."""
        n_images = len(record.image_list())
        turns, _ = self._place(self._record_turns(record, image_sizes), n_images, record.id,
                               self.system_prompt)
        return self._messages(turns)

    # -- tokenisation -------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _pieces(self, messages: list[dict], generation: bool) -> list[tuple[str, bool]]:
        """The rendered text cut into (piece, labelled) by incremental rendering."""
        if generation:
            return [(self._render(messages, add_generation_prompt=True), False)]
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render(messages[:i], add_generation_prompt=True)
            full = self._render(messages[: i + 1])
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise AmaliaError(
                    "the chat template does not render conversations incrementally: "
                    "render(messages[:i], add_generation_prompt=True) must extend the render "
                    "of the earlier turns and be extended by the render with turn i's answer",
                    "use a template whose turns are rendered independently of later turns",
                )
            pieces += [(prefix[len(done):], False), (full[len(prefix):], True)]
            done = full
        return pieces

    def _ids_and_labels(self, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        for text, labelled in pieces:
            piece = self._tokenize(text)
            ids += piece
            if not labelled:
                labels += [IGNORE_INDEX] * len(piece)
                continue
            # the answer and the end-of-turn token; what the template adds after it ("\n")
            # is context, not a target
            end = max((k for k, t in enumerate(piece) if t == self.eot_token_id),
                      default=len(piece) - 1) + 1
            labels += piece[:end] + [IGNORE_INDEX] * (len(piece) - end)
        return ids, labels

    def _render_record(self, turns: list[_Turn], record_id: str, n_images: int,
                       generation: bool = False) -> tuple[list[int], list[int]]:
        messages = self._messages(turns)
        eot = self._eot_text
        if eot:
            for m in messages:
                text = m["content"] if isinstance(m["content"], str) else \
                    "".join(p.get("text", "") for p in m["content"])
                if eot in text:
                    raise SkipSample("bad_record", f"record {record_id}: a turn holds the "
                                     f"end-of-turn token {eot!r}")
        try:
            pieces = self._pieces(messages, generation)
        except AmaliaError:
            raise
        except Exception as exc:  # a template that refuses this record's turns
            raise SkipSample("bad_record", f"record {record_id}: the chat template refuses "
                             f"it: {exc}") from None
        ids, labels = self._ids_and_labels(pieces)
        found = sum(1 for t in ids if t == self.image_token_id)
        if found != n_images:
            raise SkipSample("bad_record", f"record {record_id}: {found} image tokens in the "
                             f"rendered text for {n_images} images")
        return ids, labels

    def _expand(self, ids: list[int], labels: list[int], sizes: list[Size], dummy: bool,
                record_id: str) -> Tokenized:
        out_ids: list[int] = []
        out_labels: list[int] = []
        mask: list[int] = []
        k = 0
        n_image_tokens = 0
        for t, lab in zip(ids, labels, strict=True):
            if t != self.image_token_id:
                out_ids.append(t)
                out_labels.append(lab)
                mask.append(1)
                continue
            n = self.image_cost(sizes[k])[1]
            k += 1
            n_image_tokens += n
            out_ids += [t] * n
            out_labels += [IGNORE_INDEX] * n
            mask += [0 if dummy else 1] * n
        return Tokenized(
            input_ids=torch.tensor(out_ids, dtype=torch.long),
            labels=torch.tensor(out_labels, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            image_sizes=list(sizes), n_image_tokens=n_image_tokens, dummy_image=dummy,
            record_id=record_id,
        )

    def _sizes(self, record: Record, image_sizes: Sequence[Size]) -> list[Size]:
        n = len(record.image_list())
        if len(image_sizes) != n:
            raise AmaliaError(f"record {record.id}: {len(image_sizes)} image sizes given for "
                              f"its {n} images")
        return [(int(h), int(w)) for h, w in image_sizes]

    def encode(self, record: Record, image_sizes: Sequence[Size], budget: Budget) -> Tokenized:
        """A training sample: every assistant turn labelled (see the module docstring).
        `image_sizes`: (height, width) of the record's images as read, in order; the
        returned `image_sizes` are what to resize them to (a dummy's when text-only)."""
        sizes = self._sizes(record, image_sizes)
        turns, dummy = self._place(self._record_turns(record, sizes), len(sizes), record.id,
                                   self.system_prompt)
        return self._encode_turns(turns, sizes, dummy, budget, record.id)

    def _encode_turns(self, turns: list[_Turn], sizes: list[Size], dummy: bool,
                      budget: Budget, record_id: str) -> Tokenized:
        ids, labels = self._render_record(turns, record_id, max(len(sizes), 1))
        fitted = self.fit_image_size(self._with_dummy(sizes, dummy), budget,
                                     len(ids) - max(len(sizes), 1), record_id)
        return self._expand(ids, labels, fitted, dummy, record_id)

    def _with_dummy(self, sizes: list[Size], dummy: bool) -> list[Size]:
        return [(self.tile_side, self.tile_side)] if dummy else sizes

    def encode_preference(self, record: Record, image_sizes: Sequence[Size],
                          budget: Budget) -> tuple[Tokenized, Tokenized]:
        """(prompt + chosen, prompt + rejected): the same prompt tokens and image sizes (the
        budget is fitted to the longer of the two)."""
        if record.chosen is None or record.rejected is None:
            raise SkipSample("bad_record", f"record {record.id}: preference without chosen and "
                             "rejected answers")
        sizes = self._sizes(record, image_sizes)
        rendered = []
        dummy = False
        for answer in (record.chosen, record.rejected):
            turns, dummy = self._place(self._record_turns(record, sizes, answer=answer),
                                       len(sizes), record.id, self.system_prompt)
            rendered.append(self._render_record(turns, record.id, max(len(sizes), 1)))
        n_text = max(len(ids) for ids, _ in rendered) - max(len(sizes), 1)
        fitted = self.fit_image_size(self._with_dummy(sizes, dummy), budget, n_text, record.id)
        chosen, rejected = (self._expand(ids, labels, fitted, dummy, record.id)
                            for ids, labels in rendered)
        return chosen, rejected

    def generation_prompt(self, question: str, image_sizes: Sequence[Size]) -> Tokenized:
        """The prompt for `question` about images of `image_sizes` (height, width), ending
        where the assistant's answer starts (labels all IGNORE_INDEX). No budget applies;
        no image gives one dummy image, as in training."""
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        turns, dummy = self._place([_Turn("user", [question])], len(sizes), "prompt",
                                   self.system_prompt)
        ids, labels = self._render_record(turns, "prompt", max(len(sizes), 1),
                                          generation=True)
        return self._expand(ids, labels, self._with_dummy(sizes, dummy), dummy, "prompt")


def tile_side(image_processor) -> int:
    """The anyres grid step and tile side of a LlavaNext image processor: `crop_size`'s
    height (what HF cuts the grid at), else `size`'s height or shortest edge."""
    def get(value, key):
        return value.get(key) if isinstance(value, dict) else getattr(value, key, None)

    crop, size = getattr(image_processor, "crop_size", None), image_processor.size
    side = get(crop, "height") or get(size, "height") or get(size, "shortest_edge")
    if not side:
        raise AmaliaError(f"image processor {type(image_processor).__name__} has neither "
                          "crop_size nor size: cannot tell its tile side")
    return int(side)


def pixel_inputs(processor, images: Sequence[Image.Image | None],
                 image_sizes: Sequence[Size]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Anyres tiles for each image resized to its (height, width) in `image_sizes` (the
    sizes a `Tokenized` holds): a list of (tiles, 3, side, side) tensors, and the sizes as a
    (n, 2) long tensor. A `None` image (a dummy) gets blank (zero) tiles of its size.
    Tiles come from `components.train.tiles` (bitwise equal to the HF processor, faster),
    or from the processor itself for settings that module does not replicate."""
    if len(images) != len(image_sizes):
        raise ValueError(f"{len(images)} images for {len(image_sizes)} sizes")
    ip = processor.image_processor
    sizes = [(int(h), int(w)) for h, w in image_sizes]
    resized: list[Image.Image | None] = []
    for image, (h, w) in zip(images, sizes, strict=True):
        if image is not None and image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BICUBIC)
        resized.append(image)
    tiler = tiler_for(ip)  # bitwise equal to `ip`; None: settings it does not replicate
    if tiler is not None:
        side = tiler.side
        out = [torch.zeros(tiler.num_tiles(hw), 3, side, side) if image is None
               else tiler(image) for image, hw in zip(resized, sizes, strict=True)]
        return out, torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)
    side = tile_side(ip)
    pinpoints = [list(p) for p in ip.image_grid_pinpoints]
    real = [image for image in resized if image is not None]
    tiles = iter(ip(images=real, return_tensors="pt")["pixel_values"]) if real else iter(())
    out = []
    for image, hw in zip(resized, sizes, strict=True):
        n = int(image_size_to_num_patches(hw, pinpoints, side))
        out.append(torch.zeros(n, 3, side, side) if image is None else next(tiles)[:n])
    return out, torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)


def _pad(seqs: Sequence[torch.Tensor], value: int, side: str) -> torch.Tensor:
    longest = max(len(s) for s in seqs)
    out = torch.full((len(seqs), longest), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "left":
            out[i, longest - len(s):] = s
        else:
            out[i, : len(s)] = s
    return out


def collate_tokenized(samples: Sequence[Tokenized], pixels: Sequence[Sequence[torch.Tensor]],
                      pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """A model-ready batch: `input_ids`, `attention_mask` (the samples' own, 0 on padding),
    `labels`, and every image of every sample in order: `pixel_values` (images, most tiles,
    3, side, side; zero-padded tiles) and `image_sizes` (images, 2). `pixels[i]` are sample
    i's tiles from `pixel_inputs`."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, not {padding_side!r}")
    flat = [t for per_sample in pixels for t in per_sample]
    sizes = [s for sample in samples for s in sample.image_sizes]
    if len(flat) != len(sizes):
        raise ValueError(f"{len(flat)} pixel tensors for {len(sizes)} images")
    most = max(t.shape[0] for t in flat)
    pixel_values = torch.zeros((len(flat), most, *flat[0].shape[1:]), dtype=flat[0].dtype)
    for i, t in enumerate(flat):
        pixel_values[i, : t.shape[0]] = t
    return {
        "input_ids": _pad([s.input_ids for s in samples], pad_token_id, padding_side),
        "attention_mask": _pad([s.attention_mask for s in samples], 0, padding_side),
        "labels": _pad([s.labels for s in samples], IGNORE_INDEX, padding_side),
        "pixel_values": pixel_values,
        "image_sizes": torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
    }
