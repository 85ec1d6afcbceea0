"""The `Metric` contract shared by every scorer in `components.metrics`.

A metric scores one prediction against its reference answers (`score_one`) and folds the
per-item scores into one number (`aggregate`, the mean by default). Corpus-level metrics
(BLEU, CIDEr, POPE F1, MME) cannot be written as a mean of per-item scores, so they also
carry a `corpus` function; `Metric.evaluate` is the one entry point the file scorer uses and
works for both kinds.

Two scoring modes, always both available (`MODES`):
- `lmms`: the behaviour of the reference scorer of lmms-eval (the pinned 0.7.3 release,
  `lmms_eval/tasks/<task>/utils.py` and `lmms_eval/api/metrics.py`), quirks included, so a
  number is comparable with published tables. The generation is stripped first, as every
  lmms-eval model wrapper (`llava_hf` included) returns it stripped.
- `pt` (the default): the same scorer with our pt-PT extensions layered on top (decimal
  comma, sim/não, Portuguese articles before an option letter, ...) and the documented
  lmms-eval bugs fixed. A metric implements both in one function that takes `mode`; the pt
  mode is the lmms steps plus extra steps, never a second copy.

Per-item extra fields (`options`, `category`, `question_id`, `profile`, ...) reach a metric
only when it names them in `fields`; anything else is dropped, so a predictions file may
carry more than the metric needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.errors import AmaliaError

ScoreOne = Callable[..., float]
Aggregate = Callable[[list[float]], float]

LMMS, PT = "lmms", "pt"
MODES: tuple[str, ...] = (LMMS, PT)
DEFAULT_MODE = PT


class UnknownModeError(AmaliaError, ValueError):
    """A scoring mode that is not in `MODES`."""


def check_mode(mode: str) -> str:
    """`mode` itself when it is a known mode, else `UnknownModeError`."""
    if mode not in MODES:
        raise UnknownModeError(f"unknown scoring mode {mode!r}", hint="known: " + ", ".join(MODES))
    return mode


@dataclass(frozen=True)
class CorpusResult:
    """Result of scoring a whole set of predictions.

    `score` is the corpus value; `scores` has one entry per item in input order (None where a
    per-item value means nothing); `details` holds secondary numbers (precision, per-subtask
    scores, ...) for summaries.
    """

    score: float
    scores: list[float | None]
    details: dict[str, Any] = field(default_factory=dict)


Corpus = Callable[..., CorpusResult]


def mean(values: list[float]) -> float:
    """Arithmetic mean; 0.0 for an empty list (nothing scored, nothing right)."""
    return sum(values) / len(values) if values else 0.0


def as_generation(prediction: str, mode: str) -> str:
    """What the reference scorer receives: lmms-eval's model wrappers strip the text."""
    return prediction.strip() if mode == LMMS else prediction


@dataclass(frozen=True)
class Metric:
    """One registered metric.

    - `score_one(prediction, answers, mode=..., **kw) -> float`: per-item score, `answers` a
      non-empty list of reference strings; `kw` restricted to `fields`.
    - `aggregate(list[float]) -> float`: how per-item scores combine (mean by default).
    - `corpus(predictions, answers, extras, mode=...) -> CorpusResult`: set for corpus-level
      metrics, whose value is not the aggregate of `score_one`.
    - `higher_is_better`: always True here; kept explicit for promotion gates.
    - `best`: the highest score the metric can give (1 for accuracies, F-scores, ANLS and
      BLEU; 10 for CIDEr-D; 2800 for MME); task summaries divide by it (`score_scale`).
    - `reference`: the lmms-eval scorer its `lmms` mode reproduces.
    """

    name: str
    description: str
    score_one: ScoreOne
    aggregate: Aggregate = mean
    corpus: Corpus | None = None
    fields: tuple[str, ...] = ()
    higher_is_better: bool = True
    best: float = 1.0
    reference: str = ""

    @property
    def is_corpus(self) -> bool:
        return self.corpus is not None

    def pick(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The subset of `extra` this metric accepts as keyword arguments."""
        return {k: extra[k] for k in self.fields if k in extra and extra[k] is not None}

    def score(self, prediction: str, answers: Sequence[str] | str, *, mode: str = DEFAULT_MODE,
              **kw: Any) -> float:
        """`score_one` with the answer list normalised and unknown keywords dropped."""
        check_mode(mode)
        refs = [answers] if isinstance(answers, str) else list(answers)
        return float(self.score_one(as_generation(prediction, mode), refs, mode=mode,
                                    **self.pick(kw)))

    def evaluate(
        self,
        predictions: Sequence[str],
        answers: Sequence[Sequence[str]],
        extras: Sequence[Mapping[str, Any]] | None = None,
        *,
        mode: str = DEFAULT_MODE,
    ) -> CorpusResult:
        """Score a whole set: the corpus function when there is one, else mean of items."""
        check_mode(mode)
        if len(predictions) != len(answers):
            raise ValueError(
                f"{self.name}: {len(predictions)} predictions but {len(answers)} answer lists"
            )
        extras = list(extras) if extras is not None else [{} for _ in predictions]
        refs = [[a] if isinstance(a, str) else list(a) for a in answers]
        if self.corpus is not None:
            preds = [as_generation(p, mode) for p in predictions]
            return self.corpus(preds, refs, [self.pick(e) for e in extras], mode=mode)
        scores = [self.score(p, r, mode=mode, **e)
                  for p, r, e in zip(predictions, refs, extras, strict=True)]
        return CorpusResult(score=self.aggregate(scores), scores=list(scores))
