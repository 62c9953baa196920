"""One concept graph over every terminology: which concepts of different sources mean the same thing.

Each source describes its own concepts; a user asking for "the ICD-10 code of heart attack" finds
the idea in whichever source names it best (often HPO, whose layperson synonyms say "heart
attack") and needs its code in another. Links, strongest first:

1. ``shared-code``: the same ICD-10, SNOMED, RadLex or LOINC code (WHO ICD-10 and ICD-10-CM by code).
2. ``source-mapping``: a source's own cross-reference (HPO's ICD-10 and SNOMED xrefs).
3. ``label-exact``: a preferred term or synonym equal after normalisation (case, accents, punctuation).
4. ``label-variant``: equal after `variant_key` (US/UK spelling, plural, word order, "unspecified",
   parentheses), accepted only when the embedder puts the two strings within `VARIANT_MIN_COSINE`.

Links merge concepts greedily, strongest first, and never put two different codes of one system
(ICD-10, ICD-10-CM, HPO, SNOMED) into one concept, so a chain of loose matches cannot glue
unrelated diseases together. An ICD-10-CM code that WHO ICD-10 lacks gets its nearest WHO parent as
a ``code-parent`` link (broader, never merged). Every link keeps its method and confidence.

Built from the term index's own concepts and saved beside it under a versioned key, so indexes
built by older code are read as they are.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from filelock import FileLock

from assistant.terminology.lexical import normalize_text
from assistant.terminology.models import Concept, ConceptLink, LinkedConcept, LinkMethod
from assistant.terminology.variants import variant_key

log = logging.getLogger(__name__)

GRAPH_VERSION = 2  # 2: name links weighted by how many matched names are preferred terms
Embed = Callable[[list[str]], np.ndarray]
# Systems in which one concept has one code: a merge that would give a concept two is refused.
EXCLUSIVE_SYSTEMS = ("ICD-10", "ICD-10-CM", "HPO", "SNOMED")
SHARED_CODE_SYSTEMS = ("ICD-10", "SNOMED", "RadLex", "LOINC")
# Sources whose names are matched with each other; drug names only ever match drug names.
LABEL_SOURCES = ("icd10", "icd10cm", "hpo", "dicom", "glossary")
# Which source's code and English name a merged concept shows first.
SOURCE_AUTHORITY = {"icd10": 0, "icd10cm": 1, "hpo": 2, "dicom": 3, "glossary": 4, "drugs": 5}
CONFIDENCE = {"shared-code": 1.0, "source-mapping": 0.95, "label-exact": 0.9, "code-parent": 0.8}
# A name match is surest between preferred terms; of the 9 wrong ones in a hand-checked sample of
# 100 links, most matched two synonyms ('pure gonadal dysgenesis', 'hypersensitivity').
NAME_KIND_FACTOR = {2: 1.0, 1: 0.95, 0: 0.85}  # how many of the two names are preferred terms
VARIANT_MIN_COSINE = 0.8
# A name shared by more concepts than this within one source is generic ("other", "unspecified").
MAX_SAME_NAME = 3
MIN_KEY_CHARS = 4


class ConceptGraph:
    """Concept id -> its `LinkedConcept`; concepts linked to nothing are wrapped on the fly."""

    def __init__(self, groups: list[LinkedConcept | dict], group_of: dict[str, int], who_codes: frozenset[str]) -> None:
        self._groups = groups  # dicts from disk are validated when first asked for
        self._group_of = group_of
        self.who_codes = who_codes

    @property
    def groups(self) -> list[LinkedConcept]:
        return [self._group(i) for i in range(len(self._groups))]

    def _group(self, index: int) -> LinkedConcept:
        group = self._groups[index]
        if isinstance(group, dict):
            group = self._groups[index] = LinkedConcept.model_validate(group)
        return group

    def linked(self, concept: Concept) -> LinkedConcept:
        index = self._group_of.get(concept.id)
        if index is not None:
            return self._group(index).model_copy(deep=True)
        return LinkedConcept(id=concept.id, preferred=concept.preferred, members=[concept.id],
                             codes={system: [code] for system, code in _own_codes(concept, self.who_codes).items()},
                             broader=_broader(concept, self.who_codes)[0], labels=_labels(concept))

    def links(self) -> Iterable[ConceptLink]:
        for group in self.groups:
            yield from group.links

    # --- on disk ------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".building", dir=folder.parent))
        payload = {"version": GRAPH_VERSION, "groups": [g.model_dump() for g in self.groups],
                   "group_of": self._group_of, "who_codes": sorted(self.who_codes)}
        with (staging / "graph.pkl").open("wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> ConceptGraph:
        with (folder / "graph.pkl").open("rb") as handle:
            payload = pickle.load(handle)  # written by `save` into our own cache folder
        if payload.get("version") != GRAPH_VERSION:
            raise ValueError(f"concept graph in {folder} has version {payload.get('version')}, not {GRAPH_VERSION}")
        return cls(payload["groups"], payload["group_of"], frozenset(payload["who_codes"]))


def graph_folder(index_folder: Path, index_fingerprint: str) -> Path:
    """Beside the index, never inside it: a new graph version is a new folder, the index untouched."""
    key = hashlib.sha1(f"{GRAPH_VERSION}:{index_fingerprint}".encode()).hexdigest()[:12]
    return index_folder.parent / f"{index_folder.name}.graph-v{GRAPH_VERSION}-{key}"


def open_concept_graph(index_folder: Path, index_fingerprint: str, concepts: Callable[[], Sequence[Concept]],
                       embed: Embed | None) -> ConceptGraph:
    """The saved graph for this index, built (and saved) when missing or unreadable."""
    folder = graph_folder(index_folder, index_fingerprint)
    with FileLock(str(folder) + ".lock"):
        try:
            return ConceptGraph.load(folder)
        except FileNotFoundError:
            log.info("no concept graph in %s yet; building it", folder)
        except Exception as exc:  # noqa: BLE001 - an unreadable cache is rebuilt, never trusted
            log.warning("concept graph in %s is unreadable (%s); rebuilding", folder, exc)
        graph = build_concept_graph(concepts(), embed)
        graph.save(folder)
        return graph


# --- building -----------------------------------------------------------------------------------

def _own_codes(concept: Concept, who_codes: frozenset[str]) -> dict[str, str]:
    """A concept's codes as the graph trusts them: ICD-10-CM concepts carry an 'ICD-10' code only
    when WHO ICD-10 has that code (I21.9 yes, I21.01 no)."""
    codes = dict(concept.codes)
    if concept.source == "icd10cm" and codes.get("ICD-10") not in who_codes:
        codes.pop("ICD-10", None)
    return codes


def _broader(concept: Concept, who_codes: frozenset[str]) -> tuple[dict[str, str], str | None]:
    """The nearest WHO ICD-10 parent of an ICD-10-CM code WHO lacks (I21.01 -> I21.0)."""
    code = concept.codes.get("ICD-10-CM") if concept.source == "icd10cm" else None
    if not code or code in who_codes:
        return {}, None
    for length in range(len(code) - 1, 2, -1):
        parent = code[:length].rstrip(".")
        if parent in who_codes:
            return {"ICD-10": parent}, parent
    return {}, None


def _labels(concept: Concept) -> dict[str, str]:
    return {"en": concept.preferred, **concept.labels}


class _Groups:
    """Union-find whose merges keep at most one code per exclusive system."""

    def __init__(self, concepts: Sequence[Concept], own_codes: list[dict[str, str]]) -> None:
        self.parent = list(range(len(concepts)))
        self.codes = [{s: c for s, c in codes.items() if s in EXCLUSIVE_SYSTEMS} for codes in own_codes]
        self.links: list[tuple[int, int, ConceptLink]] = []

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def merge(self, a: int, b: int, link: ConceptLink) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        ca, cb = self.codes[ra], self.codes[rb]
        if any(ca[s] != cb[s] for s in ca.keys() & cb.keys()):
            return False
        self.parent[rb] = ra
        self.codes[ra] = {**cb, **ca}
        self.links.append((a, b, link))
        return True


def _names(concept: Concept) -> list[tuple[str, bool]]:
    return [(concept.preferred, True)] + [(synonym, False) for synonym in concept.synonyms]


def _representatives(members: list[tuple[int, bool]], concepts: Sequence[Concept]) -> dict[str, int]:
    """Per source, the concept a shared name stands for: one whose preferred term it is, then the
    shortest (most general) code; none for a source where the name is generic."""
    by_source: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    for index, preferred in members:
        by_source[concepts[index].source].append((index, preferred))
    chosen = {}
    for source, candidates in by_source.items():
        if len({index for index, _ in candidates}) > MAX_SAME_NAME:
            continue
        index, _ = min(candidates, key=lambda c: (not c[1], len(next(iter(concepts[c[0]].codes.values()), "")),
                                                  concepts[c[0]].id))
        chosen[source] = index
    return chosen


def build_concept_graph(concepts: Sequence[Concept], embed: Embed | None = None) -> ConceptGraph:
    """Link `concepts` across sources (see the module docstring); `embed` verifies variant matches
    (without it they are not made)."""
    who_codes = frozenset(c.codes["ICD-10"] for c in concepts if c.source == "icd10" and "ICD-10" in c.codes)
    own = [_own_codes(c, who_codes) for c in concepts]
    groups = _Groups(concepts, own)

    # 1-2. shared codes and the sources' own cross-references
    holders: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, (concept, codes) in enumerate(zip(concepts, own)):
        for system in SHARED_CODE_SYSTEMS:
            if code := codes.get(system):
                holders[(system, code)].append(index)
    for (system, code), members in sorted(holders.items()):
        members = sorted(members, key=lambda i: (SOURCE_AUTHORITY.get(concepts[i].source, 9), concepts[i].id))
        head = members[0]
        for other in members[1:]:
            if concepts[other].source == concepts[head].source:
                continue
            mapped = "hpo" in {concepts[head].source, concepts[other].source}
            method: LinkMethod = "source-mapping" if mapped else "shared-code"
            groups.merge(head, other, ConceptLink(source=concepts[other].id, target=concepts[head].id, method=method,
                                                  confidence=CONFIDENCE[method], evidence=f"{system} {code}"))

    # 3-4. names: exact first, then variants verified by the embedder
    exact: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    variants: dict[str, list[tuple[int, bool, str]]] = defaultdict(list)
    for index, concept in enumerate(concepts):
        if concept.source not in LABEL_SOURCES:
            continue
        for name, preferred in _names(concept):
            key = normalize_text(name)
            if len(key) >= MIN_KEY_CHARS:
                exact[key].append((index, preferred))
                variants[variant_key(name)].append((index, preferred, name))
    exact_pairs = {pair: (key, kind) for key, members in exact.items()
                   for pair, kind in _pairs([members], concepts).items()}
    for (a, b), (key, kind) in sorted(exact_pairs.items(), key=lambda item: (-item[1][1], item[0])):
        groups.merge(a, b, ConceptLink(source=concepts[b].id, target=concepts[a].id, method="label-exact",
                                       confidence=round(CONFIDENCE["label-exact"] * NAME_KIND_FACTOR[kind], 4),
                                       evidence=key))
    if embed is not None:
        _link_variants(concepts, variants, set(exact_pairs), groups, embed)
    return _collect(concepts, own, groups, who_codes)


def _pairs(member_lists: Iterable[list[tuple[int, bool]]], concepts: Sequence[Concept]) -> dict[tuple[int, int], int]:
    """(more authoritative, other) representative pairs of names shared across sources -> how many
    of the two matched names are preferred terms."""
    pairs: dict[tuple[int, int], int] = {}
    for members in member_lists:
        if len({concepts[i].source for i, _ in members}) < 2:
            continue
        preferred = {index for index, is_preferred in members if is_preferred}
        chosen = sorted(_representatives(members, concepts).items(), key=lambda item: SOURCE_AUTHORITY.get(item[0], 9))
        for position, (_, a) in enumerate(chosen):
            for _, b in chosen[position + 1:]:
                pairs[(a, b)] = max(pairs.get((a, b), 0), (a in preferred) + (b in preferred))
    return pairs


def _link_variants(concepts: Sequence[Concept], variants: dict[str, list[tuple[int, bool, str]]],
                   done: set[tuple[int, int]], groups: _Groups, embed: Embed) -> None:
    candidates: list[tuple[int, int, str, str, int]] = []
    for members in variants.values():
        if len({concepts[i].source for i, _, _ in members}) < 2:
            continue
        names = {}
        for index, _, name in members:
            names.setdefault(index, name)
        for (a, b), kind in _pairs([[(i, p) for i, p, _ in members]], concepts).items():
            if (a, b) not in done and groups.find(a) != groups.find(b):
                candidates.append((a, b, names[a], names[b], kind))
    if not candidates:
        return
    texts = list(dict.fromkeys(text for _, _, x, y, _ in candidates for text in (x, y)))
    vectors = dict(zip(texts, embed(texts)))
    scored = sorted(((float(vectors[x] @ vectors[y]), a, b, x, y, kind) for a, b, x, y, kind in candidates),
                    reverse=True)
    for cosine, a, b, x, y, kind in scored:
        if cosine >= VARIANT_MIN_COSINE:
            groups.merge(a, b, ConceptLink(source=concepts[b].id, target=concepts[a].id, method="label-variant",
                                           confidence=round(cosine * CONFIDENCE["label-exact"]
                                                            * NAME_KIND_FACTOR[kind], 4),
                                           evidence=f"{y!r} ~ {x!r}"))


def _collect(concepts: Sequence[Concept], own: list[dict[str, str]], groups: _Groups,
             who_codes: frozenset[str]) -> ConceptGraph:
    members_of: dict[int, list[int]] = defaultdict(list)
    for index in range(len(concepts)):
        members_of[groups.find(index)].append(index)
    links_of: dict[int, list[ConceptLink]] = defaultdict(list)
    for a, _, link in groups.links:
        links_of[groups.find(a)].append(link)
    result: list[LinkedConcept] = []
    group_of: dict[str, int] = {}
    for root, members in members_of.items():
        broader_links = [(i, *_broader(concepts[i], who_codes)) for i in members]
        broader_links = [(i, b, parent) for i, b, parent in broader_links if parent]
        if len(members) == 1 and not broader_links:
            continue
        members.sort(key=lambda i: (SOURCE_AUTHORITY.get(concepts[i].source, 9), len(concepts[i].id), concepts[i].id))
        head = concepts[members[0]]
        codes: dict[str, list[str]] = defaultdict(list)
        labels: dict[str, str] = {}
        for i in members:
            for system, code in own[i].items():
                if code not in codes[system]:
                    codes[system].append(code)
            for lang, label in _labels(concepts[i]).items():
                labels.setdefault(lang, label)
        links = list(links_of[root])
        broader: dict[str, str] = {}
        if "ICD-10" not in codes:
            for i, mapping, parent in broader_links:
                broader.update(mapping)
                links.append(ConceptLink(source=concepts[i].id, target=f"icd10:{parent}", method="code-parent",
                                         confidence=CONFIDENCE["code-parent"],
                                         evidence=f"ICD-10-CM {concepts[i].codes['ICD-10-CM']} is under WHO ICD-10 {parent}"))
                break
        group = LinkedConcept(id=head.id, preferred=head.preferred, members=[concepts[i].id for i in members],
                              codes=dict(codes), broader=broader, labels=labels, links=links)
        for i in members:
            group_of[concepts[i].id] = len(result)
        result.append(group)
    return ConceptGraph(result, group_of, who_codes)
