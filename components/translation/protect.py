"""Structure protection: mask what a translator must not touch, restore it afterwards.

Before a text goes to a machine-translation model, every protected span is replaced by a
sentinel `[[N]]` (N = the span's index in the text); after translation the sentinels are
replaced by the original spans. Protected spans, matched left to right in this order:

- sentinel look-alikes already in the source (`[[3]]`), so they cannot be confused;
- fenced code blocks (```...```) and inline code (`...`);
- image/special tokens: `<image>` and any `<word>` / `</word>` tag;
- box coordinates: `[x1, y1, x2, y2]` (four numbers, decimals allowed) and `<box>...</box>`;
- option letters: `(B)` and `A)` (capital A-H not preceded by a letter);
- URLs;
- version numbers: a number after `v`, `version` or `versão` (`v3.10`, `version 2.0`);
- numbers: digit runs with `.`/`,` groups (`12.40`, `1,000`, `3`).

`restore(..., decimal_comma=True)` localises English number formatting for pt-PT
(`localise_number`): a plain decimal `12.40` becomes `12,40`; comma thousands groups
become dots, `1,000` -> `1.000` and `1,234.5` -> `1.234,5` (an English `1,000` left as is
would read as "1" in pt-PT). Left alone: numbers with more than one dot (`1.2.3`, dotted
versions, IP-like runs), version numbers, comma runs that are not thousands groups
(`1,5`, `10,20`) and everything else, which comes back byte for byte. Limitation: a
version without a `v`/`version` cue (`Python 3.10`) reads as a decimal (`3,10`). A sentinel the
model dropped is simply absent from the output, a duplicated one appears twice, an invented
one stays as `[[N]]`: the quality checks (`structure_signature`, digit runs, `leftover`)
see all three on the final text, so `restore` itself never fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTINEL_FMT = "[[{}]]"
# Models sometimes space the brackets out ("[[ 0 ]]", "[ [0] ]"); accept that on the way back.
_SENTINEL_OUT = re.compile(r"\[\s?\[\s?(\d{1,4})\s?\]\s?\]")
_NUMBER = r"\d+(?:[.,]\d+)*"

# (kind, pattern). Kind "number" spans are checked by digit runs, the others by signature.
PROTECTED: tuple[tuple[str, str], ...] = (
    ("sentinel", r"\[\[\d{1,4}\]\]"),
    ("code", r"```.*?```"),
    ("code", r"`[^`\n]+`"),
    ("box", r"<box>.*?</box>"),
    ("tag", r"</?[A-Za-z_][\w-]*>"),
    ("box", rf"\[\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\]"),
    ("option", r"\([A-H]\)"),
    ("option", r"(?<![\w(])[A-H]\)"),
    ("url", r"https?://[^\s<>\]\)]*[^\s<>\]\).,;:!?]"),
    ("version", rf"(?:(?<=(?<![\w.])[vV])|(?i:(?<=version )|(?<=versão )|(?<=versao ))){_NUMBER}"),
    ("number", _NUMBER),
)
_PATTERN = re.compile("|".join(f"(?P<k{i}>{p})" for i, (_, p) in enumerate(PROTECTED)),
                      re.DOTALL)
_KINDS = [kind for kind, _ in PROTECTED]
_DIGITS = re.compile(r"\d+")
_LETTER = re.compile(r"[^\W\d_]")
_PLAIN_DECIMAL = re.compile(r"\d+\.\d+")
_THOUSANDS = re.compile(r"(\d{1,3}(?:,\d{3})+)(?:\.(\d+))?")
_NUMBER_KINDS = ("number", "version", "sentinel")
_BARE_LETTER = re.compile(r"\(?[A-H]\)?[.:]?")


@dataclass(frozen=True)
class Span:
    kind: str
    text: str


@dataclass(frozen=True)
class Masked:
    """A source text with its protected spans replaced by sentinels."""

    source: str
    masked: str
    spans: tuple[Span, ...]

    @property
    def translatable(self) -> bool:
        """False when nothing but protected spans, spaces and punctuation is left, or the
        text is a bare option letter (`B`, `(B)`, `B.`)."""
        if _BARE_LETTER.fullmatch(self.source.strip()):
            return False
        return bool(_LETTER.search(_PATTERN.sub(" ", self.source)))


def _kind(match: re.Match) -> str:
    return _KINDS[int(match.lastgroup[1:])]  # type: ignore[index]


def protect(text: str) -> Masked:
    """Mask every protected span of `text` (see the module docstring)."""
    spans: list[Span] = []

    def repl(match: re.Match) -> str:
        spans.append(Span(_kind(match), match.group(0)))
        return SENTINEL_FMT.format(len(spans) - 1)

    return Masked(text, _PATTERN.sub(repl, text), tuple(spans))


def localise_number(text: str, decimal_comma: bool) -> str:
    """A protected number in pt-PT format when `decimal_comma`: `12.40` -> `12,40`,
    `1,000` -> `1.000`, `1,234.5` -> `1.234,5`; anything else (`1.2.3`, `1,5`) unchanged."""
    if not decimal_comma:
        return text
    if _PLAIN_DECIMAL.fullmatch(text):
        return text.replace(".", ",")
    if m := _THOUSANDS.fullmatch(text):
        whole = m.group(1).replace(",", ".")
        return f"{whole},{m.group(2)}" if m.group(2) else whole
    return text


def restore(translated: str, masked: Masked, decimal_comma: bool = False) -> str:
    """Put the protected spans of `masked` back into a translation of `masked.masked`."""

    def repl(match: re.Match) -> str:
        i = int(match.group(1))
        if i >= len(masked.spans):
            return match.group(0)  # invented by the model: left for `leftover` to see
        span = masked.spans[i]
        return localise_number(span.text, decimal_comma) if span.kind == "number" else span.text

    return _SENTINEL_OUT.sub(repl, translated)


def passthrough(text: str, decimal_comma: bool = False) -> str:
    """The target of a text with nothing to translate (numbers, letters, tags only)."""
    masked = protect(text)
    return restore(masked.masked, masked, decimal_comma)


def structure_signature(text: str) -> list[str]:
    """Sorted non-number protected spans (tags, code, boxes, option letters, URLs)."""
    return sorted(m.group(0) for m in _PATTERN.finditer(text)
                  if _kind(m) not in _NUMBER_KINDS)


def leftover(text: str) -> bool:
    """True when a sentinel survived restoration (the model invented or garbled one)."""
    return bool(_SENTINEL_OUT.search(text))


def digit_runs(text: str) -> list[str]:
    """Sorted digit runs: `12.40` and `12,40` both give `["12", "40"]`."""
    return sorted(_DIGITS.findall(text))


def strip_protected(text: str) -> str:
    """The text with protected spans removed (what a language identifier should judge)."""
    return re.sub(r"\s+", " ", _PATTERN.sub(" ", text)).strip()
