"""Caption metrics as computed by the COCO caption evaluation (coco-caption / pycocoevalcap).

Re-implemented in pure Python from the coco-caption scorers (Chen et al. 2015, "Microsoft
COCO Captions: Data Collection and Evaluation Server"), which lmms-eval's coco/nocaps/flickr
and refcoco tasks call unchanged, so both scoring modes compute the same numbers (METEOR,
Java upstream, is our own in `meteor.py`). pycocoevalcap itself is not a runtime
dependency: its only PyPI release (1.2) is a 105 MB wheel (METEOR/SPICE jars and paraphrase
tables) that also pulls pycocotools, for three scorers of a few dozen lines each.
tests/test_metrics.py pins values pycocoevalcap 1.2 produced and compares live with it (a
dev dependency; its BLEU, CIDEr and ROUGE need no Java).
- `bleu4`: coco's `BleuScorer` (Papineni et al. 2002) with `option="closest"`: clipped
  n-gram counts against the max count over references, corpus-level n-gram precisions with
  coco's epsilons (tiny = 1e-15 in the numerator, small = 1e-9 in the denominator), brevity
  penalty exp(1 - r/c) from the summed closest reference lengths (ties to the shorter), no
  smoothing. This is the COCO BLEU, not sacrebleu's; on the same tokens they agree to ~1e-9
  (sacrebleu with tokenize="none", smooth_method="none"). Per item: the same formula on that
  item alone (sentence BLEU-4, often 0 without smoothing); the corpus value is not their mean.
- `rouge_l`: coco's `Rouge` (Lin 2004): per item, LCS-based precision and recall against
  every reference (LCS length by rapidfuzz's `LCSseq` on the token lists), the max of each,
  then F = (1 + b^2) P R / (R + b^2 P) with beta = 1.2; corpus value = mean over items.
- `cider`: coco's `CiderScorer`, i.e. CIDEr-D (Vedantam et al. 2015): n-grams 1..4 weighted
  by tf-idf, with document frequencies counted over the references of the scored set and
  idf = log(#items) - log(max(1, df)); per n, cosine similarity of the candidate with each
  reference where candidate weights are clipped at the reference's (min(h, r) * r), times a
  Gaussian length penalty exp(-(l_c - l_r)^2 / (2 * 6^2)) (lengths as coco counts them: the
  number of bigrams), averaged over n and references, times 10. A zero norm leaves that
  n-gram similarity at 0, as pycocoevalcap does. Per item: the item's CIDEr-D; corpus value
  = their mean. CIDEr depends on the whole set (idf), so one item alone always scores 0.

Tokenisation: coco runs the Stanford PTB tokenizer (Java) and drops punctuation tokens. We
do not ship Java, so `tokenize` is a regex stand-in: NFC, lower-case, tokens are numbers
("2.5", "1,000"), or words with inner hyphens/apostrophes kept ("guarda-chuva", "d'água");
every other punctuation character is dropped. It differs from PTB on clitics ("don't" is one
token here, "do n't" in PTB), so scores can differ from the official server in the third
decimal on English text; on pre-tokenised lower-case text without punctuation they are equal.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from rapidfuzz.distance import LCSseq

from components.metrics.base import CorpusResult
from components.metrics.text import nfc

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|\w+(?:[-'’]\w+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased word and number tokens; punctuation dropped (PTB stand-in, see module)."""
    return [t.replace("’", "'") for t in _TOKEN.findall(nfc(text).lower())]


def _ngrams(tokens: list[str], n: int = 4) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


# ---------------------------------------------------------------- BLEU (coco)

_TINY = 1e-15
_SMALL = 1e-9


def _bleu_stats(hyp: list[str], refs: list[list[str]], n: int = 4) -> dict[str, Any]:
    max_ref: dict[tuple[str, ...], int] = {}
    for ref in refs:
        for gram, count in _ngrams(ref, n).items():
            max_ref[gram] = max(max_ref.get(gram, 0), count)
    testlen = len(hyp)
    reflen = min((abs(len(r) - testlen), len(r)) for r in refs)[1]
    correct = [0] * n
    for gram, count in _ngrams(hyp, n).items():
        correct[len(gram) - 1] += min(max_ref.get(gram, 0), count)
    guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
    return {"testlen": testlen, "reflen": reflen, "guess": guess, "correct": correct}


def _bleu_from_stats(stats: list[dict[str, Any]], n: int = 4) -> list[float]:
    """BLEU-1..n of the pooled statistics, coco's arithmetic."""
    testlen = sum(s["testlen"] for s in stats)
    reflen = sum(s["reflen"] for s in stats)
    correct = [sum(s["correct"][k] for s in stats) for k in range(n)]
    guess = [sum(s["guess"][k] for s in stats) for k in range(n)]
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    bleus = []
    for nn in range(1, n + 1):
        product = 1.0
        for k in range(nn):
            product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        value = product ** (1.0 / nn)
        if ratio < 1:
            value *= math.exp(1 - 1 / ratio)
        bleus.append(value)
    return bleus


def bleu_corpus(
    predictions: list[str], answers: list[list[str]], extras: list[dict[str, Any]] | None = None,
    mode: str = "pt",
) -> CorpusResult:
    """Corpus BLEU-4 (coco); details carry BLEU-1..4."""
    stats = [
        _bleu_stats(tokenize(p), [tokenize(r) for r in refs])
        for p, refs in zip(predictions, answers, strict=True)
    ]
    bleus = _bleu_from_stats(stats) if stats else [0.0] * 4
    per_item: list[float | None] = [_bleu_from_stats([s])[3] for s in stats]
    details = {f"bleu{k + 1}": b for k, b in enumerate(bleus)}
    return CorpusResult(score=bleus[3], scores=per_item, details=details)


def sentence_bleu4(prediction: str, answers: list[str], mode: str = "pt") -> float:
    """BLEU-4 of one prediction alone (coco arithmetic, no smoothing)."""
    return _bleu_from_stats([_bleu_stats(tokenize(prediction), [tokenize(a) for a in answers])])[3]


# ---------------------------------------------------------------- ROUGE-L (coco)

_BETA = 1.2


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common token subsequence (rapidfuzz's LCSseq)."""
    return int(LCSseq.similarity(a, b))


def rouge_l(prediction: str, answers: list[str], mode: str = "pt") -> float:
    """coco ROUGE-L F-measure (beta 1.2) of one prediction against its references."""
    cand = tokenize(prediction)
    if not cand or not answers:
        return 0.0
    precs, recs = [], []
    for answer in answers:
        ref = tokenize(answer)
        if not ref:
            precs.append(0.0)
            recs.append(0.0)
            continue
        lcs = _lcs(ref, cand)
        precs.append(lcs / len(cand))
        recs.append(lcs / len(ref))
    p, r = max(precs), max(recs)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + _BETA**2) * p * r) / (r + _BETA**2 * p)


# ---------------------------------------------------------------- CIDEr-D (coco)

_SIGMA = 6.0


def cider_scores(predictions: list[str], answers: list[list[str]], n: int = 4) -> list[float]:
    """Per-item CIDEr-D with document frequencies over this set's references."""
    tests = [_ngrams(tokenize(p), n) for p in predictions]
    refs = [[_ngrams(tokenize(r), n) for r in rs] for rs in answers]
    df: Counter[tuple[str, ...]] = Counter()
    for rs in refs:
        df.update({gram for r in rs for gram in r})
    log_n = math.log(float(len(refs))) if refs else 0.0

    def vectorise(counts: Counter[tuple[str, ...]]):
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (log_n - math.log(max(1.0, float(df[gram]))))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:  # sic: coco measures length in bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def sim(vh, vr, nh, nr, lh, lr) -> list[float]:
        delta = float(lh - lr)
        penalty = math.exp(-(delta**2) / (2 * _SIGMA**2))
        out = []
        for k in range(n):
            val = 0.0
            for gram, w in vh[k].items():
                r = vr[k].get(gram, 0.0)
                val += min(w, r) * r
            if nh[k] != 0 and nr[k] != 0:
                val /= nh[k] * nr[k]
            out.append(val * penalty)
        return out

    scores = []
    for test, rs in zip(tests, refs, strict=True):
        vh, nh, lh = vectorise(test)
        total = [0.0] * n
        for r in rs:
            vr, nr, lr = vectorise(r)
            for k, v in enumerate(sim(vh, vr, nh, nr, lh, lr)):
                total[k] += v
        scores.append(sum(total) / n / len(rs) * 10.0)
    return scores


def cider_corpus(
    predictions: list[str], answers: list[list[str]], extras: list[dict[str, Any]] | None = None,
    mode: str = "pt",
) -> CorpusResult:
    """Mean CIDEr-D over the set; per-item CIDEr-D in `scores`."""
    scores = cider_scores(predictions, answers)
    mean = sum(scores) / len(scores) if scores else 0.0
    return CorpusResult(score=mean, scores=list(scores))


def cider_one(prediction: str, answers: list[str], mode: str = "pt") -> float:
    """CIDEr-D of a one-item set: always 0 (idf is log(1) = 0); use the corpus function."""
    return cider_scores([prediction], [answers])[0]
