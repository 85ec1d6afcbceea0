"""Machine translation into European Portuguese (pt-PT), in small modules.

- `backends`: the `Translator` interface, the translation-memory backend, structure
  protection around model backends, and `make_translator(settings)`;
- `hf`: transformers backends, `Seq2SeqTranslator` (NLLB / M2M / Marian / T5) and
  `LLMTranslator` (Gemma 3, TranslateGemma, Tower, EuroLLM style prompts);
- `protect`: masking of `<image>` tokens, numbers, option letters, code and boxes;
- `cache`: the content-addressed SQLite cache that makes re-runs and resumes cheap;
- `quality`: the filter (length ratio, copies, placeholders, numbers, language ID,
  pt-PT variety) whose rejects go to quarantine with reasons;
- `engine`: `translate_file`, one file through cache -> backend -> filter -> records;
- `shards`: split a file into shards and merge their outputs (the Prefect flow maps them).

The pipeline stage is `components.translate:run`; nothing here imports Prefect.
"""
