"""A user's own glossary: which target-language term to use for a source term.

The translator enforces these terms and the term index can add them as labels. Glossaries come
as CSV or TSV with a header (``source,target,lang[,note]``; ``source,target`` when the caller knows
the target language, e.g. from ``--to``; or two language codes such as ``en,es``) or as TBX
(TermBase eXchange, v2 ``martif`` or v3 ``tbx``).
A malformed file raises `GlossaryError` naming the line; one source term given two different
targets for one language is kept (the first wins) and reported in `Glossary.conflicts`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from assistant.config import Settings
from assistant.paths import file_inside
from assistant.terminology.languages import normalize_lang
from assistant.terminology.models import Concept, SourceInfo

log = logging.getLogger(__name__)

GLOSSARY_SOURCE = "glossary"

MAX_GLOSSARY_BYTES = 50 * 1024**2
CSV_REQUIRED_COLUMNS = ("source", "target", "lang")
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


class GlossaryError(ValueError):
    """The glossary file cannot be used; the message names the file and line."""


class GlossaryEntry(BaseModel):
    source: str
    target: str
    lang: str
    note: str | None = None
    line: int | None = None


class GlossaryConflict(BaseModel):
    """One source term mapped to several targets in one language (the first is used)."""

    source: str
    lang: str
    targets: list[str]
    lines: list[int | None]


class Glossary(BaseModel):
    path: str
    entries: list[GlossaryEntry]
    conflicts: list[GlossaryConflict]

    @property
    def languages(self) -> list[str]:
        return sorted({entry.lang for entry in self.entries})

    def terms(self, lang: str) -> dict[str, str]:
        """Source term -> target term for one language; on a conflict the first entry wins."""
        lang = normalize_lang(lang)
        chosen: dict[str, str] = {}
        for entry in self.entries:
            if entry.lang == lang:
                chosen.setdefault(entry.source, entry.target)
        return chosen

    def lookup(self, source: str, lang: str) -> str | None:
        """Target for `source` in `lang`, matched case-insensitively, or None."""
        wanted = source.strip().casefold()
        for term, target in self.terms(lang).items():
            if term.casefold() == wanted:
                return target
        return None


def load_glossary(path: str | Path, default_lang: str | None = None) -> Glossary:
    """Parse a CSV, TSV or TBX glossary; `default_lang` is the target language of rows without a
    lang column. Raises GlossaryError with the line of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise GlossaryError(f"Glossary {path} does not exist or is not a file.")
    if path.stat().st_size > MAX_GLOSSARY_BYTES:
        raise GlossaryError(f"Glossary {path} is larger than {MAX_GLOSSARY_BYTES // 1024**2} MB.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GlossaryError(f"Glossary {path} is not UTF-8 text (byte {exc.start}).") from exc
    if not text.strip():
        raise GlossaryError(f"Glossary {path} is empty.")
    is_xml = path.suffix.lower() in {".tbx", ".xml"} or text.lstrip().startswith("<")
    entries = _parse_tbx(text, path) if is_xml else _parse_csv(text, path, default_lang)
    if not entries:
        raise GlossaryError(f"Glossary {path} has no entries.")
    conflicts = _find_conflicts(entries)
    for conflict in conflicts:
        log.warning("glossary %s: %r has several %s targets %s; using %r",
                    path.name, conflict.source, conflict.lang, conflict.targets, conflict.targets[0])
    return Glossary(path=str(path), entries=entries, conflicts=conflicts)


def load_named_glossary(name: str, settings: Settings) -> Glossary:
    """A glossary that a chat message or the model names: only a file in `Settings.glossary_roots`
    (relative names start in the glossary folder). One refusal for a file that is missing, unreadable,
    a link or elsewhere, so a message cannot probe which server files exist."""
    found = file_inside(name, settings.glossary_roots, base=settings.glossary_folder)
    if found is None:
        raise GlossaryError("That glossary is not available: name an uploaded glossary or a CSV/TBX file in the "
                            "glossary folder (SCANCHAT_GLOSSARY_DIR).")
    return load_glossary(found)


def _delimiter(path: Path, first_line: str) -> str:
    """Tab for .tsv files and tab-separated headers, semicolon for a header that only has those."""
    if path.suffix.lower() in {".tsv", ".tab"} or ("\t" in first_line and "," not in first_line):
        return "\t"
    return ";" if ";" in first_line and "," not in first_line else ","


def _language_header(header: list[str]) -> str | None:
    """The target language of a header made of two language codes (``en,es``), else None."""
    if len(header) != 2 or any(name in {"source", "target", "lang", "note"} for name in header):
        return None
    try:
        return normalize_lang(header[1]) if normalize_lang(header[0]) else None
    except ValueError:
        return None


def _parse_csv(text: str, path: Path, default_lang: str | None = None) -> list[GlossaryEntry]:
    lines = text.splitlines()
    reader = csv.DictReader(lines, strict=True, delimiter=_delimiter(path, lines[0] if lines else ""))
    header = [name.strip().lower() for name in reader.fieldnames or []]
    if (header_lang := _language_header(header)) is not None:
        header, default_lang = ["source", "target"], header_lang
    missing = [column for column in CSV_REQUIRED_COLUMNS if column not in header]
    if missing == ["lang"] and default_lang:
        missing = []
    elif missing == ["lang"]:
        raise GlossaryError(f"{path}, line 1: no lang column and no target language given; add a lang column "
                            "(source,target,lang), name the languages in the header (e.g. en,es), or give the "
                            "target language (--to es).")
    if missing:
        raise GlossaryError(f"{path}, line 1: the header must name the columns source,target[,lang][,note] "
                            f"(or two language codes such as en,es); missing {', '.join(missing)}.")
    reader.fieldnames = header
    entries = []
    try:
        for row in reader:
            line = reader.line_num
            if None in row:
                raise GlossaryError(f"{path}, line {line}: more fields than the header has columns.")
            if not any((value or "").strip() for value in row.values()):
                continue
            entries.append(_entry(row.get("source"), row.get("target"), row.get("lang") or default_lang,
                                  row.get("note"), line, path))
    except csv.Error as exc:
        raise GlossaryError(f"{path}, line {reader.line_num}: {exc}.") from exc
    return entries


def _parse_tbx(text: str, path: Path) -> list[GlossaryEntry]:
    """TBX v2 (termEntry/langSet/tig) and v3 (conceptEntry/langSec/termSec): the first
    language set holding a term is the source, every other language gives targets."""
    parser = ET.XMLParser()
    try:
        root = ET.fromstring(text, parser=parser)
    except ET.ParseError as exc:
        raise GlossaryError(f"{path}, line {exc.position[0]}: not well-formed XML ({exc.msg}).") from exc
    entries = []
    for concept in _elements(root, "termEntry", "conceptEntry"):
        language_sets = [(lang_set.get(_XML_LANG) or lang_set.get("lang"), [
            (term.text or "").strip() for term in _elements(lang_set, "term")
        ]) for lang_set in _elements(concept, "langSet", "langSec")]
        language_sets = [(lang, terms) for lang, terms in language_sets if any(terms)]
        if len(language_sets) < 2:
            raise GlossaryError(f"{path}: entry {concept.get('id') or '(no id)'} needs terms in two languages.")
        (source_lang, source_terms), targets = language_sets[0], language_sets[1:]
        if not source_lang:
            raise GlossaryError(f"{path}: entry {concept.get('id') or '(no id)'} has a language set without xml:lang.")
        for target_lang, target_terms in targets:
            for source in filter(None, source_terms):
                entries.append(_entry(source, target_terms[0], target_lang, None, None, path))
    if not entries:
        raise GlossaryError(f"{path}: no termEntry/conceptEntry elements found; is this a TBX file?")
    return entries


def _elements(parent: ET.Element, *local_names: str) -> list[ET.Element]:
    """Descendants with one of `local_names`, whatever XML namespace the TBX dialect uses."""
    return [element for element in parent.iter() if element.tag.rsplit("}", 1)[-1] in local_names]


def _entry(source: str | None, target: str | None, lang: str | None, note: str | None,
           line: int | None, path: Path) -> GlossaryEntry:
    where = f"{path}, line {line}" if line else str(path)
    source, target = (source or "").strip(), (target or "").strip()
    if not source or not target:
        raise GlossaryError(f"{where}: both source and target terms are required.")
    try:
        language = normalize_lang(lang or "")
    except ValueError as exc:
        raise GlossaryError(f"{where}: {exc}") from exc
    return GlossaryEntry(source=source, target=target, lang=language, note=(note or "").strip() or None, line=line)


def _find_conflicts(entries: list[GlossaryEntry]) -> list[GlossaryConflict]:
    by_key: dict[tuple[str, str], list[GlossaryEntry]] = defaultdict(list)
    for entry in entries:
        by_key[(entry.source.casefold(), entry.lang)].append(entry)
    conflicts = []
    for group in by_key.values():
        targets = list(dict.fromkeys(entry.target for entry in group))
        if len(targets) > 1:
            conflicts.append(GlossaryConflict(source=group[0].source, lang=group[0].lang, targets=targets,
                                              lines=[entry.line for entry in group]))
    return conflicts


def glossary_info(path: str | Path) -> SourceInfo:
    """Provenance of a glossary in the index metadata; the content hash as the version makes any
    edit of the file a new version, so the index is rebuilt."""
    path = Path(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise GlossaryError(f"Glossary {path} cannot be read ({exc.strerror or exc}).") from exc
    return SourceInfo(name=GLOSSARY_SOURCE, title=f"User glossary {path.name}", package=str(path.resolve()),
                      version=f"sha256:{digest}", licence="the user's own")


def glossary_concepts(glossary: Glossary) -> list[Concept]:
    """One concept per source term, its targets as labels (the first target per language wins,
    as in `Glossary.terms`)."""
    by_term: dict[str, Concept] = {}
    for entry in glossary.entries:
        concept = by_term.setdefault(entry.source.casefold(), Concept(
            id=f"{GLOSSARY_SOURCE}:{entry.source}", preferred=entry.source, source=GLOSSARY_SOURCE))
        concept.labels.setdefault(entry.lang, entry.target)
    return list(by_term.values())
