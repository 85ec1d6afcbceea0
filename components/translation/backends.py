"""Translation backends behind one interface, and the factory the stage uses.

A `Translator` turns a list of source texts into a list of targets of the same length and
order; an empty string means "could not translate this one" (never a pass-through of the
source). Each translator has an `identity`: the `(backend, model, prompt)` triple that,
with the source text and `CACHE_VERSION`, keys the translation cache. For the HF backends
`model` is `<id>@<fingerprint of the weights>` (a local folder's file digest, a hub id's
revision and cached commit; `hf.model_fingerprint`), so retrained or updated weights never
reuse stale translations.

Backends (`translate.backend`):
- `memory`: exact-match lookups in a translation memory (JSONL or parquet with string
  columns `source`, `target`), the embedded default; its model id is the memory's content
  digest, so an edited memory never reuses stale cache entries;
- `hf_seq2seq`: an encoder-decoder MT model (NLLB / M2M / Marian / T5 style) through
  transformers (`components.translation.hf.Seq2SeqTranslator`);
- `hf_llm`: an instruction LLM with a translation prompt (Gemma 3, TranslateGemma, Tower,
  EuroLLM style) (`components.translation.hf.LLMTranslator`).

HF backends are wrapped in `ProtectedTranslator`, which masks structure (`protect.py`)
before the model sees a text and restores it after.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from components.errors import ConfigError, DataQualityError, MissingInputError
from components.records import iter_jsonl
from components.settings import Settings, TranslateSettings
from components.translation import protect

CACHE_VERSION = "1"  # bump when masking/cleaning changes what a backend returns


@dataclass(frozen=True)
class Identity:
    """What produced a translation: part of every cache key."""

    backend: str
    model: str
    prompt: str = ""

    def digest(self) -> str:
        blob = json.dumps([self.backend, self.model, self.prompt, CACHE_VERSION])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@runtime_checkable
class Translator(Protocol):
    """Translates a batch of texts; an empty string means "could not translate this one"."""

    def translate_batch(self, texts: list[str]) -> list[str]: ...


def identity_of(translator: Translator) -> Identity:
    """A translator's identity (`Identity("custom", class name)` when it declares none)."""
    ident = getattr(translator, "identity", None)
    return ident if isinstance(ident, Identity) else Identity("custom",
                                                              type(translator).__name__)


# ----------------------------------------------------------------------------- memory


def load_memory(path: Path) -> dict[str, str]:
    """`source -> target` from a JSONL or parquet translation memory.

    Raises `MissingInputError` when absent and `DataQualityError` on a row without string
    `source`/`target` or on two different targets for one source.
    """
    if not path.is_file():
        raise MissingInputError(f"translation memory {path} not found",
                                "run: amalia-vl data generate  (or dvc pull)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["source", "target"]).to_pydict()
        rows = enumerate(({"source": s, "target": t}
                          for s, t in zip(table["source"], table["target"], strict=True)),
                         start=1)
    else:
        rows = iter_jsonl(path)
    memory: dict[str, str] = {}
    for lineno, row in rows:
        src, tgt = row.get("source"), row.get("target")
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise DataQualityError(f"{path}:{lineno}: needs string 'source' and 'target'")
        if memory.setdefault(src, tgt) != tgt:
            raise DataQualityError(f"{path}:{lineno}: conflicting targets for {src!r}")
    return memory


def memory_digest(memory: dict[str, str]) -> str:
    blob = json.dumps(sorted(memory.items()), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class MemoryTranslator:
    """Exact-match lookups in a translation memory; a miss is an empty string."""

    def __init__(self, memory: dict[str, str]):
        self.memory = memory
        self.identity = Identity("memory", f"sha256:{memory_digest(memory)}")

    @classmethod
    def from_jsonl(cls, path: Path) -> MemoryTranslator:
        return cls(load_memory(path))

    from_file = from_jsonl

    def translate_batch(self, texts: list[str]) -> list[str]:
        return [self.memory.get(t, "") for t in texts]


def memory_path(settings: Settings) -> Path:
    """`translate.memory_path`, relative to `data_dir` unless absolute."""
    return Path(settings.data_dir) / settings.translate.memory_path


# ----------------------------------------------------------------------------- protection


class ProtectedTranslator:
    """Masks structure before `inner` translates and restores it after (`protect.py`).

    Texts with nothing to translate (numbers, option letters, tags only) never reach the
    model: their target is the source with numbers localised.
    """

    def __init__(self, inner: Translator, decimal_comma: bool = True):
        self.inner = inner
        self.decimal_comma = decimal_comma
        base = identity_of(inner)
        self.identity = Identity(base.backend, base.model,
                                 f"{base.prompt}|protect:decimal_comma={decimal_comma}")

    def translate_batch(self, texts: list[str]) -> list[str]:
        masked = [protect.protect(t) for t in texts]
        todo = [i for i, m in enumerate(masked) if m.translatable]
        outputs = self.inner.translate_batch([masked[i].masked for i in todo]) if todo else []
        if len(outputs) != len(todo):
            raise DataQualityError(f"translator returned {len(outputs)} texts for {len(todo)}")
        result = [protect.restore(m.masked, m, self.decimal_comma) for m in masked]
        for i, out in zip(todo, outputs, strict=True):
            result[i] = protect.restore(out, masked[i], self.decimal_comma) if out.strip() else ""
        return result


# ----------------------------------------------------------------------------- factory


def make_translator(settings: Settings) -> Translator:
    """The translator named by `settings.translate.backend` (models load lazily)."""
    cfg: TranslateSettings = settings.translate
    if cfg.backend == "memory":
        return MemoryTranslator.from_file(memory_path(settings))
    if not cfg.model_id:
        raise ConfigError(f"translate.backend={cfg.backend} needs translate.model_id",
                          "set translate.model_id to a save_pretrained folder or a hub id "
                          "(org/name@revision pins a revision)")
    from components.translation.hf import LLMTranslator, Seq2SeqTranslator

    common = {"batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens,
              "max_source_tokens": cfg.max_source_tokens}
    inner: Translator
    if cfg.backend == "hf_seq2seq":
        inner = Seq2SeqTranslator(cfg.model_id, cfg.source_lang, cfg.target_lang, **common)
    else:
        inner = LLMTranslator(cfg.model_id, cfg.prompt_template, source_lang=cfg.source_lang,
                              target_lang=cfg.target_lang, **common)
    if not cfg.protect_structure:
        return inner
    return ProtectedTranslator(inner, decimal_comma=cfg.decimal_comma)
