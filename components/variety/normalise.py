"""Conservative pt-BR -> pt-PT rewriting for translated or generated text.

`normalise_br_to_pt(text)` applies only substitutions that are safe out of context (or
inside a stated context), in this order:

1. colloquial spellings: "pra" -> "para", "né?" -> "não é?", "tô" -> "estou", "Oi" -> "Olá";
2. multi-word terms: "café da manhã" -> "pequeno-almoço", "ponto de ônibus" ->
   "paragem de autocarro", "faixa de pedestres" -> "passadeira", ...;
3. syntax: "estar + gerúndio" -> "estar a + infinitivo" ("estou fazendo" -> "estou a fazer",
   "está me ouvindo" -> "está a ouvir-me"), caption gerunds ("Um homem andando" -> "Um
   homem a andar"), clause-initial proclisis ("Me diz" -> "Diz-me", "Ela se chama" ->
   "Ela chama-se"), modal + clitic + infinitive ("pode me mandar" -> "pode mandar-me"),
   "ter que + inf." -> "ter de + inf.", existential "tem" -> "há" before a place, bare
   possessives after a preposition or at sentence start ("com seu" -> "com o seu",
   "Meu irmão" -> "O meu irmão"), "até o dia" -> "até ao dia";
4. vocabulary ("ônibus" -> "autocarro", "banheiro" -> "casa de banho", ...), fixing the
   determiner right before the noun when the gender or number changes ("o banheiro" ->
   "a casa de banho", "os ônibus" -> "os autocarros"); IT words ("arquivo" -> "ficheiro",
   "tela" -> "ecrã", "mouse" -> "rato") only when the text is about computers;
5. spelling ("contato" -> "contacto", "registro" -> "registo", "recepção" -> "receção",
   "de fato" -> "de facto", "conosco" -> "connosco") and accents before nasals
   ("econômico" -> "económico", "Antônio" -> "António", "bebê" -> "bebé").

Capitalisation of a replaced word is kept (first letter, or all caps). Agreement beyond
the adjacent determiner (adjectives after a noun whose gender changed) is not fixed, and
"você"/"a gente" are left alone (both occur in pt-PT).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from components.variety.detector import _ACCENT_BOTH, _ESTAR, _NOT_GERUND

L = r"[A-Za-zÀ-ÿ]"  # a letter (Latin-1 range covers Portuguese)
WB_L = r"(?<![\w-])"
WB_R = r"(?![\w-])"


def _match_case(src: str, dst: str) -> str:
    """`dst` with the capitalisation of `src` (ALL CAPS, Capitalised or as is)."""
    if len(src) > 1 and src.isupper():
        return dst.upper()
    if src[:1].isupper():
        return dst[:1].upper() + dst[1:]
    return dst


def _sub_words(pattern: str, repl: str | Callable[[re.Match], str], text: str,
               flags: int = re.IGNORECASE) -> str:
    """Replace whole words/phrases, keeping the case of the first letter."""
    rx = re.compile(WB_L + pattern + WB_R, flags)
    if callable(repl):
        return rx.sub(repl, text)
    return rx.sub(lambda m: _match_case(m.group(0), m.expand(repl)), text)


# ------------------------------------------------------------------ 1. colloquial spelling

_COLLOQUIAL = [
    (r"pra gente", "para a gente"), (r"pra", "para"), (r"pras", "para as"),
    (r"pros", "para os"), (r"pro(?= [a-zà-ÿ])", "para o"),
    (r"tô", "estou"), (r"tá(?= [a-zà-ÿ])", "está"), (r"né(?=\s*[?!.,]|$)", "não é"),
]


def _colloquial(text: str) -> str:
    for pat, rep in _COLLOQUIAL:
        text = _sub_words(pat, rep, text)
    return re.sub(r"(^|[.!?]\s+)Oi(?=[\s!,.])", r"\1Olá", text)


# ------------------------------------------------------------------ 2./4. vocabulary


@dataclass(frozen=True)
class Swap:
    """One pt-BR noun -> pt-PT noun. `*_pl` None: invariant plural (number read from the
    determiner). `context`: the swap applies only if one of these words is in the text.
    `needs_det`: only right after a determiner (the pt-BR word is also an adjective)."""

    br: str
    br_pl: str | None
    pt: str
    pt_pl: str
    br_gender: str = "m"
    pt_gender: str = "m"
    context: tuple[str, ...] = ()
    needs_det: bool = False
    not_followed: str = ""


_IT = ("computador", "pc", "notebook", "portátil", "laptop", "pasta", "pdf", "docx", "baixar",
       "download", "salvar", "anexo", "anexar", "e-mail", "email", "clicar", "clique", "teclado",
       "impressora", "software", "programa", "aplicativo", "sistema", "usuário", "senha",
       "site", "monitor", "digitar", "digite", "internet", "wi-fi", "navegador")

SWAPS: list[Swap] = [
    # multi-word first
    Swap("ponto de ônibus", "pontos de ônibus", "paragem de autocarro", "paragens de autocarro",
         "m", "f"),
    Swap("faixa de pedestres", "faixas de pedestres", "passadeira", "passadeiras", "f", "f"),
    Swap("faixa de pedestre", None, "passadeira", "passadeiras", "f", "f"),
    Swap("café da manhã", "cafés da manhã", "pequeno-almoço", "pequenos-almoços"),
    Swap("telefone celular", "telefones celulares", "telemóvel", "telemóveis"),
    Swap("carteira de motorista", "carteiras de motorista", "carta de condução",
         "cartas de condução", "f", "f"),
    Swap("carteira de habilitação", "carteiras de habilitação", "carta de condução",
         "cartas de condução", "f", "f"),
    Swap("caixa eletrônico", "caixas eletrônicos", "multibanco", "multibancos"),
    Swap("conta corrente", "contas correntes", "conta à ordem", "contas à ordem", "f", "f"),
    Swap("shopping center", "shopping centers", "centro comercial", "centros comerciais"),
    Swap("misto-quente", "mistos-quentes", "tosta mista", "tostas mistas", "m", "f"),
    Swap("vaso sanitário", "vasos sanitários", "sanita", "sanitas", "m", "f"),
    # single words
    Swap("ônibus", None, "autocarro", "autocarros"),
    Swap("celular", "celulares", "telemóvel", "telemóveis", needs_det=True),
    Swap("trem", "trens", "comboio", "comboios", not_followed=" de pouso"),
    Swap("metrô", "metrôs", "metro", "metros"),
    Swap("bonde", "bondes", "elétrico", "elétricos"),
    Swap("banheiro", "banheiros", "casa de banho", "casas de banho", "m", "f"),
    Swap("geladeira", "geladeiras", "frigorífico", "frigoríficos", "f", "m"),
    Swap("suco", "sucos", "sumo", "sumos"),
    Swap("açougue", "açougues", "talho", "talhos"),
    Swap("vitrine", "vitrines", "montra", "montras", "f", "f"),
    Swap("pedestre", "pedestres", "peão", "peões", needs_det=True),
    Swap("goleiro", "goleiros", "guarda-redes", "guarda-redes"),
    Swap("usuário", "usuários", "utilizador", "utilizadores"),
    Swap("usuária", "usuárias", "utilizadora", "utilizadoras", "f", "f"),
    Swap("aplicativo", "aplicativos", "aplicação", "aplicações", "m", "f"),
    Swap("cardápio", "cardápios", "ementa", "ementas", "m", "f"),
    Swap("xícara", "xícaras", "chávena", "chávenas", "f", "f"),
    Swap("abacaxi", "abacaxis", "ananás", "ananases"),
    Swap("sorvete", "sorvetes", "gelado", "gelados"),
    Swap("garçom", "garçons", "empregado de mesa", "empregados de mesa"),
    Swap("garçonete", "garçonetes", "empregada de mesa", "empregadas de mesa", "f", "f"),
    Swap("pedágio", "pedágios", "portagem", "portagens", "m", "f"),
    Swap("carona", "caronas", "boleia", "boleias", "f", "f"),
    Swap("chiclete", "chicletes", "pastilha elástica", "pastilhas elásticas", "m", "f"),
    Swap("caminhão", "caminhões", "camião", "camiões"),
    Swap("aeromoça", "aeromoças", "hospedeira de bordo", "hospedeiras de bordo", "f", "f"),
    Swap("torcedor", "torcedores", "adepto", "adeptos"),
    Swap("torcedora", "torcedoras", "adepta", "adeptas", "f", "f"),
    Swap("gramado", "gramados", "relvado", "relvados", needs_det=True),
    Swap("sobrenome", "sobrenomes", "apelido", "apelidos"),
    Swap("equipe", "equipes", "equipa", "equipas", "f", "f"),
    Swap("time", "times", "equipa", "equipas", "m", "f", needs_det=True),
    Swap("garoa", "garoas", "chuva miudinha", "chuvas miudinhas", "f", "f"),
    Swap("moça", "moças", "rapariga", "raparigas", "f", "f"),
    Swap("maiô", "maiôs", "fato de banho", "fatos de banho"),
    Swap("escrivaninha", "escrivaninhas", "secretária", "secretárias", "f", "f"),
    Swap("abajur", "abajures", "candeeiro", "candeeiros"),
    Swap("comprovante", "comprovantes", "comprovativo", "comprovativos"),
    Swap("holerite", "holerites", "recibo de vencimento", "recibos de vencimento"),
    Swap("contracheque", "contracheques", "recibo de vencimento", "recibos de vencimento"),
    Swap("térreo", "térreos", "rés-do-chão", "rés-do-chão", needs_det=True),
    Swap("aluguel", "aluguéis", "aluguer", "alugueres"),
    Swap("shopping", "shoppings", "centro comercial", "centros comerciais"),
    Swap("gol", "gols", "golo", "golos"),
    Swap("cachorro", "cachorros", "cão", "cães"),
    Swap("notebook", "notebooks", "portátil", "portáteis"),
    # computer words only in a computer context
    Swap("arquivo", "arquivos", "ficheiro", "ficheiros", context=_IT),
    Swap("tela", "telas", "ecrã", "ecrãs", "f", "m", context=_IT),
    Swap("mouse", "mouses", "rato", "ratos", context=_IT),
]

_GENDER_PAIRS = [
    ("o", "a"), ("os", "as"), ("um", "uma"), ("uns", "umas"), ("do", "da"), ("dos", "das"),
    ("no", "na"), ("nos", "nas"), ("ao", "à"), ("aos", "às"), ("pelo", "pela"),
    ("pelos", "pelas"), ("num", "numa"), ("nuns", "numas"), ("este", "esta"),
    ("estes", "estas"), ("esse", "essa"), ("esses", "essas"), ("aquele", "aquela"),
    ("aqueles", "aquelas"), ("deste", "desta"), ("destes", "destas"), ("desse", "dessa"),
    ("desses", "dessas"), ("neste", "nesta"), ("nestes", "nestas"), ("nesse", "nessa"),
    ("nesses", "nessas"), ("daquele", "daquela"), ("naquele", "naquela"), ("meu", "minha"),
    ("meus", "minhas"), ("teu", "tua"), ("teus", "tuas"), ("seu", "sua"), ("seus", "suas"),
    ("nosso", "nossa"), ("nossos", "nossas"), ("outro", "outra"), ("outros", "outras"),
    ("algum", "alguma"), ("alguns", "algumas"), ("nenhum", "nenhuma"), ("todo", "toda"),
    ("todos", "todas"), ("dois", "duas"), ("muitos", "muitas"), ("vários", "várias"),
    ("novo", "nova"), ("novos", "novas"), ("velho", "velha"), ("pequeno", "pequena"),
    ("grande", "grande"), ("primeiro", "primeira"), ("último", "última"),
]
_TO_F = {m: f for m, f in _GENDER_PAIRS}
_TO_M = {f: m for m, f in _GENDER_PAIRS if m != f}
_PLURAL_DETS = {w for pair in _GENDER_PAIRS for w in pair if w.endswith("s")} | {
    "duas", "três", "quatro", "cinco", "seis", "sete", "oito", "nove", "dez", "diversos",
    "diversas", "poucos", "poucas", "quantos", "quantas"}
_DETS = sorted(set(_TO_F) | set(_TO_M) | _PLURAL_DETS, key=len, reverse=True)
_DET_ALT = "|".join(re.escape(d) for d in _DETS)


def _apply_swap(sw: Swap, text: str) -> str:
    if sw.context and not any(re.search(WB_L + re.escape(c) + WB_R, text, re.IGNORECASE)
                              for c in sw.context):
        return text
    forms = [f for f in (sw.br_pl, sw.br) if f]
    det = rf"(?:(?P<det>{_DET_ALT})\s+)" + ("" if sw.needs_det else "?")
    nf = rf"(?!{re.escape(sw.not_followed)})" if sw.not_followed else ""
    rx = re.compile(WB_L + det + r"(?P<noun>" + "|".join(re.escape(f) for f in forms) + ")"
                    + WB_R + nf, re.IGNORECASE)

    def repl(m: re.Match) -> str:
        d, noun = m.group("det"), m.group("noun")
        dl = d.lower() if d else None
        if sw.br_pl is None:
            plural = dl in _PLURAL_DETS if dl else False
        else:
            plural = noun.lower() == sw.br_pl.lower()
        new = _match_case(noun, sw.pt_pl if plural else sw.pt)
        if d is None:
            return new
        if sw.br_gender != sw.pt_gender:
            table = _TO_F if sw.pt_gender == "f" else _TO_M
            d = _match_case(d, table.get(dl, dl))
        return f"{d} {new}"

    return rx.sub(repl, text)


def _vocabulary(text: str) -> str:
    # "tomou café da manhã" -> "tomou o pequeno-almoço" (pt-PT wants the article)
    text = re.sub(r"(?<![\w-])(tom\w+)\s+(café da manhã)", r"\1 o \2", text, flags=re.I)
    # "pegar o ônibus" -> "apanhar o ônibus" (then the noun swap)
    text = re.sub(r"(?<![\w-])peg(ar|a|o|ou|uei|amos|am|ando|aram)\s+(?=(?:o|a|os|as|um|uma)\s+"
                  r"(?:ônibus|metrô|trem|táxi|avião|barco|bonde)\b)",
                  lambda m: _match_case(m.group(0), "apanh" + {"uei": "ei"}.get(
                      m.group(1), m.group(1)) + " "), text, flags=re.I)
    text = re.sub(WB_L + r"(acess)(ar|a|am|e|em|ou|ei|amos|ando)\s+(?:(o|a|os|as)\s+)?"
                  rf"(?=({_POSS}|{L}+)" + WB_R + ")", _aceder, text, flags=re.I)
    for sw in SWAPS:
        text = _apply_swap(sw, text)
    return text


_ACEDER = {"ar": "er", "a": "e", "am": "em", "e": "a", "em": "am", "ou": "eu", "ei": "i",
           "amos": "emos", "ando": "endo"}
_A_ART = {"o": "ao", "a": "à", "os": "aos", "as": "às"}


def _aceder(m: re.Match) -> str:
    """"acessar a conta" -> "aceder à conta"; "acessar sua conta" -> "aceder à sua conta"."""
    verb = _match_case(m.group(1), "aced") + _ACEDER[m.group(2).lower()]
    art = (m.group(3) or "").lower()
    if not art and m.group(4).lower() in _ART:
        art = _ART[m.group(4).lower()]
    return f"{verb} {_A_ART[art]} " if art else f"{verb} a "


# ------------------------------------------------------------------ 3. syntax

_AUX = "|".join(sorted((w for w in _ESTAR if w not in ("tou", "tás", "tá", "tava", "tavam")),
                       key=len, reverse=True))
_CL = r"me|te|se|lhe|lhes|nos"
_ADVS = r"sempre|ainda|já|só|agora|muito|bem"
_FUT_COND = re.compile(r"(?:rei|rás|rá|remos|reis|rão|ria|rias|ríamos|ríeis|riam)$")


def gerund_to_infinitive(g: str) -> str | None:
    """"fazendo" -> "fazer", "partindo" -> "partir", "pondo" -> "pôr", "indo" -> "ir";
    None if `g` is not a (regular) gerund."""
    lw = g.lower()
    if lw in _NOT_GERUND - {"vindo"} or len(lw) < 4:
        return None
    if lw == "pondo":
        out = "pôr"
    elif lw == "vindo":
        out = "vir"
    elif lw.endswith("ando"):
        out = lw[:-4] + "ar"
    elif lw.endswith("endo"):
        out = lw[:-4] + "er"
    elif lw.endswith("indo"):
        out = lw[:-4] + "ir"
    elif lw.endswith("pondo"):
        out = lw[:-5] + "por"
    else:
        return None
    return _match_case(g, out)


_RE_PROG = re.compile(
    WB_L + rf"(?P<aux>{_AUX})\s+(?:(?P<cl1>{_CL})\s+)?(?P<adv>(?:{_ADVS})\s+)?"
    rf"(?:(?P<cl2>{_CL})\s+)?(?P<ger>{L}+ndo)" + WB_R, re.IGNORECASE)


def _progressive(text: str) -> str:
    def repl(m: re.Match) -> str:
        inf = gerund_to_infinitive(m.group("ger"))
        if inf is None:
            return m.group(0)
        cl = m.group("cl1") or m.group("cl2")
        return (f"{m.group('aux')} {m.group('adv') or ''}a {inf}"
                + (f"-{cl.lower()}" if cl else ""))

    return _RE_PROG.sub(repl, text)


_CAPTION_DETS = r"Um|Uma|Uns|Umas|Dois|Duas|Três|Quatro|Vários|Várias|Alguns|Algumas|O|A|Os|As"
_RE_CAPTION_GER = re.compile(
    rf"(?P<lead>^|[.!?]\s+|\b(?:mostra|mostram|vemos|vê-se|há)\s+)"
    rf"(?P<head>(?:{_CAPTION_DETS.lower()}|{_CAPTION_DETS})\s+(?:[^\s,.;:!?]+\s+){{1,5}}?)"
    rf"(?P<ger>{L}+ndo)" + WB_R)


_CLAUSE_WORDS = set(
    "que quando onde enquanto como se é são está estão foi era tem têm fica vai vem chega sai "
    "anda continua segue parece".split())
_FINITE = re.compile(r"(?:ou|eu|iu|ava|avam|aram|eram|iram)$")


def _caption_gerund(text: str) -> str:
    """"Um homem andando de bicicleta" -> "Um homem a andar de bicicleta"."""
    def repl(m: re.Match) -> str:
        words = [w.lower() for w in m.group("head").split()[1:]]
        if any(w.endswith("ndo") or w in _CLAUSE_WORDS or _FINITE.search(w) for w in words):
            return m.group(0)  # a finite verb before the gerund: not a caption noun phrase
        inf = gerund_to_infinitive(m.group("ger"))
        return m.group(0) if inf is None else f"{m.group('lead')}{m.group('head')}a {inf}"

    return _RE_CAPTION_GER.sub(repl, text)


def _enclitic(verb: str, clitic: str) -> str:
    """verb + "-" + clitic, with "vemos" + "nos" -> "vemo-nos"."""
    if clitic == "nos" and verb.lower().endswith("mos"):
        verb = verb[:-1]
    return f"{verb}-{clitic}"


_FUT_SUBJ = set(
    "quiser quiserem puder puderem tiver tiverem estiver estiverem fizer fizerem vier vierem "
    "souber souberem der derem disser disserem trouxer trouxerem houver for forem couber "
    "puser puserem vir virem".split())
_SE_VERBS = r"chama|chamam|chamava|trata|tratam|encontra|encontram|lembra|lembram"
_SUBJ = r"Eu|Tu|Ele|Ela|Você|Nós|Eles|Elas|Vocês|A gente"
_MODAL = (r"deve|devem|devia|deviam|deveria|deveriam|pode|podem|podia|podiam|poderia|poderiam|"
          r"vai|vão|vou|vamos|ia|iam|quer|querem|queria|precisa|precisam|consegue|conseguem|"
          r"costuma|costumam|gostaria|tenho de|tem de|temos de|têm de")


def _clitics(text: str) -> str:
    # "Me diz" / ", te ligo" -> "Diz-me" / ", ligo-te"
    def initial(m: re.Match) -> str:
        cl, verb = m.group("cl").lower(), m.group("verb")
        if _FUT_COND.search(verb.lower()):
            return m.group(0)
        new = _enclitic(verb, cl)
        if m.group("cl")[0].isupper():
            new = new[0].upper() + new[1:]
        return m.group("lead") + new

    text = re.sub(rf"(?P<lead>^|[.!?]\s+|[,;:]\s+|[«\"“(]\s*)(?P<cl>[Mm]e|[Tt]e|[Ll]he|[Ll]hes)\s+"
                  rf"(?P<verb>{L}+)" + WB_R, initial, text)
    text = re.sub(rf"(?P<lead>^|[.!?]\s+)(?P<cl>Se)\s+(?P<verb>{_SE_VERBS})" + WB_R,
                  initial, text)

    # "Ela se chama" -> "Ela chama-se" (clause-initial subject, no proclisis trigger)
    def subject(m: re.Match) -> str:
        verb, cl = m.group("verb"), m.group("cl").lower()
        if _FUT_COND.search(verb.lower()):
            return m.group(0)
        return f"{m.group('lead')}{m.group('subj')} {_enclitic(verb, cl)}"

    text = re.sub(rf"(?P<lead>^|[.!?]\s+)(?P<subj>{_SUBJ})\s+(?P<cl>{_CL})\s+"
                  rf"(?P<verb>{L}+)" + WB_R, subject, text)
    # "pode me mandar" -> "pode mandar-me"; "vou me embora" -> "vou-me embora"
    def modal(m: re.Match) -> str:
        cl, inf = m.group("cl").lower(), m.group("inf")
        if cl == "se" and inf.lower() in _FUT_SUBJ:  # "vai se quiser": "se" is "if"
            return m.group(0)
        return f"{m.group('modal')} {inf}-{cl}"

    text = re.sub(WB_L + rf"(?P<modal>{_MODAL})\s+(?P<cl>{_CL})\s+(?P<inf>{L}+(?:ar|er|ir|or|ôr))"
                  + WB_R, modal, text, flags=re.IGNORECASE)
    return re.sub(WB_L + r"(vou|vai|vamos|vão)\s+(me|se|nos)\s+embora" + WB_R,
                  lambda m: f"{_enclitic(m.group(1), m.group(2).lower())} embora", text,
                  flags=re.IGNORECASE)


_TER = (r"tenho|tens|tem|temos|têm|tinha|tinhas|tínhamos|tinham|tive|teve|tivemos|tiveram|"
        r"terei|terá|teremos|terão|teria|ter|tiver|tivesse|tenha|tenham")
_PLACE = (r"em|no|na|nos|nas|num|numa|em cima|embaixo|debaixo|atrás|dentro|perto|ao lado|aqui|"
          r"ali|lá|sobre|entre|junto")
_EXIST_DET = r"um|uma|uns|umas|algum|alguma|alguns|algumas|muitos|muitas|dois|duas|três|\d+"

_POSS = r"meu|minha|meus|minhas|teu|tua|teus|tuas|seu|sua|seus|suas|nosso|nossa|nossos|nossas"
_ART = {"meu": "o", "minha": "a", "meus": "os", "minhas": "as", "teu": "o", "tua": "a",
        "teus": "os", "tuas": "as", "seu": "o", "sua": "a", "seus": "os", "suas": "as",
        "nosso": "o", "nossa": "a", "nossos": "os", "nossas": "as"}
_PREP_ART = {("de", "o"): "do", ("de", "a"): "da", ("de", "os"): "dos", ("de", "as"): "das",
             ("em", "o"): "no", ("em", "a"): "na", ("em", "os"): "nos", ("em", "as"): "nas",
             ("por", "o"): "pelo", ("por", "a"): "pela", ("por", "os"): "pelos",
             ("por", "as"): "pelas"}
_NOT_POSS_HEAD = {"deus", "amor", "bem", "querido", "querida", "caro", "cara", "senhor",
                  "senhora", "nossa"}


def _syntax(text: str) -> str:
    text = _progressive(text)
    text = _caption_gerund(text)
    text = _clitics(text)
    # "tenho que ir" -> "tenho de ir"
    text = re.sub(WB_L + rf"({_TER})\s+que\s+(?={L}+(?:ar|er|ir|ôr|or)" + WB_R + ")",
                  r"\1 de ", text, flags=re.IGNORECASE)
    # existential "tem" before a place -> "há"
    text = re.sub(rf"(^|[.!?]\s+)Tem(\s+(?:{_EXIST_DET})\s+(?:\S+\s+){{1,3}}?(?:{_PLACE})\b)",
                  r"\1Há\2", text)
    text = re.sub(WB_L + rf"((?:[Nn][oa]s?)\s+{L}+\s+)tem(\s+(?:{_EXIST_DET})" + WB_R + ")",
                  r"\1há\2", text)
    text = re.sub(WB_L + rf"([Qq]uant[oa]s\s+{L}+\s+)tem(\s+(?:{_PLACE})" + WB_R + ")",
                  r"\1há\2", text)

    # bare possessives: "Meu irmão" -> "O meu irmão"; "com seu nome" -> "com o seu nome"
    def start_poss(m: re.Match) -> str:
        poss, nxt = m.group("poss"), m.group("next")
        if nxt.lower() in _NOT_POSS_HEAD or m.group("comma"):
            return m.group(0)
        return f"{m.group('lead')}{_ART[poss.lower()].capitalize()} {poss.lower()} {nxt}"

    text = re.sub(rf"(?P<lead>^|[.!?]\s+)(?P<poss>(?:{_POSS.title()}))\s+(?P<next>{L}+)"
                  rf"(?P<comma>,)?", start_poss, text)

    def prep_poss(m: re.Match) -> str:
        prep, poss = m.group("prep"), m.group("poss")
        art = _ART[poss.lower()]
        joined = _PREP_ART.get((prep.lower(), art))
        head = _match_case(prep, joined) if joined else f"{prep} {art}"
        return f"{head} {poss}"

    text = re.sub(WB_L + rf"(?P<prep>de|em|por|para|com|sem|sobre)\s+(?P<poss>{_POSS})"
                  + WB_R + r"(?=\s+" + L + ")", prep_poss, text, flags=re.IGNORECASE)
    # "em uma" -> "numa"; "na frente da loja" -> "em frente à loja"; "embaixo" -> "debaixo"
    text = _sub_words(r"em (um|uma|uns|umas)", r"n\1", text)
    text = _sub_words(r"na frente (do|da|dos|das|de)",
                      lambda m: _match_case(m.group(0), "em frente " + {
                          "do": "ao", "da": "à", "dos": "aos", "das": "às", "de": "de"}[
                          m.group(1).lower()]), text)
    text = _sub_words(r"embaixo d(e|o|a|os|as)", r"debaixo d\1", text)
    text = _sub_words(r"embaixo", "em baixo", text)
    text = _sub_words(r"listrad[oa]s?", "às riscas", text)
    # "até o dia 10" -> "até ao dia 10"
    return re.sub(WB_L + r"(até)\s+o(s?)\s+(?=(?:dia|dias|fim|final|momento|início|meio-dia|"
                  r"próximo|próximos|último|últimos|centro|topo|fundo|limite|prazo|mês|ano)\b)",
                  r"\1 ao\2 ", text, flags=re.IGNORECASE)


# ------------------------------------------------------------------ 5. spelling and accents

_SPELLING = [
    (r"contat(" + L + r"*)", r"contact\1"),
    (r"registr(" + L + r"*)", r"regist\1"),
    (r"recepç(ão|ões)", r"receç\1"), (r"recepcion(" + L + r"*)", r"rececion\1"),
    (r"percepç(ão|ões)", r"perceç\1"), (r"concepç(ão|ões)", r"conceç\1"),
    (r"decepç(ão|ões)", r"deceç\1"), (r"decepcion(" + L + r"*)", r"dececion\1"),
    (r"aspecto(s?)", r"aspeto\1"), (r"perspectiv(" + L + r"*)", r"perspetiv\1"),
    (r"espectador(" + L + r"*)", r"espetador\1"), (r"seç(ão|ões)", r"secç\1"),
    (r"infecç(ão|ões)", r"infeç\1"), (r"detecç(ão|ões)", r"deteç\1"),
    (r"detect(ar|a|am|ou|ado|ada|ados|adas|or|ores)", r"detet\1"),
    (r"caráter", "carácter"), (r"conosco", "connosco"),
    (r"úmid([oa]s?)", r"húmid\1"), (r"umidade", "humidade"),
    (r"bebê(s?)", r"bebé\1"), (r"purê(s?)", r"puré\1"), (r"nenê(s?)", r"nené\1"),
    (r"canapê(s?)", r"canapé\1"), (r"pênalti(s?)", r"penálti\1"),
    (r"câmera(s?)", r"câmara\1"),
    (r"(?<!homem )(?<!senhor )(?<!rapaz )(?<!noivo )de fato"
     r"(?! de | escuro| azul| preto| cinzento| e gravata| completo)", "de facto"),
]

_ACCENT_MAP = str.maketrans({"ô": "ó", "ê": "é", "Ô": "Ó", "Ê": "É"})
_RE_ACCENT_WORD = re.compile(rf"{L}*[ôêÔÊ][mnMN]{L}+")


def _spelling(text: str) -> str:
    for pat, rep in _SPELLING:
        text = _sub_words(pat, rep, text)

    def accent(m: re.Match) -> str:
        w = m.group(0)
        if _ACCENT_BOTH.search(w.lower()):
            return w
        return w.translate(_ACCENT_MAP)

    return _RE_ACCENT_WORD.sub(accent, text)


# ------------------------------------------------------------------ entry point


def normalise_br_to_pt(text: str) -> str:
    """Rewrite common pt-BR forms as pt-PT; text without them comes back unchanged (NFC)."""
    if not text:
        return text
    text = unicodedata.normalize("NFC", text)
    for step in (_colloquial, _syntax, _vocabulary, _spelling):
        text = step(text)
    return text
