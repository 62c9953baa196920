"""Spelling and form variants of English medical terms: US/UK spelling, hyphens, plurals and
qualifiers such as ", unspecified" or " NOS".

The sources disagree on spelling (WHO ICD-10 writes "haemorrhage", ICD-10-CM and HPO
"hemorrhage") and users write either, so retrieval, the concept graph and the translation
constraints all compare terms by `variant_key` and expand a query into `spellings` of it.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

from assistant.terminology.lexical import normalize_text

# UK -> US word parts, each checked against real medical spellings (haemorrhage, anaemia,
# oedema, oesophagus, paediatric, foetal, coeliac, diarrhoea, leukaemia, ischaemia, tumour ...).
_UK_US_PARTS: tuple[tuple[str, str], ...] = (
    ("haem", "hem"), ("aemia", "emia"), ("oedem", "edem"), ("oesophag", "esophag"), ("oestr", "estr"),
    ("paediatr", "pediatr"), ("orthopaed", "orthoped"), ("foet", "fet"), ("coeliac", "celiac"),
    ("diarrhoe", "diarrhe"), ("leukaem", "leukem"), ("ischaem", "ischem"), ("anaesth", "anesth"),
    ("caec", "cec"), ("dyspnoe", "dyspne"), ("apnoe", "apne"), ("gynaec", "gynec"), ("aetiol", "etiol"),
    ("tumour", "tumor"), ("colour", "color"), ("behaviour", "behavior"), ("fibre", "fiber"), ("centre", "center"),
    ("litre", "liter"), ("sulph", "sulf"), ("ageing", "aging"), ("manoeuvr", "maneuver"), ("coele", "cele"),
    ("oesinophil", "eosinophil"),
)
# US -> UK for the query side, anchored so that "hemisphere" or "pedal" stay as they are.
_US_UK: tuple[tuple[str, str], ...] = (
    (r"\bhem(?!i)", "haem"), (r"(?<=[a-z])emia\b", "aemia"), (r"\bedem", "oedem"), (r"\besophag", "oesophag"),
    (r"\bpediatr", "paediatr"), (r"\bfet(?=[au])", "foet"), (r"\bceliac", "coeliac"), (r"diarrhe", "diarrhoe"),
    (r"\btumor", "tumour"), (r"\bfiber", "fibre"), (r"\bcenter", "centre"), (r"iz(?=e|ed|es|ing|ation)", "is"),
    (r"\bdyspne", "dyspnoe"), (r"\banesth", "anaesth"), (r"\bgynec", "gynaec"), (r"\betiol", "aetiol"),
    (r"\bsulf", "sulph"), (r"\bcec(?=[au])", "caec"), (r"\bestrogen", "oestrogen"),
)
# -isation/-ised/-ising are UK forms of -ization/-ized/-izing, except in these words.
_ISE = re.compile(r"\b(\w{3,}?)is(ation|ations|ed|ing)\b")
_NOT_ISE = {"superv", "rev", "adv", "dev", "surpr", "comprom", "prem", "ra", "pra", "bru", "exerc", "prec",
            "otherw", "desp", "appr", "dem", "circumc", "exc", "inc", "merchand", "advert", "compr", "po"}
# Qualifiers that do not change which concept is meant when a user names it.
_QUALIFIERS = re.compile(r",?\s*\b(unspecified|not otherwise specified|nos|not elsewhere classified|nec|"
                         r"unspecified site|site unspecified)\b\s*$", re.IGNORECASE)
_PARENTHESES = re.compile(r"\s*[(\[][^)\]]*[)\]]")
# Plural -> singular for the last word (Greek/Latin first, then English).
_PLURALS: tuple[tuple[str, str], ...] = (
    ("ices", "ix"), ("ides", "is"), ("ata", "a"), ("ae", "a"), ("ies", "y"), ("ses", "sis"),
    ("xes", "x"), ("ches", "ch"), ("shes", "sh"), ("sses", "ss"), ("oes", "o"), ("s", ""),
)
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "ous", "as", "ics")
_INVARIANT = {"herpes", "diabetes", "rabies", "scabies", "series", "species", "feces", "faeces", "caries", "ascites",
              "pubes", "nares", "measles", "mumps", "rickets", "shingles", "lues", "aphthae", "sepsis"}


def us_spelling(text: str) -> str:
    """`text` (already lower case) with UK spellings turned into US ones."""
    for uk, us in _UK_US_PARTS:
        if uk in text:
            text = text.replace(uk, us)
    return _ISE.sub(lambda m: m.group(0) if m.group(1) in _NOT_ISE else f"{m.group(1)}iz{m.group(2)}", text)


_US_UK_COMPILED = [(re.compile(us), uk) for us, uk in _US_UK]


def uk_spelling(text: str) -> str:
    """A UK spelling of a lower-case US term (WHO ICD-10 titles are written that way)."""
    for us, uk in _US_UK_COMPILED:
        text = us.sub(uk, text)
    return text


def singular(word: str) -> str:
    """A plural English or Latin noun's singular; other words unchanged."""
    if len(word) <= 3 or word in _INVARIANT or word.endswith(_NOT_PLURAL_ENDINGS):
        return word
    for ending, replacement in _PLURALS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            return word[: -len(ending)] + replacement
    return word


@cache
def variant_key(term: str) -> str:
    """The form every variant of a term shares: normalised, US spelling, hyphens as spaces,
    parenthesised parts and 'unspecified'/'NOS' dropped, each word singular, words sorted."""
    text = _QUALIFIERS.sub("", _PARENTHESES.sub("", term)).strip()
    words = normalize_text(us_spelling(text.casefold())).split()
    return " ".join(sorted(singular(word) for word in words if word not in {"of", "the", "a", "an"}))


@lru_cache(maxsize=65536)
def spellings(term: str) -> tuple[str, ...]:
    """The term as written, in US and UK spelling, and with its last word made singular: the
    forms the index may hold it under (the original first, no repeats)."""
    lowered = " ".join(term.casefold().replace("-", " ").split())
    us = us_spelling(lowered)
    forms = [term, lowered, us, uk_spelling(us)]
    for form in list(forms[1:]):
        words = form.split()
        if words:
            forms.append(" ".join([*words[:-1], singular(words[-1])]))
    return tuple(dict.fromkeys(forms))
