"""Masks leave ScanChat as files clinical software opens: NIfTI, and DICOM SEG for DICOM inputs."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from assistant.segmentation.result import Segmentation
from assistant.volume import Volume

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Type 2 attributes a SEG copies from its source; series written by other tools sometimes omit them.
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")
SOFTWARE = "ScanChat segmentation 0.1"


def save_nifti(segmentation: Segmentation, volume: Volume, path: str | Path) -> Path:
    """The mask as uint8 NIfTI on the scan's grid and affine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(segmentation.mask.astype(np.uint8), volume.affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def save_dicom_seg(segmentation: Segmentation, volume: Volume, path: str | Path) -> Path:
    """A binary DICOM Segmentation referencing the scan's source series (only for DICOM inputs)."""
    if not volume.dicom_sources:
        raise ValueError("DICOM SEG export needs a scan loaded from DICOM; save the mask as NIfTI instead.")
    sources = [pydicom.dcmread(source) for source in volume.dicom_sources]
    for dataset in sources:
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
    mask_volume = hd.Volume(
        array=segmentation.mask.astype(np.uint8), affine=_LPS_FROM_RAS @ volume.affine, coordinate_system="PATIENT"
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segmentation.target[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"ScanChat {segmentation.backend}", version="0.1", family=codes.cid7162.ArtificialIntelligence
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask_volume,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path
