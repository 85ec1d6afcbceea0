"""The amalia-vl model: tokenizer, LlavaNext assembly, save/load and the freezing table.

- `tokenizer`: a byte-level BPE tokenizer trained on the run's own pt-PT texts, with the
  chat template shared by tokenizer and processor.
- `build`: builds the tiny LlavaNext (SigLIP tower + Llama LM) or assembles it from
  pretrained parts; save/load through the Auto classes; image-token agreement check.
- `freeze`: the one table of trainable parts (connector / language_model / vision_tower).
"""
