"""Short-answer text metrics: exact match, token F1, ANLS, relaxed accuracy, OCRBench, yes/no.

Every function takes `mode` (`lmms` | `pt`, see `base.py`); the pt mode runs the lmms steps
and adds ours. References (lmms-eval 0.7.3 unless said otherwise) and what pt adds:

- `exact_match`: lmms-eval's `exact_match` metric (HF `evaluate`'s exact_match) as its task
  YAMLs configure it (`ignore_case`, `ignore_punctuation`): lower-case, delete every ASCII
  punctuation character (`string.punctuation`, anywhere: "C++" equals "C", "e-mail" equals
  "email"), then plain equality; whitespace is not normalised. pt adds: NFC, Unicode
  punctuation deleted too («», “”, …), whitespace runs collapsed and trimmed, and a whole
  yes/no answer in either language canonical ("Sim." = "yes", "NÃO" = "no":
  `canonical_yes_no`; only whole answers: inside a sentence "no" is the pt-PT em+o).
- `token_f1`: no lmms-eval task uses it; the lmms mode is SQuAD v1.1's official `f1_score`
  (Rajpurkar et al. 2016, `evaluate-v1.1.py`): lower-case, ASCII punctuation deleted,
  articles "a an the" dropped, bag-of-tokens F1, 0 when nothing is shared (two empty answers
  included). pt: every Unicode punctuation character, the Portuguese articles "o a os as um
  uma uns umas" too, two empty token lists score 1 (SQuAD v2), yes/no canonical.
- `anls`: lmms-eval's `anls` metric (from Qwen-VL's `infographicsvqa_eval.py`): both sides
  become `" ".join(x.strip().lower().split())`, NL = lev / max(len(raw reference.upper()),
  len(raw prediction.upper())), score = 1 - min NL over the answers, below 0.5 it is 0 (so
  NL == 0.5 keeps 0.5, where the paper's "NL < tau" gives 0). The prediction reaches it
  stripped (the model wrapper strips), the reference does not: a reference with stray spaces
  is measured with them. pt (bug fix): NFC and the lengths of the normalised strings, as the
  ST-VQA definition (Biten et al. 2019) says. The edit distance is rapidfuzz's (the same
  unit-cost Levenshtein as upstream's pure-Python loop, in milliseconds).
- `relaxed_accuracy`: ChartQA `relaxed_correctness` (Masry et al. 2022; lmms-eval
  `chartqa/utils.py`): both sides read by Python's `float()` (a trailing "%" divides by
  100), when the target is a non-zero number |p - t| / |t| <= 0.05, else case-insensitive
  string equality of the raw strings. `float()` reads more than digits: "1_000" is 1000,
  " 12 " is 12, and the words "nan", "inf", "infinity" are numbers, so an answer "NaN" or
  "Infinity" never equals itself (nan compares false): a bug; pt reads those as words.
  pt adds `parse_number`'s pt-PT notation ("1.050,5", "1 050,5" = 1050.5, "12,5" = 12.5)
  after `float()` (so every string float() reads keeps its English meaning: "1.050" = 1.05),
  a "%" after a space, trimmed strings and canonical yes/no for the string comparison.
- `ocrbench_accuracy`: OCRBench (lmms-eval `ocrbench_process_results`): 1 if the answer is a
  substring of the prediction, both lower-cased, stripped, newlines as spaces, fullwidth
  ASCII (U+FF01-FF5E) and the ideographic space folded to ASCII; for HME100k items
  (`dataset == "HME100k"`) all spaces removed and case kept (LaTeX is case-sensitive). pt
  adds NFC and collapsed whitespace runs (and the fullwidth fold for HME100k too).
  lmms-eval reports the sum of 0/1 scores divided by 1000 whatever the number of items (and
  adds into a module-level dict, so a second aggregation in one process doubles): we report
  the mean in both modes (equal on the full 1000-item set).
- `normalise_yes_no` (MME's `parse_pred_ans`, from Otter): lower-case, strip, delete ".";
  "yes"/"no" exact, "y"/"n", else "yes" then "no" searched in the first 4 characters ("Not
  sure" is no), else other (None). pt adds "sim" (and "s") as yes, "não"/"nao" as no (whole
  answer or first word) before the English rule, and in text that reads as Portuguese
  (`reads_portuguese`) the "no" of the prefix rule counts only as a standalone first word
  followed by punctuation or the end ("No, não há." -> no), since "No sofá há um gato"
  opens with the contraction em+o.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Iterable

from rapidfuzz.distance import Levenshtein as _Levenshtein

LMMS, PT = "lmms", "pt"

# ---------------------------------------------------------------- normalisation helpers

_SYMBOLS = "`^$+=<>|~"
_WS = re.compile(r"\s+")
_ASCII_PUNCT = str.maketrans("", "", string.punctuation)


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


def lmms_exact_key(text: str) -> str:
    """HF exact_match with ignore_case + ignore_punctuation: lower, ASCII punctuation gone."""
    return text.lower().translate(_ASCII_PUNCT)


def pt_exact_key(text: str) -> str:
    """The lmms key, then NFC, every Unicode punctuation mark, whitespace, yes/no."""
    key = lmms_exact_key(nfc(text))
    key = "".join(ch for ch in key if not _is_punct(ch) or ch in _SYMBOLS)
    return canonical_yes_no(_WS.sub(" ", key).strip())


def exact_match(prediction: str, answers: list[str], mode: str = PT) -> float:
    """1.0 if the prediction equals an answer after the mode's normalisation (module doc)."""
    pred = lmms_exact_key(prediction)
    if any(pred == lmms_exact_key(a) for a in answers):
        return 1.0
    if mode == LMMS:
        return 0.0
    pred = pt_exact_key(prediction)
    return float(any(pred == pt_exact_key(a) for a in answers))


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

SQUAD_ARTICLES = frozenset({"a", "an", "the"})
ARTICLES = SQUAD_ARTICLES | frozenset({"o", "os", "as", "um", "uma", "uns", "umas"})


def squad_normalise(text: str, mode: str = PT) -> str:
    """SQuAD `normalize_answer`; pt: Unicode punctuation and pt-PT articles too."""
    if mode == LMMS:
        text = text.lower().translate(_ASCII_PUNCT)
        return " ".join(t for t in text.split() if t not in SQUAD_ARTICLES)
    text = nfc(text).lower()
    text = "".join(ch for ch in text if not _is_punct(ch))  # deleted, as SQuAD: 1,000 -> 1000
    return " ".join(t for t in text.split() if t not in ARTICLES)


def _f1(pred_tokens: list[str], gold_tokens: list[str], mode: str) -> float:
    if not pred_tokens or not gold_tokens:
        return float(mode == PT and pred_tokens == gold_tokens)
    gold_counts: dict[str, int] = {}
    for t in gold_tokens:
        gold_counts[t] = gold_counts.get(t, 0) + 1
    same = 0
    for t in pred_tokens:
        if gold_counts.get(t, 0) > 0:
            gold_counts[t] -= 1
            same += 1
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1_tokens(text: str, mode: str) -> list[str]:
    norm = squad_normalise(text, mode)
    return (canonical_yes_no(norm) if mode == PT else norm).split()


def token_f1(prediction: str, answers: list[str], mode: str = PT) -> float:
    """SQuAD token F1, max over answers (pt: a whole yes/no answer is canonical first)."""
    pred = _f1_tokens(prediction, mode)
    return max((_f1(pred, _f1_tokens(a, mode), mode) for a in answers), default=0.0)


# ---------------------------------------------------------------- ANLS


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; all cost 1), computed by rapidfuzz."""
    return int(_Levenshtein.distance(a, b))


def _anls_norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: list[str], threshold: float = 0.5, mode: str = PT) -> float:
    """ANLS of one item: 1 - min NL over answers, 0 below `threshold` (module doc)."""
    if not answers:
        return 0.0
    if mode == PT:
        prediction, answers = nfc(prediction), [nfc(a) for a in answers]
    pred = _anls_norm(prediction)
    values = []
    for answer in answers:
        gold = _anls_norm(answer)
        if mode == LMMS:  # sic: the raw strings' lengths, upper-cased ("ß" counts 2)
            length = max(len(answer.upper()), len(prediction.upper()))
        else:
            length = max(len(gold), len(pred))
        dist = levenshtein(gold, pred)
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


def python_float(text: str) -> float | None:
    """`float(text)` or None: what lmms-eval's scorers read as a number ("1_000", " 12 ",
    "nan" and "inf" included)."""
    try:
        return float(text)
    except ValueError:
        return None


def parse_number(text: str) -> float | None:
    """A finite number written in English or pt-PT notation, or None.

    Order matters and is what keeps English intact: anything Python's float() reads is
    taken as English first ("1.050" -> 1.05, "1_000" -> 1000); "1,050" / "1,050.5" are English
    thousands; only then "1.050,5" / "1.000.000" (dots for thousands), "12,5" (decimal
    comma) and "1 050,5" (pt-PT space for thousands) are read as pt-PT. NaN and infinities
    are words here, not numbers.
    """
    s = nfc(text).strip().replace("\u2212", "-")
    if not s:
        return None
    value = python_float(s) if _PLAIN.match(s) or "_" in s else None
    if value is not None:
        pass
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


def _to_float(text: str, mode: str) -> float | None:
    """ChartQA `_to_float`: a trailing % means percent (divide by 100)."""
    if mode == LMMS:
        if text.endswith("%"):
            value = python_float(text.rstrip("%"))
            return None if value is None else value / 100.0
        return python_float(text)
    s = text.strip()
    percent = s.endswith("%")
    value = parse_number(s.rstrip("%") if percent else s)
    return None if value is None else value / 100.0 if percent else value


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05,
                        mode: str = PT) -> bool:
    """ChartQA: numbers within 5% of the target, else case-insensitive string equality
    (pt: trimmed, a yes/no answer in either language compared as its canonical form)."""
    pred_f = _to_float(prediction, mode)
    target_f = _to_float(target, mode)
    if pred_f is not None and target_f:  # target 0 falls back to strings, as upstream
        return abs(pred_f - target_f) / abs(target_f) <= max_relative_change
    if prediction.lower() == target.lower():
        return True
    return mode == PT and _relaxed_key(prediction) == _relaxed_key(target)


def _relaxed_key(text: str) -> str:
    return canonical_yes_no(_WS.sub(" ", nfc(text).strip().lower()))


def relaxed_accuracy(prediction: str, answers: list[str], mode: str = PT) -> float:
    """ChartQA relaxed accuracy, max over answers."""
    return float(any(relaxed_correctness(a, prediction, mode=mode) for a in answers))


# ---------------------------------------------------------------- OCRBench


def fold_fullwidth(text: str) -> str:
    """Fullwidth ASCII (U+FF01-FF5E) to ASCII and the ideographic space to a space."""
    return "".join(chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E
                   else " " if c == "\u3000" else c for c in text)


def _ocr_key(text: str, hme: bool, mode: str) -> str:
    if mode == PT:
        text = fold_fullwidth(nfc(text))
    if hme:
        return text.strip().replace("\n", " ").replace(" ", "")
    key = fold_fullwidth(text).lower().strip().replace("\n", " ")
    return _WS.sub(" ", key) if mode == PT else key


def ocrbench_accuracy(prediction: str, answers: list[str], dataset: str | None = None,
                      mode: str = PT) -> float:
    """OCRBench: the normalised answer occurs in the normalised prediction."""
    hme = dataset == "HME100k"
    pred = _ocr_key(prediction, hme, mode)
    return float(any(_ocr_key(a, hme, mode) in pred for a in answers))


# ---------------------------------------------------------------- yes / no

_YES_WORDS = frozenset(w for w, label in YES_NO.items() if label == "yes")
_NO_WORDS = frozenset(w for w, label in YES_NO.items() if label == "no")
_STANDALONE_NO = re.compile(r"^no(?=[^\w\s]|$)")


def _mme_parse(s: str) -> str | None:
    """MME `parse_pred_ans` on an already lower-cased, stripped, period-free text."""
    if s in ("yes", "no"):
        return s
    if len(s) == 1:
        return {"y": "yes", "n": "no"}.get(s)
    if "yes" in s[:4]:
        return "yes"
    if "no" in s[:4]:
        return "no"
    return None


def normalise_yes_no(text: str, mode: str = PT) -> str | None:
    """'yes', 'no' or None (MME's "other"); pt: Portuguese sim/não understood."""
    if mode == LMMS:
        return _mme_parse(text.lower().strip().replace(".", ""))
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
    label = _mme_parse(s)
    if label == "no" and not (opens_with_standalone_no(s) or not reads_portuguese(words)):
        return None
    return label


def opens_with_standalone_no(text: str) -> bool:
    """True when `text` opens with the word "no" followed by punctuation or nothing ("No.",
    "No, não há"), not by another word ("No sofá há um gato": the contraction em+o)."""
    return _STANDALONE_NO.match(nfc(text).strip().lower()) is not None


def yes_no_accuracy(prediction: str, answers: list[str], mode: str = PT) -> float:
    """1.0 if the prediction's yes/no label equals any answer's (unparseable is wrong)."""
    pred = normalise_yes_no(prediction, mode)
    if pred is None:
        return 0.0
    return float(any(pred == normalise_yes_no(a, PT) for a in answers))
