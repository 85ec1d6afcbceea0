"""Short-answer text metrics: exact match, token F1, ANLS, relaxed accuracy, OCRBench, yes/no.

Definitions followed (each a max over the reference answers):
- `exact_match`: normalised string equality (NFC, case, whitespace; sentence punctuation,
  quotes and brackets stripped at both ends).
- yes/no in either language: in `exact_match`, `token_f1` and `relaxed_accuracy` a whole
  answer "sim"/"yes" is the canonical "yes" and "não"/"nao"/"no" the canonical "no"
  (`canonical_yes_no`), so "Sim." scores against a "Yes" reference. Only whole answers are
  mapped: inside a sentence "no" is the pt-PT contraction em+o.
- `token_f1`: SQuAD v1.1 `f1_score` (Rajpurkar et al. 2016, official `evaluate-v1.1.py`):
  lower-case, drop punctuation, drop articles, bag-of-tokens F1. The article set is SQuAD's
  "a an the" plus the Portuguese "o a os as um uma uns umas"; punctuation is every Unicode
  punctuation character (SQuAD uses ASCII `string.punctuation`), so «», “” and … go too. Two
  empty token lists score 1 (SQuAD v2 rule), one empty list scores 0.
- `anls`: Average Normalized Levenshtein Similarity (Biten et al. 2019, ST-VQA; DocVQA and
  InfographicVQA), exactly as lmms-eval's `anls` metric (from Qwen-VL's
  `infographicsvqa_eval.py`) computes it: both sides become `" ".join(x.strip().lower()
  .split())`, NL = lev(gold, pred) / max(len(raw gold), len(raw pred)) with the lengths of
  the raw strings (as upstream, `len(x.upper())`), score = 1 - min NL over the answers, and
  a score below the threshold 0.5 becomes 0. So NL == 0.5 scores 0.5, where the paper's
  "NL < tau" would give 0; no Unicode normalisation is applied (upstream applies none).
  The edit distance is rapidfuzz's (C++, the same unit-cost Levenshtein as upstream's
  pure-Python loop; a 3,000-character transcription takes milliseconds, not seconds).
- `relaxed_accuracy`: ChartQA `relaxed_correctness` (Masry et al. 2022; pix2struct and
  lmms-eval code): when both sides parse as numbers (a trailing "%" divides by 100) and the
  target is non-zero, correct iff |p - t| / |t| <= 0.05; otherwise case-insensitive string
  equality (yes/no words canonical, see above). pt-PT extension in `parse_number`:
  "1.050,5" and "1 050,5" = 1050.5, "12,5" = 12.5, while every string Python's float()
  reads keeps its English meaning ("1.050" = 1.05) and "1,050" / "1,050.5" keep the English
  thousands comma. Surrounding whitespace is stripped before the string comparison (the
  official code compares raw strings).
- `ocrbench_accuracy`: OCRBench (Liu et al. 2023; lmms-eval `ocrbench_process_results`):
  1 if the lower-cased, newline-flattened answer is a substring of the lower-cased prediction;
  for HME100k items (`dataset == "HME100k"`) all spaces are removed from both first. The
  official code lower-cases the prediction but not the HME100k answer; we lower-case neither
  for HME100k, because LaTeX is case-sensitive (`\\Alpha` vs `\\alpha`).
- `normalise_yes_no`: MME's `parse_pred_ans` (lmms-eval, from Otter) with Portuguese: "sim"
  counts as yes, "não"/"nao" as no (whole answer or first word) before the English rule
  ("yes"/"no" exact, "y"/"n", else "yes"/"no" within the first 4 characters). In text that
  reads as Portuguese (`reads_portuguese`) the "no" of that prefix rule counts only as a
  standalone first word followed by punctuation or the end ("No, não há." -> no), since
  "No sofá há um gato" opens with the contraction em+o, not with "no".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable

from rapidfuzz.distance import Levenshtein as _Levenshtein

# ---------------------------------------------------------------- normalisation helpers

_SYMBOLS = "`^$+=<>|~"
_WS = re.compile(r"\s+")


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text or "")


def _is_punct(ch: str) -> bool:
    """Unicode punctuation (categories P*) or an ASCII symbol SQuAD treats as punctuation."""
    return unicodedata.category(ch).startswith("P") or ch in _SYMBOLS


def strip_punct(text: str) -> str:
    """Remove punctuation and whitespace at both ends (inner characters untouched)."""
    start, end = 0, len(text)
    while start < end and (_is_punct(text[start]) or text[start].isspace()):
        start += 1
    while end > start and (_is_punct(text[end - 1]) or text[end - 1].isspace()):
        end -= 1
    return text[start:end]


_EDGE = " .,;:!?…\"'«»“”‘’()[]{}"


def normalise_text(text: str) -> str:
    """NFC, lower-case, collapse whitespace, strip sentence punctuation, quotes, brackets at
    both ends ("C++", "C#" and "$5" keep their symbols)."""
    return _WS.sub(" ", nfc(text).lower()).strip().strip(_EDGE)


# ---------------------------------------------------------------- exact match


YES_NO = {"yes": "yes", "sim": "yes", "no": "no", "não": "no", "nao": "no"}


def canonical_yes_no(text: str) -> str:
    """'yes' / 'no' when the whole of `text` (edge punctuation and case ignored) is a yes/no
    word in English or Portuguese ("Sim.", "NÃO", "yes"); otherwise `text` unchanged."""
    return YES_NO.get(strip_punct(nfc(text)).lower(), text)


def _match_key(text: str) -> str:
    return canonical_yes_no(normalise_text(text))


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised answer (yes/no canonical)."""
    pred = _match_key(prediction)
    return float(any(pred == _match_key(a) for a in answers))


# ---------------------------------------------------------------- is it Portuguese?

PT_MARKERS = frozenset(
    {
        "há", "é", "um", "uma", "uns", "umas", "está", "estão", "existe", "existem", "de",
        "do", "da", "dos", "das", "em", "na", "nas", "nos", "imagem", "fotografia", "foto",
        "não", "sim",
    }
)  # fmt: skip
_PT_LETTERS = frozenset("áàâãéêíóôõúç")


def reads_portuguese(words: Iterable[str]) -> bool:
    """True when lower-cased `words` hold a pt function word ("há", "é", "um", "de", ...) or
    a letter with a Portuguese diacritic ("sofá"): then a "no" among them is em+o."""
    words = list(words)
    return bool(PT_MARKERS.intersection(words)) or any(ch in _PT_LETTERS for w in words for ch in w)


# ---------------------------------------------------------------- token F1 (SQuAD)

ARTICLES = frozenset({"a", "an", "the", "o", "os", "as", "um", "uma", "uns", "umas"})


def squad_normalise(text: str) -> str:
    """SQuAD `normalize_answer` with Unicode punctuation and pt-PT articles."""
    text = nfc(text).lower()
    text = "".join(ch for ch in text if not _is_punct(ch))  # deleted, as SQuAD: 1,000 -> 1000
    tokens = [t for t in text.split() if t not in ARTICLES]
    return " ".join(tokens)


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common: dict[str, int] = {}
    gold_counts: dict[str, int] = {}
    for t in gold_tokens:
        gold_counts[t] = gold_counts.get(t, 0) + 1
    for t in pred_tokens:
        if gold_counts.get(t, 0) > common.get(t, 0):
            common[t] = common.get(t, 0) + 1
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1_tokens(text: str) -> list[str]:
    return canonical_yes_no(squad_normalise(text)).split()


def token_f1(prediction: str, answers: list[str]) -> float:
    """SQuAD token F1, max over answers (a whole yes/no answer is canonical first)."""
    pred = _f1_tokens(prediction)
    return max((_f1(pred, _f1_tokens(a)) for a in answers), default=0.0)


# ---------------------------------------------------------------- ANLS


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; all cost 1), computed by rapidfuzz."""
    return int(_Levenshtein.distance(a, b))


def _anls_norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """lmms-eval's `anls` for one item: 1 - min NL over answers, 0 below `threshold`.

    NL divides the distance of the normalised strings by the longer *raw* string, as
    upstream does (`max(len(answer.upper()), len(prediction.upper()))`).
    """
    if not answers:
        return 0.0
    pred = _anls_norm(prediction)
    values = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        dist = levenshtein(_anls_norm(answer), pred)
        values.append(0.0 if length == 0 else dist / length)
    score = 1.0 - min(values)
    return 0.0 if score < threshold else score


# ---------------------------------------------------------------- numbers (pt-PT aware)

_SPACES = "[ \u00a0\u202f]"
_PLAIN = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_EN_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PT_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:\.\d{3})+(?:,\d+)?$")
_PT_DECIMAL = re.compile(r"^[+-]?\d+,\d+$")
_SPACE_THOUSANDS = re.compile(rf"^[+-]?\d{{1,3}}(?:{_SPACES}\d{{3}})+(?:[.,]\d+)?$")


def parse_number(text: str) -> float | None:
    """A number written in English or pt-PT notation, or None.

    Order matters and is what keeps English intact: anything Python's float() reads is
    taken as English first ("1.050" -> 1.05); "1,050" / "1,050.5" are English thousands;
    only then "1.050,5" / "1.000.000" (dots for thousands), "12,5" (decimal comma) and
    "1 050,5" (pt-PT space for thousands) are read as pt-PT. NaN and infinities are not
    numbers here.
    """
    s = nfc(text).strip().replace("\u2212", "-")
    if not s:
        return None
    value: float | None = None
    if _PLAIN.match(s):
        value = float(s)
    elif _EN_THOUSANDS.match(s):
        value = float(s.replace(",", ""))
    elif _PT_THOUSANDS.match(s):
        value = float(s.replace(".", "").replace(",", "."))
    elif _PT_DECIMAL.match(s):
        value = float(s.replace(",", "."))
    elif _SPACE_THOUSANDS.match(s):
        value = float(re.sub(_SPACES, "", s).replace(",", "."))
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def _to_float(text: str) -> float | None:
    """ChartQA `_to_float`: a trailing % means percent (divide by 100)."""
    s = text.strip()
    if s.endswith("%"):
        value = parse_number(s.rstrip("%"))
        return None if value is None else value / 100.0
    return parse_number(s)


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA: numbers within 5% of the target, else case-insensitive string equality
    (a yes/no answer in either language compared as its canonical 'yes' / 'no')."""
    pred_f = _to_float(prediction)
    target_f = _to_float(target)
    if pred_f is not None and target_f:  # target 0 falls back to strings, as upstream
        return abs(pred_f - target_f) / abs(target_f) <= max_relative_change
    return _relaxed_key(prediction) == _relaxed_key(target)


def _relaxed_key(text: str) -> str:
    return canonical_yes_no(text.strip().lower())


def relaxed_accuracy(prediction: str, answers: list[str]) -> float:
    """ChartQA relaxed accuracy, max over answers."""
    return float(any(relaxed_correctness(a, prediction) for a in answers))


# ---------------------------------------------------------------- OCRBench


def ocrbench_accuracy(prediction: str, answers: list[str], dataset: str | None = None) -> float:
    """OCRBench: the normalised answer occurs in the normalised prediction."""
    if dataset == "HME100k":
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        golds = [a.strip().replace("\n", " ").replace(" ", "") for a in answers]
    else:
        pred = prediction.lower().strip().replace("\n", " ")
        golds = [a.lower().strip().replace("\n", " ") for a in answers]
    return float(any(g in pred for g in golds))


# ---------------------------------------------------------------- yes / no

_YES_WORDS = frozenset(w for w, label in YES_NO.items() if label == "yes")
_NO_WORDS = frozenset(w for w, label in YES_NO.items() if label == "no")
_STANDALONE_NO = re.compile(r"^no(?=[^\w\s]|$)")


def normalise_yes_no(text: str) -> str | None:
    """'yes', 'no' or None (MME's "other"); Portuguese sim/não understood."""
    s = nfc(text).lower().strip().replace(".", "")
    if s in _YES_WORDS:
        return "yes"
    if s in _NO_WORDS:
        return "no"
    if len(s) == 1:
        return {"y": "yes", "s": "yes", "n": "no"}.get(s)
    words = [strip_punct(w) for w in s.split()]
    first = words[0] if words else ""
    if first == "sim":
        return "yes"
    if first in ("não", "nao"):
        return "no"
    prefix = s[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix and (opens_with_standalone_no(s) or not reads_portuguese(words)):
        return "no"
    return None


def opens_with_standalone_no(text: str) -> bool:
    """True when `text` opens with the word "no" followed by punctuation or nothing ("No.",
    "No, não há"), not by another word ("No sofá há um gato": the contraction em+o)."""
    return _STANDALONE_NO.match(nfc(text).strip().lower()) is not None


def yes_no_accuracy(prediction: str, answers: list[str]) -> float:
    """1.0 if the prediction's yes/no label equals any answer's (unparseable is wrong)."""
    pred = normalise_yes_no(prediction)
    if pred is None:
        return 0.0
    return float(any(pred == normalise_yes_no(a) for a in answers))
