"""The option letter of a free-form answer, by lmms-eval's shared priority rules.

lmms-eval 0.7.3 scores MMStar and RealWorldQA (letter answers) with one extractor,
`lmms_eval/tasks/_task_utils/mcq_extract.py::extract_mcq_answer`; `extract_letter` here
gives the letters it gives (our code, written from that file):

1. Strip the text, then strip each of `, . ! ? ; : ' "` from both ends, one character kind
   after the other (in that order), and pad with a space on each side.
2. Collect candidates (letter, position, format) for every choice letter (A-H by default;
   capitals only): "(X)", "X.", "X:", "X)", "X " (each at its last occurrence); after the
   first occurrence of an answer phrase ("the answer is", "i choose", "my choice is", ...,
   matched case-insensitively), the first occurrence of each capital choice letter, even
   inside a word ("The answer is Down" finds D); the text starting with the letter not
   followed by a letter ("A resposta" starts with A); the text ending with the letter not
   preceded by a letter. Only when none of these is found: any occurrence at all.
3. The candidate of the highest format priority wins (start 10, end 9, phrase 7,
   parentheses 6, period 5, colon 4, right parenthesis 3, space 2, any occurrence 0); among
   those, the later position. Nothing found: "".

Quirks kept on purpose in the lmms mode: a Portuguese article opening the answer ("A
resposta é B") is the letter A (start beats end); a capital inside a word counts ("USA "
ends in "A ", "CAT" falls back to C); an answer phrase reaches into the option text.
"""

from __future__ import annotations

DEFAULT_CHOICES = ("A", "B", "C", "D", "E", "F", "G", "H")

ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is",
    "the best answer is", "best answer is", "the correct option is", "correct option is",
    "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
    "答えは",
)  # fmt: skip

_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4,
             "right_paren": 3, "space": 2, "anywhere": 0}
_EDGE_KINDS = (",", ".", "!", "?", ";", ":", "'", '"')


def extract_letter(response: str, choices: tuple[str, ...] | list[str] | None = None) -> str:
    """The letter lmms-eval's `extract_mcq_answer` reads in `response`, or ""."""
    if not response or not response.strip():
        return ""
    letters = list(choices or DEFAULT_CHOICES)
    text = response.strip()
    for kind in _EDGE_KINDS:
        text = text.strip(kind)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (priority, position, letter)

    def add(letter: str, position: int, kind: str) -> None:
        found.append((_PRIORITY[kind], position, letter))

    for kind, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"),
                          ("right_paren", "{})"), ("space", "{} ")):
        for letter in letters:
            at = text.rfind(pattern.format(letter))
            if at != -1:
                add(letter, at, kind)
    lower = text.lower()
    for phrase in ANSWER_PHRASES:
        at = lower.find(phrase)
        if at == -1:
            continue
        for letter in letters:
            pos = text.find(letter, at + len(phrase))
            if pos != -1:
                add(letter, pos, "phrase")
    core = text.strip()
    for letter in letters:
        if core.startswith(letter) and (len(core) == 1 or not core[1].isalpha()):
            add(letter, 0, "start")
        if core.endswith(letter) and (len(core) == 1 or not core[-2].isalpha()):
            add(letter, len(text) - 1, "end")
    if not found:
        for letter in letters:
            at = text.rfind(letter)
            if at != -1:
                add(letter, at, "anywhere")
    if not found:
        return ""
    # the highest priority, then the latest position; the first found among equals
    best = max(found, key=lambda c: (c[0], c[1]))
    return best[2]
