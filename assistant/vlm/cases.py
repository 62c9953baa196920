"""The in-silico VLM cases as typed records, and their JSONL: light to import (no imaging stack),
so training from cached encoder features needs only torch, transformers and this."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from assistant.config import Settings, get_settings
from assistant.volume import Modality, ScanMetadata, Volume

Side = Literal["left", "right"]
Split = Literal["train", "eval"]
Topic = Literal["caption", "modality", "presence", "count", "side", "lobe", "size_band", "coverage", "size"]
CASES_VERSION = 2  # raised when the cases' facts or questions change; older cases.jsonl files are refused

# Each topic's wordings: training shows the first group, benchmarks ask the second, so a held-out score
# measures the model on phrasings it never saw as well as on a head it never saw.
QUESTION_WORDINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "caption": (("Describe this scan.", "Give a short report of this scan."), ("What does this scan show?",)),
    "modality": (("Is this a CT or an MR scan?", "Which modality is this, CT or MR?"),
                 ("Was this image acquired with CT or with MRI?",)),
    "presence": (("Is there a focal lesion in this scan?", "Do you see any focal lesion?"),
                 ("Can you spot a focal abnormality in this brain?",)),
    "count": (("How many lesions are there: one, two or three?", "Count the focal lesions (one, two or three)."),
              ("Is it one lesion, two or three?",)),
    "side": (("Which side is the lesion on: left, right or both?", "Which hemisphere holds the lesions: left, right or both?"),
             ("Are the findings on the patient's left, right or both sides?",)),
    "lobe": (("Which lobe is the largest lesion in?", "In which lobe does the biggest lesion lie?"),
             ("Where is the largest lesion: frontal, temporal, parietal, occipital or elsewhere?",)),
    "size_band": (("Is the largest lesion small (under 15 mm), medium (15 to 25 mm) or large (over 25 mm)?",
                   "How big is the largest lesion: small (<15 mm), medium (15-25 mm) or large (>25 mm)?"),
                  ("Would you call the biggest lesion small (below 15 mm), medium (15-25 mm) or large (above 25 mm)?",)),
    "coverage": (("Does the scan cover the whole head?", "Is the whole head in the field of view?"),
                 ("Is any part of the head cut off, or is it all covered?",)),
    "size": (("How large is the lesion?", "What is the diameter of the largest lesion?"),
             ("Roughly how many millimetres across is the biggest lesion?",)),
}


def training_wordings(topic: str) -> tuple[str, ...]:
    return QUESTION_WORDINGS[topic][0]


def held_out_wording(topic: str, index: int) -> str:
    """A wording training never shows, chosen by `index` (so cases rotate through them)."""
    wordings = QUESTION_WORDINGS[topic][1]
    return wordings[index % len(wordings)]


class LesionFacts(BaseModel):
    """Ground truth of one inserted synthetic lesion."""

    kind: Literal["mass", "cyst", "ring-enhancing", "hemorrhage", "infarct"]
    appearance: Literal["bright", "dark", "ring"]
    diameter_mm: float
    side: Side
    aal_region: str | None = None  # the commonest AAL label in the lesion, where the base's AAL labels are known
    lobe: str | None = None
    center_mm: tuple[float, float, float]
    contrast: float
    mass_effect_mm: float = 0.0


class QuestionAnswer(BaseModel):
    """One turn; closed questions list their options and the answer is one of them."""

    kind: Literal["caption", "closed", "open"]
    topic: Topic
    question: str
    answer: str
    options: list[str] = []


class Case(BaseModel):
    case_id: str
    base: str
    split: Split
    image: str  # NIfTI path, relative to the dataset folder
    modality: Literal["CT", "MR"]
    whole_head: bool
    lesions: list[LesionFacts]  # largest first
    qa: list[QuestionAnswer]
    version: int = CASES_VERSION

    @property
    def lesion(self) -> LesionFacts | None:
        """The largest lesion (the one size, lobe and caption speak of), None in a normal case."""
        return self.lesions[0] if self.lesions else None

    def conversations(self) -> list[dict[str, str]]:
        """M3D-Data-like turns: the image placeholder opens the first human turn."""
        turns = []
        for index, pair in enumerate(self.qa):
            prefix = "<image>\n" if index == 0 else ""
            turns += [{"from": "human", "value": prefix + pair.question}, {"from": "gpt", "value": pair.answer}]
        return turns


def write_cases(path: Path, cases: list[Case]) -> None:
    with path.open("w") as out:
        for case in cases:
            record = case.model_dump(mode="json")
            record["conversations"] = case.conversations()
            out.write(json.dumps(record) + "\n")


def read_cases(path: Path) -> list[Case]:
    """Cases from a JSONL written by `generate_cases` (the extra M3D-style `conversations` is ignored)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; generate cases with `scanchat vlm data`.")
    try:
        cases = [Case.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
    except ValidationError as error:
        raise ValueError(f"{path} was written by an older ScanChat ({error.error_count()} unreadable fields); "
                         f"generate the cases again with `scanchat vlm data`.") from None
    stale = sorted({case.version for case in cases if case.version != CASES_VERSION})
    if stale:
        raise ValueError(f"{path} holds cases of version {stale}, this ScanChat writes version {CASES_VERSION}; "
                         f"generate them again with `scanchat vlm data`.")
    return cases


def load_case_volume(folder: Path, case: Case) -> Volume:
    from assistant.scans.loading import load_scan  # the imaging stack, only when features are not cached

    volume = load_scan(folder / case.image)
    metadata = ScanMetadata(source_format="NIfTI", modality=Modality(case.modality))
    return Volume(volume.data, volume.affine, metadata, name=case.case_id)


def iter_split(cases: list[Case], split: Split) -> Iterator[Case]:
    return (case for case in cases if case.split == split)


def default_data_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "vlm" / "data"
