"""The one PHI gate: what may leave a scan's files for a prompt, a log, the database or a remote endpoint.

A scan's header and file names are de-identified once, where the loader builds the `Volume`, so
everything downstream (tool results, prompts, logs, saved conversations, reports, non-DICOM
exports) only ever sees the gated values:

- the DICOM header is put through the Basic Application Level Confidentiality Profile (DICOM
  PS3.15 Annex E, the action table of the standard's 2026c edition as packaged by
  `dicom-anonymizer`): identifying attributes removed or emptied, dates replaced, UIDs replaced;
- free-text attributes the tools show (descriptions, body part, contrast agent, sequence) pass
  only when every word is a technical imaging term of `IMAGING_WORDS` (a "clean descriptors" rule
  by allow-list); anything else, a name in a series description for instance, is withheld;
- file and folder names become a neutral label ("scan.nii.gz", "DICOM upload");
- as a last line, `scrub` blanks any known identifier of the loaded scan in text bound for the
  model, however it got there (a user typing the patient's name, a header value copied elsewhere).

`Settings.share_identifiers` (SCANCHAT_SHARE_IDENTIFIERS, off by default) turns the gate off.
DICOM SEG/SR exports read the original files (`Volume.dicom_sources`) and keep the real
identifiers: they go back to the same patient's record in the PACS.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import pydicom
from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions

from assistant.config import Settings
from assistant.models.base import Message
from assistant.volume import PatientIdentifiers

ANNEX_E_EDITION = "dicomfields_2026c"
REDACTED = "[identifier removed]"
WITHHELD_NOTE = ("Free-text header fields that are not plain imaging terms ({fields}) were withheld: they may "
                 "identify the patient (SCANCHAT_SHARE_IDENTIFIERS=true shows them).")

# Words of series/study/protocol descriptions, body parts, contrast agents, sequence names and
# manufacturers that name a technique, an anatomy or a vendor, never a person; numbers with units
# ("5mm", "3T", "b1000") pass too.
IMAGING_WORDS = frozenset("""
ct mr mri pet spect cta mra us xr cr dx nm pt ot seg angio angiography perfusion diffusion dwi adc
swi dti bold fmri tof pc t1 t1w t2 t2w t2star pd pdw flair stir mprage mp2rage spgr fspgr bravo space cube vibe
tse fse se gre epi ir fl2d fl3d tfl tfe ffe bffe fiesta trufi haste dixon fat sat fs water in out phase
opp ip op ax axial tra trans transverse sag sagittal cor coronal obl oblique 2d 3d 4d mpr mip minip vr
recon reformat reformatted iso isotropic thin thick slice slices mm cm kv kvp mas ma hu head brain neck
chest thorax lung lungs abdomen abd pelvis spine cervical thoracic lumbar sacrum whole body extremity
knee hip shoulder ankle wrist elbow hand foot heart cardiac coronary aorta liver kidney kidneys renal
pancreas spleen bladder prostate breast orbit orbits sinus sinuses face facial skull cranium cranial
cerebral cerebrum cerebellum temporal frontal parietal occipital iac pituitary sella hippocampus
vessels vascular venous arterial portal delayed late early phase dynamic dyn contrast noncontrast
non enhanced unenhanced plain native pre post with without w wo iv oral gad gd gadolinium iodine
omniscan isovue omnipaque visipaque dotarem gadavist magnevist multihance prohance clariscan
standard std soft tissue bone lung mediastinum mediastinal window kernel sharp smooth detail hr high
low res resolution dose ld routine helical spiral axial sequential scout localizer localiser survey
topogram loc cal calibration source images image original primary derived secondary series study
protocol exam scan and of the to for left right lt rt l r bilateral bil upper lower both whole
full part mid bh breath hold free breathing gated nav fast quick short long sense grappa asset arc
ipat sms multiband mb accel vol volume volumetric seq sequence localizer map maps mapping average
avg trace fa md rd ad colfa tensor b0 b1000 motion corrected moco subtraction sub mpr collection
emergency stroke trauma follow up fu baseline screening segmentation lesion lesions marked tumour tumor o
data dicom dcm nifti nii upload uploads export exported files file folder sample samples
ge medical systems healthcare siemens healthineers philips toshiba canon hitachi fujifilm fuji agfa
carestream hologic samsung united imaging uih neusoft esaote mindray shimadzu konica minolta planmed
varian elekta bruker aloka sonosite invesalius inc ltd co ag gmbh corporation corp bv nv sa mec
""".split())
_NUMBER = re.compile(r"[a-z]?\d{1,4}(\.\d+)?[a-z]{0,3}")
_DATE_LIKE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{6,}")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# The text attributes the tools show, by `ScanMetadata` field.
DESCRIPTIVE_ATTRIBUTES = {
    "manufacturer": ("Manufacturer",),
    "body_part": ("BodyPartExamined",),
    "series_description": ("SeriesDescription",),
    "study_description": ("StudyDescription",),
    "contrast_agent": ("ContrastBolusAgent",),
    "sequence_name": ("SequenceName", "PulseSequenceName"),
}


@lru_cache(maxsize=1)
def _annex_e_actions() -> dict:
    return initialize_actions(ANNEX_E_EDITION)


def deidentified_header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of `ds` without its pixels after PS3.15 Annex E's basic profile (private tags removed)."""
    header = pydicom.Dataset()
    header.update({element.tag: copy.deepcopy(element) for element in ds
                   if element.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")})
    actions = _annex_e_actions()
    try:
        anonymize_dataset(header, base_rules_gen=lambda: dict(actions), delete_private_tags=True)
    except Exception:  # a corrupt nested item pydicom cannot decode: drop every sequence and apply the profile again
        for element in [e for e in header if e.VR == "SQ"]:
            del header[element.tag]
        anonymize_dataset(header, base_rules_gen=lambda: dict(actions), delete_private_tags=True)
    return header


def is_plain_imaging_text(text: str) -> bool:
    """Every word is an imaging term or a short number with a unit; no date, no long number."""
    folded = text.casefold()
    if _DATE_LIKE.search(folded):
        return False
    words = _WORD.findall(folded)
    return bool(words) and all(w in IMAGING_WORDS or _NUMBER.fullmatch(w) for w in words)


class PrivacyGate:
    """De-identification as configured: everything passes when identifiers may be shared."""

    def __init__(self, settings: Settings):
        self.share = settings.share_identifiers

    def header(self, ds: pydicom.Dataset) -> pydicom.Dataset:
        return ds if self.share else deidentified_header(ds)

    def text(self, original: pydicom.Dataset, keyword: str) -> tuple[str | None, bool]:
        """A descriptive attribute's text for the tools, and whether it was withheld."""
        value = original.get(keyword)
        text = str(value).strip() if value is not None else ""
        if not text:
            return None, False
        if self.share or is_plain_imaging_text(text):
            return text, False
        return None, True

    def file_label(self, path: Path) -> str:
        """The name a scan goes by in prompts, logs and records: neutral unless sharing is allowed."""
        if self.share:
            return path.name
        if path.is_dir():
            return "scan folder"
        name = path.name.lower()
        suffix = next((s for s in (".nii.gz", ".nii", ".zip", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".dcm",
                                   ".dicom", ".ima") if name.endswith(s)), "")
        return f"scan{suffix}"

    def path(self, path: str | Path | None) -> str | None:
        """A scan's file path for a record (its folders may be named after the patient): kept only
        when sharing is allowed."""
        return str(path) if self.share and path is not None else None

    @staticmethod
    def identifiers(ds: pydicom.Dataset | None, names: Iterable[str], withheld: Iterable[str] = ()) -> PatientIdentifiers:
        """What `scrub` keeps out of prompts: the header's identifiers, the upload's real file and folder
        names, the withheld free texts. Kept on the `Volume`, never shown."""
        def text(keyword: str) -> str | None:
            value = ds.get(keyword) if ds is not None else None
            return (str(value).strip() or None) if value is not None else None

        return PatientIdentifiers(
            patient_name=text("PatientName"), patient_id=text("PatientID"), birth_date=text("PatientBirthDate"),
            accession_number=text("AccessionNumber"), institution=text("InstitutionName"), study_date=text("StudyDate"),
            file_names=tuple(dict.fromkeys(names)), withheld_texts=tuple(dict.fromkeys(withheld)),
        )

    def scrub(self, text: str, identifiers: PatientIdentifiers | None) -> str:
        """`text` with every known identifier of the scan replaced by a neutral label."""
        if self.share or identifiers is None or not text:
            return text
        pattern = identifier_pattern(identifiers)  # cached: the identifiers are frozen and hashable
        return pattern.sub(REDACTED, text) if pattern is not None else text

    def messages(self, messages: list[Message], identifiers: PatientIdentifiers | None) -> list[Message]:
        """A prompt with `scrub` applied to every message: the gate's last line before a model."""
        return [m.model_copy(update={"content": self.scrub(m.content, identifiers)}) for m in messages]


@lru_cache(maxsize=64)
def identifier_pattern(identifiers: PatientIdentifiers) -> re.Pattern | None:
    """One case-insensitive pattern for every identifying string: name parts of three letters or
    more, ids, dates (also written with separators), institutions, file and folder names."""
    values: set[str] = set()
    for value in (identifiers.patient_id, identifiers.accession_number, identifiers.institution,
                  *identifiers.withheld_texts):
        if value and len(value) >= 3:
            values.add(value)
    if identifiers.patient_name:
        values |= {part for part in re.split(r"[\^\s,]+", identifiers.patient_name) if len(part) >= 3}
    for date in (identifiers.birth_date, identifiers.study_date):
        if date and re.fullmatch(r"\d{8}", date):
            values |= {date, f"{date[:4]}-{date[4:6]}-{date[6:]}", f"{date[6:]}/{date[4:6]}/{date[:4]}",
                       f"{date[4:6]}/{date[6:]}/{date[:4]}", f"{date[6:]}.{date[4:6]}.{date[:4]}"}
    for name in identifiers.file_names:  # "brain.nii.gz" or a folder "series" names nobody: left alone
        stem = re.sub(r"(\.nii\.gz|\.[a-z0-9]{1,6})$", "", name, flags=re.IGNORECASE)
        if not is_plain_imaging_text(stem):
            values |= {v for v in (name, stem) if len(v) >= 3}
    if not values:
        return None
    alternatives = sorted((re.escape(v) for v in values), key=len, reverse=True)
    return re.compile(r"(?<![^\W_])(?:" + "|".join(alternatives) + r")(?![^\W_])", re.IGNORECASE)
