"""Metrics against worked examples from their official definitions (hand-computed values),
against sacrebleu for BLEU, and against values produced by pycocoevalcap 1.2 for the COCO
caption metrics (live comparison too when pycocoevalcap is importable)."""

from __future__ import annotations

import json
import math
import random
import time

import pytest

from components.metrics import METRICS, UnknownMetricError, get_metric
from components.metrics.boxes import box_accuracy, box_iou, iou, parse_box
from components.metrics.captions import (
    bleu_corpus,
    cider_corpus,
    rouge_l,
    sentence_bleu4,
    tokenize,
)
from components.metrics.choice import mc_accuracy, mmmu_accuracy, parse_multi_choice
from components.metrics.mme import mme_scores
from components.metrics.pope import pope_label, pope_scores
from components.metrics.score_file import (
    PredictionsFileError,
    score_command,
    score_predictions_file,
    summary_text,
)
from components.metrics.text import (
    anls,
    exact_match,
    levenshtein,
    normalise_yes_no,
    ocrbench_accuracy,
    parse_number,
    relaxed_accuracy,
    token_f1,
    yes_no_accuracy,
)
from components.metrics.vqa import normalise_vqa_answer, vqa_accuracy

# ---------------------------------------------------------------- VQA


def test_vqa_two_of_ten_annotators_is_0_6():
    # Leave-one-out by hand: 10 subsets of 9 annotators.
    # - 2 subsets drop one of the 2 matching annotators -> 1 match left -> min(1, 1/3) = 1/3
    # - 8 subsets keep both matches -> min(1, 2/3) = 2/3
    # mean = (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10 = 0.6
    answers = ["azul", "azul"] + ["verde"] * 8
    assert vqa_accuracy("azul", answers) == pytest.approx(0.6)


def test_vqa_three_and_four_matches():
    # 3 matches: 3 subsets keep 2 (2/3), 7 keep 3 (1) -> (2 + 7) / 10 = 0.9
    assert vqa_accuracy("azul", ["azul"] * 3 + ["verde"] * 7) == pytest.approx(0.9)
    # 4 matches: every subset keeps >= 3 -> 1
    assert vqa_accuracy("azul", ["azul"] * 4 + ["verde"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("vermelho", ["azul"] * 4 + ["verde"] * 6) == 0.0


def test_vqa_normalisation_english_and_portuguese():
    answers = ["2"] * 10
    assert vqa_accuracy("Two", answers) == 1.0
    assert vqa_accuracy("dois.", answers) == 1.0
    assert vqa_accuracy("Duas", answers) == 1.0
    assert vqa_accuracy("3", answers) == 0.0
    assert normalise_vqa_answer("um") == "1"  # a whole answer "um" is the number
    assert normalise_vqa_answer("um gato") == "gato"  # otherwise an article
    assert normalise_vqa_answer("The dog!") == "dog"
    assert normalise_vqa_answer("Não") == "no"
    assert normalise_vqa_answer("no carro") == normalise_vqa_answer("em o carro")
    assert normalise_vqa_answer("à direita") == normalise_vqa_answer("a direita")
    assert normalise_vqa_answer("2,5") == "2.5"  # pt decimal comma, not 25
    assert normalise_vqa_answer("1,000") == "1000"  # English thousands kept
    assert normalise_vqa_answer("dont") == "don't"


def test_vqa_fewer_than_ten_answers():
    # one answer: plain normalised equality
    assert vqa_accuracy("Lisboa", ["lisboa"]) == 1.0
    # three answers, one match: dropping it leaves 0 matches, the two other subsets keep
    # 1 match (1/3 each): (0 + 1/3 + 1/3) / 3 = 2/9
    assert vqa_accuracy("porto", ["porto", "lisboa", "faro"]) == pytest.approx(2 / 9)
    # two matches: (1/3 + 1/3 + 2/3) / 3 = 4/9
    assert vqa_accuracy("porto", ["porto", "porto", "faro"]) == pytest.approx(4 / 9)


# ---------------------------------------------------------------- ANLS


def test_anls_worked_examples():
    assert anls("The Lord", ["the lord"]) == 1.0
    assert anls("  the   lord ", ["The Lord"]) == 1.0
    # "abcde" vs "abxyz": 3 edits / 5 = NL 0.6 -> 1 - 0.6 = 0.4 < 0.5 -> 0
    assert anls("abxyz", ["abcde"]) == 0.0
    # one edit in five: NL 0.2 -> 0.8
    assert anls("abcdx", ["abcde"]) == pytest.approx(0.8)
    # NL exactly 0.5: lmms-eval keeps 1 - 0.5 = 0.5 (only a score *below* 0.5 becomes 0)
    assert anls("abxy", ["abcd"]) == 0.5
    # max over answers (= 1 - min NL)
    assert anls("abcdx", ["zzzzz", "abcde"]) == pytest.approx(0.8)
    # lmms-eval's scorer divides by the raw strings' lengths: "abxy   " has 7 characters, so
    # the 2 edits between "abxy" and "abcd" give NL 2/7, not 2/4 ...
    assert anls("abxy   ", ["abcd"], mode="lmms") == pytest.approx(1 - 2 / 7)
    # ... but its model wrapper strips the generation first, so the lmms pipeline sees "abxy"
    assert get_metric("anls").score("abxy   ", ["abcd"], mode="lmms") == 0.5
    # and a reference with stray spaces keeps them in lmms; pt measures normalised strings
    assert anls("abxy", ["abcd  "], mode="lmms") == pytest.approx(1 - 2 / 6)
    assert anls("abxy", ["abcd  "]) == 0.5
    assert anls("", [""]) == 1.0


def _lmms_eval_anls(references: list[str], prediction: str, thresh_hold: float = 0.5) -> float:
    """lmms-eval `lmms_eval/api/metrics.py::anls` (and its pure-Python `levenshtein_distance`),
    transcribed literally as the reference the port must equal."""

    def levenshtein_distance(s1, s2):
        if len(s1) > len(s2):
            s1, s2 = s2, s1
        distances = range(len(s1) + 1)
        for i2, c2 in enumerate(s2):
            distances_ = [i2 + 1]
            for i1, c1 in enumerate(s1):
                if c1 == c2:
                    distances_.append(distances[i1])
                else:
                    distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
            distances = distances_
        return distances[-1]

    values = []
    for answer in references:
        gt_answer = " ".join(answer.strip().lower().split())
        det_answer = " ".join(prediction.strip().lower().split())
        dist = levenshtein_distance(gt_answer, det_answer)
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(dist) / float(length))
    question_result = 1 - min(values)
    if question_result < thresh_hold:
        question_result = 0
    return question_result


def test_anls_equals_lmms_eval_on_random_strings():
    rng = random.Random(7)
    alphabet = "abcçãéß  Lx\t"  # ß: upstream measures len(x.upper()), "SS"
    for _ in range(300):
        pred = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        refs = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
            for _ in range(rng.randint(1, 3))
        ]
        assert anls(pred, refs, mode="lmms") == pytest.approx(_lmms_eval_anls(refs, pred),
                                                              abs=1e-12)
        assert get_metric("anls").score(pred, refs, mode="lmms") == pytest.approx(
            _lmms_eval_anls(refs, pred.strip()), abs=1e-12)


def test_levenshtein_is_exact_and_fast():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("coração", "coracao") == 2
    rng = random.Random(0)
    a = "".join(rng.choice("abcdefghij ") for _ in range(3000))
    b = "".join(rng.choice("abcdefghij ") for _ in range(3000))
    start = time.perf_counter()
    distance = levenshtein(a, b)
    # a pure-Python O(n*m) loop takes ~2 s for this pair; rapidfuzz takes milliseconds
    assert time.perf_counter() - start < 0.25
    assert 0 < distance <= 3000


# ---------------------------------------------------------------- relaxed accuracy


def test_relaxed_accuracy_worked_examples():
    assert relaxed_accuracy("12", ["12.5"]) == 1.0  # |12 - 12.5| / 12.5 = 0.04
    assert relaxed_accuracy("11.8", ["12.5"]) == 0.0  # 0.056 > 0.05
    assert relaxed_accuracy("13", ["12"]) == 0.0  # relative to the target: 1/12
    assert relaxed_accuracy("50%", ["0.5"]) == 1.0
    assert relaxed_accuracy("12,5%", ["0.125"]) == 1.0
    assert relaxed_accuracy("1.050,5", ["1050.5"]) == 1.0
    assert relaxed_accuracy("12,5", ["12.5"]) == 1.0
    assert relaxed_accuracy("1,050.5", ["1050.5"]) == 1.0
    assert relaxed_accuracy("Lisboa", ["lisboa"]) == 1.0
    assert relaxed_accuracy("Porto", ["lisboa"]) == 0.0
    assert relaxed_accuracy("0", ["0"]) == 1.0  # zero target falls back to strings
    assert relaxed_accuracy("0.0", ["0"]) == 0.0


def test_parse_number_keeps_english():
    assert parse_number("1.050") == pytest.approx(1.05)  # float() reads it: English
    assert parse_number("1,050") == 1050.0
    assert parse_number("1.000.000") == 1_000_000.0
    assert parse_number("1 050,5") == pytest.approx(1050.5)
    assert parse_number("-3,25") == pytest.approx(-3.25)
    assert parse_number("nan") is None
    assert parse_number("doze") is None


# ---------------------------------------------------------------- exact match, F1, yes/no


def test_exact_match_normalisation():
    assert exact_match("  Lisboa. ", ["lisboa"]) == 1.0
    assert exact_match("«Lisboa»", ["Lisboa"]) == 1.0
    # lmms-eval's exact_match deletes ASCII punctuation anywhere; pt keeps that rule
    assert exact_match("C++", ["C"]) == 1.0 == exact_match("C++", ["C"], mode="lmms")
    assert exact_match("C#", ["Cobol"]) == 0.0
    assert exact_match("Porto", ["Lisboa", "porto!"]) == 1.0
    assert exact_match("Lisboa, Portugal", ["Lisboa"]) == 0.0


def test_token_f1_squad_style():
    # tokens after normalisation: pred [cat, sat, on, mat], gold [cat, on, mat]
    # P = 3/4, R = 3/3 -> F1 = 2 * 0.75 * 1 / 1.75 = 6/7
    assert token_f1("The cat sat on the mat.", ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert token_f1("O gato está no sofá", ["um gato no sofá"]) == pytest.approx(6 / 7)
    assert token_f1("cão", ["gato"]) == 0.0
    assert token_f1("o", ["a"]) == 1.0  # both empty after article removal (SQuAD v2 rule)


def test_portuguese_yes_no_is_canonical_across_text_metrics():
    assert relaxed_accuracy("Sim", ["Yes"]) == 1.0
    assert relaxed_accuracy("não.", ["No"]) == 1.0
    assert relaxed_accuracy("Sim", ["No"]) == 0.0
    assert exact_match("Sim.", ["yes"]) == 1.0
    assert exact_match("NÃO", ["No"]) == 1.0
    assert exact_match("nao", ["não"]) == 1.0
    assert exact_match("Sim, há um gato", ["yes"]) == 0.0  # whole answers only
    assert token_f1("Sim", ["Yes"]) == 1.0
    assert yes_no_accuracy("Sim", ["Yes"]) == 1.0


def test_mme_parse_no_prefix_is_not_the_portuguese_contraction():
    # MME's rule reads "no" in the first 4 characters; "No sofá" is em+o, not a "no"
    assert normalise_yes_no("No sofá há um gato") is None
    assert normalise_yes_no("No.") == "no"
    assert normalise_yes_no("No, não há nenhum gato.") == "no"
    assert normalise_yes_no("No there is not") == "no"  # English context: upstream rule
    assert normalise_yes_no("Nope") == "no"


def test_yes_no_normalisation():
    assert normalise_yes_no("Sim, há um gato.") == "yes"
    assert normalise_yes_no("Não.") == "no"
    assert normalise_yes_no("nao") == "no"
    assert normalise_yes_no("Yes, it is") == "yes"
    assert normalise_yes_no("No") == "no"
    assert normalise_yes_no("simplesmente não sei") is None
    assert normalise_yes_no("talvez") is None


# ---------------------------------------------------------------- multiple choice / MMMU

OPTIONS = ["Porto", "Lisboa", "Coimbra", "Faro"]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("C.", "C"),
        ("c", "C"),
        ("Resposta: D", "D"),
        ("A resposta correta é a (C).", "C"),
        ("A resposta é B", "B"),
        ("C. Coimbra", "C"),
        ("Lisboa", "B"),
        ("Eu acho que a capital de Portugal é Lisboa, claramente", "B"),
        ("(A) parece certo, mas a resposta é (C)", "C"),
        ("A cidade é Lisboa, que fica no centro do país", "B"),  # "A" is an article here
        ("O Porto é a resposta", "A"),  # one option's text, as whole words
        ("A cidade é Lisboa", "B"),
        ("Lisboa ou Porto", None),  # two options: ambiguous
        ("Portola", None),  # not as a whole word
        ("The answer is a dog", None),
        ("não sei", None),
    ],
)
def test_parse_multi_choice(response, letter):
    assert parse_multi_choice(response, OPTIONS) == letter


def test_mc_option_text_inside_a_longer_option_and_one_letter_options():
    nested = ["Porto", "Porto Santo", "Faro"]
    assert parse_multi_choice("Fica no Porto Santo", nested) == "B"
    assert parse_multi_choice("Fica no Porto", nested) == "A"
    assert parse_multi_choice("diria que é a", ["a", "b"]) is None  # letters are not searched


def test_mc_fallback_is_deterministic():
    first = parse_multi_choice("não sei", OPTIONS, fallback="random", seed_key="q7")
    assert first in "ABCD"
    assert all(
        parse_multi_choice("não sei", OPTIONS, fallback="random", seed_key="q7") == first
        for _ in range(5)
    )
    with pytest.raises(ValueError):
        parse_multi_choice("B", OPTIONS, fallback="coin")


def test_mc_accuracy_gold_as_letter_or_text():
    assert mc_accuracy("Lisboa", ["B"], OPTIONS) == 1.0
    assert mc_accuracy("B", ["Lisboa"], OPTIONS) == 1.0
    assert mc_accuracy("(C)", ["B"], OPTIONS) == 0.0
    assert mc_accuracy("B", ["(B)"]) == 1.0  # no options: letters A-D
    assert mc_accuracy("B", ["B"], ["A. Porto", "B. Lisboa"]) == 1.0
    with pytest.raises(ValueError):
        mc_accuracy("B", ["Lisboa"])  # text gold without options cannot be resolved


def test_mmmu_open_and_multiple_choice():
    assert mmmu_accuracy("So the answer is 1,234", ["1234"]) == 1.0
    assert mmmu_accuracy("Portanto, o resultado é 2,5", ["2.5"]) == 1.0
    assert mmmu_accuracy("The result is 3.14159", ["3.14"]) == 1.0  # rounded to 2 decimals
    assert mmmu_accuracy("The result is 3.2", ["3.14"]) == 0.0
    assert mmmu_accuracy("it is paris", ["Paris"]) == 1.0
    assert mmmu_accuracy("(B)", ["B"], options=OPTIONS, question_type="multiple-choice") == 1.0


# ---------------------------------------------------------------- OCRBench


def test_ocrbench_substring_rules():
    assert ocrbench_accuracy("The sign says LISBOA 2024", ["lisboa"]) == 1.0
    assert ocrbench_accuracy("The sign says Porto", ["lisboa"]) == 0.0
    assert ocrbench_accuracy("x ^ { 2 } + 1", ["x^{2}+1"], dataset="HME100k") == 1.0
    assert ocrbench_accuracy("x ^ { 2 } + 1", ["x^{2}+1"]) == 0.0  # spaces matter elsewhere


# ---------------------------------------------------------------- POPE


def test_pope_label_rule():
    assert pope_label("Yes, there is a dog.") == "yes"
    assert pope_label("There is no cat in the image.") == "no"
    assert pope_label("I do not see one") == "no"
    assert pope_label("Não.") == "no"
    assert pope_label("Sim, há um gato no sofá.") == "yes"
    assert pope_label("Há um gato no sofá.") == "yes"  # pt contraction "no", not negation
    assert pope_label("No!") == "no"
    # pt-PT negative pronouns
    assert pope_label("Nenhum gato.") == "no"
    assert pope_label("Nenhuma.") == "no"
    assert pope_label("Nada.") == "no"
    assert pope_label("Na imagem não há nenhum cão.") == "no"
    assert pope_label("Vejo nada de especial") == "no"
    assert pope_label("No sofá está um gato.") == "yes"


def test_pope_confusion_matrix_by_hand():
    # TP = 3, FP = 1, TN = 4, FN = 2 (positive = yes), N = 10
    preds = ["Yes", "Sim.", "yes, there is"] + ["Yes"] + ["No", "não", "There is no dog", "No."]
    preds += ["No", "Não, não há."]
    gold = ["yes"] * 3 + ["no"] + ["no"] * 4 + ["sim", "yes"]
    s = pope_scores(preds, [[g] for g in gold])
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (3, 1, 4, 2)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 5)
    # F1 = 2 * 0.75 * 0.6 / (0.75 + 0.6) = 0.9 / 1.35 = 2/3
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(7 / 10)
    assert s["yes_ratio"] == pytest.approx(4 / 10)  # predicted yes, not ground truth


# ---------------------------------------------------------------- MME


def test_mme_acc_plus_by_hand():
    rows = [
        # existence: image e1 both right, e2 one right -> acc 3/4, acc+ 1/2 -> 125
        ("Yes", "yes", "existence", "e1"), ("Não", "no", "existence", "e1"),
        ("Sim", "yes", "existence", "e2"), ("Sim", "no", "existence", "e2"),
        # count: both wrong -> 0
        ("No", "yes", "count", "c1"), ("Yes", "no", "count", "c1"),
        # code_reasoning: both right -> 200
        ("yes.", "yes", "code_reasoning", "k1"), ("no", "no", "code_reasoning", "k1"),
    ]  # fmt: skip
    details, per_item = mme_scores(
        [r[0] for r in rows],
        [[r[1]] for r in rows],
        [{"category": r[2], "question_id": r[3]} for r in rows],
    )
    assert details["existence"] == pytest.approx(125.0)
    assert details["count"] == pytest.approx(0.0)
    assert details["code_reasoning"] == pytest.approx(200.0)
    assert details["perception"] == pytest.approx(125.0)
    assert details["cognition"] == pytest.approx(200.0)
    assert details["total"] == pytest.approx(325.0)
    assert per_item == [1, 1, 1, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="unknown MME subtask"):
        mme_scores(["yes"], [["yes"]], [{"category": "astrology", "question_id": "x"}])


# ---------------------------------------------------------------- captions

CAP_PREDS = [
    "um gato preto sentado no sofá",
    "dois cães a correr na praia",
    "uma mulher a andar de bicicleta na rua",
    "um prato com comida",
]
CAP_REFS = [
    ["um gato preto está sentado no sofá", "gato preto deitado num sofá da sala"],
    [
        "dois cães correm na areia da praia",
        "cães a brincar na praia",
        "dois cães a correr junto ao mar",
    ],
    ["uma mulher anda de bicicleta numa rua da cidade", "mulher de bicicleta na rua"],
    ["um prato de comida em cima da mesa", "comida num prato branco"],
]  # fmt: skip
# Produced by pycocoevalcap 1.2 (Bleu(4), Cider(), Rouge()) on the same tokens.
COCO_BLEU = [0.839290774900555, 0.7233776750279584, 0.5730888457229291, 0.41649016774572056]
COCO_CIDER = 2.9041629662532458
COCO_CIDER_ITEMS = [3.510932142672849, 3.188989904800504, 3.3964083186255034, 1.520321498914126]
COCO_ROUGE = 0.731030691017855


def test_tokenizer():
    assert tokenize("Um Gato, preto; no sofá!") == ["um", "gato", "preto", "no", "sofá"]
    assert tokenize("guarda-chuva de 2.5 m") == ["guarda-chuva", "de", "2.5", "m"]


def test_caption_metrics_match_pycocoevalcap_values():
    bleu = bleu_corpus(CAP_PREDS, CAP_REFS)
    assert [bleu.details[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(COCO_BLEU, abs=1e-12)
    assert bleu.score == pytest.approx(COCO_BLEU[3], abs=1e-12)
    cider = cider_corpus(CAP_PREDS, CAP_REFS)
    assert cider.score == pytest.approx(COCO_CIDER, abs=1e-12)
    assert cider.scores == pytest.approx(COCO_CIDER_ITEMS, abs=1e-12)
    rouge = sum(rouge_l(p, r) for p, r in zip(CAP_PREDS, CAP_REFS, strict=True)) / 4
    assert rouge == pytest.approx(COCO_ROUGE, abs=1e-12)


def test_caption_metrics_match_pycocoevalcap_live():
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    rouge_mod = pytest.importorskip("pycocoevalcap.rouge.rouge")
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(CAP_REFS)}
    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(CAP_PREDS)}
    b, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    c, _ = cider_mod.Cider().compute_score(gts, res)
    r, _ = rouge_mod.Rouge().compute_score(gts, res)
    assert bleu_corpus(CAP_PREDS, CAP_REFS).score == pytest.approx(b[3], abs=1e-12)
    assert cider_corpus(CAP_PREDS, CAP_REFS).score == pytest.approx(c, abs=1e-12)
    assert get_metric("rouge_l").evaluate(CAP_PREDS, CAP_REFS).score == pytest.approx(r)


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    preds = [" ".join(tokenize(p)) for p in CAP_PREDS]
    refs = [[" ".join(tokenize(r)) for r in rs] for rs in CAP_REFS]
    streams = [[rs[j] if j < len(rs) else rs[0] for rs in refs] for j in range(3)]
    expected = sacrebleu.corpus_bleu(
        preds, streams, tokenize="none", smooth_method="none", force=True
    ).score
    assert bleu_corpus(CAP_PREDS, CAP_REFS).score * 100 == pytest.approx(expected, rel=1e-8)


def test_bleu_brevity_penalty_by_hand():
    # hypothesis "a b c d" (4 tokens) vs reference "a b c d e f g h" (8): all n-gram
    # precisions are 1, BP = exp(1 - 8/4) = exp(-1)
    assert sentence_bleu4("a b c d", ["a b c d e f g h"]) == pytest.approx(math.exp(-1), rel=1e-8)
    assert sentence_bleu4("a b c d", ["a b c d"]) == pytest.approx(1.0, rel=1e-8)


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e f") = 3 -> P = 3/4, R = 3/5
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 0.45 / (0.6 + 1.08) = 1.098 / 1.68
    assert rouge_l("a b c d", ["a c d e f"]) == pytest.approx(1.098 / 1.68)
    assert rouge_l("x y", ["a b"]) == 0.0


def test_cider_by_hand():
    # Two items with disjoint vocabularies: every n-gram has df = 1, idf = log 2 =: L.
    # Item 2 ("d e" vs "d e"): cosines 1, 1 for n = 1, 2 and 0 for n = 3, 4 (no n-grams),
    #   equal lengths -> 10 * (1 + 1 + 0 + 0) / 4 = 5.
    # Item 1 ("a b" vs "a b c"): n=1: 2L^2 / (sqrt2 L * sqrt3 L) = 2/sqrt6;
    #   n=2: L^2 / (L * sqrt2 L) = 1/sqrt2; n=3, 4: 0.  Lengths in bigrams: 1 vs 2,
    #   penalty exp(-1 / (2 * 36)).  -> 10 * (2/sqrt6 + 1/sqrt2) / 4 * exp(-1/72)
    item1 = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    result = cider_corpus(["a b", "d e"], [["a b c"], ["d e"]])
    assert result.scores == pytest.approx([item1, 5.0])
    assert result.score == pytest.approx((item1 + 5.0) / 2)


# ---------------------------------------------------------------- boxes


def test_iou_and_accuracy():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (0, 0, 10, 5)) == pytest.approx(0.5)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_accuracy("[0, 0, 10, 5]", ["[0, 0, 10, 10]"]) == 1.0  # IoU 0.5 counts
    assert box_accuracy("[5, 0, 15, 10]", ["[0, 0, 10, 10]"]) == 0.0
    assert box_accuracy("nenhuma caixa", ["[0, 0, 10, 10]"]) == 0.0


def test_box_coordinate_spaces():
    ref = ["[100, 50, 300, 150]"]  # pixels in a 400 x 200 image
    kw = {"image_width": 400, "image_height": 200}
    assert box_iou("[0.25, 0.25, 0.75, 0.75]", ref, **kw) == pytest.approx(1.0)
    assert box_iou("[250, 250, 750, 750]", ref, box_format="norm1000", **kw) == pytest.approx(1.0)
    assert box_iou("<box>(250,250),(750,750)</box>", ref, box_format="norm1000", **kw) == 1.0
    assert box_iou("[0.25, 0.25, 0.75, 0.75]", ["[0.25, 0.25, 0.75, 0.75]"]) == 1.0
    assert box_iou("[100, 50, 300, 150]", ["[100, 50, 200, 100]"], answer_format="xywh") == 1.0
    with pytest.raises(ValueError, match="image_width"):
        box_iou("[0.25, 0.25, 0.75, 0.75]", ref)
    assert parse_box("a caixa é (1.5, 2, 3, 4.5)") == (1.5, 2.0, 3.0, 4.5)


# ---------------------------------------------------------------- registry and files


def test_best_possible_scores():
    assert get_metric("cider").best == 10.0
    assert get_metric("mme").best == 2800.0
    assert get_metric("mme_perception").best + get_metric("mme_cognition").best == 2800.0
    assert get_metric("anls").best == get_metric("bleu4").best == 1.0
    # CIDEr-D cannot exceed 10: a candidate equal to all its references scores 10 when
    # every n-gram order has n-grams
    result = cider_corpus(["a b c d e", "f g h i j"], [["a b c d e"], ["f g h i j"]])
    assert result.scores == pytest.approx([10.0, 10.0])


def test_registry_names():
    expected = {
        "vqa_accuracy", "mc_accuracy", "mmmu_accuracy", "exact_match", "token_f1", "anls",
        "relaxed_accuracy", "ocrbench_accuracy", "yes_no_accuracy", "pope", "pope_accuracy",
        "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio", "mme", "mme_perception",
        "mme_cognition", "bleu4", "rouge_l", "cider", "box_iou_accuracy", "box_iou",
        "meteor", "mathvision_accuracy", "box_iou_accuracy_01", "box_iou_accuracy_03",
        "box_iou_accuracy_07", "box_iou_accuracy_09", "box_center_accuracy",
    }  # fmt: skip
    assert set(METRICS) == expected
    assert get_metric("anls").score("The Lord", "the lord") == 1.0
    with pytest.raises(UnknownMetricError, match="unknown metric"):
        get_metric("bleu5")


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


def test_score_file_per_item_metric(tmp_path):
    f = _write(
        tmp_path / "p.jsonl",
        [
            {"question_id": 1, "prediction": "Lisboa", "answers": ["B"], "options": OPTIONS},
            {"question_id": 2, "prediction": "(A)", "answers": "C", "options": OPTIONS},
            {
                "question_id": 3,
                "prediction": "Resposta: D",
                "answers": ["Faro"],
                "options": OPTIONS,
            },
        ],
    )
    result = score_predictions_file(f, "mc_accuracy")
    assert result == {"metric": "mc_accuracy", "score": pytest.approx(2 / 3), "n": 3,
                      "scores": [1.0, 0.0, 1.0]}  # fmt: skip
    printed = json.loads(score_command("mc_accuracy", f, as_json=True))
    assert set(printed) == {"metric", "score", "n", "scores"}
    assert printed["scores"] == [1.0, 0.0, 1.0]
    text = score_command("mc_accuracy", f, as_json=False)
    assert "mc_accuracy" in text and "0.6667" in text and "n:      3" in text


def test_score_file_corpus_metric(tmp_path):
    rows = [{"prediction": p, "answers": r} for p, r in zip(CAP_PREDS, CAP_REFS, strict=True)]
    f = _write(tmp_path / "caps.jsonl", rows)
    result = score_predictions_file(f, "cider")
    assert result["score"] == pytest.approx(COCO_CIDER, abs=1e-12)
    assert result["scores"] == pytest.approx(COCO_CIDER_ITEMS, abs=1e-12)
    pope = _write(
        tmp_path / "pope.jsonl",
        [{"prediction": "Sim", "answers": "yes"}, {"prediction": "No", "answers": ["sim"]}],
    )
    res = score_predictions_file(pope, "pope", details=True)
    assert res["score"] == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert res["scores"] == [1.0, 0.0]
    assert res["details"]["recall"] == pytest.approx(0.5)
    assert "precision: 1.0000" in summary_text(res)


def test_score_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prediction": "a", "answers": ["a"]}\n\n{"prediction": "b"}\n', "utf-8")
    with pytest.raises(PredictionsFileError, match=r"bad\.jsonl:3"):
        score_predictions_file(f, "exact_match")
    f.write_text('{"prediction": "a", "answers": ["a"]}\nnot json\n', "utf-8")
    with pytest.raises(PredictionsFileError, match=r"bad\.jsonl:2"):
        score_predictions_file(f, "exact_match")
    f.write_text('{"prediction": null, "answers": ["a"]}\n', "utf-8")
    with pytest.raises(PredictionsFileError, match=r"bad\.jsonl:1"):
        score_predictions_file(f, "exact_match")
    f.write_text(
        '{"prediction": "b", "answers": ["B"]}\n{"prediction": "b", "answers": ["Lisboa"]}\n'
    )
    with pytest.raises(PredictionsFileError, match=r"line 2"):
        score_predictions_file(f, "mc_accuracy")  # text gold, no options to resolve it
    f.write_text("")
    with pytest.raises(PredictionsFileError, match="empty"):
        score_predictions_file(f, "exact_match")
    with pytest.raises(UnknownMetricError):
        score_predictions_file(f, "nope")


@pytest.mark.parametrize(("content", "needle"), [
    ('{"prediction": "a", "answers": ["a"]}\n{"prediction": "b"}\n',
     r"bad\.jsonl:2: field 'answers' is missing"),
    ('{"answers": ["a"]}\n', r"bad\.jsonl:1: field 'prediction' is missing"),
    ('{"prediction": 5, "answers": ["a"]}\n',
     r"bad\.jsonl:1: field 'prediction' must be a string, not int"),
    ('{"prediction": null, "answers": ["a"]}\n',
     r"bad\.jsonl:1: field 'prediction' must be a string, not null"),
    ('{"prediction": "a", "answers": [{"x": 1}]}\n', r"bad\.jsonl:1: field 'answers' holds"),
    ('{"prediction": "a", "answers": []}\n', r"bad\.jsonl:1: field 'answers' is an empty list"),
    ('\n\n["a", "b"]\n', r"bad\.jsonl:3: a line must be a JSON object, not list"),
    ('{"prediction": "a", "answers": ["a"]\n', r"bad\.jsonl:1: not valid JSON"),
])
def test_bad_prediction_lines_are_one_line_errors(tmp_path, content, needle):
    from components.errors import AmaliaError

    f = tmp_path / "bad.jsonl"
    f.write_text(content, "utf-8")
    with pytest.raises(PredictionsFileError, match=needle) as info:
        score_predictions_file(f, "exact_match", mode="lmms")
    assert isinstance(info.value, AmaliaError) and "\n" not in str(info.value)


def test_unknown_metric_or_mode_is_a_one_line_error(tmp_path):
    from components.errors import AmaliaError
    from components.metrics import UnknownModeError

    f = _write(tmp_path / "p.jsonl", [{"prediction": "a", "answers": ["a"]}])
    cases = (("nope", "pt", UnknownMetricError, "unknown metric"),
             ("anls", "lmmss", UnknownModeError, "unknown scoring mode"))
    for metric, mode, error, needle in cases:
        with pytest.raises(error) as info:
            score_command(metric, f, mode=mode)
        assert isinstance(info.value, AmaliaError)
        text = str(info.value)
        assert text.startswith(needle) and "\n" not in text and "known:" in text
    with pytest.raises(UnknownModeError):
        get_metric("anls").evaluate(["a"], [["a"]], mode="PT")


def test_score_file_in_both_modes(tmp_path):
    f = _write(tmp_path / "p.jsonl", [
        {"prediction": "12,5", "answers": ["12.5"]},
        {"prediction": "Sim", "answers": ["Yes"]},
        {"prediction": "13", "answers": ["12.9"]},
    ])
    assert score_predictions_file(f, "relaxed_accuracy", mode="lmms")["scores"] == [0.0, 0.0, 1.0]
    assert score_predictions_file(f, "relaxed_accuracy")["scores"] == [1.0, 1.0, 1.0]
    assert "mode:   lmms" in score_command("relaxed_accuracy", f, mode="lmms")
    printed = json.loads(score_command("relaxed_accuracy", f, as_json=True, mode="lmms"))
    assert set(printed) == {"metric", "score", "n", "scores"}
    mc = _write(tmp_path / "mc.jsonl", [
        {"prediction": "**B**", "answers": ["B"], "options": OPTIONS, "profile": "seedbench"},
        {"prediction": "B. Lisboa", "answers": ["B"], "options": OPTIONS, "profile": "ai2d"},
    ])
    assert score_predictions_file(mc, "mc_accuracy", mode="lmms")["scores"] == [0.0, 1.0]
    assert score_predictions_file(mc, "mc_accuracy")["scores"] == [1.0, 1.0]
