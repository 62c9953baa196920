"""Radiology phrases translated as units for rule-based engines (`phrasebook.tsv`).

Apertium translates word by word: "pleural effusion" stays English, "chest" becomes a treasure
chest, "small bowel" a little intestine. Protecting such phrases like required terms (placeholder,
restore, agreement) gives the engine whole units; unlike the user's glossary and the term index
they are not required terms, so they never count in term success or flag a sentence.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from assistant.translation.agreement import guess_gender
from assistant.translation.terms import TermConstraint, TermSpan, number_matched, variant_pattern

PHRASEBOOK_FILE = Path(__file__).with_name("phrasebook.tsv")
LANGUAGES = ("es", "pt")


@cache
def phrasebook(lang: str) -> dict[str, str]:
    """English phrase -> target phrase for `lang` ('-' entries left to the engine)."""
    if lang not in LANGUAGES:
        return {}
    column = 1 + LANGUAGES.index(lang)
    phrases = {}
    for line in PHRASEBOOK_FILE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith(("#", "en\t")):
            continue
        fields = line.split("\t")
        if fields[column] != "-":
            phrases[fields[0]] = fields[column]
    return phrases


@cache
def _patterns(lang: str) -> list[tuple[re.Pattern[str], str, str]]:
    return [(variant_pattern(en), en, target) for en, target in phrasebook(lang).items()]


class PhrasebookSource:
    """Phrasebook phrases in an English text, in any spelling variant (haemorrhage / hemorrhage)."""

    def find(self, text, source_lang, target_lang):
        if source_lang != "en":
            return []
        spans = []
        for pattern, en, target in _patterns(target_lang):
            constraint = TermConstraint(source=en, target=target, origin="phrasebook",
                                        gender=guess_gender(target, target_lang))
            spans += [TermSpan(m.start(), m.end(), number_matched(constraint, m.group(), target_lang))
                      for m in pattern.finditer(text)]
        return spans
