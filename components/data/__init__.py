"""The data plane's embedded dataset: a deterministic synthetic pt-PT multimodal set.

`components.data.synthetic.generate(out_dir, settings)` writes `native/` (pt-PT records with
verifiable answers), `seed_en/` (a small English seed set plus its translation memory) and
`README.md` into the data directory. Nothing is downloaded.
"""

from components.data.synthetic import FAMILIES, generate

__all__ = ["FAMILIES", "generate"]
