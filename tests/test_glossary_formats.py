"""Glossaries in the formats people have: two-column CSV with the language from --to, TSV,
language-code headers; and clear errors for what still cannot be read."""

from __future__ import annotations

import pytest

from assistant.terminology.glossary import GlossaryError, load_glossary
from tools.base import ToolError
from tools.translate_text import run_translation


def test_two_column_csv_takes_the_language_it_is_given(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("source,target\npulmonary embolism,embolia pulmonar\n", encoding="utf-8")
    glossary = load_glossary(path, default_lang="es-ES")
    assert glossary.lookup("Pulmonary embolism", "es") == "embolia pulmonar" and glossary.languages == ["es"]


def test_two_column_csv_without_a_language_says_how_to_give_one(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("source,target\npulmonary embolism,embolia pulmonar\n", encoding="utf-8")
    with pytest.raises(GlossaryError, match=r"line 1: no lang column.*--to es"):
        load_glossary(path)


@pytest.mark.parametrize("name, content", [
    ("g.tsv", "source\ttarget\tlang\npleural effusion\tderrame pleural\tpt\n"),
    ("g.txt", "source\ttarget\npleural effusion\tderrame pleural\n"),
    ("g.csv", "en,pt-BR\npleural effusion,derrame pleural\n"),
    ("g.csv", "source;target\npleural effusion;derrame pleural\n"),
])
def test_tsv_semicolons_and_language_code_headers(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert load_glossary(path, default_lang="pt").lookup("pleural effusion", "pt") == "derrame pleural"


def test_a_lang_column_wins_over_the_default(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("source,target,lang\nbrain,Gehirn,de\n", encoding="utf-8")
    glossary = load_glossary(path, default_lang="es")
    assert glossary.lookup("brain", "de") == "Gehirn" and glossary.lookup("brain", "es") is None


def test_header_that_names_nothing_known_is_refused_with_the_expected_columns(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("english,spanish words\nbrain,encéfalo\n", encoding="utf-8")
    with pytest.raises(GlossaryError, match="line 1: the header must name"):
        load_glossary(path, default_lang="es")


@pytest.fixture
def glossary_only(monkeypatch):
    """Required terms from the glossary alone: the shared index is not built here (minutes on CI's CPU)."""
    from assistant.translation import pipeline
    from assistant.translation.terms import GlossaryTermSource

    monkeypatch.setattr(pipeline, "default_term_sources",
                        lambda glossary, settings=None: [GlossaryTermSource(glossary)] if glossary else [])


def test_translate_with_a_two_column_glossary_and_the_language_from_to(tmp_path, glossary_only):
    """The reported failure: `--glossary g.csv --to es` with a source,target header said 'missing lang'."""
    path = tmp_path / "g.csv"
    path.write_text("source,target\nlung nodule,nódulo pulmonar\n", encoding="utf-8")
    result = run_translation("A lung nodule is seen.", "es", glossary=str(path))
    assert "nódulo pulmonar" in result.translation.lower()
    assert [(term.source, term.found) for term in result.terms] == [("lung nodule", True)]


def test_translate_with_a_glossary_of_another_language_is_a_clear_error(tmp_path, glossary_only):
    path = tmp_path / "g.csv"
    path.write_text("source,target,lang\nchest,tórax,xx1\n", encoding="utf-8")
    with pytest.raises(ToolError, match="line 2"):
        run_translation("The chest is normal.", "es", glossary=str(path))
