"""METEOR without Java: METEOR 1.0 with exact and Porter-stem matching, standard parameters.

lmms-eval's COCO caption and RefCOCO region-description tasks report `METEOR` through
pycocoevalcap, which runs the Java METEOR 1.5 jar (`-l en -norm`). We keep our own
implementation of the original METEOR (Banerjee & Lavie 2005, "METEOR: An Automatic Metric
for MT Evaluation with Improved Correlation with Human Judgments"; Lavie & Agarwal 2007):

- tokens: `captions.tokenize` (lower-cased words and numbers, punctuation dropped);
- alignment, in stages: exact token matches, then matches of Porter stems among the tokens
  still unmatched; within a stage the alignment has the most matches and, among those, the
  fewest chunks (runs of matches adjacent and in the same order in both strings), found by
  a beam search over the hypothesis (width 64; exhaustive for captions of usual length);
- P = m / |hypothesis|, R = m / |reference|, Fmean = 10 P R / (R + 9 P) (alpha 0.9),
  penalty = 0.5 (chunks / m)^3 (gamma 0.5, beta 3), score = Fmean (1 - penalty);
- several references: the best-scoring one; the corpus value, like METEOR's own aggregate
  line that pycocoevalcap reads, is computed from the summed statistics (matches, lengths,
  chunks) of every item's best reference, not as the mean of item scores.

How it differs from Java METEOR 1.5 as pycocoevalcap calls it: no synonym (WordNet) or
paraphrase stages (English resources, which seldom fire on pt-PT text), 1.5's tuned English
parameters (alpha 0.85, beta 0.2, gamma 0.6, delta 0.75 with function-word weighting and
module weights 1 / 0.6 / 0.8 / 0.6) are not used, and its `-norm` tokenizer is replaced by
ours. So values are not interchangeable with published METEOR numbers; they move the same
way (identical captions score close to 1, unrelated ones 0) and need no Java. Both scoring
modes compute the same METEOR.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from components.metrics.base import CorpusResult

ALPHA, BETA, GAMMA = 0.9, 3.0, 0.5
BEAM = 64

# ---------------------------------------------------------------- Porter stemmer (1980)

_VOWELS = frozenset("aeiou")


def _consonant(word: str, i: int) -> bool:
    ch = word[i]
    if ch in _VOWELS:
        return False
    if ch == "y":
        return i == 0 or not _consonant(word, i - 1)
    return True


def _measure(stem: str) -> int:
    """m in [C](VC)^m[V]."""
    forms = "".join("c" if _consonant(stem, i) else "v" for i in range(len(stem)))
    return len(re.findall(r"v+c+", forms))


def _has_vowel(stem: str) -> bool:
    return any(not _consonant(stem, i) for i in range(len(stem)))


def _double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _consonant(word, len(word) - 1)


def _cvc(word: str) -> bool:
    return (len(word) >= 3 and _consonant(word, len(word) - 3)
            and not _consonant(word, len(word) - 2) and _consonant(word, len(word) - 1)
            and word[-1] not in "wxy")


def _replace(word: str, rules: list[tuple[str, str]], min_m: int) -> str:
    for suffix, repl in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + repl if _measure(stem) > min_m else word
    return word


_STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"),
          ("izer", "ize"), ("abli", "able"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
          ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"),
          ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"),
          ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble")]
_STEP3 = [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
          ("ful", ""), ("ness", "")]
_STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
          "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize"]


@lru_cache(maxsize=65536)
def porter_stem(word: str) -> str:
    """The Porter (1980) stem of a lower-case word (words of 1-2 letters unchanged)."""
    if len(word) <= 2 or not word.isalpha() or not word.isascii():
        return word
    # step 1a
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("ies"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    # step 1b
    extra = False
    if word.endswith("eed"):
        if _measure(word[:-3]) > 0:
            word = word[:-1]
    else:
        for suffix in ("ed", "ing"):
            if word.endswith(suffix) and _has_vowel(word[: -len(suffix)]):
                word = word[: -len(suffix)]
                extra = True
                break
    if extra:
        if word.endswith(("at", "bl", "iz")):
            word += "e"
        elif _double_consonant(word) and word[-1] not in "lsz":
            word = word[:-1]
        elif _measure(word) == 1 and _cvc(word):
            word += "e"
    # step 1c
    if word.endswith("y") and _has_vowel(word[:-1]):
        word = word[:-1] + "i"
    word = _replace(word, _STEP2, 0)
    word = _replace(word, _STEP3, 0)
    # step 4
    for suffix in _STEP4:
        if word.endswith(suffix):
            stem = word[: -len(suffix)]
            if _measure(stem) > 1 and (suffix != "ion" or stem.endswith(("s", "t"))):
                word = stem
            break
    # step 5
    if word.endswith("e"):
        stem = word[:-1]
        m = _measure(stem)
        if m > 1 or (m == 1 and not _cvc(stem)):
            word = stem
    if _measure(word) > 1 and _double_consonant(word) and word.endswith("l"):
        word = word[:-1]
    return word


# ---------------------------------------------------------------- alignment


def _chunks(pairs: list[tuple[int, int]]) -> int:
    """Runs of matches adjacent and in order in both strings."""
    if not pairs:
        return 0
    pairs = sorted(pairs)
    chunks = 1
    for (h0, r0), (h1, r1) in zip(pairs, pairs[1:], strict=False):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return chunks


def _stage(hyp_keys: list[str], ref_keys: list[str], fixed: list[tuple[int, int]],
           free_h: list[int], free_r: set[int]) -> list[tuple[int, int]]:
    """Add matches of equal keys among the free positions: most matches, fewest chunks."""
    beams: list[tuple[list[tuple[int, int]], frozenset[int]]] = [(list(fixed), frozenset())]
    for h in free_h:
        options = [r for r in free_r if ref_keys[r] == hyp_keys[h]]
        if not options:
            continue
        grown = []
        for pairs, used in beams:
            grown.append((pairs, used))  # leave h unmatched
            for r in options:
                if r not in used:
                    grown.append((pairs + [(h, r)], used | {r}))
        grown.sort(key=lambda b: (-len(b[0]), _chunks(b[0]), sorted(b[0])))
        beams = grown[:BEAM]
    return beams[0][0]


def align(hyp: list[str], ref: list[str]) -> tuple[int, int]:
    """(matches, chunks) of the staged exact + stem alignment."""
    pairs: list[tuple[int, int]] = []
    for keys in (lambda t: t, porter_stem):
        hk = [keys(t) for t in hyp]
        rk = [keys(t) for t in ref]
        used_h = {h for h, _ in pairs}
        used_r = {r for _, r in pairs}
        free_h = [h for h in range(len(hyp)) if h not in used_h]
        free_r = {r for r in range(len(ref)) if r not in used_r}
        pairs = _stage(hk, rk, pairs, free_h, free_r)
    return len(pairs), _chunks(pairs)


def _score(matches: int, chunks: int, hyp_len: int, ref_len: int) -> float:
    if matches == 0 or hyp_len == 0 or ref_len == 0:
        return 0.0
    p, r = matches / hyp_len, matches / ref_len
    fmean = p * r / (ALPHA * p + (1 - ALPHA) * r)
    penalty = GAMMA * (chunks / matches) ** BETA
    return fmean * (1 - penalty)


def _best(prediction: str, answers: list[str]) -> tuple[float, tuple[int, int, int, int]]:
    from components.metrics.captions import tokenize

    hyp = tokenize(prediction)
    best = (0.0, (0, 0, len(hyp), len(tokenize(answers[0])) if answers else 0))
    for answer in answers:
        ref = tokenize(answer)
        m, ch = align(hyp, ref)
        score = _score(m, ch, len(hyp), len(ref))
        if score > best[0]:
            best = (score, (m, ch, len(hyp), len(ref)))
    return best


def meteor(prediction: str, answers: list[str], mode: str = "pt") -> float:
    """METEOR 1.0 of one caption against its references (the best one)."""
    return _best(prediction, answers)[0]


def meteor_corpus(predictions: list[str], answers: list[list[str]],
                  extras: list[dict[str, Any]] | None = None, mode: str = "pt") -> CorpusResult:
    """Corpus METEOR from the summed statistics; per-item METEOR in `scores`."""
    scores: list[float | None] = []
    totals = [0, 0, 0, 0]
    for p, refs in zip(predictions, answers, strict=True):
        score, stats = _best(p, refs)
        scores.append(score)
        totals = [a + b for a, b in zip(totals, stats, strict=True)]
    return CorpusResult(_score(*totals), scores)
