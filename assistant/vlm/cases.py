"""The in-silico VLM cases as typed records, and their JSONL: light to import (no imaging stack),
so training from cached encoder features needs only torch, transformers and this."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from assistant.config import Settings, get_settings
from assistant.volume import Modality, ScanMetadata, Volume

Side = Literal["left", "right"]
Split = Literal["train", "eval"]


class LesionFacts(BaseModel):
    """Ground truth of one inserted synthetic lesion."""

    kind: Literal["mass", "hemorrhage"]
    diameter_mm: float
    side: Side
    aal_region: str | None = None  # AAL label at the centre, where the base is in MNI space
    lobe: str | None = None
    center_mm: tuple[float, float, float]
    contrast: float


class QuestionAnswer(BaseModel):
    """One turn; closed questions list their options and the answer is one of them."""

    kind: Literal["caption", "closed", "open"]
    topic: Literal["caption", "modality", "presence", "side", "lobe", "coverage", "size"]
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
    lesion: LesionFacts | None
    qa: list[QuestionAnswer]

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
    return [Case.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def load_case_volume(folder: Path, case: Case) -> Volume:
    from assistant.scans.loading import load_scan  # the imaging stack, only when features are not cached

    volume = load_scan(folder / case.image)
    metadata = ScanMetadata(source_format="NIfTI", modality=Modality(case.modality))
    return Volume(volume.data, volume.affine, metadata, name=case.case_id)


def iter_split(cases: list[Case], split: Split) -> Iterator[Case]:
    return (case for case in cases if case.split == split)


def default_data_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "vlm" / "data"
