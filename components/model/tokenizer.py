"""A byte-level BPE tokenizer trained on the run's own pt-PT texts, and the chat template.

Byte-level BPE never produces `<unk>` (every byte is in the base alphabet), so accented
pt-PT text ("à esquerda", "não") always round-trips. Special tokens:

- `<unk> <s> </s> <pad>`: unknown, begin, end (also the end of every turn), padding;
- `<image>`: the image placeholder the processor expands to one token per image feature;
- `<|system|> <|user|> <|assistant|>`: role markers.

`CHAT_TEMPLATE` renders messages whose content is a string or a list of parts
(`{"type": "image"}` / `{"type": "text", "text": ...}`):

    <s><|user|><image>Quantas formas há na imagem?</s><|assistant|>3</s>

With `add_generation_prompt=True` it ends in `<|assistant|>`, so the model's answer is
everything it generates up to `</s>`. The same template is set on the tokenizer and the
processor (`build.make_processor`) so `processor.apply_chat_template` gives the same text.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{r}|>" for r in ROLES)
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it for transformers.

    `vocab_size` counts the 256 byte symbols and the special tokens; merges fill the rest
    (fewer if the corpus is too small to need them). Deterministic for the same texts.
    """
    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise ValueError(f"tokenizer vocab_size {vocab_size} is below the byte alphabet ({floor})")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` holding `SPECIAL_TOKENS` as a transformers tokenizer."""
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf
