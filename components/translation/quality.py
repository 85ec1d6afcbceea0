"""Quality filter for translations: every rejected pair gets named reasons.

`QualityFilter(settings).assess(pairs)` takes `{source: target}` (the distinct texts of a
batch) and returns the final targets (pt-BR normalised when `translate.normalise_br`) and
the reasons per source. Reasons, in order:

- `untranslated`: empty target (stops the other checks);
- `copied`: the target equals the source (case/space/punctuation-insensitive) although the
  source has at least `copy_min_words` words outside protected spans;
- `placeholder_lost`: the `<image>` tokens, tags, code, boxes, option letters or URLs of
  the source are not all in the target (or a stray `[[N]]` sentinel is left);
- `number_lost`: the digit runs differ (`12.40` -> `12,40` keeps them);
- `length_ratio`: `len(target) / len(source)` outside `[min_length_ratio,
  max_length_ratio]` for sources of at least `MIN_RATIO_CHARS` characters;
- `wrong_language`: py3langid (its model ships inside the wheel; pinned 0.4.0) gives the
  target language a probability below `langid_min_prob`, judged only on targets with at
  least `langid_min_chars` characters outside protected spans (shorter ones are noise);
- `variety_pt_br`: `components.variety` classifies the target as pt-BR (`unknown`, i.e.
  too little evidence, passes).

Counters for the stage report live in `QualityFilter.stats`; they count distinct
`(source, target)` pairs judged in a run.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from functools import lru_cache
from typing import Any

from components.errors import ConfigError
from components.settings import Settings
from components.translation import protect

log = logging.getLogger(__name__)

MIN_RATIO_CHARS = 12
MEMO_LIMIT = 200_000  # remembered verdicts per run (bounded memory on huge inputs)
IMAGE_TOKEN = "<image>"
LANGID_LIBRARY = "py3langid"
_WORD = re.compile(r"[^\W\d_]{2,}")


@lru_cache(maxsize=1)
def language_identifier() -> Any:
    """py3langid's bundled model with normalised probabilities (loaded once, ~0.4 s)."""
    try:
        from py3langid import langid
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("translate.language_check needs py3langid",
                          "pip install py3langid==0.4.0 (or set translate.language_check: "
                          "false)") from None
    return langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)


def language_probability(text: str, lang: str) -> float:
    """P(`lang`) of `text` (ISO 639-1 code) under py3langid."""
    return dict(language_identifier().rank(text)).get(lang, 0.0)


def load_variety(kind: str) -> tuple[Any, Any] | None:
    """`(detector, normalise_br_to_pt)` from `components.variety`, or None if absent."""
    try:
        from components.variety import make_detector, normalise_br_to_pt
    except ImportError as exc:
        log.warning("pt-PT variety check skipped: components.variety not importable (%s)", exc)
        return None
    return make_detector(kind), normalise_br_to_pt


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def pair_reasons(src: str, tgt: str, settings: Settings) -> list[str]:
    """Structural reasons a single translation `src -> tgt` is unacceptable (no models)."""
    if not tgt.strip():
        return ["untranslated"]
    cfg = settings.translate
    reasons = []
    plain = protect.strip_protected(src)
    if len(_WORD.findall(plain)) >= cfg.copy_min_words and _norm(src) == _norm(tgt):
        reasons.append("copied")
    if (src.count(IMAGE_TOKEN) != tgt.count(IMAGE_TOKEN)
            or protect.structure_signature(src) != protect.structure_signature(tgt)
            or protect.leftover(tgt)):
        reasons.append("placeholder_lost")
    if protect.digit_runs(src) != protect.digit_runs(tgt):
        reasons.append("number_lost")
    if len(src) >= MIN_RATIO_CHARS and not (
        cfg.min_length_ratio <= len(tgt) / len(src) <= cfg.max_length_ratio
    ):
        reasons.append("length_ratio")
    return reasons


class QualityFilter:
    """The checks of the module docstring, with counters for the report."""

    def __init__(self, settings: Settings):
        self.settings = settings
        cfg = settings.translate
        self.target_iso = cfg.target_lang.split("-")[0].lower()
        self.variety = load_variety(cfg.variety_detector) if cfg.variety_check else None
        self.stats: Counter = Counter()
        self._memo: dict[tuple[str, str], tuple[str, list[str]]] = {}

    @property
    def variety_available(self) -> bool:
        return self.variety is not None

    def assess(self, pairs: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
        """Final targets and reasons (empty list = accepted) per source of `pairs`.

        Verdicts are remembered per `(source, target)` for the filter's lifetime (a run), so
        a pair repeated across batches is judged, and counted in `stats`, once.
        """
        todo = {s: t for s, t in pairs.items() if (s, t) not in self._memo}
        if len(self._memo) + len(todo) > MEMO_LIMIT:
            self._memo.clear()
        if todo:
            final, reasons = self._judge(todo)
            for src, tgt in todo.items():
                self._memo[(src, tgt)] = (final[src], reasons[src])
        verdicts = {s: self._memo[(s, t)] for s, t in pairs.items()}
        return ({s: v[0] for s, v in verdicts.items()},
                {s: list(v[1]) for s, v in verdicts.items()})

    def _judge(self, pairs: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
        cfg = self.settings.translate
        final = dict(pairs)
        if self.variety and cfg.normalise_br:
            normalise = self.variety[1]
            for src, tgt in pairs.items():
                if tgt.strip() and src != tgt and (new := normalise(tgt)) != tgt:
                    final[src] = new
                    self.stats["normalised_br"] += 1
        reasons = {src: pair_reasons(src, tgt, self.settings) for src, tgt in final.items()}
        judged = [s for s, r in reasons.items() if r != ["untranslated"]
                  and s != final[s]]  # pass-throughs (numbers, letters) are not judged
        if cfg.language_check:
            for src in judged:
                text = protect.strip_protected(final[src])
                if len(text) < cfg.langid_min_chars:
                    continue
                self.stats["language_checked"] += 1
                if language_probability(text, self.target_iso) < cfg.langid_min_prob:
                    reasons[src].append("wrong_language")
                    self.stats["language_flagged"] += 1
        if self.variety and judged:
            detector = self.variety[0]
            labels = detector.classify([protect.strip_protected(final[s]) for s in judged])
            self.stats["variety_checked"] += len(judged)
            for src, verdict in zip(judged, labels, strict=True):
                if verdict["label"] == "pt-BR":
                    reasons[src].append("variety_pt_br")
                    self.stats["variety_flagged"] += 1
        return final, reasons
