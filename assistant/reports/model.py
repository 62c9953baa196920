"""Typed records of a report: which scan it is about, its sections, its findings, its versions."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from assistant.findings import Finding

SECTIONS: tuple[str, ...] = ("clinical_information", "technique", "findings", "impression")
SECTION_TITLES = {
    "clinical_information": "Clinical information",
    "technique": "Technique",
    "findings": "Findings",
    "impression": "Impression",
}
Section = Literal["clinical_information", "technique", "findings", "impression"]


class ReportError(ValueError):
    """A report cannot be drafted, saved or exported as asked; the message says why and what to do."""


class ScanReference(BaseModel):
    """Which scan a report describes: a content fingerprint plus de-identified facts (no patient data)."""

    scan_id: str = Field(description="Fingerprint of the voxels and geometry; equal scans give equal ids.")
    name: str
    modality: str
    source_format: str
    body_part: str | None = None
    series_instance_uid: str | None = Field(None, description="For DICOM inputs: the series the report refers to.")

    @property
    def is_dicom(self) -> bool:
        return self.source_format.startswith("DICOM")


class ReportText(BaseModel):
    """The four sections, in the usual radiology order, as the clinician reads and edits them."""

    title: str = "Imaging report"
    clinical_information: str = ""
    technique: str = ""
    findings: str = ""
    impression: str = ""

    def section(self, name: Section) -> str:
        return getattr(self, name)

    def changed_sections(self, other: ReportText) -> list[str]:
        return [name for name in ("title", *SECTIONS) if getattr(self, name) != getattr(other, name)]


class ReportTranslation(BaseModel):
    """The report in another language, with the terminology check of the translation."""

    language: str
    text: ReportText
    engine: str | None = None
    term_success_rate: float | None = Field(None, description="Share of required terms rendered as required.")
    flagged_sentences: list[str] = Field(default_factory=list, description="Sentences missing a required term.")
    highlighted: dict[str, str] = Field(default_factory=dict, description="Section -> Markdown with required terms in bold.")
    notes: list[str] = Field(default_factory=list, description="Problems to fix outside the text, e.g. glossary conflicts.")


class ReportContent(BaseModel):
    """What one version holds: the text, the findings it was drafted from, and any translations."""

    scan: ScanReference
    language: str = "en"
    text: ReportText
    findings: list[Finding]
    translations: list[ReportTranslation] = Field(default_factory=list)
    template: str = Field("generic", description="The prompts/reports template the sections follow.")
    drafted_by: str = Field("template", description="'template' or the name of the model that phrased the impression.")


class ReportVersion(BaseModel):
    """One saved state of a report. Signed versions are never changed; edits make a new version."""

    report_id: str
    number: int
    author: str
    created: datetime
    change_note: str = ""
    changed_sections: list[str] = Field(default_factory=list)
    content: ReportContent
    signed_by: str | None = Field(None, description="The logged-in user who signed (never a typed name).")
    signed_at: datetime | None = None
    signer_role: str | None = Field(None, description="That user's role when signing.")
    owner: str | None = Field(None, description="The user the report belongs to.")
    erased_at: datetime | None = Field(None, description="When the patient's records were erased; a signed version "
                                                         "is kept as a medical record and marked.")

    @property
    def signed(self) -> bool:
        return self.signed_at is not None


class UnsavedEdit(BaseModel):
    """Text typed into the report editor after version `based_on` and not saved yet."""

    based_on: int
    author: str
    updated: datetime
    text: ReportText
