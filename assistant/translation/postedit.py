"""Sentence repair after the engine: the regular mistakes of rule-based and tiny neural output in
report language, and English words left in a translation.

Rules are written for report sentences and checked on the benchmark's development half only
(`evals/bench_translation.py --reports --split dev`): Apertium keeps English negation order ("hay
no"), English passives ("está visto"), prenominal laterality ("el izquierdo riñón") and literal
senses ("suave" for mild, "veta" for vein); the Bergamot en→pt model renders "in the" as "não"
and English "is" as "é" where Portuguese reports use "está".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from functools import cache

_NEGATION = re.compile(r"\b(no|not|without|none|nor|never|cannot)\b|n't\b", re.IGNORECASE)

# (pattern, replacement) applied in order; \g<...> groups keep case and the words around them.
Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]
_SPANISH: list[Rule] = [
    (r"\b[Aa]llí (?:está|es|son|están)\b", "hay"),
    (r"\b([Hh])ay no (?:el |la |los |las )?", r"no \1ay "),
    (r"^[Nn]ingún (.+?) (?:está|es) (?:visto|observado)\b", r"No se observa ningún \1"),
    (r"^[Nn]inguna (.+?) (?:está|es) (?:vista|observada)\b", r"No se observa ninguna \1"),
    (r"^[Nn]ingún (.+?) (?:está|es|son|están) identificad[oa]s?\b", r"No se identifica ningún \1"),
    (r"^[Nn]inguna (.+?) (?:está|es|son|están) identificad[oa]s?\b", r"No se identifica ninguna \1"),
    (r"^(Un|Una|El|La) (.+?) (?:está|es|estuvo) (?:vist[oa]|observad[oa])\b",
     lambda m: f"Se observa {m.group(1).lower()} {m.group(2)}"),
    (r"^(Unos|Unas|Los|Las|Varios|Varias|Múltiples) (.+?) (?:están|son) (?:vist[oa]s|observad[oa]s)\b",
     lambda m: f"Se observan {m.group(1).lower()} {m.group(2)}"),
    (r"^(\w+) (?:Está|está|Es|es|Están|están|Son|son) (?:vist[oa]s?|observad[oa]s?)\b",
     lambda m: f"Se observan {m.group(1) if m.group(1).isupper() else m.group(1).lower()}"),
    (r"^(El|La|Los|Las) (.+?) (?:está|es) recomendad[oa]\b",
     lambda m: f"Se recomienda {m.group(1).lower()} {m.group(2)}"),
    (r"\b(es|son) (dilatad|ensanchad|aumentad|engrosad|estrechad|adelgazad|distendid|conservad|alinead|"
     r"centrad|reducid|desplazad|calcificad|ampliad)([oa]s?)\b",
     lambda m: ("está " if m.group(1) == "es" else "están ") + m.group(2) + m.group(3)),
    (r"\b(está|están) ampliad([oa]s?)\b", r"\1 aumentad\2 de tamaño"),
    (r"\bson en mantener con\b", "son compatibles con"),
    (r"\b(?:consistente|consistentes) con\b", "compatible con"),
    (r"\ben el (derecho|izquierdo)\b", r"en el lado \1"),
    (r"\bsuave\b", "leve"),
    (r"\bsuaves\b", "leves"),
    (r"\bveta\b", "vena"),
    (r"\bvetas\b", "venas"),
    (r"\bIRM\b", "RM"),
    (r"\bnodos de linfa\b", "ganglios linfáticos"),
    (r"\bcordón espinal\b", "médula espinal"),
    (r"\bespina (lumbar|cervical|torácica|dorsal)\b", r"columna \1"),
    (r"\ben diámetro\b", "de diámetro"),
    (r"\b(un|una|Un|Una) (\d+(?:[.,]\d+)?) (\w+) de (mm|cm)\b", r"\1 \3 de \2 \4"),
    (r"\b(un|una|Un|Una) (\d+(?:[.,]\d+)?) (mm|cm) (?:el |la )?(\w+)\b", r"\1 \4 de \2 \3"),
    (r"\bhueso\b(?= (?:está|en el riñón))", "cálculo"),
    (r"\b(No hay|No se observan?|No se identifican?) (?:ningún|ninguna|ningunos|ningunas) ", r"\1 "),
    (r"\bmidiendo (?=\d)", "de "),
    (r"\buna área\b", "un área"),
    (r"\bla área\b", "el área"),
    (r"\bangostad([oa]s?)\b", r"estrechad\1"),
    (r"\bes patente\b", "es permeable"),
    (r"^(Los|Las) ([^,]+?) es (\w+)\b",
     lambda m: f"{m.group(1)} {m.group(2)} son {_plural_adjective(m.group(3), 'es')}"),
]
_PORTUGUESE: list[Rule] = [
    (r"\b(é|são) (aumentad|dilatad|alargad|estreitad|espessad|afinad|preservad|distendid|centrad|reduzid|"
     r"ampliad|calcificad|alinhad)([oa]s?)\b",
     lambda m: ("está " if m.group(1) == "é" else "estão ") + m.group(2) + m.group(3)),
    (r"\b(está|estão) ampliad([oa]s?)\b", r"\1 aumentad\2"),
    (r"^(Um|Uma|O|A) (.+?) (?:é|foi) vist[oa]\b", lambda m: f"Observa-se {m.group(1).lower()} {m.group(2)}"),
    (r"^(Uns|Umas|Os|As|Vários|Várias|Múltiplos|Múltiplas) (.+?) (?:são|foram) vist[oa]s\b",
     lambda m: f"Observam-se {m.group(1).lower()} {m.group(2)}"),
    (r"^(\w+) (?:são|foram) vist[oa]s\b",
     lambda m: f"Observam-se {m.group(1) if m.group(1).isupper() else m.group(1).lower()}"),
    (r"^(A|O|As|Os) (.+?) (?:é|está) recomendad[oa]\b", lambda m: f"Recomenda-se {m.group(1).lower()} {m.group(2)}"),
    (r"\bmudanças\b", "alterações"),
    (r"\bmudança\b", "alteração"),
    (r"\btomografia computadorizada\b", "TC"),
    (r"^Nenhum (.+?) (?:é|foi) (?:visto|observado)\b", r"Não se observa \1"),
    (r"^Nenhuma (.+?) (?:é|foi) (?:vista|observada)\b", r"Não se observa \1"),
    (r"^Nenhum (.+?) (?:é|foi) identificad[oa]\b", r"Não se identifica \1"),
    (r"^Nenhuma (.+?) (?:é|foi) identificad[oa]\b", r"Não se identifica \1"),
    (r"^Não são identificad[oa]s\b", "Não se identificam"),
    (r"^Não existem?\b", "Não há"),
    (r"\bmedindo (?=\d)", "de "),
    (r"\bsuave\b", "leve"),
    (r"^(Os|As) ([^,]+?) é (\w+)\b", lambda m: f"{m.group(1)} {m.group(2)} são {_plural_adjective(m.group(3), 'pt')}"),
    (r"\bimagens de seguimento\b", "controle por imagem"),
]
_RULES = {"es": _SPANISH, "pt": _PORTUGUESE}


def _plural_adjective(word: str, lang: str) -> str:
    from assistant.translation.agreement import _plural_word

    return _plural_word(word, lang) if re.fullmatch(r"[a-záéíóúâêôãõç]+", word) else word
_SPURIOUS_NAO = re.compile(r"(?<=\w )não (?=(?:o|a|os|as)?\s*(?!é\b|está\b|há\b|se\b|foi\b|são\b|estão\b|mostra|"
                           r"tem\b|têm\b|pode|deve|houve|apresenta|identific|observ|visualiz)(?:[a-zà-ú]{3,}|(?:ZX|QX|ZQ)TERM\d))")


def post_edit(source: str, text: str, lang: str) -> str:
    """`text` with the rules for `lang` applied and its first letter capitalised like the source's."""
    rules = _RULES.get(lang)
    if not rules or not text:
        return text
    if lang == "pt":
        text = _fix_spurious_negation(source, text)
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    if source[:1].isupper() and text[:1].islower():
        text = text[:1].upper() + text[1:]
    return text


def _fix_spurious_negation(source: str, text: str) -> str:
    """Keep as many 'não' as the source has negations (the first ones); the rest stand for 'no' (in the)."""
    negations = len(_NEGATION.findall(source))
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return match.group(0) if count <= negations else "no "

    keep_leading = len(re.findall(r"^\s*não\b", text, re.IGNORECASE))
    negations = max(0, negations - keep_leading)
    return _SPURIOUS_NAO.sub(replace, text)


# --- English left in a translation -----------------------------------------------------------------

def _fold(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word.casefold()) if not unicodedata.combining(c))


@cache
def english_vocabulary() -> frozenset[str]:
    """English words of medical text: the English ICD-10 titles, the phrasebook and function words.
    A copied word outside it (a drug or a person's name) is not taken for untranslated English."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from assistant.translation.icd10 import icd10_titles
    from assistant.translation.phrasebook import phrasebook

    texts = [title.english for title in icd10_titles("es")] + list(phrasebook("es"))
    return frozenset({_fold(w) for text in texts for w in re.findall(r"[^\W\d_]+", text)} | set(ENGLISH_STOP_WORDS))


@cache
def target_vocabulary(lang: str) -> frozenset[str]:
    """Words known to be `lang` words: those of the official ICD-10 titles in that language and of
    the phrasebook's translations (so "normal", "hematoma" or "tumor" are not taken for English)."""
    from assistant.translation.icd10 import icd10_titles
    from assistant.translation.phrasebook import phrasebook

    words: set[str] = set()
    try:
        texts: Iterable[str] = [title.translated for title in icd10_titles(lang)]
    except (ValueError, FileNotFoundError):
        texts = []
    for text in [*texts, *phrasebook(lang).values()]:
        words.update(_fold(w) for w in re.findall(r"[^\W\d_]+", text))
    return frozenset(words)


def english_leftovers(source: str, text: str, lang: str, allowed: Iterable[str] = ()) -> list[str]:
    """Words of `text` copied from the English `source` that are English words and not words of
    `lang`: names, drug names and numbers excepted (a word capitalised mid-sentence in the source is
    taken for a name)."""
    vocabulary, english_words = target_vocabulary(lang), english_vocabulary()
    allowed_words = {_fold(w) for phrase in allowed for w in re.findall(r"[^\W\d_]+", phrase)}
    source_words = re.findall(r"[^\W\d_]+", source)
    names = {_fold(w) for i, w in enumerate(source_words) if i > 0 and w[:1].isupper() and not w.isupper()}
    english = {_fold(w) for w in source_words}
    found = []
    for word in re.findall(r"[^\W\d_]+", text):
        folded = _fold(word)
        if (len(word) >= 3 or word.isupper()) and len(word) >= 2 and folded in english and folded not in vocabulary \
                and (folded in english_words or word.isupper()) and folded not in allowed_words \
                and folded not in names and word not in found:
            found.append(word)
    return found

