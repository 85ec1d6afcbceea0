"""Hugging Face MT backends: encoder-decoder models and instruction LLMs, batched.

Both load lazily on the first batch (a fully cached run never loads a model), place the
model with `components.accel.detect_runtime()` (CUDA: bf16 + flash-attention 2 when
`flash_attn` imports, else SDPA; CPU: fp32 + SDPA), sort texts by token length, generate
greedily in batches of `batch_size`, and return outputs in the input order.

- `Seq2SeqTranslator(model_id_or_path, src_lang, tgt_lang)`: `AutoModelForSeq2SeqLM`.
  Target-language conditioning is read off the tokenizer: NLLB-style codes (`por_Latn`)
  and M2M-style codes (`__pt__`) become `forced_bos_token_id` (and `tokenizer.src_lang`
  is set); Marian multi-target models get a `>>por<<` / `>>pt<<` prefix token when their
  vocabulary has one; single-pair Marian / T5 models need nothing.
- `LLMTranslator(model_id_or_path, prompt_template)`: `AutoModelForCausalLM`, left padding,
  the tokenizer's chat template when it has one (else the plain prompt), only the new tokens
  decoded, the answer cleaned by `clean_llm_output`.

`max_new_tokens` is capped per batch at `3 x longest source + 16` tokens so a model that
never emits EOS cannot run away on short texts.

Cache identity (`Identity.model`): `<model id>@<fingerprint>` from `model_fingerprint`, so
new weights never reuse stale cached translations:
- a local folder: `local:` + a digest of every file's relative path and, for small or
  text files (configs, tokenizer, safetensors index), its content, for weight files its
  size and mtime. Retraining in place changes it; copying a folder without keeping mtimes
  changes it too (a cache miss, never a stale hit);
- a hub id: `rev:<revision>=<commit>`, the commit read off the local Hugging Face cache
  (no network), or `=unresolved` when the model is not cached yet; a revision is given as
  `model_id: org/name@<branch, tag or commit>` (or `revision=`) and is also what loads.
Everything else that changes outputs is in `Identity.prompt`: languages, the prompt
digest, `max_new_tokens`, and for seq2seq `max_source_tokens` (inputs are truncated to
it; the LLM path never truncates).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from components.translation.backends import Identity

log = logging.getLogger(__name__)

LANG_NAMES = {"en": "English", "pt": "Portuguese", "pt-PT": "European Portuguese (pt-PT)",
              "es": "Spanish", "fr": "French", "de": "German", "it": "Italian"}
# NLLB / FLORES-200 codes and M2M-100 / Marian codes, by our BCP-47-ish language tags.
NLLB_CODES = {"en": "eng_Latn", "pt": "por_Latn", "pt-PT": "por_Latn", "pt-BR": "por_Latn",
              "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "it": "ita_Latn"}
ISO_CODES = {"pt-PT": "pt", "pt-BR": "pt", "en": "en"}
MARIAN_TARGET_TOKENS = {"pt-PT": (">>por<<", ">>pt_PT<<", ">>pt<<"), "pt": (">>por<<", ">>pt<<")}

DEFAULT_PROMPT = (
    "Translate the following {source_name} text into European Portuguese (pt-PT) — "
    "português europeu, não português do Brasil. Use pt-PT spelling, vocabulary and "
    "grammar (e.g. \"ecrã\", \"autocarro\", \"estar a fazer\"). Keep every marker such as "
    "[[0]] exactly as it is. Reply with the translation only, no notes.\n\n{text}"
)


SMALL_FILE_BYTES = 1 << 20  # files up to this size are hashed by content
_CONTENT_SUFFIXES = {".json", ".txt", ".model", ".jinja", ".py", ".tiktoken", ".vocab"}
_COMMIT = re.compile(r"[0-9a-f]{40}")


def split_revision(model_id_or_path: str, revision: str | None = None) -> tuple[str, str | None]:
    """`("org/name@rev", None)` -> `("org/name", "rev")`; a local folder, or an explicit
    `revision`, is never split."""
    model_id = str(model_id_or_path)
    if revision is None and "@" in model_id and not Path(model_id).exists():
        model_id, _, revision = model_id.rpartition("@")
    return model_id, revision or None


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        st = path.stat()
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        if st.st_size <= SMALL_FILE_BYTES or path.suffix in _CONTENT_SUFFIXES:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cached_commit(model_id: str, revision: str | None) -> str | None:
    """The commit of `model_id` at `revision` in the local HF cache (no network), if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an invalid repo id, no hub library: unresolved
        return None
    if isinstance(found, str):
        commit = Path(found).parent.name
        return commit if _COMMIT.fullmatch(commit) else None
    return None


def model_fingerprint(model_id_or_path: str, revision: str | None = None) -> str:
    """What identifies the weights behind `model_id_or_path` (see the module docstring):
    `local:<digest>` for a folder, `rev:<revision>=<commit or "unresolved">` for a hub id."""
    folder = Path(model_id_or_path)
    if folder.is_dir():
        return f"local:{_folder_digest(folder)}"
    if revision and _COMMIT.fullmatch(revision):
        return f"rev:{revision}"
    commit = _cached_commit(str(model_id_or_path), revision)
    return f"rev:{revision or 'main'}={commit or 'unresolved'}"


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), for less padding."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _runtime() -> Any:
    from components.accel import detect_runtime

    return detect_runtime()


def _load(auto_cls: Any, model_id: str, revision: str | None = None) -> Any:
    """Load a model with the runtime's dtype and attention (falling back to the default
    attention when the architecture does not support the requested one)."""
    rt = _runtime()
    extra = {"revision": revision} if revision else {}
    try:
        model = auto_cls.from_pretrained(model_id, dtype=rt.dtype,
                                         attn_implementation=rt.attn_implementation, **extra)
    except (ValueError, ImportError) as exc:
        log.warning("%s: %s attention unavailable (%s); using the default", model_id,
                    rt.attn_implementation, exc)
        model = auto_cls.from_pretrained(model_id, dtype=rt.dtype, **extra)
    model.to(rt.device).eval()
    log.info("translation model %s on %s", model_id, rt.describe())
    return model


class _HFTranslator:
    """Shared batching: subclasses provide `_encode_inputs`, `_generate_batch`."""

    backend = "hf"

    def __init__(self, model_id_or_path: str, *, batch_size: int = 16,
                 max_new_tokens: int = 256, max_source_tokens: int = 512,
                 revision: str | None = None):
        self.model_id, self.revision = split_revision(str(model_id_or_path), revision)
        self.fingerprint = model_fingerprint(self.model_id, self.revision)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_source_tokens = max_source_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self.batches_seen: list[list[int]] = []  # index lists of the last call (for tests)
        self.generated_tokens = 0

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            extra = {"revision": self.revision} if self.revision else {}
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_id, **extra)
            self._setup_tokenizer(self._tokenizer)
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._load_model()
        return self._model

    @property
    def model_key(self) -> str:
        """`Identity.model`: the model id and the fingerprint of its weights."""
        return f"{self.model_id}@{self.fingerprint}"

    def _setup_tokenizer(self, tok: Any) -> None:  # pragma: no cover - overridden
        pass

    def _load_model(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _generate_batch(self, texts: list[str], budget: int) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def translate_batch(self, texts: list[str]) -> list[str]:
        """Translate `texts` (length-sorted batches, greedy); outputs in input order."""
        if not texts:
            return []
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)
                   ["input_ids"]]
        out: list[str] = [""] * len(texts)
        self.batches_seen = []
        for idx in length_sorted_batches(lengths, self.batch_size):
            self.batches_seen.append(idx)
            budget = max(1, min(self.max_new_tokens, 3 * max(lengths[i] for i in idx) + 16))
            for i, text in zip(idx, self._generate_batch([texts[i] for i in idx], budget),
                               strict=True):
                out[i] = text
        return out


class Seq2SeqTranslator(_HFTranslator):
    """Encoder-decoder MT through `AutoModelForSeq2SeqLM` (see the module docstring)."""

    backend = "hf_seq2seq"

    def __init__(self, model_id_or_path: str, src_lang: str = "en", tgt_lang: str = "pt-PT",
                 **kwargs: Any):
        super().__init__(model_id_or_path, **kwargs)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.forced_bos_token_id: int | None = None
        self.target_prefix = ""
        self.identity = Identity(self.backend, self.model_key,
                                 f"{src_lang}->{tgt_lang}|max_new_tokens={self.max_new_tokens}"
                                 f"|max_source_tokens={self.max_source_tokens}")

    def _token_id(self, tok: Any, token: str) -> int | None:
        if token not in tok.get_vocab():
            return None
        return tok.convert_tokens_to_ids(token)

    def _setup_tokenizer(self, tok: Any) -> None:
        nllb_src, nllb_tgt = NLLB_CODES.get(self.src_lang), NLLB_CODES.get(self.tgt_lang)
        iso_tgt = ISO_CODES.get(self.tgt_lang, self.tgt_lang)
        for code in (nllb_tgt, f"__{iso_tgt}__"):
            if code and (tid := self._token_id(tok, code)) is not None:
                self.forced_bos_token_id = tid
                if hasattr(tok, "src_lang"):
                    src = nllb_src if code == nllb_tgt else ISO_CODES.get(self.src_lang,
                                                                          self.src_lang)
                    tok.src_lang = src
                    if code != nllb_tgt and hasattr(tok, "tgt_lang"):
                        tok.tgt_lang = iso_tgt
                break
        else:
            for token in MARIAN_TARGET_TOKENS.get(self.tgt_lang, ()):
                if self._token_id(tok, token) is not None:
                    self.target_prefix = f"{token} "
                    break

    def _load_model(self) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return _load(AutoModelForSeq2SeqLM, self.model_id, self.revision)

    def _generate_batch(self, texts: list[str], budget: int) -> list[str]:
        import torch

        tok, model = self.tokenizer, self.model
        enc = tok([self.target_prefix + t for t in texts], return_tensors="pt", padding=True,
                  truncation=True, max_length=self.max_source_tokens).to(model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": budget, "do_sample": False,
                                  "num_beams": 1}
        if self.forced_bos_token_id is not None:
            kwargs["forced_bos_token_id"] = self.forced_bos_token_id
        with torch.inference_mode():
            gen = model.generate(**enc, **kwargs)
        self.generated_tokens += int((gen != (tok.pad_token_id or 0)).sum())
        return [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]


_LABEL = re.compile(r"^\s*(?:tradução|translation|pt-PT|português europeu)\s*:\s*",
                    re.IGNORECASE)
_QUOTES = (('"', '"'), ("“", "”"), ("«", "»"), ("'", "'"), ("`", "`"))


def clean_llm_output(text: str, source: str) -> str:
    """Strip an LLM answer down to the translation.

    Removes surrounding whitespace, a leading "Tradução:"/"Translation:" label, quotes that
    wrap the whole answer (when the source was not quoted) and, for a one-line source,
    anything after the first blank line (notes the model added).
    """
    out = text.strip()
    out = _LABEL.sub("", out, count=1).strip()
    if "\n" not in source.strip() and "\n\n" in out:
        out = out.split("\n\n", 1)[0].strip()
    for left, right in _QUOTES:
        if (len(out) >= 2 and out.startswith(left) and out.endswith(right)
                and not source.strip().startswith(left)):
            out = out[len(left):-len(right)].strip()
            break
    return out


class LLMTranslator(_HFTranslator):
    """Instruction-LLM translation through `AutoModelForCausalLM` (see the module docstring)."""

    backend = "hf_llm"

    def __init__(self, model_id_or_path: str, prompt_template: str | None = None, *,
                 source_lang: str = "en", target_lang: str = "pt-PT", **kwargs: Any):
        super().__init__(model_id_or_path, **kwargs)
        self.prompt_template = prompt_template or DEFAULT_PROMPT
        if "{text}" not in self.prompt_template:
            from components.errors import ConfigError

            raise ConfigError("translate.prompt_template must contain '{text}'")
        self.source_lang, self.target_lang = source_lang, target_lang
        digest = hashlib.sha256(self.prompt_template.encode()).hexdigest()[:16]
        self.identity = Identity(self.backend, self.model_key,
                                 f"prompt:{digest}|max_new_tokens={self.max_new_tokens}")

    def _setup_tokenizer(self, tok: Any) -> None:
        tok.padding_side = "left"  # generation continues the right end of every row
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_for(self, text: str) -> str:
        """The full model input for one source text (chat template applied if any)."""
        content = self.prompt_template.format(
            text=text, source_name=LANG_NAMES.get(self.source_lang, self.source_lang),
            target_name=LANG_NAMES.get(self.target_lang, self.target_lang))
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False,
                add_generation_prompt=True)
        return content

    def _load_model(self) -> Any:
        from transformers import AutoModelForCausalLM

        return _load(AutoModelForCausalLM, self.model_id, self.revision)

    def _generate_batch(self, texts: list[str], budget: int) -> list[str]:
        import torch

        tok, model = self.tokenizer, self.model
        # a chat template already starts with BOS; a plain prompt gets the tokenizer's
        # no truncation: cutting a prompt would cut its instruction or its generation cue
        enc = tok([self.prompt_for(t) for t in texts], return_tensors="pt", padding=True,
                  add_special_tokens=not self.uses_chat_template).to(model.device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=budget, do_sample=False,
                                 num_beams=1, pad_token_id=tok.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        self.generated_tokens += int((new != tok.pad_token_id).sum())
        answers = tok.batch_decode(new, skip_special_tokens=True)
        return [clean_llm_output(a, t) for a, t in zip(answers, texts, strict=True)]
