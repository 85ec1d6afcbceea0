"""MATH-Vision accuracy: the final answer cut out of a solution and compared by math value.

Reference: lmms-eval 0.7.3 `mathvision/utils.py::mathvision_process_results` with
`eval_utils.find_math_answer` and `is_equal` (from the MATH-Vision authors). Steps, as there:
1. strip; a response ending " C." / " (C)." or opening "C\\n", "(C)\\n", "(C) C\\n" is the
   letter C (A-E); a response whose text after its last "is " (trailing "." removed) is a
   number (Python `float()`) is that number;
2. without "\\boxed{": cut after the last "the final answer is", "the answer is", "the correct
   answer is", "the answer should be" (also with a capital "The"), keeping the first line and
   its first sentence; with several "\\boxed{": keep the last;
3. `find_math_answer`: lower-case, drop "{}", take the greedy "oxed{(.*)}" content (else the
   text), cut at an unmatched "}", keep what follows the last "=" and "\\approx", delete
   spaces, "\\,", "\\text", "\\mbox", "\\left", "\\right", degrees, units ("m^3", "km",
   "units"), dollars, percent signs, "\\!", turn "tfrac"/"dfrac" into "frac", a leading "."
   into "0.", fix "\\sqrt2" -> "\\sqrt{2}", "a/b" of integers -> "\\frac{a}{b}", and "0.5"
   -> "\\frac{1}{2}"; then "(a)" -> "a" ... and "{a}" -> "a" for a-e, trailing "." and
   leading ":" removed;
4. `is_equal` against the gold answer and, for multiple choice, against the gold option's
   text: both lower-cased; an empty side is False; equal strings are True; tuples
   "(a, b)" / lists "[a, b]" compare element-wise values rounded to 2 decimals; else both
   sides are evaluated as LaTeX and compared rounded to 2 decimals.
The score is the share of correct items (lmms-eval prints it as a percentage).

Our evaluator (`latex_value`) replaces latex2sympy: numbers, + - * / ^, \\cdot, \\times,
\\div, \\frac/\\dfrac/\\tfrac{a}{b}, \\sqrt{x}, \\sqrt[n]{x}, \\pi, braces, parentheses,
implicit products ("2\\sqrt{3}"), exact rational arithmetic. Anything else (letters,
\\infty, functions) is not a number, where latex2sympy makes a symbol and the comparison
fails: the same outcome. Upstream evaluates `eval(str(sympy_expr))` in a namespace without
`sqrt` or `pi`, so an answer whose value is irrational ("\\frac{\\sqrt{3}}{2}", "2\\pi")
only ever matches character for character: a bug. The lmms mode keeps it (an irrational
value is no number); the pt mode compares irrational values too. `_fix_fracs`
("\\frac12" -> "\\frac{1}{2}") runs upstream only when the text holds "sqrt" (a bug:
`if "sqrt" in string: string = _fix_fracs(string)`); pt runs it always.

pt also reads "12,5" as 12.5 (one decimal comma between digits), cuts after the Portuguese
answer phrases ("a resposta final é", "a resposta é", "a resposta correta é", "resposta:",
"resposta final:") as after the English ones, and takes an explicit option letter
("Opção B", "**B**", "Resposta: (C)") before the rules above.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

from components.metrics.text import LMMS, PT, nfc, python_float

Number = Fraction | float

_TOKEN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+|\\[a-zA-Z]+|[-+*/^{}()\[\]])")


class _Irrational(float):
    """A float known not to be rational (upstream's eval cannot read it)."""


class _NotANumber(Exception):
    pass


class _Parser:
    def __init__(self, text: str, mode: str = PT):
        self.mode = mode
        self.tokens: list[str] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or not m.group(1):
                raise _NotANumber(text)
            self.tokens.append(m.group(1))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0
        # upstream evals the printed sympy expression in Python: a division, a negative or
        # fractional power, or a non-integer decimal (printed as a ratio) makes a float
        self.floaty = False

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _NotANumber(expected)
        self.i += 1
        return tok

    def parse(self) -> Number:
        value = self.expr()
        if self.peek() is not None:
            raise _NotANumber(self.peek())
        return value

    def expr(self) -> Number:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            other = self.term()
            value = _combine(value, other, op)
        return value

    def term(self) -> Number:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/", "\\cdot", "\\times", "\\div"):
                self.take()
                divide = tok in ("/", "\\div")
                self.floaty |= divide
                value = _combine(value, self.unary(), "/" if divide else "*")
            elif tok is not None and (tok[0].isdigit() or tok in ("{", "(", "\\frac", "\\dfrac",
                                      "\\tfrac", "\\sqrt", "\\pi")):
                value = _combine(value, self.power(), "*")  # implicit product
            else:
                return value

    def unary(self) -> Number:
        if self.peek() in ("-", "+"):
            sign = self.take()
            value = self.unary()
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> Number:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            start = self.i
            exponent = self.group() if self.peek() == "{" else self.unary()
            if self.mode == LMMS and "0.5" in self.tokens[start:self.i]:
                raise _NotANumber("printed as sqrt(...)")
            return self._pow(base, exponent)
        return base

    def group(self) -> Number:
        if self.peek() == "{":
            self.take("{")
            value = self.expr()
            self.take("}")
            return value
        return self.atom()

    def atom(self) -> Number:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            value = Fraction(tok)  # latex2sympy reads decimals as rationals
            self.floaty |= value.denominator != 1
            return value
        if tok in ("{", "("):
            value = self.expr()
            self.take("}" if tok == "{" else ")")
            return value
        if tok in ("\\frac", "\\dfrac", "\\tfrac"):
            num = self.group()
            self.floaty = True
            return _combine(num, self.group(), "/")
        if tok == "\\sqrt":
            index: Number | None = None
            if self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
            if index is None and self.mode == LMMS:
                raise _NotANumber("sqrt(...) does not eval upstream")
            return self._pow(self.group(), _combine(Fraction(1), index or Fraction(2), "/"))
        if tok == "\\pi":
            return _Irrational(math.pi)
        raise _NotANumber(tok)

    def _pow(self, base: Number, exponent: Number) -> Number:
        if not (isinstance(exponent, Fraction) and exponent.denominator == 1 and exponent >= 0):
            self.floaty = True
        if self.mode == LMMS and isinstance(exponent, Fraction) and exponent.denominator != 1:
            value = float(base) ** float(exponent)  # Python's float power, as eval does
            if isinstance(value, complex):
                raise _NotANumber("complex")
            return value
        return _pow(base, exponent)


def _irrational(*values: Number) -> bool:
    return any(isinstance(v, _Irrational) for v in values)


def _combine(a: Number, b: Number, op: str) -> Number:
    if op == "/" and b == 0:
        raise _NotANumber("division by zero")
    result = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
              "/": lambda: a / b}[op]()
    if _irrational(a, b) and not isinstance(result, Fraction):
        return _Irrational(result)
    return result


def _pow(base: Number, exponent: Number) -> Number:
    if isinstance(base, Fraction) and isinstance(exponent, Fraction):
        if exponent.denominator == 1:
            if base == 0 and exponent < 0:
                raise _NotANumber("zero to a negative power")
            return base ** int(exponent)
        root = _exact_root(abs(base), exponent.denominator)
        if root is not None and base >= 0:
            return root ** exponent.numerator
        if base < 0:
            raise _NotANumber("root of a negative number")
        return _Irrational(float(base) ** float(exponent))
    try:
        value = float(base) ** float(exponent)
    except (OverflowError, ZeroDivisionError):
        raise _NotANumber("power") from None
    if isinstance(value, complex):
        raise _NotANumber("complex")
    return _Irrational(value) if _irrational(base, exponent) else value


def _exact_root(value: Fraction, n: int) -> Fraction | None:
    def iroot(k: int) -> int | None:
        r = round(k ** (1.0 / n))
        for c in (r - 1, r, r + 1):
            if c >= 0 and c**n == k:
                return c
        return None

    num, den = iroot(value.numerator), iroot(value.denominator)
    return Fraction(num, den) if num is not None and den is not None else None


def latex_value(text: str, mode: str = PT) -> int | float | None:
    """The number a LaTeX expression denotes, as upstream's `eval(str(latex2sympy(x)))`
    would give it (an int for an integer result of exact arithmetic, else a float), or
    None. lmms: an irrational value is None (upstream cannot eval sqrt or pi)."""
    try:
        parser = _Parser(text, mode)
        value = parser.parse()
    except (_NotANumber, RecursionError, OverflowError, ValueError):
        return None
    if isinstance(value, _Irrational):
        return None if mode == LMMS else float(value)
    if isinstance(value, Fraction) and value.denominator == 1 and not parser.floaty:
        return int(value)
    return float(value)


def _eval_tuple(s: str, mode: str) -> str:
    """Tuples "(a,b)" and lists "[a,b]" of values rounded to 2 decimals (upstream's form)."""
    parts = s[1:-1].split(",")
    if len(s) < 2 or len(parts) < 2 or (s[0], s[-1]) not in (("(", ")"), ("[", "]")):
        return s
    out = []
    for part in parts:
        if "infty" in part or part in ("a", "-a"):
            out.append(part)
            continue
        value = latex_value(part, mode)
        if value is None:
            return s
        out.append(str(round(value, 2) if mode == LMMS else round(float(value), 2)))
    return f"{s[0]}{','.join(out)}{s[-1]}"


def is_equal(answer: str, gold: str, mode: str = PT) -> bool:
    """MATH-Vision `is_equal` (module doc)."""
    answer, gold = answer.lower(), gold.lower()
    if not answer.replace(" ", "") or not gold.replace(" ", ""):
        return False
    if answer.strip() == gold.strip():
        return True
    answer, gold = _eval_tuple(answer, mode), _eval_tuple(gold, mode)
    if answer == gold:
        return True
    a, g = latex_value(_pt_number(answer, mode), mode), latex_value(_pt_number(gold, mode), mode)
    return a is not None and g is not None and round(a, 2) == round(g, 2)


_PT_DECIMAL = re.compile(r"(?<=\d),(?=\d)")


def _pt_number(text: str, mode: str) -> str:
    if mode == PT and text.count(",") == 1 and re.fullmatch(r"\s*-?\d+,\d+\s*", text):
        return _PT_DECIMAL.sub(".", text)
    return text


# ---------------------------------------------------------------- find_math_answer


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part[:1] == "{":
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _fix_a_slash_b(s: str) -> str:
    pieces = s.split("/")
    if len(pieces) != 2:
        return s
    try:
        a, b = int(pieces[0]), int(pieces[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _fix_sqrt(s: str) -> str:
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += ("\\sqrt{" + part[0] + "}" + part[1:]) if part and part[0] != "{" \
            else "\\sqrt" + part
    return out


def _strip_string(s: str, mode: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2:
        s = s.split("=")[-1]
    if len(s.split("\\approx")) == 2:
        s = s.split("\\approx")[-1]
    if "sqrt" in s:
        s = _fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s or mode == PT:  # sic: upstream fixes \frac12 only next to a sqrt
        s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def find_math_answer(s: str, mode: str = PT) -> str:
    """MATH-Vision `find_math_answer` (module doc, step 3)."""
    s = s.lower().replace("{}", "")
    found = re.findall(r"oxed{(.*)}", s, flags=re.S)
    ans = found[-1] if found else s
    if "}" in ans and ("{" not in ans or ans.find("}") < ans.find("{")):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    for old, new in ((" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"),
                     ("\\\\", "\\"), ("\n", ""), ("\\text", ""), ("\\mbox", ""),
                     ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""),
                     ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""),
                     ("{units}", ""), ("units", ""), ("{km}", ""), ("km", "")):
        ans = ans.replace(old, new)
    return _strip_string(ans, mode)


_FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
_PT_FLAGS = ("a resposta final é", "a resposta é", "a resposta correta é", "resposta final:",
             "resposta:")


def _cut_after_flags(answer: str, flags: Sequence[str]) -> str:
    for flag in flags:
        for form in (flag, flag.replace("the", "The") if flag.startswith("the")
                     else flag[0].upper() + flag[1:]):
            raw = answer
            answer = answer.split(form)[-1].strip()
            if form in raw:
                answer = answer.split("\n")[0].split(". ")[0]
    return answer


def extract_answer(prediction: str, mode: str = PT) -> str:
    """Steps 1-3 of the module doc: the model's final answer, normalised."""
    answer = nfc(prediction).strip() if mode == PT else prediction.strip()
    for c in "ABCDE":
        if (answer.endswith((f" {c}.", f" ({c}).")) or answer.startswith(
                (f"{c}\n", f"({c})\n", f"({c}) {c}\n"))):
            answer = c
    tail = answer.split("is ")[-1].rstrip(".")
    if python_float(tail) is not None:
        answer = tail
    if "oxed{" not in answer:
        answer = _cut_after_flags(answer, _FLAGS + (_PT_FLAGS if mode == PT else ()))
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = find_math_answer(answer, mode)
    for letter in "abcde":
        answer = answer.replace(f"({letter})", letter)
    for letter in "abcde":
        answer = answer.replace(f"{{{letter}}}", letter)
    return answer.rstrip(".").lstrip(":").strip()


def mathvision_accuracy(prediction: str, answers: list[str],
                        options: Sequence[str] | None = None, mode: str = PT) -> float:
    """1.0 if the final answer equals the gold answer or the gold option's text."""
    letters = "ABCDEFGHIJ"
    choices = list(letters[: len(options)]) if options else []
    if mode == PT and options:
        from components.metrics.choice import explicit_letter, option_map

        letter = explicit_letter(prediction, option_map(options), choices)
        if letter is not None:
            return float(any(letter == str(a).strip().upper() for a in answers))
    answer = extract_answer(prediction, mode)
    for gold in answers:
        gold = str(gold)
        value = ""
        if options and len(gold) == 1 and gold.upper() in choices:
            value = str(options[letters.index(gold.upper())])
        if is_equal(gold, answer, mode) or is_equal(value, answer, mode):
            return 1.0
    return 0.0

