"""The lay-name -> code sets: what a patient or a non-coder calls a condition, and its code.

Three parts, each split into development and test halves by concept (a stable hash of the gold
concept, so no concept is in both):

* ``hand``: lay names of common conditions written for this benchmark with the WHO ICD-10
  categories a coder would accept (`evals/data/laynames_hand.tsv`); judged at category level.
* ``hpo-layperson``: HPO's own layperson synonyms ("Repeated bladder infections") -> the HPO id and,
  where HPO gives one, the SNOMED code.
* ``icd10cm-inclusion``: ICD-10-CM inclusion terms -> the ICD-10-CM code(s) holding them (exact) and
  the WHO ICD-10 category of those codes.

    python -m evals.terms.laynames --write    # regenerate evals/data/laynames.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

from pydantic import BaseModel

DATA = Path(__file__).resolve().parents[1] / "data"
HAND = DATA / "laynames_hand.tsv"
PAIRS = DATA / "laynames.jsonl"
HPO_SAMPLE = 160
ICD10CM_SAMPLE = 160


class LayPair(BaseModel):
    query: str
    kind: str
    group: str  # the gold concept, for the split
    gold: dict[str, list[str]]  # system -> accepted codes ("ICD-10" at category level)
    split: str


def split_of(group: str) -> str:
    return "dev" if hashlib.sha256(group.encode()).digest()[0] % 2 == 0 else "test"


def hand_pairs() -> list[LayPair]:
    pairs = []
    for line in HAND.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith(("#", "lay_name")):
            continue
        name, categories = line.split("\t")
        codes = categories.split(",")
        pairs.append(LayPair(query=name, kind="hand", group=f"icd10:{codes[0]}", gold={"ICD-10": codes},
                             split=split_of(f"icd10:{codes[0]}")))
    return pairs


def generated_pairs() -> list[LayPair]:
    from assistant.terminology.lexical import normalize_text
    from assistant.terminology.sources import read_concepts

    rng = random.Random(23)
    hpo_lines = _hpo_layperson()
    hpo = {c.id: c for c in read_concepts(["hpo"])}
    pairs = []
    for hpo_id, name in rng.sample(hpo_lines, HPO_SAMPLE):
        concept = hpo[f"hpo:{hpo_id}"]
        gold = {"HPO": [hpo_id]} | ({"SNOMED": [concept.codes["SNOMED"]]} if "SNOMED" in concept.codes else {})
        pairs.append(LayPair(query=name, kind="hpo-layperson", group=f"hpo:{hpo_id}", gold=gold,
                             split=split_of(f"hpo:{hpo_id}")))
    who = {c.codes["ICD-10"] for c in read_concepts(["icd10"])}
    cm = read_concepts(["icd10cm"])
    holders: dict[str, set[str]] = {}
    for concept in cm:
        for synonym in concept.synonyms:
            holders.setdefault(normalize_text(synonym), set()).add(concept.codes["ICD-10-CM"])
    terms = sorted({(s, c.codes["ICD-10-CM"]) for c in cm for s in c.synonyms
                    if len(s) <= 40 and not re.search(r"[()\[\],]", s) and len(s.split()) >= 2})
    for synonym, code in rng.sample(terms, ICD10CM_SAMPLE):
        codes = sorted(holders[normalize_text(synonym)])
        categories = sorted({c[:3] for c in codes} & who)  # some ICD-10-CM categories are not WHO ones
        gold = {"ICD-10-CM": codes} | ({"ICD-10": categories} if categories else {})
        pairs.append(LayPair(query=synonym, kind="icd10cm-inclusion", group=f"icd10cm:{code[:3]}", gold=gold,
                             split=split_of(f"icd10cm:{code[:3]}")))
    return pairs


def _hpo_layperson() -> list[tuple[str, str]]:
    from assistant.terminology.sources import _hpo_file

    pairs, current, obsolete = [], None, False
    for line in _hpo_file().read_text(encoding="utf-8").splitlines():
        if line.startswith("[Term]"):
            current, obsolete = None, False
        elif line.startswith("id: HP:"):
            current = line[4:].strip()
        elif line.startswith("is_obsolete: true"):
            obsolete = True
        elif current and not obsolete and line.startswith("synonym:") and " layperson " in line:
            pairs.append((current, line.split('"')[1]))
    return sorted(set(pairs))


def load_pairs(split: str | None = None) -> list[LayPair]:
    pairs = [LayPair.model_validate_json(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line]
    return [p for p in pairs if split in (None, p.split)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    pairs = hand_pairs() + generated_pairs()
    if args.write:
        PAIRS.write_text("".join(p.model_dump_json() + "\n" for p in pairs), encoding="utf-8")
    by = {}
    for p in pairs:
        by[(p.kind, p.split)] = by.get((p.kind, p.split), 0) + 1
    print(f"{len(pairs)} pairs: {by}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
