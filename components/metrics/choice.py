"""Multiple-choice and MMMU accuracy, with option extraction from free-form answers.

`parse_multi_choice` follows MMMU's `parse_multi_choice_response` (Yue et al. 2024, official
`eval/eval_utils.py`, copied by lmms-eval's mmmu task), in its order:
1. strip `, . ! ? ; : '` from both ends and pad with spaces;
2. candidates "(A)" anywhere; else " A " as a separate token;
3. else, when the response has more than 5 words, the options whose text occurs in it;
4. several candidates: the one that occurs last wins.
Additions, tried only when those steps found no candidate (so they never change an answer
MMMU would have given, only turn its random guess into a parsed one):
- an explicit marker, the last one winning: "Resposta: D", "resposta correta é a (B)",
  "Answer: C", "opção B", "alternativa C", "letra A";
- a response that is just a letter with punctuation ("C.", "(B)", "D)", also lower-case "c");
- a response opening with "X." / "X)" / "X:" followed by text ("C. Lisboa");
- a short response equal to one option's text ("Lisboa"), accents and case ignored;
- a response holding exactly one option's text as whole words ("O Porto é a resposta",
  "A cidade é Lisboa"), accents and case ignored; when several options occur, one whose
  text lies inside another's ("Porto" in "Porto Santo") gives way to it, and two unrelated
  options are ambiguous (None). One-letter option texts ("a", "b") are not searched.
Portuguese guard: in step 2 a capital "A"/"E"/"O" that opens the response and is followed by
a lower-case word ("A resposta é B", "A cidade é Lisboa") is an article, not a letter.
No match: MMMU picks `random.choice(all_choices)`; we return None (scored wrong) by default,
or, with `fallback="random"`, a choice drawn from a `random.Random` seeded by a CRC32 of the
seed key (the question id when given, else the response), so reruns agree.

Gold answers may be letters ("B", "(B)") or option texts; both resolve to letters.
`mmmu_accuracy` uses `parse_multi_choice` for items with options and MMMU's `eval_open` for
the others (numbers compared as floats rounded to 2 decimals, strings by substring), with
pt-PT number notation ("2,5") and Portuguese answer indicators ("é", "portanto", "logo",
"resposta", "resultado") added to MMMU's English ones.
"""

from __future__ import annotations

import random
import re
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from components.metrics.text import nfc, parse_number

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_EDGE = ",.!?;:'"
# Keywords in any case; the letter itself must be a capital ("answer is a dog" is no "A").
_MARKER = re.compile(
    r"\b(?i:resposta(?:\s+(?:correta|certa|final))?|answer|op[çc][ãa]o|alternativa|letra"
    r"|choice|option)\s*(?i:[ée]|is)?\s*(?:a\s+)?[:\-]?\s*\(?([A-Z])\)?(?!\w)"
)
_ONLY_LETTER = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?\s*[.,;:!?]?\s*$")
_LEADING_LETTER = re.compile(r"^\s*[\(\[]?([A-Z])(?:[.):]|\])\s+\S")
_OPTION_PREFIX = re.compile(r"^\s*[\(\[]?([A-Z])[.):\]]\s*")


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
            text = text[m.end() :]
        out[letter] = text.strip()
    return out


def _choices(index2ans: Mapping[str, str], extra_letters: Sequence[str] = ()) -> list[str]:
    if index2ans:
        return list(index2ans)
    # No options given: letters A-D, widened to any gold letter beyond D.
    last = max(["D", *(x for x in extra_letters if x in LETTERS)])
    return list(LETTERS[: LETTERS.index(last) + 1])


def _last_of(response: str, candidates: list[str], pattern: str) -> str:
    return max(candidates, key=lambda c: response.rfind(pattern.format(c)))


def _extra_rules(raw: str, index2ans: Mapping[str, str], choices: list[str]) -> str | None:
    """Our additions, tried only when MMMU's steps found nothing."""
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
    return _option_in_text(folded, index2ans)


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


def parse_multi_choice(
    response: str,
    options: Sequence[str] | Mapping[str, str] | None = None,
    *,
    all_choices: Sequence[str] | None = None,
    fallback: str = "none",
    seed_key: str | None = None,
) -> str | None:
    """The letter a free-form response chose, or None (see module doc for the rules)."""
    if fallback not in ("none", "random"):
        raise ValueError(f"fallback must be 'none' or 'random', not {fallback!r}")
    index2ans = option_map(options)
    choices = list(all_choices) if all_choices else _choices(index2ans)
    raw = nfc(response or "")

    # MMMU's steps
    text = " " + raw.strip(_EDGE) + " "
    candidates = [c for c in choices if f"({c})" in text]
    with_brackets = bool(candidates)
    if not candidates:
        candidates = [c for c in choices if f" {c} " in text]
        article = re.match(r"^ ([AEO]) [a-zà-ÿ]{2,}", text)
        if article and article.group(1) in candidates and text.count(f" {article.group(1)} ") == 1:
            candidates.remove(article.group(1))
    by_content = False
    if not candidates and len(text.split()) > 5:
        low = text.lower()
        candidates = [c for c, ans in index2ans.items() if ans and ans.lower() in low]
        by_content = True

    if not candidates:
        extra = _extra_rules(raw, index2ans, choices)
        if extra is not None:
            return extra
        if fallback == "random":
            seed = zlib.crc32((seed_key if seed_key is not None else raw).encode("utf-8"))
            return random.Random(seed).choice(choices)
        return None
    if len(candidates) == 1:
        return candidates[0]
    if by_content:
        low = text.lower()
        return max(candidates, key=lambda c: low.rfind(index2ans[c].lower()))
    return _last_of(text, candidates, "({})" if with_brackets else " {} ")


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


def mc_accuracy(
    prediction: str,
    answers: list[str],
    options: Sequence[str] | Mapping[str, str] | None = None,
    question_id: Any = None,
    fallback: str = "none",
) -> float:
    """1.0 if the option extracted from `prediction` is a gold option."""
    golds = gold_letters(answers, options)
    if not golds:
        raise ValueError(f"no gold option letter in answers {answers!r} (options {options!r})")
    choices = _choices(option_map(options), sorted(golds))
    seed_key = None if question_id is None else str(question_id)
    pred = parse_multi_choice(
        prediction, options, all_choices=choices, fallback=fallback, seed_key=seed_key
    )
    return float(pred in golds)


# ---------------------------------------------------------------- MMMU open questions

_INDICATORS = [
    "could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ",
    # pt-PT
    "é ", "portanto ", "logo ", "assim ", "resposta ", "resultado ",
]  # fmt: skip
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_NUM_PT_DECIMAL = re.compile(r"-?\b\d+,\d+\b")


def _extract_numbers(text: str) -> list[str]:
    """MMMU's three number patterns, plus pt-PT decimal commas ("2,5")."""
    found = _NUM_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)
    found += [n for n in _NUM_PT_DECIMAL.findall(text) if not _NUM_COMMAS.fullmatch(n)]
    return found


def _normalise_open(value: str) -> list[float | str]:
    """MMMU `normalize_str`: a number becomes a float rounded to 2 decimals; a one-character
    string is padded (" x", "x ") to avoid trivial substring hits."""
    value = value.strip()
    number = _mmmu_number(value)
    if number is not None:
        return [round(number, 2)]
    value = value.lower()
    if len(value) == 1:
        return [" " + value, value + " "]
    return [value]


def _mmmu_number(value: str) -> float | None:
    # MMMU reads "1,234" by deleting commas; parse_number does that for thousands groups and
    # reads "2,5" as the pt-PT 2.5 instead of 25.
    try:
        return float(value)
    except ValueError:
        return parse_number(value)


def parse_open_response(response: str) -> list[float | str]:
    """MMMU `parse_open_response`: key sub-responses after answer indicators, plus numbers."""
    text = response.strip().strip(".").lower()
    # sic: upstream splits on r"\.\s(?=[A-Z])" after lower-casing, so only newlines split
    subs = re.split(r"\.\s(?=[A-Z])|\n", text)
    keys: list[str] = []
    for index, sub in enumerate(subs):
        indicators = _INDICATORS + (["="] if index == len(subs) - 1 else [])
        shortest: str | None = None
        for indicator in indicators:
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
        preds.extend(_extract_numbers(key))
    out: list[float | str] = []
    for p in preds:
        for v in _normalise_open(p):
            if v not in out:
                out.append(v)
    return out


def eval_open(answers: Sequence[str], parsed: Sequence[float | str]) -> bool:
    """MMMU `eval_open`: a string answer inside a string prediction, or equal floats."""
    norm_answers: list[float | str] = []
    for answer in answers:
        norm_answers.extend(_normalise_open(str(answer)))
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
    fallback: str = "none",
) -> float:
    """MMMU accuracy: option extraction for multiple-choice items, `eval_open` otherwise."""
    is_mc = question_type == "multiple-choice" if question_type else bool(options)
    if is_mc:
        return mc_accuracy(prediction, answers, options, question_id, fallback)
    return float(eval_open(answers, parse_open_response(prediction)))
