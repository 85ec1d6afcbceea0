"""Parity with lmms-eval 0.7.3 (the release `pyproject.toml` pins): for every metric, worked
cases read off the reference scorer's code (`lmms_eval/tasks/<task>/utils.py`,
`lmms_eval/api/metrics.py`, `_task_utils/*`), asserting that our `lmms` mode gives the
reference's score, and that the `pt` mode adds its documented extensions on top.

Each case names the reference behaviour it pins; the comments say why the reference gives
that number. lmms-eval is not installed here (torch + CUDA): the cases are the reference's
arithmetic written out, checked once against the reference functions themselves.
"""

from __future__ import annotations

import math

import pytest

from components.metrics import METRICS, get_metric
from components.metrics.mcq import extract_letter

LMMS, PT = "lmms", "pt"
OPTS = ["Left", "Right", "Up", "Down"]


def lmms(metric: str, prediction: str, answers, **kw) -> float:
    return get_metric(metric).score(prediction, answers, mode=LMMS, **kw)


def pt(metric: str, prediction: str, answers, **kw) -> float:
    return get_metric(metric).score(prediction, answers, mode=PT, **kw)


def test_every_metric_names_its_reference_and_scores_in_both_modes() -> None:
    for name, metric in METRICS.items():
        assert metric.reference, name
    covered = {  # the test of this module that pins each metric's lmms mode
        "vqa_accuracy", "mc_accuracy", "mmmu_accuracy", "exact_match", "token_f1", "anls",
        "relaxed_accuracy", "ocrbench_accuracy", "yes_no_accuracy", "mathvision_accuracy",
        "pope", "pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio",
        "mme", "mme_perception", "mme_cognition", "bleu4", "rouge_l", "cider", "meteor",
        "box_iou_accuracy", "box_iou_accuracy_01", "box_iou_accuracy_03",
        "box_iou_accuracy_07", "box_iou_accuracy_09", "box_center_accuracy", "box_iou",
    }  # fmt: skip
    assert set(METRICS) == covered


# ---------------------------------------------------------------- answer extraction


# (profile, response, gold, lmms score, pt score); options Left/Right/Up/Down where the
# profile's reader uses them (MMMU family), A-D otherwise.
MC_CASES = [
    # AI2D: filter r"^\s*([A-Z])\." then exact_match(ignore_case, ignore_punctuation)
    ("ai2d", "B", "B", 1, 1),
    ("ai2d", "b", "B", 1, 1),  # ignore_case
    ("ai2d", "**B**", "B", 1, 1),  # punctuation deleted: "b"
    ("ai2d", "`B`", "B", 1, 1),
    ("ai2d", "(B)", "B", 1, 1),
    ("ai2d", "B. Right", "B", 1, 1),  # the filter's leading "X."
    ("ai2d", "B) Right", "B", 0, 1),  # kept as is: "b right" != "b"
    ("ai2d", "The answer is B", "B", 0, 1),
    ("ai2d", "Right", "B", 0, 1),  # the option's text
    ("ai2d", "A resposta é B", "B", 0, 1),
    # MMStar: extract_mcq_answer(A-D): start 10 > end 9 > phrase 7 > "(X)" 6 > "X." 5 ...
    ("mmstar", "**B**", "B", 1, 1),
    ("mmstar", "The answer is B", "B", 1, 1),  # ends with "B" (priority 9)
    ("mmstar", "B) Right", "B", 1, 1),  # starts with "B" not followed by a letter
    ("mmstar", "The answer is Down", "D", 1, 1),  # phrase, then the first capital "D"
    ("mmstar", "Right", "B", 0, 0),  # no A-D capital; MMStar's options are in the question
    ("mmstar", "A resposta é B", "B", 0, 1),  # starts with "A": the article wins (10 > 9)
    ("mmstar", "CAT", "C", 0, 0),  # only "any occurrence" (0): the later one, A
    # SEED-Bench: the first character of the stripped answer, case ignored
    ("seedbench", "B", "B", 1, 1),
    ("seedbench", "b) right", "B", 1, 1),
    ("seedbench", "**B**", "B", 0, 1),  # "*"
    ("seedbench", "The answer is B", "B", 0, 1),  # "T"
    ("seedbench", "Right", "B", 0, 1),  # "R"
    ("seedbench", "Certo, é a B", "B", 0, 0),  # "C": a valid letter, kept by pt too
    # RealWorldQA: extract_mcq_answer(A-D) for a letter gold
    ("realworldqa", "(C)", "C", 1, 1),
    ("realworldqa", "The answer is (C).", "C", 1, 1),
    ("realworldqa", "Resposta: C", "C", 1, 1),  # ends with "C"
    ("realworldqa", "A resposta é C", "C", 0, 1),  # starts with "A" (10) beats the end (9)
    # EmbSpatial: re.match(r"[\(\s]*([A-Z])[\)\.\s]*", IGNORECASE): the first letter
    ("embspatial", "(B) Right", "B", 1, 1),
    ("embspatial", "b", "B", 1, 1),
    ("embspatial", "**B**", "B", 0, 1),  # "*" cannot start the match
    ("embspatial", "The answer is B", "B", 0, 1),  # "T"
    ("embspatial", "Right", "B", 0, 1),  # "R"
    # MMMU: "(X)", else "X ", else "X.", else option text in a > 5-word answer, else random
    ("mmmu", "(B)", "B", 1, 1),
    ("mmmu", "The answer is B", "B", 1, 1),  # " The answer is B " holds "B "
    ("mmmu", "B. Right", "B", 1, 1),
    ("mmmu", "**B**", "B", 0.25, 1),  # no candidate: random.choice over 4 -> 1/4
    ("mmmu", "I think it turns to the Right here", "B", 1, 1),  # content, > 5 words
    ("mmmu", "Right", "B", 0.25, 1),  # content is searched only beyond 5 words
    ("mmmu", "It is in the USA", "B", 0, 0.25),  # "USA " ends in "A ": A (0.7.3 quirk)
    ("mmmu", "não sei", "B", 0.25, 0.25),  # unparsed in both: the expected guess
    ("mmmu_pro", "Answer: C", "C", 1, 1),
    # MMMU-Pro vision: no parsing at all, the answer must equal the gold letter
    ("mmmu_pro_vision", "C", "C", 1, 1),
    ("mmmu_pro_vision", "C.", "C", 0, 1),
    ("mmmu_pro_vision", "(C)", "C", 0, 1),
    ("mmmu_pro_vision", "não sei", "C", 0, 0),  # no random pick in the vision setting
]


@pytest.mark.parametrize(("profile", "response", "gold", "lmms_score", "pt_score"), MC_CASES)
def test_option_reading_per_task(profile, response, gold, lmms_score, pt_score) -> None:
    # MMStar and RealWorldQA write their options inside the question: no option texts
    options = None if profile in ("mmstar", "realworldqa") else OPTS
    kw = {"profile": profile, "options": options}
    assert lmms("mc_accuracy", response, [gold], **kw) == pytest.approx(lmms_score)
    assert pt("mc_accuracy", response, [gold], **kw) == pytest.approx(pt_score)


def test_mcq_extractor_priorities() -> None:
    assert extract_letter("A. no, (B) yes") == "A"  # starts with "A" (10)
    assert extract_letter("I think (B) fits, not C.") == "C"  # ends with "C" (9) > "(B)" (6)
    assert extract_letter("Maybe (A), maybe (B), unsure") == "B"  # same format: the later
    # after an answer phrase every capital choice letter is a candidate: the later wins
    assert extract_letter("I pick C, not D because") == "D"
    assert extract_letter("") == "" and extract_letter("none") == ""
    # edge punctuation goes kind after kind: ",B." loses its "." but keeps its ","
    assert extract_letter(",B.", ["A", "B"]) == "B"


def test_realworldqa_open_answers() -> None:
    # gold not in A-D: pred.lower().strip().rstrip(".") == gold.lower()
    assert lmms("mc_accuracy", "Downhill.", ["Downhill"], profile="realworldqa") == 1.0
    assert lmms("mc_accuracy", "2", ["2"], profile="realworldqa") == 1.0
    assert lmms("mc_accuracy", "dois", ["2"], profile="realworldqa") == 0.0
    assert pt("mc_accuracy", "dois", ["2"], profile="realworldqa") == 1.0
    assert pt("mc_accuracy", "2,0", ["2"], profile="realworldqa") == 1.0


def test_mmstar_score_is_the_mean_of_category_means() -> None:
    # lmms-eval's `average`: the l2-category means averaged, not the item mean
    metric = get_metric("mc_accuracy")
    preds = ["A", "A", "A", "B"]
    extras = [{"profile": "mmstar", "category": c} for c in ("x", "x", "x", "y")]
    result = metric.evaluate(preds, [["A"], ["A"], ["B"], ["B"]], extras, mode=LMMS)
    assert result.score == pytest.approx((2 / 3 + 1) / 2)
    assert result.details["item_mean"] == pytest.approx(3 / 4)


def test_mmmu_open_questions() -> None:
    # check_is_number: float(s.replace(",", "")): "2,5" is 25 to lmms-eval
    assert lmms("mmmu_accuracy", "So the answer is 2,5", ["25"]) == 1.0
    assert lmms("mmmu_accuracy", "So the answer is 2,5", ["2.5"]) == 0.0
    assert pt("mmmu_accuracy", "Portanto, o resultado é 2,5", ["2.5"]) == 1.0
    assert lmms("mmmu_accuracy", "The result is 3.14159", ["3.14"]) == 1.0  # 2 decimals
    assert lmms("mmmu_accuracy", "answer is nan", ["nan"]) == 0.0  # nan != nan (a bug)
    assert pt("mmmu_accuracy", "answer is nan", ["nan"]) == 1.0  # pt: nan is a word


# ---------------------------------------------------------------- text normalisation


def test_exact_match_is_hf_evaluate_with_ignore_case_and_punctuation() -> None:
    assert lmms("exact_match", "Lisboa!", ["lisboa"]) == 1.0
    assert lmms("exact_match", "e-mail", ["email"]) == 1.0  # punctuation deleted anywhere
    assert lmms("exact_match", "lisboa", ["lisboa "]) == 0.0  # whitespace is not normalised
    assert pt("exact_match", "lisboa", ["lisboa "]) == 1.0
    assert lmms("exact_match", "«Lisboa»", ["Lisboa"]) == 0.0  # only ASCII punctuation
    assert pt("exact_match", "«Lisboa»", ["Lisboa"]) == 1.0
    assert lmms("exact_match", "Sim", ["yes"]) == 0.0
    assert pt("exact_match", "Sim", ["yes"]) == 1.0


def test_textvqa_and_vqav2_answer_processors_differ() -> None:
    ten = ["1,000"] * 10
    # TextVQA (EvalAIAnswerProcessor.__call__): commas deleted first, "1,000" -> "1000"
    assert lmms("vqa_accuracy", "1000", ten, profile="textvqa") == 1.0
    # VQAv2: process_punctuation deletes the comma too (digit-comma rule): "1000"
    assert lmms("vqa_accuracy", "1000", ten, profile="vqav2") == 1.0
    commas = ["a,b"] * 10
    # TextVQA deletes the comma ("ab"); VQAv2 replaces it by a space ("a b")
    assert lmms("vqa_accuracy", "ab", commas, profile="textvqa") == 1.0
    assert lmms("vqa_accuracy", "ab", commas, profile="vqav2") == 0.0
    assert lmms("vqa_accuracy", "a b", commas, profile="vqav2") == 1.0
    # "'s" becomes " 's" in TextVQA only
    assert lmms("vqa_accuracy", "dog 's", ["dog's"] * 10, profile="textvqa") == 1.0
    assert lmms("vqa_accuracy", "dog 's", ["dog's"] * 10, profile="vqav2") == 0.0
    # "2,5": both processors lose the comma ("25"); pt keeps the decimal 2.5
    assert lmms("vqa_accuracy", "2.5", ["2,5"] * 10, profile="textvqa") == 0.0
    assert pt("vqa_accuracy", "2.5", ["2,5"] * 10, profile="textvqa") == 1.0
    # one reference: the leave-one-out formula has no other annotator: 0 upstream
    assert lmms("vqa_accuracy", "lisboa", ["lisboa"], profile="textvqa") == 0.0
    assert pt("vqa_accuracy", "lisboa", ["lisboa"], profile="textvqa") == 1.0
    # number words and articles, both processors
    assert lmms("vqa_accuracy", "Two dogs", ["2 dogs"] * 10, profile="textvqa") == 1.0
    assert pt("vqa_accuracy", "dois cães", ["2 cães"] * 10, profile="textvqa") == 1.0


def test_vqa_leave_one_out_by_hand() -> None:
    answers = ["azul", "azul"] + ["verde"] * 8  # 2 matches: (2 * 1/3 + 8 * 2/3) / 10
    assert lmms("vqa_accuracy", "azul", answers, profile="textvqa") == pytest.approx(0.6)


def test_anls_reference_and_the_stripped_generation() -> None:
    assert lmms("anls", "The Lord", ["the lord"]) == 1.0
    assert lmms("anls", "abxy", ["abcd"]) == 0.5  # NL 0.5 is kept (only < 0.5 becomes 0)
    assert lmms("anls", "abxyz", ["abcde"]) == 0.0  # NL 0.6
    # the model wrapper strips the generation: "  abxy \n" is "abxy", NL 2/4
    assert lmms("anls", "  abxy \n", ["abcd"]) == 0.5
    # the reference is not stripped: "abcd  " measures 6, NL 2/6
    assert lmms("anls", "abxy", ["abcd  "]) == pytest.approx(1 - 2 / 6)
    # len(x.upper()): "ß" is "SS", 2 characters
    assert lmms("anls", "strasse", ["straße"]) == pytest.approx(1 - 2 / 7)
    assert pt("anls", "abxy", ["abcd  "]) == 0.5  # pt: normalised lengths (ST-VQA)


def test_chartqa_relaxed_correctness_reads_numbers_as_python_float() -> None:
    assert lmms("relaxed_accuracy", "12", ["12.5"]) == 1.0  # 0.5 / 12.5 = 4 %
    assert lmms("relaxed_accuracy", "11.8", ["12.5"]) == 0.0  # 5.6 %
    assert lmms("relaxed_accuracy", "1_000", ["1000"]) == 1.0  # float("1_000") is 1000
    assert pt("relaxed_accuracy", "1_000", ["1000"]) == 1.0
    assert lmms("relaxed_accuracy", "50%", ["0.5"]) == 1.0
    assert lmms("relaxed_accuracy", "12,5", ["12.5"]) == 0.0  # no float: strings differ
    assert pt("relaxed_accuracy", "12,5", ["12.5"]) == 1.0
    # word answers float() reads as numbers: NaN never equals itself (a bug)
    assert lmms("relaxed_accuracy", "NaN", ["NaN"]) == 0.0
    assert lmms("relaxed_accuracy", "Infinity", ["Infinity"]) == 0.0
    assert pt("relaxed_accuracy", "NaN", ["NaN"]) == 1.0
    assert lmms("relaxed_accuracy", "Lisboa", ["lisboa"]) == 1.0
    assert lmms("relaxed_accuracy", "0", ["0"]) == 1.0  # target 0: strings
    assert lmms("relaxed_accuracy", "0.0", ["0"]) == 0.0
    assert lmms("relaxed_accuracy", "Sim", ["Yes"]) == 0.0
    assert pt("relaxed_accuracy", "Sim", ["Yes"]) == 1.0


def test_ocrbench_folds_fullwidth_and_keeps_hme_case() -> None:
    assert lmms("ocrbench_accuracy", "The sign says LISBOA", ["lisboa"]) == 1.0
    assert lmms("ocrbench_accuracy", "ＬＩＳＢＯＡ　２０２４", ["lisboa 2024"]) == 1.0
    assert lmms("ocrbench_accuracy", "x ^ { 2 } + 1", ["x^{2}+1"], dataset="HME100k") == 1.0
    assert lmms("ocrbench_accuracy", "X^{2}+1", ["x^{2}+1"], dataset="HME100k") == 0.0
    assert lmms("ocrbench_accuracy", "lisboa  2024", ["lisboa 2024"]) == 0.0
    assert pt("ocrbench_accuracy", "lisboa  2024", ["lisboa 2024"]) == 1.0


def test_token_f1_is_squad_v1() -> None:
    # pred [cat, sat, on, mat], gold [cat, on, mat]: P 3/4, R 1 -> 6/7
    assert lmms("token_f1", "The cat sat on the mat.", ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert lmms("token_f1", "the", ["a"]) == 0.0  # both empty: 0 in SQuAD v1.1
    assert pt("token_f1", "o", ["a"]) == 1.0  # pt: SQuAD v2's 1
    assert lmms("token_f1", "o gato", ["gato"]) == pytest.approx(2 / 3)  # "o" is no article
    assert pt("token_f1", "o gato", ["gato"]) == 1.0


def test_mme_parse_and_score() -> None:
    from components.metrics.text import normalise_yes_no

    assert normalise_yes_no("Not sure", LMMS) == "no"  # "no" within the first 4 characters
    assert normalise_yes_no("No sofá há um gato", LMMS) == "no"
    assert normalise_yes_no("No sofá há um gato", PT) is None  # em+o, not a "no"
    assert normalise_yes_no("Sim", LMMS) is None and normalise_yes_no("Sim", PT) == "yes"
    assert normalise_yes_no("y.", LMMS) == "yes"  # periods deleted first
    assert lmms("yes_no_accuracy", "Yes, there is", ["yes"]) == 1.0
    # two images: both right (acc 1, acc+ 1) and one right (acc 1/2, acc+ 0):
    # ((1 + 1) + (1/2 + 0)) / 2 * 100 = 125 for the subtask
    preds, golds = ["Yes", "No", "Yes", "Sim"], [["yes"], ["no"], ["yes"], ["no"]]
    extras = [{"category": "existence", "question_id": q} for q in ("a", "a", "b", "b")]
    assert get_metric("mme").evaluate(preds, golds, extras, mode=LMMS).score == 125.0
    # pt: "Sim" to a no question is wrong too; same score here
    assert get_metric("mme_perception").evaluate(preds, golds, extras).score == 125.0


def test_pope_exact_labels_and_reference_yes_ratio() -> None:
    preds = ["Yes", "yes.", "No", "no", "Yes, there is", "NO"]
    golds = [["yes"], ["yes"], ["no"], ["yes"], ["yes"], ["no"]]
    # lmms: "yes." and "Yes, there is" are neither yes nor no: TP 1, FN 1 ("no" to a yes),
    # TN 2; accuracy 3/6; precision 1/1; recall 1/2; yes-ratio = reference yeses 4/6
    assert get_metric("pope_accuracy").evaluate(preds, golds, mode=LMMS).score == 0.5
    assert get_metric("pope_precision").evaluate(preds, golds, mode=LMMS).score == 1.0
    assert get_metric("pope_recall").evaluate(preds, golds, mode=LMMS).score == 0.5
    assert get_metric("pope_f1").evaluate(preds, golds, mode=LMMS).score == pytest.approx(2 / 3)
    assert get_metric("pope_yes_ratio").evaluate(preds, golds, mode=LMMS).score == \
        pytest.approx(4 / 6)
    # pt: the official POPE rule: TP 3, FN 1, TN 2; the yes-ratio of the predictions
    assert get_metric("pope").evaluate(preds, golds).score == pytest.approx(6 / 7)
    assert get_metric("pope_yes_ratio").evaluate(preds, golds).score == pytest.approx(3 / 6)


# ---------------------------------------------------------------- numbers (MATH-Vision)


@pytest.mark.parametrize(("response", "gold", "lmms_score", "pt_score"), [
    ("\\boxed{\\frac{1}{2}}", "1/2", 1, 1),  # latex2sympy: 1/2 = 0.5 on both sides
    ("\\boxed{0.5}", "\\frac{1}{2}", 1, 1),  # "0.5" becomes \frac{1}{2}
    ("Thus \\boxed{1} or \\boxed{\\dfrac{3}{2}}", "1.5", 1, 1),  # the last box, dfrac->frac
    ("The answer is 2.50.", "2.5", 1, 1),  # the number after the last "is "
    ("so the final answer is 12\nbecause", "12", 1, 1),
    ("\\boxed{2^{3}}", "8", 1, 1),
    ("\\boxed{30^\\circ}", "30", 1, 1),  # degrees removed
    ("\\boxed{(1, 2)}", "(1,2)", 1, 1),  # tuples element-wise
    ("\\boxed{\\sqrt{2}}", "1.41", 0, 1),  # sqrt(2) does not eval upstream (a bug)
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "0.87", 0, 1),
    ("\\boxed{2\\pi}", "6.28", 0, 1),
    ("\\boxed{\\frac12}", "0.5", 0, 1),  # \frac12 is fixed upstream only beside a sqrt
    ("\\boxed{12,5}", "12.5", 0, 1),  # pt decimal comma
    ("A resposta é 7.", "7", 0, 1),  # lmms: no English phrase, the whole text is the answer
    ("\\boxed{x}", "2", 0, 0),
])
def test_mathvision_equivalence(response, gold, lmms_score, pt_score) -> None:
    assert lmms("mathvision_accuracy", response, [gold]) == lmms_score
    assert pt("mathvision_accuracy", response, [gold]) == pt_score


def test_mathvision_multiple_choice() -> None:
    options = ["1", "2", "3", "4", "5"]
    assert lmms("mathvision_accuracy", "\\boxed{B}", ["B"], options=options) == 1.0
    assert lmms("mathvision_accuracy", "\\boxed{2}", ["B"], options=options) == 1.0  # option text
    assert lmms("mathvision_accuracy", "So it is (C) C\n", ["C"], options=options) == 0.0
    assert lmms("mathvision_accuracy", "Final: option C.", ["C"], options=options) == 1.0
    assert pt("mathvision_accuracy", "Opção C", ["C"], options=options) == 1.0
    assert lmms("mathvision_accuracy", "Opção C", ["C"], options=options) == 0.0


# ---------------------------------------------------------------- boxes (RefCOCO)

REF = ["[20.0, 10.0, 80.0, 40.0]"]  # COCO x, y, w, h in a 200 x 100 image
BOX = {"image_width": 200, "image_height": 100, "box_format": "norm1", "answer_format": "xywh"}
# normalised reference: [0.1, 0.1, 0.5, 0.5]


@pytest.mark.parametrize(("text", "lmms_iou", "pt_iou"), [
    ("[0.1, 0.1, 0.5, 0.5]", 1.0, 1.0),
    ("The box is [0.1,0.1,0.5,0.5].", 1.0, 1.0),
    ("[0.1 , 0.1 , 0.5 , 0.5]", 0.0, 1.0),  # upstream needs the comma right after a number
    ("(0.1, 0.1, 0.5, 0.5)", 0.0, 1.0),  # upstream reads square brackets only
    ("[.1, .1, .5, .5]", 0.0, 1.0),  # upstream numbers start with a digit
    ("[0,1; 0,1; 0,5; 0,5]", 0.0, 1.0),  # pt-PT decimal commas
    ('{"bbox_2d": [0.1, 0.1, 0.5, 0.5]}', 1.0, 1.0),
    ("[0.3, 0.1, 0.5, 0.5]", 0.5, 0.5),
    ("[0.5, 0.5, 0.1, 0.1]", 0.0, 0.0),  # inverted: negative area upstream, IoU 0
    ("nenhuma caixa", 0.0, 0.0),
])
def test_refcoco_box_forms_and_iou(text, lmms_iou, pt_iou) -> None:
    assert lmms("box_iou", text, REF, **BOX) == pytest.approx(lmms_iou)
    assert pt("box_iou", text, REF, **BOX) == pytest.approx(pt_iou)


def test_refcoco_accuracy_thresholds_and_center() -> None:
    half = "[0.3, 0.1, 0.5, 0.5]"  # IoU 0.5 exactly
    expected = {"box_iou_accuracy_01": 1.0, "box_iou_accuracy_03": 1.0, "box_iou_accuracy": 1.0,
                "box_iou_accuracy_07": 0.0, "box_iou_accuracy_09": 0.0,
                "box_center_accuracy": 1.0}
    for name, value in expected.items():
        assert lmms(name, half, REF, **BOX) == value, name
        assert pt(name, half, REF, **BOX) == value, name
    # no box: lmms-eval falls back to [0, 0, 0, 0], whose centre (0, 0) lies inside a
    # reference touching the top-left corner: Center_ACC 1 for an answer without a box
    corner = ["[0.0, 0.0, 100.0, 50.0]"]
    assert lmms("box_center_accuracy", "não sei", corner, **BOX) == 1.0
    assert pt("box_center_accuracy", "não sei", corner, **BOX) == 0.0
    # a degenerate reference with the fallback box: upstream divides by zero; 0 here
    assert lmms("box_iou", "não sei", ["[0.0, 0.0, 0.0, 0.0]"], **BOX) == 0.0


# ---------------------------------------------------------------- captions


def test_caption_metrics_are_the_same_in_both_modes() -> None:
    preds = ["um gato preto sentado no sofá", "dois cães a correr na praia"]
    refs = [["um gato preto está sentado no sofá", "gato preto num sofá"],
            ["dois cães correm na praia", "cães a brincar na areia"]]
    for name in ("bleu4", "rouge_l", "cider", "meteor"):
        metric = get_metric(name)
        assert metric.evaluate(preds, refs, mode=LMMS).score == \
            pytest.approx(metric.evaluate(preds, refs, mode=PT).score), name


def test_meteor_by_hand() -> None:
    from components.metrics.meteor import meteor, meteor_corpus, porter_stem

    # identical: P = R = 1, one chunk of 4 matches: 1 * (1 - 0.5 * (1/4)^3)
    assert meteor("a b c d", ["a b c d"]) == pytest.approx(1 - 0.5 / 64)
    # "gatos" stems to "gato" (Porter's plural s): all 3 match, in one chunk
    assert meteor("dois gatos pretos", ["dois gato preto"]) == pytest.approx(1 - 0.5 / 27)
    # 2 of 3 hypothesis words match 2 of 4 reference words, in two chunks:
    # P 2/3, R 1/2, Fmean = P R / (0.9 P + 0.1 R) = (1/3) / (0.6 + 0.05) = 0.5128...
    # penalty 0.5 (2/2)^3 = 0.5
    fmean = (2 / 3 * 1 / 2) / (0.9 * 2 / 3 + 0.1 * 1 / 2)
    assert meteor("x a b", ["b q a r"]) == pytest.approx(fmean * 0.5)
    assert meteor("nada em comum", ["tudo diferente"]) == 0.0
    for word, stem in (("caresses", "caress"), ("ponies", "poni"), ("agreed", "agre"),
                       ("hopping", "hop"), ("relational", "relat"), ("generalization",
                                                                     "gener")):
        assert porter_stem(word) == stem, word
    # the corpus value pools the statistics of each item's best reference
    result = meteor_corpus(["a b", "c d e f"], [["a b"], ["c d e f"]])
    assert result.score == pytest.approx(1 - 0.5 * (2 / 6) ** 3)


def test_pt_never_loses_an_item_lmms_gets_right_on_explicit_answers() -> None:
    """On answers that state their option outright, the pt layers only add readings."""
    from itertools import product

    forms = ["{L}", "({L})", "{L}.", "**{L}**", "`{L}`", "The answer is {L}", "Answer: {L}",
             "Resposta: {L}", "{L}. {t}", "{L}) {t}", "{t}"]
    for profile, (i, letter), form in product(
            ["ai2d", "mmstar", "seedbench", "realworldqa", "embspatial", "mmmu", "mmmu_pro"],
            enumerate("ABCD"), forms):
        options = None if profile in ("mmstar", "realworldqa") else OPTS
        text = form.format(L=letter, t=OPTS[i])
        kw = {"profile": profile, "options": options}
        if options is None and "{t}" in form:
            continue  # the option texts are in the question: nothing to read them from
        assert pt("mc_accuracy", text, [letter], **kw) == 1.0, (profile, text)
        assert lmms("mc_accuracy", text, [letter], **kw) <= 1.0
    assert math.isclose(pt("mc_accuracy", "**B**", ["B"], profile="mmmu", options=OPTS), 1.0)
