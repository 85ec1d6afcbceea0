"""pt-PT vs pt-BR (issue #4): the cue detector, its data, the normaliser, the HF backend
and the line-in / JSON-out command. Fast: no downloads, one tiny local classifier."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest

from components.errors import ConfigError, MissingInputError
from components.manifest import sha256_file
from components.variety import detector as vd
from components.variety.detector import (
    PT_BR,
    PT_PT,
    UNKNOWN,
    CueDetector,
    HFClassifierDetector,
    VarietyDetector,
    assign_splits,
    fit,
    load_samples,
    load_test_set,
    load_weights,
    make_detector,
    variety_of_label,
)
from components.variety.normalise import gerund_to_infinitive, normalise_br_to_pt
from components.variety.report import classify_lines, evaluate_detector, variety_command

# Measured on the independent held-out test set (data/variety_test.jsonl, written after the
# v1 cue list; bench/results/variety.json). v1 cue list, first evaluation: accuracy 0.617,
# macro-F1 0.758, coverage 0.625, accuracy on covered 0.987 ("heldout_v1_cue_list"). v2 cue
# list (PAIRS_V2, written from general linguistic knowledge without access to the test
# sentences, scored once): accuracy 0.700, macro-F1 0.819, coverage 0.708, accuracy on
# covered 0.988 ("heldout") -- still below the 0.85 target, through low coverage, not
# wrong calls. These floors guard against regressions; they must not be raised by tuning
# cues on the test sentences (only on the train split of the sample).
HELDOUT_ACCURACY_FLOOR = 0.66
HELDOUT_F1_FLOOR = 0.78
HELDOUT_COVERAGE_FLOOR = 0.66
HELDOUT_COVERED_ACCURACY_FLOOR = 0.95
# The dev split of the sample was seen while the cue list was written: an optimistic check.
DEV_ACCURACY_FLOOR = 0.93


@pytest.fixture(scope="module")
def cues() -> CueDetector:
    return CueDetector()


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return load_samples()


@pytest.fixture(scope="module")
def test_set() -> list[dict]:
    return load_test_set()


# ------------------------------------------------------------------ data


def test_sample_is_balanced_varied_and_split_by_pair(samples):
    assert len(samples) >= 240
    assert len({s["text"] for s in samples}) == len(samples)
    labels = Counter(s["label"] for s in samples)
    assert labels[PT_PT] == labels[PT_BR]
    domains = Counter(s["domain"] for s in samples)
    assert set(domains) >= {"caption", "vqa", "document", "dialogue"}
    assert min(domains.values()) >= 40
    assert {s["split"] for s in samples} == {"train", "dev"}
    # parallel versions of one sentence: one pt-PT + one pt-BR, always in the same split
    pairs: dict[str, list[dict]] = {}
    for s in samples:
        pairs.setdefault(s["pair"], []).append(s)
    for rows in pairs.values():
        assert sorted(r["label"] for r in rows) == [PT_BR, PT_PT]
        assert len({r["split"] for r in rows}) == 1 and len({r["domain"] for r in rows}) == 1
    dev = [s for s in samples if s["split"] == "dev"]
    assert 0.25 <= len(dev) / len(samples) <= 0.35
    assert Counter(s["label"] for s in dev)[PT_PT] == Counter(s["label"] for s in dev)[PT_BR]
    # the split written in the file is the one assign_splits computes
    resplit = assign_splits([{k: v for k, v in s.items() if k != "split"} for s in samples])
    assert [s["split"] for s in resplit] == [s["split"] for s in samples]


def test_assign_splits_keeps_pairs_together():
    rows = [{"text": f"{lab} {i}", "label": lab, "domain": "d", "pair": f"p{i}"}
            for i in range(20) for lab in (PT_PT, PT_BR)]
    split = assign_splits(rows, dev_fraction=0.3)
    assert sum(r["split"] == "dev" for r in split) == 12  # 6 of 20 pairs, both halves
    for a, b in zip(split[::2], split[1::2], strict=True):
        assert a["pair"] == b["pair"] and a["split"] == b["split"]


def test_heldout_test_set_is_independent_frozen_and_balanced(samples, test_set):
    assert sha256_file(vd.TEST_PATH) == vd.TEST_SET_SHA256  # unchanged since first scored
    assert len(test_set) >= 120 and {s["split"] for s in test_set} == {"test"}
    assert len({s["text"] for s in test_set}) == len(test_set)
    assert not {s["text"] for s in test_set} & {s["text"] for s in samples}
    per = Counter((s["domain"], s["label"]) for s in test_set)
    assert {d for d, _ in per} == {"caption", "vqa", "document", "dialogue"}
    assert min(per.values()) >= 15 and len(per) == 8
    # the labelled sample (>= 200, half each variety) is sample + test set
    everything = Counter(s["label"] for s in samples + test_set)
    assert everything[PT_PT] == everything[PT_BR] and sum(everything.values()) >= 200


# ------------------------------------------------------------------ the cue model


def test_heldout_accuracy_and_macro_f1(cues, test_set):
    m = evaluate_detector(cues, test_set)
    assert m["accuracy"] >= HELDOUT_ACCURACY_FLOOR, m
    assert m["macro_f1"] >= HELDOUT_F1_FLOOR, m
    assert m["coverage"] >= HELDOUT_COVERAGE_FLOOR, m
    assert m["accuracy_on_covered"] >= HELDOUT_COVERED_ACCURACY_FLOOR, m
    assert set(m["per_class"]) == {PT_PT, PT_BR}


def test_dev_split_accuracy(cues, samples):
    m = evaluate_detector(cues, [s for s in samples if s["split"] == "dev"])
    assert m["accuracy"] >= DEV_ACCURACY_FLOOR, m
    assert m["brier"] <= 0.05, m


class Fixed:
    """A fake detector answering fixed labels (for the metric definitions)."""

    name = "fixed"

    def __init__(self, labels: list[str]):
        self.labels = labels

    def score(self, texts):
        return [0.5] * len(texts)

    def classify(self, texts):
        return [{"label": lab, "score": {PT_PT: 0.9, PT_BR: 0.1}.get(lab, 0.5)}
                for lab in self.labels[:len(texts)]]


def test_one_accuracy_definition_unknown_is_wrong():
    rows = [{"text": str(i), "label": lab}
            for i, lab in enumerate([PT_PT, PT_PT, PT_BR, PT_BR])]
    m = evaluate_detector(Fixed([PT_PT, UNKNOWN, PT_BR, PT_PT]), rows)
    assert m["accuracy"] == 0.5            # the unknown counts as wrong
    assert m["coverage"] == 0.75 and m["unknown_rate"] == 0.25
    assert m["accuracy_on_covered"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["per_class"][PT_PT]["recall"] == 0.5 and m["per_class"][PT_PT]["precision"] == 0.5


@pytest.mark.parametrize(("text", "label"), [
    ("Apanhei o autocarro para o trabalho.", PT_PT),
    ("Peguei o ônibus para o trabalho.", PT_BR),
    ("Deixei o telemóvel na casa de banho.", PT_PT),
    ("Deixei o celular no banheiro.", PT_BR),
    ("O comboio para o Porto está atrasado.", PT_PT),
    ("O trem para Santos está atrasado.", PT_BR),
    ("Tomámos o pequeno-almoço com sumo de laranja.", PT_PT),
    ("Tomamos café da manhã com suco de laranja.", PT_BR),
    ("O guarda-redes da equipa defendeu o penálti.", PT_PT),
    ("O goleiro da equipe defendeu o pênalti.", PT_BR),
    ("Guarde o ficheiro antes de fechar o ecrã.", PT_PT),
    ("O usuário deve salvar o arquivo no notebook.", PT_BR),
    ("Para qualquer questão, contacte a receção.", PT_PT),
    ("Para qualquer dúvida, entre em contato com a recepção.", PT_BR),
    ("O António estuda economia e género.", PT_PT),
    ("O Antônio estuda o gênero humano.", PT_BR),
])
def test_classic_pairs(cues, text, label):
    assert cues.classify([text])[0]["label"] == label, cues.explain(text)


@pytest.mark.parametrize(("text", "label"), [
    # progressive aspect only
    ("Ela está a ler um livro ao pé da janela.", PT_PT),
    ("Ela está lendo um livro perto da janela.", PT_BR),
    # clitic placement only
    ("Diz-me uma coisa.", PT_PT),
    ("Me diz uma coisa.", PT_BR),
    ("Ela chama-se Teresa.", PT_PT),
    ("Ela se chama Teresa.", PT_BR),
    # address: tu + 2nd person verb vs você
    ("Queres vir jantar?", PT_PT),
    ("Você quer vir jantar?", PT_BR),
])
def test_subtle_cues(cues, text, label):
    assert cues.classify([text])[0]["label"] == label, cues.explain(text)


# v2 cue list (PAIRS_V2): sentences written for these tests, one per variety, each showing
# a cue that fires on its own variety and whose counterpart does not fire on the twin.
V2_TWINS = [
    # (pt-PT sentence, pt-BR sentence, cue key)
    ("Paguei a fatura da luz e guardei o recibo.", "Paguei a conta de luz e guardei o recibo.",
     "fatura-luz"),
    ("Vire à direita na rotunda e pare na berma.", "Vire à direita na rotatória e pare no "
     "acostamento.", "rotunda"),
    ("O IRS entrega-se até junho.", "O imposto de renda vence em abril.", "impostos"),
    ("Toda a gente gostou do filme.", "Todo mundo gostou do filme.", "toda-a-gente"),
    ("Ficámos de pé durante o concerto.", "Ficamos em pé durante o show.", "de-pe"),
    ("Tens a certeza disso?", "Tem certeza disso?", "ter-certeza"),
    ("O canalizador chega amanhã.", "O encanador chega amanhã.", "canalizador"),
    ("Quero partilhar a receita.", "Quero compartilhar a receita.", "partilhar"),
    ("Ela faz anos a dezasseis de maio.", "Ela faz aniversário dia dezesseis de maio.",
     "dezasseis"),
    ("O planeamento da obra atrasou.", "O planejamento da obra atrasou.", "planeamento"),
    ("Perdemos o controlo do projeto.", "Perdemos o controle do projeto.", "controlo"),
    ("Comprei esparguete e beringelas.", "Comprei espaguete e berinjelas.", "esparguete"),
    ("Estou constipado desde ontem.", "Estou resfriado desde ontem.", "constipacao"),
    ("Marquei consulta no centro de saúde.", "Marquei consulta no posto de saúde.",
     "centro-saude"),
    ("A minha filha termina o ensino secundário.", "Minha filha termina o ensino médio.",
     "ensino-secundario"),
    ("Esqueci-me dos auscultadores em casa.", "Esqueci os fones de ouvido em casa.",
     "auscultadores"),
    ("Deita isso fora!", "Joga isso fora!", "deitar-fora"),
    ("Há um problema subtil no código.", "Tem um problema sutil no código.", "subtil"),
    ("O desporto faz bem à saúde.", "O esporte faz bem à saúde.", "desporto"),
    ("Estendi a roupa no estendal.", "Estendi a roupa no varal.", "estendal"),
]


@pytest.mark.parametrize(("pt", "br", "key"), V2_TWINS)
def test_v2_cues_fire_on_their_variety_only(cues, pt, br, key):
    got_pt, got_br = vd.cue_counts(pt), vd.cue_counts(br)
    assert f"{key}/pt" in got_pt and f"{key}/br" not in got_pt, got_pt
    assert f"{key}/br" in got_br and f"{key}/pt" not in got_br, got_br
    assert cues.classify([pt])[0]["label"] == PT_PT, cues.explain(pt)
    assert cues.classify([br])[0]["label"] == PT_BR, cues.explain(br)


@pytest.mark.parametrize(("text", "label", "cue"), [
    ("Percebes o que eu digo?", PT_PT, "tu-verb/pt"),          # v2 2nd-person forms
    ("Se calhar vou ter contigo mais logo.", PT_PT, "ir-ter-com/pt"),
    ("Apetece-me um gelado.", PT_PT, "apetecer/pt"),
    ("Cadê a chave do carro?", PT_BR, "xau/br"),
    ("Vi ela ontem na festa.", PT_BR, "objeto-ele/br"),
    ("O boleto vence na sexta.", PT_BR, "boleto/br"),
    ("Envie para 1000-001 Lisboa.", PT_PT, "codigo-postal-num/pt"),
    ("Envie para o CEP 01310-100.", PT_BR, "codigo-postal-num/br"),
])
def test_v2_single_cues(cues, text, label, cue):
    assert cue in vd.cue_counts(text), vd.cue_counts(text)
    assert cues.classify([text])[0]["label"] == label, cues.explain(text)


@pytest.mark.parametrize(("text", "absent"), [
    ("Ela joga fora de casa no domingo.", "deitar-fora/br"),   # football "away"
    ("O colete salva-vidas está no barco.", "nadador-salvador/br"),
    ("Competem em pé de igualdade.", "de-pe/br"),
    ("Traduziu o texto ao pé da letra.", "ao-pe-de/pt"),
    ("Solicito a Vossa Senhoria uma resposta.", "renda-casa/pt"),
    ("O chumbo é um metal pesado.", "chumbar/pt"),
    ("A beleza da paisagem impressiona.", "beleza/br"),
    ("A nossa casa é pequena.", "beleza/br"),
    ("O fato é que ninguém chegou.", "fato-roupa/pt"),
    ("As férias e as compras acabaram.", "tu-verb/pt"),        # nouns, not 2nd person
    ("Ele está bem, obrigado.", "esta-bem/pt"),                # "he is fine", both
    ("Ela deitou-se lá fora.", "deitar-fora/pt"),
])
def test_v2_cues_skip_shared_senses(text, absent):
    assert absent not in vd.cue_counts(text), vd.cue_counts(text)


def test_v2_cue_list_and_prior_only_weights():
    v1 = {k for k, *_ in vd.PAIRS}
    v2 = [k for k, *_ in vd.PAIRS_V2]
    assert len(v2) == len(set(v2)) >= 150 and not v1 & set(v2)
    shipped = load_weights()
    assert set(shipped["cues"]) == set(vd.CUE_BY_NAME)
    # a cue never seen in the train split keeps its linguistic prior (signed)
    assert shipped["prior_only"]
    for name in shipped["prior_only"]:
        c = vd.CUE_BY_NAME[name]
        assert shipped["cues"][name] == pytest.approx(c.sign * c.prior, abs=1e-6), name
    fitted = set(shipped["cues"]) - set(shipped["prior_only"])
    assert "progressive/pt" in fitted and "autocarro/pt" in fitted


def test_existential_ter_needs_a_place_not_a_possessor(cues):
    # "quantos anos tem a tua filha" is possessive "ter" in both varieties
    for text in ("Quantos anos tem a tua filha?", "Quantos anos tem sua filha?",
                 "Quantos irmãos tem o João?"):
        assert "existential-ter/br" not in vd.cue_counts(text), text
    verdict = cues.classify(["Quantos anos tem a tua filha?"])[0]  # was a pt-BR false flag
    assert verdict["label"] != PT_BR and verdict["score"] > 0.5, verdict
    # existential "tem" (pt-PT: "há") still counts
    for text in ("Me diz quantas xícaras tem em cima do balcão.",
                 "Quantas pessoas tem na fila?", "Na mesa tem um copo."):
        assert vd.cue_counts(text)["existential-ter/br"] == 1, text


def test_cues_crafted_for_single_sentences_are_gone():
    for name in ("arquibancada/pt", "eletrico/pt", "terra-batida/pt", "terra-batida/br",
                 "devidos-efeitos/pt", "devidos-efeitos/br", "vou-nessa/br"):
        assert name not in vd.CUE_BY_NAME, name
    assert "estádio" not in vd.CUE_BY_NAME["arquibancada/br"].pattern.pattern
    assert "(?=" not in vd.CUE_BY_NAME["eletrico/br"].pattern.pattern


@pytest.mark.parametrize("text", ["", "   ", "O carro é vermelho.", "Bom dia.",
                                  "Uma mesa com dois copos."])
def test_no_evidence_is_unknown(cues, text):
    out = cues.classify([text])[0]
    assert out["label"] == UNKNOWN
    assert 0.0 <= out["score"] <= 1.0


def test_scores_are_probabilities_and_the_contract_holds(cues, samples):
    assert isinstance(cues, VarietyDetector)
    scores = cues.score([s["text"] for s in samples])
    assert len(scores) == len(samples) and all(0.0 <= s <= 1.0 for s in scores)
    assert vd.label_for(0.55) == UNKNOWN and vd.label_for(0.9) == PT_PT
    assert vd.label_for(0.1) == PT_BR and vd.label_for(0.9, evidence=False) == UNKNOWN


def test_refit_reproduces_the_shipped_weights(samples):
    shipped = load_weights()
    refit = json.loads(json.dumps(fit(samples)))  # same rounding as the file

    def close(a, b, path="") -> None:
        if isinstance(a, dict):
            assert set(a) == set(b), path
            for k in a:
                close(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, float) or isinstance(b, float):
            assert a == pytest.approx(b, abs=1e-5), path
        else:
            assert a == b, path

    close(refit, shipped)
    assert len(shipped["cues"]) >= 120  # both sides of >= 60 pairs, plus syntax cues
    # every cue points where its linguistics says it should
    for name, w in shipped["cues"].items():
        assert (w > 0) == (vd.CUE_BY_NAME[name].variety == PT_PT), name


# ------------------------------------------------------------------ normaliser


@pytest.mark.parametrize(("br", "pt"), [
    ("Estou fazendo o jantar.", "Estou a fazer o jantar."),
    ("Ele está correndo no parque.", "Ele está a correr no parque."),
    ("Eles estão partindo amanhã.", "Eles estão a partir amanhã."),
    ("Você está me ouvindo?", "Você está a ouvir-me?"),
    ("Ele está pondo a mesa.", "Ele está a pôr a mesa."),
    ("Fiquei pensando nisso.", "Fiquei a pensar nisso."),
    ("Um homem andando de bicicleta perto do rio.", "Um homem a andar de bicicleta perto do rio."),
    ("Me diz quantas xícaras tem em cima do balcão.",
     "Diz-me quantas chávenas há em cima do balcão."),
    ("Ela se chama Joana.", "Ela chama-se Joana."),
    ("Você pode me mandar a foto?", "Você pode mandar-me a foto?"),
    ("Vou me embora.", "Vou-me embora."),
    ("O banheiro fica no fundo do corredor.", "A casa de banho fica no fundo do corredor."),
    ("Deixei o celular no ônibus.", "Deixei o telemóvel no autocarro."),
    ("Os ônibus estão atrasados.", "Os autocarros estão atrasados."),
    ("O trem chegou.", "O comboio chegou."),
    ("Bebi um suco no café da manhã.", "Bebi um sumo no pequeno-almoço."),
    ("Entre em contato conosco.", "Entre em contacto connosco."),
    ("O relatório econômico do Antônio.", "O relatório económico do António."),
    ("O registro foi feito na recepção.", "O registo foi feito na receção."),
    ("O bebê está dormindo.", "O bebé está a dormir."),
    ("De fato, é verdade.", "De facto, é verdade."),
    ("Salve o arquivo na pasta do computador.", "Salve o ficheiro na pasta do computador."),
    ("A TELA DO COMPUTADOR", "O ECRÃ DO COMPUTADOR"),
    ("Meu irmão tem que trabalhar.", "O meu irmão tem de trabalhar."),
    ("Preencha com seu nome.", "Preencha com o seu nome."),
    ("Pague até o dia 10.", "Pague até ao dia 10."),
    ("Vou pra casa, né?", "Vou para casa, não é?"),
])
def test_normaliser_examples(br, pt):
    assert normalise_br_to_pt(br) == pt


@pytest.mark.parametrize("text", [
    "O arquivo histórico da cidade abriu ao público.",   # "arquivo" outside IT stays
    "A biologia celular estuda as células.",             # adjective "celular" stays
    "O homem de fato azul chegou.",                      # "fato" = suit stays
    "Quantos anos tem a tua filha?",                     # possessive "tem" stays
    "Ele vai se quiser.",                                # "se" = "if" stays
    "Ele estava quando chegou.",                         # "quando" is not a gerund
    "",
])
def test_normaliser_leaves_safe_text_alone(text):
    assert normalise_br_to_pt(text) == text


def test_normaliser_keeps_pt_pt_and_moves_pt_br(cues, samples):
    for s in samples:
        if s["label"] == PT_PT:
            assert normalise_br_to_pt(s["text"]) == s["text"]
    br = [s["text"] for s in samples if s["label"] == PT_BR]
    before = sum(cues.score(br)) / len(br)
    after = sum(cues.score([normalise_br_to_pt(t) for t in br])) / len(br)
    assert before < 0.1 and after > 0.5, (before, after)


def test_gerund_to_infinitive():
    assert [gerund_to_infinitive(g) for g in ("fazendo", "partindo", "indo", "vindo", "Pondo",
                                              "compondo", "quando")] == [
        "fazer", "partir", "ir", "vir", "Pôr", "compor", None]


# ------------------------------------------------------------------ HF backend


def _tiny_classifier(path, id2label: dict[int, str], bias: tuple[float, float]) -> str:
    """A 1-layer BERT with a WordPiece tokenizer trained here; the head's bias fixes which
    label wins, so the label mapping is tested, not the (random) encoder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    sents = [s["text"] for s in load_samples()[:40]]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(sents, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                     num_labels=len(id2label), id2label=id2label,
                     label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    fast.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> str:
    """Always says PT-PT (id 1)."""
    return _tiny_classifier(tmp_path_factory.mktemp("tiny_pt"), {0: "PT-BR", 1: "PT-PT"},
                            (-4.0, 4.0))


def test_hf_backend_loads_and_returns_probabilities(tiny_pt):
    det = make_detector("hf", tiny_pt)
    assert isinstance(det, HFClassifierDetector) and isinstance(det, VarietyDetector)
    texts = ["O autocarro está a chegar.", "O ônibus está chegando.", "", "Diz-me tudo."]
    scores = det.score(texts)
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    out = det.classify(texts)
    assert [o["label"] for o in out] == [PT_PT, PT_PT, UNKNOWN, PT_PT]
    assert out[0]["score"] == pytest.approx(0.99966, abs=1e-4)  # softmax of (-4, 4)


def test_hf_label_mapping_follows_id2label(tmp_path):
    path = _tiny_classifier(tmp_path / "swapped", {0: "pt_PT", 1: "pt_BR"}, (-4.0, 4.0))
    assert HFClassifierDetector(path).classify(["Olá"])[0]["label"] == PT_BR
    bad = _tiny_classifier(tmp_path / "bad", {0: "NEGATIVE", 1: "POSITIVE"}, (0.0, 0.0))
    with pytest.raises(ConfigError):
        HFClassifierDetector(bad)


def test_label_aliases():
    assert [variety_of_label(x) for x in ("PT-PT", "pt_PT", "pt-pt", "PT-BR", "pt_BR",
                                          "Brazilian", "LABEL_0")] == [
        PT_PT, PT_PT, PT_PT, PT_BR, PT_BR, PT_BR, None]


def test_make_detector_refuses_bad_requests(tmp_path):
    with pytest.raises(ConfigError):
        make_detector("magic")
    with pytest.raises(ConfigError):
        make_detector("hf")
    with pytest.raises(MissingInputError):
        make_detector("hf", str(tmp_path / "nowhere"))


# ------------------------------------------------------------------ command face


def test_variety_command_one_json_line_per_input_line():
    lines = ["O miúdo está a comer um gelado.", "", "O garoto está tomando sorvete.",
             "O carro é vermelho.", "Me diz onde fica o banheiro."]
    out = io.StringIO()
    n = variety_command(io.StringIO("\n".join(lines) + "\n"), out)
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert n == len(rows) == len(lines)
    assert [r["text"] for r in rows] == lines
    assert [r["label"] for r in rows] == [PT_PT, UNKNOWN, PT_BR, UNKNOWN, PT_BR]
    assert all(set(r) == {"text", "label", "score"} and 0 <= r["score"] <= 1 for r in rows)


def test_variety_command_with_the_hf_backend(tiny_pt):
    out = io.StringIO()
    assert variety_command(io.StringIO("Olá\n\nAdeus\n"), out, kind="hf", model=tiny_pt) == 3
    assert [json.loads(x)["label"] for x in out.getvalue().splitlines()] == [
        PT_PT, UNKNOWN, PT_PT]


def test_classify_lines_streams_in_order(cues):
    rows = list(classify_lines((f"linha {i}\n" for i in range(150)), cues, batch_size=64))
    assert [r["text"] for r in rows] == [f"linha {i}" for i in range(150)]
