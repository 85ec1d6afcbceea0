r"""Multiple-choice and MMMU accuracy: the option letter of a free-form answer, per task.

lmms-eval reads the chosen letter differently in every task, so `mc_accuracy` takes a
`profile` (declared by the task YAML, `profile:`), and its `lmms` mode reproduces that
task's reader (lmms-eval 0.7.3):

- `mmmu`, `mmmu_pro`: `parse_mmmu_multi_choice_response` (below); unparsed: a random
  choice, scored 1/n;
- `mmmu_pro_vision`: no reader at all: the whole generation must equal the gold letter;
- `ai2d`: the filter `^\s*([A-Z])\.` gives that letter, else the text is kept; then
  `exact_match` with ignore_case + ignore_punctuation ("**B**", "(b)", "`B`" are B; "B) x"
  is not);
- `mmstar`: `extract_mcq_answer` (see `mcq.py`) over A-D; the task score is the mean of the
  per-category means (`category` = MMStar's l2_category);
- `seedbench`: the first character of the stripped text, case ignored;
- `realworldqa`: `extract_mcq_answer` over A-D when the gold is a letter; otherwise the text
  lower-cased, stripped, a trailing "." removed, equal to the gold;
- `embspatial`: `re.match(r"[\(\s]*([A-Z])[\)\.\s]*", text, IGNORECASE)`: the first letter.
Unparsed answers score 0 except in the MMMU profiles.

MMMU's reader (lmms-eval 0.7.3 `_task_utils/mmmu_mcq_utils.py`, from MMMU `eval_utils.py`):
strip `, . ! ? ; : '` from both ends and pad with spaces; candidates "(A)"; else "A "
(0.7.3 dropped the leading space of MMMU's " A ", so any word ending in a capital counts:
"USA " is A, "vitamin D " is D); else "A."; else, for a response of more than 5 words,
the options whose text occurs in it; several candidates: the last one in the text. No
candidate: `random.choice(all_choices)`. We score that guess by its expected value, 1/n
(n = number of options), in both modes: deterministic and equal to lmms-eval's mean over
seeds.

The `pt` mode is the lmms reader with three layers added:
1. Explicit answers first (`explicit_letter`): a bare letter in any dress ("**B**", "`c`",
   "(B)", "B."), an answer marker, the last one winning ("Resposta: D", "A resposta correta
   é a (B)", "The answer is C", "opção B", "alternativa C", "letra A", "**Resposta:** C"),
   a leading label with text ("C. Lisboa", "B) Porto"), or exactly one option's text
   ("Lisboa"), accents and case ignored.
2. Portuguese articles: a response that opens with "A"/"O"/"E" before a lower-case word
   ("A cidade é Lisboa") skips the lmms reader, whose first-letter rules would read the
   article as the option A.
3. When the lmms reader gives no valid letter: `parse_multi_choice`, MMMU's steps with the
   word-boundary " A " of the official code, then the response holding exactly one option's
   text as whole words ("O Porto é a resposta"; an option inside a longer matched option,
   "Porto" in "Porto Santo", gives way to it; two unrelated options are ambiguous).
   One-letter option texts ("a", "b") are not searched.

Gold answers may be letters ("B", "(B)") or option texts; both resolve to letters.
`mmmu_accuracy` uses `mc_accuracy` for items with options and MMMU's `eval_open` for the
others: numbers compared as floats rounded to 2 decimals, strings by substring. lmms reads a
number as `float(text.replace(",", ""))` ("2,5" is 25; "nan" never matches); pt reads
pt-PT notation ("2,5" = 2.5) and adds Portuguese answer indicators ("é", "portanto",
"logo", "assim", "resposta", "resultado") to MMMU's English ones.
"""

from __future__ import annotations

import random
import re
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.metrics.base import CorpusResult
from components.metrics.mcq import extract_letter
from components.metrics.text import (
    LMMS,
    PT,
    lmms_exact_key,
    nfc,
    parse_number,
    pt_exact_key,
    python_float,
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_EDGE = ",.!?;:'"
# Keywords in any case; the letter itself must be a capital ("answer is a dog" is no "A").
_MARKER = re.compile(
    r"\b(?i:(?:the\s+|a\s+)?(?:correct\s+|final\s+)?(?:resposta(?:\s+(?:correta|certa|final))?"
    r"|answer|op[çc][ãa]o|alternativa|letra|choice|option))\s*(?i:[ée]|is)?\s*(?:a\s+)?"
    r"[:\-]?\s*\(?([A-Z])\)?(?!\w)"
)
_ONLY_LETTER = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?\s*[.,;:!?]?\s*$")
_LEADING_LETTER = re.compile(r"^\s*[\(\[]?([A-Z])(?:[.):]|\])\s+\S")
_OPTION_PREFIX = re.compile(r"^\s*[\(\[]?([A-Z])[.):\]]\s*")
_ARTICLE = re.compile(r"^\s*([AEO])s?\s+[a-zà-ÿ]{2,}")
_MARKDOWN = re.compile(r"[*`]+")


def _fold(text: str) -> str:
    """Lower-case, no accents, single spaces, no edge punctuation (for option-text matches)."""
    text = unicodedata.normalize("NFKD", nfc(text).lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.split()).strip(" .,;:!?\"'«»()")


def option_map(options: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Letter -> option text. A list gets A, B, C...; "A. text" prefixes are removed."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        items = [(str(k).strip().strip("().").upper(), str(v)) for k, v in options.items()]
    else:
        items = list(zip(LETTERS, (str(o) for o in options), strict=False))
    out = {}
    for letter, text in items:
        m = _OPTION_PREFIX.match(text)
        if m and m.group(1) == letter:
            text = text[m.end():]
        out[letter] = text.strip()
    return out


def _choices(index2ans: Mapping[str, str], extra_letters: Sequence[str] = ()) -> list[str]:
    if index2ans:
        return list(index2ans)
    # No options given: letters A-D, widened to any gold letter beyond D.
    last = max(["D", *(x for x in extra_letters if x in LETTERS)])
    return list(LETTERS[: LETTERS.index(last) + 1])


# ---------------------------------------------------------------- lmms-eval readers


def mmmu_lmms_letter(response: str, choices: Sequence[str],
                     index2ans: Mapping[str, str]) -> str | None:
    """lmms-eval 0.7.3 `parse_mmmu_multi_choice_response`, without its random guess."""
    for ch in _EDGE:  # one character kind after the other, as upstream
        response = response.strip(ch)
    text = f" {response} "
    by_content = False
    bracketed = [c for c in choices if f"({c})" in text]
    candidates = bracketed or [c for c in choices if f"{c} " in text]
    if not candidates:
        candidates = [c for c in choices if f"{c}." in text]
    if not candidates and len(text.split()) > 5:
        low = text.lower()
        candidates = [c for c, ans in index2ans.items() if ans.lower() in low]
        by_content = True
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if by_content:
        low = text.lower()
        keys = [low.rfind(index2ans[c].lower()) for c in candidates]
    elif bracketed:
        keys = [text.rfind(f"({c})") for c in candidates]
    else:  # sic: found as "A " or "A.", ranked by " A " (-1 when absent)
        keys = [text.rfind(f" {c} ") for c in candidates]
    return candidates[keys.index(max(keys))]


def _ai2d_letter(response: str, choices, index2ans) -> str | None:
    m = re.match(r"^\s*([A-Z])\.", response)
    if m:
        return m.group(1)
    key = lmms_exact_key(response)
    return key.upper() if len(key) == 1 else None


def _seed_letter(response: str, choices, index2ans) -> str | None:
    text = response.strip()
    return text[0].upper() if text else None


def _embspatial_letter(response: str, choices, index2ans) -> str | None:
    m = re.match(r"[\(\s]*([A-Z])[\)\.\s]*", response.strip(), flags=re.IGNORECASE)
    return m.group(1).upper() if m else None


def _abcd_letter(response: str, choices, index2ans) -> str | None:
    return extract_letter(response, ["A", "B", "C", "D"]) or None


def _whole_letter(response: str, choices, index2ans) -> str | None:
    return response if response in choices else None


@dataclass(frozen=True)
class Profile:
    """How one benchmark's lmms-eval task reads the chosen option (see the module table)."""

    name: str
    read: Callable[[str, Sequence[str], Mapping[str, str]], str | None]
    guess: bool = False  # an unparsed answer is a random pick (scored 1/n)
    macro: bool = False  # the task score is the mean of per-category means
    open_answers: bool = False  # non-letter golds are compared as text
    pt_reads: bool = True  # the pt mode runs `read` too (MMMU's: its own word-bounded steps)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("mmmu", mmmu_lmms_letter, guess=True, pt_reads=False),
    Profile("mmmu_pro", mmmu_lmms_letter, guess=True, pt_reads=False),
    Profile("mmmu_pro_vision", _whole_letter),
    Profile("ai2d", _ai2d_letter),
    Profile("mmstar", _abcd_letter, macro=True),
    Profile("seedbench", _seed_letter),
    Profile("realworldqa", _abcd_letter, open_answers=True),
    Profile("embspatial", _embspatial_letter),
)}
DEFAULT_PROFILE = "mmmu"


def get_profile(name: str | None) -> Profile:
    if name is None:
        return PROFILES[DEFAULT_PROFILE]
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown multiple-choice profile {name!r}; known: "
                         f"{', '.join(sorted(PROFILES))}") from None


# ---------------------------------------------------------------- pt layers


def explicit_letter(response: str, index2ans: Mapping[str, str],
                    choices: Sequence[str]) -> str | None:
    """pt layer 1: a letter stated outright, a marker, a leading label, an option's text."""
    raw = _MARKDOWN.sub("", nfc(response or "")).strip()
    m = _ONLY_LETTER.match(raw)
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    marked = [m.group(1) for m in _MARKER.finditer(raw) if m.group(1) in choices]
    if marked:
        return marked[-1]
    m = _LEADING_LETTER.match(raw)
    if m and m.group(1) in choices:
        return m.group(1)
    folded = _fold(raw)
    if folded:
        for letter, text in index2ans.items():
            if _fold(text) == folded:
                return letter
    return None


def _has_words(text: str, words: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) is not None


def _option_in_text(folded: str, index2ans: Mapping[str, str]) -> str | None:
    """The one option whose folded text occurs in `folded` as whole words, else None."""
    found = {}
    for letter, text in index2ans.items():
        words = _fold(text)
        if words and not (len(words) == 1 and words.isalpha()) and _has_words(folded, words):
            found[letter] = words
    # an option inside a longer matched option ("Porto" in "Porto Santo") gives way to it
    outer = [
        letter
        for letter, words in found.items()
        if not any(other != words and _has_words(other, words) for other in found.values())
    ]
    return outer[0] if len(outer) == 1 else None


def _mmmu_pt_steps(raw: str, index2ans: Mapping[str, str], choices: list[str]) -> str | None:
    """MMMU's steps with word boundaries and the Portuguese article guard."""
    text = " " + raw.strip(_EDGE) + " "
    candidates = [c for c in choices if f"({c})" in text]
    with_brackets = bool(candidates)
    if not candidates:
        candidates = [c for c in choices if re.search(rf"(?<![\w]){c} ", text)]
        article = re.match(r"^ ([AEO]) [a-zà-ÿ]{2,}", text)
        if article and article.group(1) in candidates and text.count(f" {article.group(1)} ") == 1:
            candidates.remove(article.group(1))
    if not candidates:
        candidates = [c for c in choices if re.search(rf"(?<![\w.]){c}\.(?!\w)", text)]
    by_content = False
    if not candidates and len(text.split()) > 5:
        low = text.lower()
        candidates = [c for c, ans in index2ans.items() if ans and ans.lower() in low]
        by_content = True
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if by_content:
        low = text.lower()
        return max(candidates, key=lambda c: low.rfind(index2ans[c].lower()))
    pattern = "({})" if with_brackets else " {} "
    return max(candidates, key=lambda c: text.rfind(pattern.format(c)))


def parse_multi_choice(
    response: str,
    options: Sequence[str] | Mapping[str, str] | None = None,
    *,
    all_choices: Sequence[str] | None = None,
    fallback: str = "none",
    seed_key: str | None = None,
) -> str | None:
    """pt layer 3: the letter a free-form response chose, or None (see the module doc).
    `fallback="random"` draws a letter from a `random.Random` seeded by a CRC32 of the seed
    key (the question id when given, else the response), so reruns agree."""
    if fallback not in ("none", "random"):
        raise ValueError(f"fallback must be 'none' or 'random', not {fallback!r}")
    index2ans = option_map(options)
    choices = list(all_choices) if all_choices else _choices(index2ans)
    raw = nfc(response or "")
    letter = _mmmu_pt_steps(raw, index2ans, choices)
    if letter is None:
        letter = explicit_letter(raw, index2ans, choices)
    if letter is None:
        letter = _option_in_text(_fold(raw), index2ans)
    if letter is None and fallback == "random":
        seed = zlib.crc32((seed_key if seed_key is not None else raw).encode("utf-8"))
        return random.Random(seed).choice(choices)
    return letter


def choose(response: str, options: Sequence[str] | Mapping[str, str] | None,
           profile: Profile, mode: str, choices: Sequence[str] | None = None) -> str | None:
    """The letter `response` chose under `profile` in `mode`, or None (unparsed)."""
    index2ans = option_map(options)
    choices = list(choices) if choices else _choices(index2ans)
    if mode == LMMS:
        return profile.read(response, choices, index2ans)
    response = nfc(response or "")
    letter = explicit_letter(response, index2ans, choices)
    if letter is not None:
        return letter
    if profile.pt_reads and not _ARTICLE.match(response):
        letter = profile.read(response, choices, index2ans)
        if letter in choices:
            return letter
    return parse_multi_choice(response, index2ans, all_choices=choices)


def gold_letters(
    answers: Sequence[str], options: Sequence[str] | Mapping[str, str] | None
) -> set[str]:
    """Gold answers as letters: "B", "(B)", "B." or an option's text."""
    index2ans = option_map(options)
    out = set()
    for answer in answers:
        a = nfc(str(answer)).strip()
        m = _ONLY_LETTER.match(a)
        if m and (not index2ans or m.group(1).upper() in index2ans):
            out.add(m.group(1).upper())
            continue
        for letter, text in index2ans.items():
            if _fold(text) == _fold(a):
                out.add(letter)
    return out


_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "nenhum": "0", "nenhuma": "0",
    "um": "1", "uma": "1", "dois": "2", "duas": "2", "três": "3", "tres": "3", "quatro": "4",
    "cinco": "5", "seis": "6", "sete": "7", "oito": "8", "nove": "9", "dez": "10",
}  # fmt: skip


def _open_key_number(text: str) -> float | None:
    s = pt_exact_key(text)
    return parse_number(_NUMBER_WORDS.get(s, nfc(text).strip().rstrip(".")))


def _open_answer_correct(prediction: str, answers: Sequence[str], mode: str) -> bool:
    """RealWorldQA's open questions: lower-case, strip, drop a trailing '.', equal."""
    pred = prediction.lower().strip().rstrip(".")
    if any(pred == str(a).strip().lower() for a in answers):
        return True
    if mode == LMMS:
        return False
    if any(pt_exact_key(prediction) == pt_exact_key(str(a)) for a in answers):
        return True
    number = _open_key_number(prediction)
    return number is not None and any(number == _open_key_number(str(a)) for a in answers)


def _is_letter_gold(answers: Sequence[str]) -> bool:
    return all(str(a).strip().upper() in ("A", "B", "C", "D") for a in answers)


def mc_accuracy(
    prediction: str,
    answers: list[str],
    options: Sequence[str] | Mapping[str, str] | None = None,
    question_id: Any = None,
    fallback: str | None = None,
    profile: str | None = None,
    category: Any = None,
    mode: str = PT,
) -> float:
    """1.0 if the option read from `prediction` is a gold option (1/n for a guessing
    profile's unparsed answer; see the module docstring)."""
    prof = get_profile(profile)
    if prof.open_answers and not options and not _is_letter_gold(answers):
        return float(_open_answer_correct(prediction, answers, mode))
    golds = gold_letters(answers, options)
    if not golds:
        raise ValueError(f"no gold option letter in answers {answers!r} (options {options!r})")
    index2ans = option_map(options)
    choices = _choices(index2ans, sorted(golds))
    letter = choose(prediction, options, prof, mode, choices)
    if letter is not None:
        return float(letter in golds)
    fallback = fallback or ("expected" if prof.guess else "none")
    if fallback == "expected":
        return len(golds & set(choices)) / len(choices)
    if fallback == "random":
        seed_key = str(question_id) if question_id is not None else nfc(prediction)
        pick = random.Random(zlib.crc32(seed_key.encode("utf-8"))).choice(choices)
        return float(pick in golds)
    if fallback != "none":
        raise ValueError(f"fallback must be 'expected', 'random' or 'none', not {fallback!r}")
    return 0.0


def mc_corpus(predictions: list[str], answers: list[list[str]], extras: list[dict[str, Any]],
              mode: str = PT) -> CorpusResult:
    """Item mean; for a macro profile (MMStar) with categories, the mean of category means."""
    scores = [mc_accuracy(p, a, mode=mode, **e)
              for p, a, e in zip(predictions, answers, extras, strict=True)]
    macro = bool(extras) and all(get_profile(e.get("profile")).macro and "category" in e
                                 for e in extras)
    if not macro:
        return CorpusResult(sum(scores) / len(scores) if scores else 0.0, list(scores))
    by_category: dict[str, list[float]] = defaultdict(list)
    for score, extra in zip(scores, extras, strict=True):
        by_category[str(extra["category"])].append(score)
    means = {c: sum(v) / len(v) for c, v in sorted(by_category.items())}
    return CorpusResult(sum(means.values()) / len(means), list(scores),
                        {"by_category": means, "item_mean": sum(scores) / len(scores)})


# ---------------------------------------------------------------- MMMU open questions

_INDICATORS = [
    "could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ",
]  # fmt: skip
_PT_INDICATORS = ["é ", "portanto ", "logo ", "assim ", "resposta ", "resultado "]
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_NUM_PT_DECIMAL = re.compile(r"-?\b\d+,\d+\b")


def _extract_numbers(text: str, mode: str = PT) -> list[str]:
    """MMMU's three number patterns (pt: plus decimal commas, "2,5")."""
    found = _NUM_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)
    if mode == PT:
        found += [n for n in _NUM_PT_DECIMAL.findall(text) if not _NUM_COMMAS.fullmatch(n)]
    return found


def _mmmu_number(value: str, mode: str) -> float | None:
    if mode == LMMS:  # check_is_number: float(s.replace(",", "")), NaN and inf included
        return python_float(value.replace(",", ""))
    number = python_float(value)
    if number is not None and number == number and abs(number) != float("inf"):
        return number
    return parse_number(value)  # "1,234" thousands, "2,5" the pt-PT 2.5 (not 25)


def _normalise_open(value: str, mode: str = PT) -> list[float | str]:
    """MMMU `normalize_str`: a number becomes a float rounded to 2 decimals; a one-character
    string is padded (" x", "x ") to avoid trivial substring hits."""
    value = value.strip()
    number = _mmmu_number(value, mode)
    if number is not None:
        return [round(number, 2)]
    value = value.lower()
    if len(value) == 1:
        return [" " + value, value + " "]
    return [value]


def parse_open_response(response: str, mode: str = PT) -> list[float | str]:
    """MMMU `parse_open_response`: key sub-responses after answer indicators, plus numbers."""
    text = response.strip().strip(".").lower()
    # sic: upstream splits on r"\.\s(?=[A-Z])" after lower-casing, so only newlines split
    subs = re.split(r"\.\s(?=[A-Z])|\n", text)
    indicators = _INDICATORS + (_PT_INDICATORS if mode == PT else [])
    keys: list[str] = []
    for index, sub in enumerate(subs):
        here = indicators + (["="] if index == len(subs) - 1 else [])
        shortest: str | None = None
        for indicator in here:
            if indicator in sub:
                tail = sub.split(indicator)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    if not keys:
        keys = [text]
    preds: list[str] = list(keys)
    for key in keys:
        preds.extend(_extract_numbers(key, mode))
    out: list[float | str] = []
    for p in preds:
        for v in _normalise_open(p, mode):
            if v not in out:
                out.append(v)
    return out


def eval_open(answers: Sequence[str], parsed: Sequence[float | str], mode: str = PT) -> bool:
    """MMMU `eval_open`: a string answer inside a string prediction, or equal floats."""
    norm_answers: list[float | str] = []
    for answer in answers:
        norm_answers.extend(_normalise_open(str(answer), mode))
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False


def mmmu_accuracy(
    prediction: str,
    answers: list[str],
    options: Sequence[str] | Mapping[str, str] | None = None,
    question_type: str | None = None,
    question_id: Any = None,
    fallback: str | None = None,
    profile: str | None = None,
    mode: str = PT,
) -> float:
    """MMMU accuracy: option reading for multiple-choice items, `eval_open` otherwise."""
    is_mc = question_type == "multiple-choice" if question_type else bool(options)
    if is_mc:
        return mc_accuracy(prediction, answers, options, question_id, fallback,
                           profile or DEFAULT_PROFILE, mode=mode)
    return float(eval_open(answers, parse_open_response(prediction, mode), mode))
