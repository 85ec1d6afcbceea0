"""VQA accuracy: the 10-annotator consensus formula with the official answer processors.

Definition (Antol et al. 2015; Goyal et al. 2017; official `vqaEval.py`): with the human
answers a_1..a_n,

    acc = mean over i of min(1, #{j != i : a_j == prediction} / 3)

i.e. the mean over the n leave-one-out subsets of n-1 annotators of min(1, matches / 3)
("100% if at least 3 humans said it", averaged over subsets). lmms-eval normalises the
prediction and every reference (the official script normalises references only when they
disagree: VQAv2's are pre-normalised), and so do we.

Two answer processors, chosen by `profile` (the task YAML's `profile:`), as lmms-eval 0.7.3:
- `textvqa` (`textvqa_process_results`: the whole `EvalAIAnswerProcessor`, from MMF):
  lower-case, delete every "," and "?", "'s" -> " 's" (so "1,000" is "1000" and the
  digit-comma rule below never fires), then the punctuation and digit/article steps;
- `vqav2` (the default; `vqav2_process_results`): newlines/tabs to spaces, strip, then only
  `process_punctuation` + `process_digit_article` (commas survive until the punctuation
  step: "1,000" is "1000" through the digit-comma rule, "a,b" is "a b").
`process_punctuation`: the listed punctuation is deleted when it touches a space or when the
text has a comma between digits, and replaced by a space otherwise; a period not followed by
a digit is deleted (upstream passes `re.UNICODE` as the substitution count, so only the first
32 periods go: kept in the lmms mode). `process_digit_article`: lower-case, number words to
digits ("two" -> "2", "none" -> "0"), articles a/an/the dropped, apostrophe-less English
contractions restored ("dont" -> "don't").
With one reference the leave-one-out formula has no other annotator and scores 0: lmms-eval
computes exactly that (a bug for sets with one answer); pt scores plain normalised equality.

pt-PT extensions (the same steps with more table entries):
- number words zero..dez ("dois"/"duas" -> "2", "três"/"tres" -> "3", "nenhum(a)" -> "0");
  "um"/"uma" are "1" only when they are the whole answer, and articles otherwise;
- articles o/a/os/as/um/uma/uns/umas dropped;
- preposition+article contractions reduced to the preposition in multi-word answers
  ("no carro" -> "em carro", "da casa" -> "de casa"; "à"/"ao" vanish like the article "a"):
  "do"/"de o" and "no"/"em o" then agree. A one-word "no" is left alone (English "no");
- "sim"/"não" (also "nao") map to "yes"/"no";
- a decimal comma between digits ("2,5", i.e. one or two digits after the comma) becomes a
  period before the comma rules would delete it ("2,5" stays 2.5, not 25); "1,000" keeps
  the English meaning (-> "1000"); NFC first; every period is processed.
"""

from __future__ import annotations

import re

from components.metrics.text import LMMS, PT, nfc

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip

_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
    # pt-PT
    "nenhum": "0", "nenhuma": "0", "dois": "2", "duas": "2", "três": "3", "tres": "3",
    "quatro": "4", "cinco": "5", "seis": "6", "sete": "7", "oito": "8", "nove": "9",
    "dez": "10",
}  # fmt: skip
_PT_ONE = frozenset({"um", "uma"})
_ARTICLES = frozenset({"a", "an", "the", "o", "os", "as", "um", "uma", "uns", "umas"})
_PT_CONTRACTIONS = {
    **dict.fromkeys(("do", "da", "dos", "das", "dum", "duma", "duns", "dumas"), "de"),
    **dict.fromkeys(("no", "na", "nos", "nas", "num", "numa", "nuns", "numas"), "em"),
    # "a" itself is dropped as an article, so "à direita" must agree with "a direita"
    **dict.fromkeys(("ao", "aos", "à", "às"), ""),
    **dict.fromkeys(("pelo", "pela", "pelos", "pelas"), "por"),
}
_YES_NO = {"sim": "yes", "não": "no", "nao": "no"}

_PUNCTUATIONS = [
    ";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
    "`", ",", "?", "!",
]  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: upstream's lookbehind typo kept
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PT_DECIMAL_COMMA = re.compile(r"(?<=\d),(?=\d{1,2}(?!\d))")
_EN_NUMBERS = {k: v for k, v in list(_NUMBERS.items())[:12]}
_EN_ARTICLES = frozenset({"a", "an", "the"})
VQA_PROFILES = ("vqav2", "textvqa")


def _process_punctuation(text: str, count: int = 0) -> str:
    out = text
    for p in _PUNCTUATIONS:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=count)


def _process_digit_article(text: str, mode: str = PT) -> str:
    words = text.lower().split()
    if mode == LMMS:
        out = [_EN_NUMBERS.get(w, w) for w in words]
        return " ".join(_CONTRACTIONS.get(w, w) for w in out if w not in _EN_ARTICLES)
    if len(words) == 1 and words[0] in _PT_ONE:
        return "1"
    out = []
    for word in words:
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        if len(words) > 1:
            word = _PT_CONTRACTIONS.get(word, word)
            if not word:
                continue
        out.append(_CONTRACTIONS.get(word, word))
    return " ".join(_YES_NO.get(w, w) for w in out)


def _word_tokenize(text: str) -> str:
    """EvalAI's first step (TextVQA): lower-case, no "," or "?", "'s" -> " 's"."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def normalise_vqa_answer(text: str, profile: str = "vqav2", mode: str = PT) -> str:
    """The answer processor of `profile` (module doc); pt adds the pt-PT entries."""
    if profile not in VQA_PROFILES:
        raise ValueError(f"unknown VQA profile {profile!r}; known: {', '.join(VQA_PROFILES)}")
    if mode == PT:
        text = _PT_DECIMAL_COMMA.sub(".", nfc(text))
    if profile == "textvqa":
        text = _word_tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text, count=32 if mode == LMMS else 0)
    return _process_digit_article(text, mode)


def vqa_accuracy(prediction: str, answers: list[str], profile: str = "vqav2",
                 mode: str = PT) -> float:
    """VQA consensus accuracy of one prediction against its human answers."""
    if not answers:
        return 0.0
    pred = normalise_vqa_answer(prediction, profile, mode)
    gold = [normalise_vqa_answer(a, profile, mode) for a in answers]
    if len(gold) == 1 and mode == PT:
        return float(pred == gold[0])
    accs = []
    for i in range(len(gold)):
        matches = sum(1 for j, g in enumerate(gold) if j != i and g == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)
