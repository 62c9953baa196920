"""Grammatical agreement around a restored term, for Spanish and Portuguese.

Engines see a placeholder (``un ZXTERM0``) and inflect its neighbours as masculine singular;
once the real term is back the article and the adjectives before it, and one participle or
adjective after it, must follow the term's gender ("una pequeña embolia pulmonar").
"""

from __future__ import annotations

import re
from typing import Literal

Gender = Literal["m", "f"]

# Masculine -> feminine determiners (and contractions) that engines put before a noun.
_FEMININE_DETERMINERS = {
    "es": {"el": "la", "los": "las", "un": "una", "unos": "unas", "del": "de la", "al": "a la",
           "este": "esta", "estos": "estas", "ese": "esa", "esos": "esas", "aquel": "aquella",
           "ningún": "ninguna", "algún": "alguna", "algunos": "algunas", "otro": "otra", "otros": "otras",
           "nuevo": "nueva", "mucho": "mucha", "muchos": "muchas", "todo": "toda", "todos": "todas"},
    "pt": {"o": "a", "os": "as", "um": "uma", "uns": "umas", "do": "da", "dos": "das", "no": "na", "nos": "nas",
           "ao": "à", "aos": "às", "pelo": "pela", "pelos": "pelas", "num": "numa", "este": "esta", "esse": "essa",
           "neste": "nesta", "nesse": "nessa", "deste": "desta", "desse": "dessa", "nenhum": "nenhuma",
           "algum": "alguma", "outro": "outra", "outros": "outras", "todo": "toda", "todos": "todas"},
}
# Feminine forms that are also prepositions ("a" = to in Portuguese) cannot be turned masculine.
_AMBIGUOUS_FEMININE = {"pt": {"a", "as", "à", "às"}, "es": set()}
_MASCULINE_DETERMINERS = {
    lang: {fem: masc for masc, fem in table.items() if fem not in _AMBIGUOUS_FEMININE[lang]}
    for lang, table in _FEMININE_DETERMINERS.items()
}
# Endings that make a following word almost surely an adjective or participle.
_ADJECTIVE_AFTER = re.compile(r"^\w{2,}(ad|id|ic|os|iv|in|ud|ent|an|ari|eñ|ci|gic|nic)[oa]s?$", re.IGNORECASE)

_FEMININE_ENDINGS = {
    "es": ("a", "ción", "sión", "dad", "tud", "sis", "itis", "umbre", "ie"),
    "pt": ("a", "ção", "são", "dade", "ite", "ose", "gem", "ie"),
}
_MASCULINE_ENDINGS = ("ma", "pa", "día", "dia", "lisis", "nálisis")  # problema, mapa, día, análisis


def supports_agreement(lang: str) -> bool:
    return lang in _FEMININE_DETERMINERS


def guess_gender(term: str, lang: str) -> Gender | None:
    """Gender of a Spanish/Portuguese term from its head noun (the first word), or None."""
    if lang not in _FEMININE_ENDINGS or not term.strip():
        return None
    head = term.split()[0].casefold()
    if is_plural(term):  # "glándulas" is feminine like "glándula"
        head = head[:-3] + "ão" if head.endswith("ões") else head[:-1]
    if head.endswith(_MASCULINE_ENDINGS):
        return "m"
    if head.endswith(_FEMININE_ENDINGS[lang]):
        return "f"
    return "m" if head.endswith(("o", "or", "e", "l", "n", "r", "s", "z")) else None


def _swap_ending(word: str, gender: Gender) -> str:
    """pequeño -> pequeña (and back), keeping the plural -s."""
    plural = word.endswith(("s", "S"))
    stem = word[:-1] if plural else word
    old, new = ("o", "a") if gender == "f" else ("a", "o")
    if not stem.lower().endswith(old):
        return word
    replaced = stem[:-1] + (new.upper() if stem[-1].isupper() else new)
    return replaced + (word[-1] if plural else "")


def _match_case(template: str, word: str) -> str:
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


# Adjectives that follow the noun in Spanish reports ("hematoma subdural agudo izquierdo") but that a
# word-by-word engine leaves in English order before it ("un agudo ZXTERM0").
_POSTNOMINAL = {"es": ("izquierdo", "izquierda", "derecho", "derecha", "agudo", "aguda", "crónico", "crónica",
                       "bilateral", "focal", "simple", "suave", "leve", "moderado", "moderada", "grave", "severo",
                       "severa", "difuso", "difusa", "múltiple", "distal", "proximal", "generalizado",
                       "generalizada", "dilatado", "dilatada", "dilatados", "dilatadas"),
                "pt": ("esquerdo", "esquerda", "direito", "direita", "agudo", "aguda", "crônico", "crônica",
                       "bilateral", "focal", "simples", "leve", "moderado", "moderada", "grave", "difuso", "difusa",
                       "distal", "proximal")}
# Singular -> plural determiners, for a plural term behind a placeholder the engine took as singular.
_PLURAL_DETERMINERS = {
    "es": {"el": "los", "la": "las", "un": "unos", "una": "unas", "del": "de los", "al": "a los"},
    "pt": {"o": "os", "a": "as", "um": "uns", "uma": "umas", "do": "dos", "da": "das", "no": "nos", "na": "nas",
           "ao": "aos", "pelo": "pelos", "pela": "pelas"},
}
_SINGULAR_ENDINGS = ("sis", "tis", "xis", "creas", "tórax", "torax", "bíceps", "tríceps")


_PREPOSITIONS = {"de", "del", "da", "do", "das", "dos", "en", "em", "con", "com", "a", "para", "por", "sin", "sem"}


def pluralize(term: str, lang: str) -> str:
    """'derrame pleural' -> 'derrames pleurales' (es) / 'derrames pleurais' (pt): the words before the
    first preposition take the plural; the rest ('fractura de cráneo') stays."""
    words, out, inflecting = term.split(), [], True
    for word in words:
        if word.casefold() in _PREPOSITIONS:
            inflecting = False
        out.append(_plural_word(word, lang) if inflecting else word)
    return " ".join(out)


def _plural_word(word: str, lang: str) -> str:
    lower = word.casefold()
    if word.isupper() or lower.endswith(("s", "x")):
        return word
    if lang == "pt":
        if lower.endswith("ão"):
            return word[:-2] + "ões"
        if lower.endswith("l"):
            return word[:-1] + "is"
        if lower.endswith("m"):
            return word[:-1] + "ns"
    if lang == "es":
        for accented, plain in (("ón", "ones"), ("án", "anes"), ("és", "eses"), ("ín", "ines")):
            if lower.endswith(accented):
                return word[:-2] + plain
        if lower.endswith("z"):
            return word[:-1] + "ces"
    return word + ("s" if lower[-1] in "aeiouáéíóú" else "es")


def is_plural(term: str) -> bool:
    """Whether a Spanish/Portuguese term's head noun (its first word) is plural."""
    head = term.split()[0].casefold() if term.split() else ""
    return head.endswith(("os", "as", "es", "ns", "is", "ões")) and not head.endswith(_SINGULAR_ENDINGS)


def plural_determiner(text: str, placeholder: str, term: str, lang: str) -> str:
    """'el ZXTERM0' -> 'los ZXTERM0' when the term is plural (hipocampos, seios paranasais)."""
    table = _PLURAL_DETERMINERS.get(lang)
    if not table or not is_plural(term):
        return text
    alternatives = "|".join(sorted(map(re.escape, table), key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?P<det>{alternatives})\s+(?={placeholder}\b)", re.IGNORECASE)
    return pattern.sub(lambda m: _match_case(m.group("det"), table[m.group("det").lower()]) + " ", text)


def postnominal_order(text: str, placeholder: str, lang: str) -> str:
    """Move the post-nominal adjectives standing right before `placeholder` behind it."""
    words = _POSTNOMINAL.get(lang)
    if not words:
        return text
    alternatives = "|".join(words)
    pattern = re.compile(rf"(?<!\w)(?P<adjs>(?:(?:{alternatives})\s+)+)(?P<term>{placeholder})(?!\d)", re.IGNORECASE)
    return pattern.sub(lambda m: m.group("term") + " " + " ".join(m.group("adjs").split()), text)


def agree(text: str, placeholder: str, gender: Gender | None, lang: str, plural: bool = False) -> str:
    """Put post-nominal adjectives behind `placeholder` and make the determiner and adjectives
    around it agree with `gender` (and with a plural term, in number)."""
    text = postnominal_order(text, placeholder, lang)
    if gender is None or not supports_agreement(lang):
        return text
    determiners = (_FEMININE_DETERMINERS if gender == "f" else _MASCULINE_DETERMINERS)[lang]
    alternatives = "|".join(sorted(map(re.escape, determiners), key=len, reverse=True))
    before = re.compile(rf"(?<!\w)(?P<det>{alternatives})(?P<adjs>(?:\s+\w+[oa]s?){{0,2}})\s+(?={placeholder}\b)",
                        re.IGNORECASE)

    def fix_before(match: re.Match[str]) -> str:
        det = match.group("det")
        adjectives = [_swap_ending(word, gender) for word in match.group("adjs").split()]
        return " ".join([_match_case(det, determiners[det.lower()]), *adjectives]) + " "

    text = before.sub(fix_before, text)
    opening = re.compile(rf"^(?P<adjs>(?:\w+[oa]s?\s+){{1,2}})(?={placeholder}\b)")  # 'Pequeña ZXTERM0 ...'
    text = opening.sub(lambda m: " ".join(_swap_ending(word, gender) for word in m.group("adjs").split()) + " ", text)
    after = re.compile(rf"(?<={placeholder})(?P<words>(?:\s+\w+){{1,2}})")
    movable = set(_POSTNOMINAL.get(lang, ()))

    def fix_after(match: re.Match[str]) -> str:
        """Up to two adjectives right after the term (the first may be any adjective-like word)."""
        fixed, agreeing = [], True
        for position, word in enumerate(match.group("words").split()):
            is_adjective = word.casefold() in movable or (position == 0 and _ADJECTIVE_AFTER.match(word))
            agreeing = agreeing and bool(is_adjective)
            if agreeing:
                word = _swap_ending(word, gender)
                word = _plural_word(word, lang) if plural else word
            fixed.append(word)
        return " " + " ".join(fixed)

    return after.sub(fix_after, text, count=1)


def agree_with_nouns(text: str, genders: dict[str, Gender], lang: str) -> str:
    """Articles and adjectives around each noun of known gender made to agree with it, for text whose
    words were inflected for another language's nouns ('la rodilla derecho': Portuguese 'joelho' is
    masculine)."""
    marker = next(m for m in ("ZQNOUN", "QZNOUN", "XZNOUN") if m not in text)
    for match in reversed(list(re.finditer(r"[^\W\d_]+", text))):
        gender = genders.get(match.group().casefold())
        if gender is None:
            continue
        marked = agree(text[:match.start()] + marker + text[match.end():], marker, gender, lang,
                       plural=is_plural(match.group()))
        text = marked.replace(marker, match.group(), 1)
    return text
