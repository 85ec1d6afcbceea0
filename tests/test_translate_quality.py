"""Structure protection and the translation quality filter (no models, no data needed)."""

from __future__ import annotations

import pytest

from components.settings import load_settings
from components.translation import protect
from components.translation.backends import Identity, ProtectedTranslator
from components.translation.quality import QualityFilter, language_probability, pair_reasons

RICH = ("<image>\nDescribe [10, 20.5, 30, 40] and `x = 1`, then choose (B) or A) for "
        "12.40 € at https://example.pt/x.")


def settings(**translate):
    return load_settings("ci", overrides={"translate": {"cache_dir": None, **translate}})


def test_protect_masks_structure_and_restores_it() -> None:
    masked = protect.protect(RICH)
    assert [s.kind for s in masked.spans] == ["tag", "box", "code", "option", "option",
                                              "number", "url"]
    assert "<image>" not in masked.masked and "12.40" not in masked.masked
    assert masked.masked.startswith("[[0]]\nDescribe [[1]] and [[2]]")
    assert protect.restore(masked.masked, masked) == RICH
    # pt-PT decimal comma on the way back; nothing else changes
    assert protect.restore(masked.masked, masked, decimal_comma=True) == RICH.replace(
        "12.40", "12,40")
    # models may space sentinels out
    spaced = masked.masked.replace("[[5]]", "[[ 5 ]]")
    assert protect.restore(spaced, masked) == RICH


def test_nothing_to_translate_passes_through() -> None:
    for text in ("2", "B", "(B)", "<image>", "[1, 2, 3, 4]", "12.5 %"):
        assert not protect.protect(text).translatable, text
    assert protect.passthrough("12.5 %", decimal_comma=True) == "12,5 %"
    assert protect.protect("red").translatable


class Echo:
    """A fake model: upper-cases the text, optionally dropping or inventing a sentinel."""

    identity = Identity("fake", "echo")

    def __init__(self, mangle=None):
        self.mangle = mangle or (lambda t: t)
        self.seen: list[str] = []

    def translate_batch(self, texts: list[str]) -> list[str]:
        self.seen += texts
        return [self.mangle(t.upper()) for t in texts]


def test_protected_translator_masks_before_and_restores_after() -> None:
    echo = Echo()
    wrapped = ProtectedTranslator(echo, decimal_comma=True)
    out = wrapped.translate_batch([RICH, "2", "red"])
    assert echo.seen == [protect.protect(RICH).masked, "red"]  # "2" never reaches the model
    assert out[1] == "2" and out[2] == "RED"
    assert "<image>" in out[0] and "[10, 20.5, 30, 40]" in out[0] and "12,40" in out[0]
    assert "`x = 1`" in out[0] and "(B)" in out[0] and "https://example.pt/x" in out[0]
    # structure intact; only the fake's "translation" is a copy of the source
    assert pair_reasons(RICH, out[0], settings()) == ["copied"]
    assert wrapped.identity.backend == "fake" and "decimal_comma=True" in wrapped.identity.prompt


@pytest.mark.parametrize(("mangle", "reason"), [
    (lambda t: t.replace("[[0]]", ""), "placeholder_lost"),         # <image> dropped
    (lambda t: t.replace("[[1]]", "[[1]]"[:-1]), "placeholder_lost"),  # garbled box
    (lambda t: t + " [[9]]", "placeholder_lost"),                   # invented sentinel
    (lambda t: t.replace("[[5]]", ""), "number_lost"),               # 12.40 dropped
    (lambda t: t.replace("[[5]]", "[[5]] [[5]]"), "number_lost"),    # duplicated
])
def test_lost_structure_is_named(mangle, reason) -> None:
    out = ProtectedTranslator(Echo(mangle)).translate_batch([RICH])[0]
    assert reason in pair_reasons(RICH, out, settings())


def test_pair_reasons() -> None:
    s = settings()
    src = "A large red square on a white background."
    assert pair_reasons(src, "", s) == ["untranslated"]
    assert pair_reasons(src, src.upper(), s) == ["copied"]
    assert pair_reasons("Lisboa", "Lisboa", s) == []  # one word: names stay as they are
    assert pair_reasons(src, "Um quadrado.", s) == ["length_ratio"]
    assert pair_reasons(src, "Um quadrado vermelho grande sobre fundo branco.", s) == []


def test_language_check_uses_the_langid_library() -> None:
    assert language_probability("Um quadrado vermelho grande sobre fundo branco.", "pt") > 0.3
    assert language_probability("A large red square on a white background.", "pt") < 0.01
    qf = QualityFilter(settings(variety_check=False))
    src = "A large red square on a white background."
    final, reasons = qf.assess({
        src: "A large red square on a white background!",         # copied English
        "Two circles.": "Dois círculos.",                          # too short to judge
        "A small blue circle at the top of the image.":
            "Um pequeno círculo azul na parte de cima da imagem.",
    })
    assert "wrong_language" in reasons[src] and "copied" in reasons[src]
    assert reasons["Two circles."] == []
    assert reasons["A small blue circle at the top of the image."] == []
    assert qf.stats["language_checked"] == 2 and qf.stats["language_flagged"] == 1


def test_variety_check_flags_pt_br_and_can_normalise() -> None:
    src = "You are using the mobile phone on the bus to see the screen."
    br = "Você está usando o celular no ônibus para ver a tela."
    pt = "Estás a usar o telemóvel no autocarro para ver o ecrã."
    qf = QualityFilter(settings())
    assert qf.variety_available  # components.variety ships with the platform
    _, reasons = qf.assess({src: br, src + " ": pt})
    assert reasons[src] == ["variety_pt_br"] and reasons[src + " "] == []
    assert qf.stats["variety_checked"] == 2 and qf.stats["variety_flagged"] == 1

    qf = QualityFilter(settings(normalise_br=True))
    detector, _ = qf.variety
    qf.variety = (detector, lambda text: pt if text == br else text)  # plumbing, not linguistics
    final, reasons = qf.assess({src: br})
    assert final[src] == pt and reasons[src] == []
    assert qf.stats["normalised_br"] == 1 and qf.stats["variety_flagged"] == 0


def test_variety_check_is_skipped_with_a_log_line_when_absent(monkeypatch, caplog) -> None:
    import builtins

    real_import = builtins.__import__

    def no_variety(name, *args, **kwargs):
        if name.startswith("components.variety"):
            raise ImportError("not here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_variety)
    with caplog.at_level("WARNING"):
        qf = QualityFilter(settings())
    assert not qf.variety_available and "variety check skipped" in caplog.text
    _, reasons = qf.assess({"You are on the bus.": "Você está no ônibus agora mesmo."})
    assert "variety_pt_br" not in reasons["You are on the bus."]
