"""The `Metric` contract shared by every scorer in `components.metrics`.

A metric scores one prediction against its reference answers (`score_one`) and folds the
per-item scores into one number (`aggregate`, the mean by default). Corpus-level metrics
(BLEU, CIDEr, POPE F1, MME) cannot be written as a mean of per-item scores, so they also
carry a `corpus` function; `Metric.evaluate` is the one entry point the file scorer uses and
works for both kinds.

Per-item extra fields (`options`, `category`, `question_id`, ...) reach a metric only when it
names them in `fields`; anything else is dropped, so a predictions file may carry more than
the metric needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ScoreOne = Callable[..., float]
Aggregate = Callable[[list[float]], float]


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


Corpus = Callable[[list[str], list[list[str]], list[dict[str, Any]]], CorpusResult]


def mean(values: list[float]) -> float:
    """Arithmetic mean; 0.0 for an empty list (nothing scored, nothing right)."""
    return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class Metric:
    """One registered metric.

    - `score_one(prediction, answers, **kw) -> float`: per-item score, `answers` a non-empty
      list of reference strings; `kw` restricted to `fields`.
    - `aggregate(list[float]) -> float`: how per-item scores combine (mean by default).
    - `corpus(predictions, answers, extras) -> CorpusResult`: set for corpus-level metrics,
      whose value is not the aggregate of `score_one`.
    - `higher_is_better`: always True here; kept explicit for promotion gates.
    - `best`: the highest score the metric can give (1 for accuracies, F-scores, ANLS and
      BLEU; 10 for CIDEr-D; 2800 for MME); task summaries divide by it (`score_scale`).
    """

    name: str
    description: str
    score_one: ScoreOne
    aggregate: Aggregate = mean
    corpus: Corpus | None = None
    fields: tuple[str, ...] = ()
    higher_is_better: bool = True
    best: float = 1.0

    @property
    def is_corpus(self) -> bool:
        return self.corpus is not None

    def pick(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The subset of `extra` this metric accepts as keyword arguments."""
        return {k: extra[k] for k in self.fields if k in extra and extra[k] is not None}

    def score(self, prediction: str, answers: Sequence[str] | str, **kw: Any) -> float:
        """`score_one` with the answer list normalised and unknown keywords dropped."""
        refs = [answers] if isinstance(answers, str) else list(answers)
        return float(self.score_one(prediction, refs, **self.pick(kw)))

    def evaluate(
        self,
        predictions: Sequence[str],
        answers: Sequence[Sequence[str]],
        extras: Sequence[Mapping[str, Any]] | None = None,
    ) -> CorpusResult:
        """Score a whole set: the corpus function when there is one, else mean of items."""
        if len(predictions) != len(answers):
            raise ValueError(
                f"{self.name}: {len(predictions)} predictions but {len(answers)} answer lists"
            )
        extras = list(extras) if extras is not None else [{} for _ in predictions]
        refs = [[a] if isinstance(a, str) else list(a) for a in answers]
        if self.corpus is not None:
            return self.corpus(list(predictions), refs, [self.pick(e) for e in extras])
        scores = [self.score(p, r, **e) for p, r, e in zip(predictions, refs, extras, strict=True)]
        return CorpusResult(score=self.aggregate(scores), scores=list(scores))
