"""Masks leave ScanChat as files clinical software opens: NIfTI, and DICOM SEG for DICOM inputs.

Both are written on the input's own grid (`Volume.to_source_grid`): a NIfTI mask has the shape and
affine of the file the user gave (for DICOM: source frames x rows x columns), as TotalSegmentator
and nnU-Net write theirs. Each SEG segment carries its structure's SNOMED CT code from the DICOM
segmentation property types (CID 7151), found through the structure catalogue's own SNOMED
concepts; a generic "Tissue" code only where the catalogue has none (a point or a box).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.sr import _concepts_dict
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from assistant.segmentation.prompts import synonyms
from assistant.segmentation.result import Segmentation
from assistant.volume import Volume

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Type 2 attributes a SEG copies from its source; series written by other tools sometimes omit them.
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")
SOFTWARE = "ScanChat segmentation 0.1"
_SEGMENTATION_PROPERTY_TYPES = 7151  # DICOM CID 7151 "Segmentation Property Type"
_TISSUE_TYPES = 7166  # CID 7166 "Common Tissue Segmentation Type": their category is Tissue, not a structure
_SUBSTANCES = {"74947009"}  # Gas (air spaces)
_SIDES = {"left": codes.SCT.Left, "right": codes.SCT.Right}


@dataclass(frozen=True)
class SegmentCode:
    """How a segment is coded: category (CID 7150), type (CID 7151) and, for one side, a laterality modifier."""

    category: Code
    type: Code
    modifier: Code | None = None

    @property
    def is_generic(self) -> bool:
        return self.type == codes.SCT.Tissue


GENERIC_SEGMENT = SegmentCode(codes.SCT.Tissue, codes.SCT.Tissue)


@cache
def _property_types() -> dict[str, tuple[str, set[int]]]:
    """SNOMED CT code -> (meaning, CIDs) for the codes DICOM lists as segmentation property types."""
    found: dict[str, tuple[str, set[int]]] = {}
    for concepts in _concepts_dict.concepts["SCT"].values():
        for value, (meaning, cids) in concepts.items():
            if _SEGMENTATION_PROPERTY_TYPES in cids:
                found.setdefault(value, (meaning, set(cids)))
    return found


@cache
def structure_codes() -> dict[str, SegmentCode]:
    """Structure name -> its code: the first of the catalogue's SNOMED concepts for the structure
    (``prompts/tools/segment_synonyms.txt``) that DICOM lists as a segmentation property type."""
    types = _property_types()
    table: dict[str, SegmentCode] = {}
    for key, structure in synonyms().items():
        value = key.removeprefix("sct:")
        if not key.startswith("sct:") or structure in table or value not in types:
            continue
        meaning, cids = types[value]
        category = (codes.SCT.Substance if value in _SUBSTANCES
                    else codes.SCT.Tissue if _TISSUE_TYPES in cids else codes.SCT.AnatomicalStructure)
        table[structure] = SegmentCode(category, Code(value, "SCT", meaning))
    return table


def segment_code(target: str) -> SegmentCode:
    """The code of a segmentation's target ("left hippocampus (grown by 2 mm)" -> Hippocampus, Left)."""
    name = re.sub(r"\s*\(.*\)$", "", target).strip().casefold()
    side, _, rest = name.partition(" ")
    modifier = _SIDES.get(side) if rest else None
    code = structure_codes().get(rest if modifier else name)
    if code is None:
        return GENERIC_SEGMENT
    return SegmentCode(code.category, code.type, modifier)


def save_nifti(segmentation: Segmentation, volume: Volume, path: str | Path) -> Path:
    """The mask as uint8 NIfTI with the input file's shape and affine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array, affine = volume.to_source_grid(segmentation.mask.astype(np.uint8))
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def _description(segmentation: Segmentation) -> hd.seg.SegmentDescription:
    code = segment_code(segmentation.target)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segmentation.target[:64],
        segmented_property_category=code.category,
        segmented_property_type=code.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"ScanChat {segmentation.backend}", version="0.1", family=codes.cid7162.ArtificialIntelligence
        ),
    )
    if code.modifier is not None:  # highdicom has no argument for it; the attribute is standard (0062,0011)
        description.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(code.modifier)]
    return description


def dicom_seg(segmentation: Segmentation, volume: Volume) -> hd.seg.Segmentation:
    """A binary DICOM Segmentation of the scan's source frames (only for DICOM inputs)."""
    if not volume.dicom_sources:
        raise ValueError("DICOM SEG export needs a scan loaded from DICOM; save the mask as NIfTI instead.")
    sources = [pydicom.dcmread(source) for source in volume.dicom_sources]
    for dataset in sources:
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
    array, affine = volume.to_source_grid(segmentation.mask.astype(np.uint8))
    mask_volume = hd.Volume(array=array, affine=_LPS_FROM_RAS @ affine, coordinate_system="PATIENT")
    try:
        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=mask_volume,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_description(segmentation)],
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="ScanChat",
            manufacturer_model_name="ScanChat",
            software_versions=SOFTWARE,
            device_serial_number="0",
            series_description=f"ScanChat segmentation: {segmentation.target}"[:64],
        )
    except ValueError as exc:  # highdicom refuses sources it cannot place (e.g. frames without patient geometry)
        raise ValueError(f"A DICOM SEG cannot be built on this series ({exc}); save the mask as NIfTI instead.") from exc


def save_dicom_seg(segmentation: Segmentation, volume: Volume, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicom_seg(segmentation, volume).save_as(path)
    return path
