"""Exports that clinical software accepts as they are: masks on the input's own grid, coded DICOM SEG
segments, and every DICOM export passing David Clunie's validator (dciodvfy) without errors."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from assistant.reports.dicom_sr import write_dicom_sr
from assistant.reports.draft import draft_report
from assistant.reports.store import ReportStore
from assistant.scans.loading import load_scan
from assistant.scans.samples import load_sample, sample_path
from assistant.segmentation.export import save_dicom_seg, save_nifti, segment_code
from tests.report_cases import DR_A, dciodvfy_errors, session_with_segmentation, signed_report
from tools.segment import SegmentArgs, run_segmentation

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _assert_same_mask_in_world(mask_file: nib.Nifti1Image, canonical_mask: np.ndarray, canonical_affine: np.ndarray):
    """Every voxel of the written mask, taken to world millimetres by the file's affine, lands on the
    same value of the mask the tool computed on the canonical grid (and the voxel counts agree)."""
    written = np.asarray(mask_file.dataobj) > 0
    assert written.sum() == canonical_mask.sum() > 0
    ijk = np.argwhere(written)
    world = ijk @ mask_file.affine[:3, :3].T + mask_file.affine[:3, 3]
    inverse = np.linalg.inv(canonical_affine)
    canonical_ijk = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
    assert canonical_mask[tuple(canonical_ijk.T)].all()


def _frame_of(affine: np.ndarray, header: pydicom.Dataset) -> int:
    """The index along the first axis of `affine`'s grid at which the header's pixel (row 5, column 7) lies,
    checking that it lands exactly on row 5, column 7 of a frame."""
    row_dir, col_dir = np.array(header.ImageOrientationPatient, dtype=float).reshape(2, 3)
    row_mm, col_mm = (float(v) for v in header.PixelSpacing)
    lps = np.array(header.ImagePositionPatient, dtype=float) + 7 * col_mm * row_dir + 5 * row_mm * col_dir
    voxel = np.linalg.inv(affine) @ LPS_TO_RAS @ np.append(lps, 1)
    frame = int(round(voxel[0]))
    np.testing.assert_allclose(voxel[:3], [frame, 5, 7], atol=1e-3)
    return frame


@pytest.fixture(scope="module")
def dicom_case():
    volume = load_sample("ct-head-dicom")
    session, segmentation = session_with_segmentation(volume, "brain")
    return volume, session, segmentation


def test_nifti_mask_keeps_the_grid_of_a_nifti_stored_in_another_orientation(tmp_path):
    canonical = nib.load(sample_path("ct-head"))
    assert "".join(nib.aff2axcodes(canonical.affine)) == "RAS"
    stored = canonical.as_reoriented(nib.orientations.ornt_transform(
        nib.io_orientation(canonical.affine), nib.orientations.axcodes2ornt(("P", "I", "L"))))
    nib.save(stored, tmp_path / "pil.nii.gz")

    volume = load_scan(tmp_path / "pil.nii.gz")
    segmentation = run_segmentation(volume, SegmentArgs(structure="skull"))
    written = nib.load(save_nifti(segmentation, volume, tmp_path / "mask.nii.gz"))

    assert written.shape == stored.shape and "".join(nib.aff2axcodes(written.affine)) == "PIL"
    np.testing.assert_allclose(written.affine, stored.affine, atol=1e-5)
    _assert_same_mask_in_world(written, segmentation.mask, volume.affine)


def test_nifti_mask_of_a_dicom_series_is_on_its_source_frames(dicom_case, tmp_path):
    volume, _, segmentation = dicom_case
    written = nib.load(save_nifti(segmentation, volume, tmp_path / "mask.nii.gz"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in volume.dicom_sources]
    assert written.shape == (len(headers), int(headers[0].Rows), int(headers[0].Columns))  # frames x rows x columns

    # Pixel (row 5, column 7) of each source frame, placed by that frame's own header, is voxel (frame, 5, 7).
    frames = [_frame_of(written.affine, h) for h in headers]
    assert sorted(frames) == list(range(len(headers)))
    _assert_same_mask_in_world(written, segmentation.mask, volume.affine)


def test_dicom_seg_codes_the_brain_with_snomed_and_matches_the_source_frames(dicom_case, tmp_path):
    volume, _, segmentation = dicom_case
    path = save_dicom_seg(segmentation, volume, tmp_path / "brain.seg.dcm")
    seg = hd.seg.segread(path)
    segment = seg.SegmentSequence[0]
    assert (segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("12738006", "SCT")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # Anatomical structure
    assert seg.StudyInstanceUID == pydicom.dcmread(volume.dicom_sources[0], stop_before_pixels=True).StudyInstanceUID

    frames, affine = volume.to_source_grid(segmentation.mask)
    headers = {_frame_of(affine, pydicom.dcmread(p, stop_before_pixels=True)): p for p in volume.dicom_sources}
    for frame in (10, len(headers) // 2, len(headers) - 5):
        uid = pydicom.dcmread(headers[frame], stop_before_pixels=True).SOPInstanceUID
        pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1])[0, :, :, 0]
        assert frames[frame].any()
        np.testing.assert_array_equal(pixels > 0, frames[frame] > 0)
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize(("target", "expected"), [
    ("brain", ("12738006", None)),
    ("left hippocampus (grown by 2 mm)", ("5366008", "7771000")),  # Hippocampus, laterality Left
    ("right thalamus", ("42695009", "24028007")),  # Thalamus, Right
    ("air", ("74947009", None)),  # Gas
    ("region at voxel [10, 20, 30]", ("85756007", None)),  # nothing named: the generic Tissue
    ("cingulate gyrus", ("85756007", None)),  # no DICOM segmentation type: generic, not a wrong organ
])
def test_segment_codes_follow_the_structure_catalogue(target, expected):
    code = segment_code(target)
    assert (code.type.value, code.modifier.value if code.modifier else None) == expected


def test_every_dicom_export_passes_dciodvfy(dicom_case, tmp_path):
    volume, session, segmentation = dicom_case
    seg_path = save_dicom_seg(segmentation, volume, tmp_path / "brain.seg.dcm")
    point_seg = run_segmentation(volume, SegmentArgs(points=[[128, 128, 60]], backend="classical"))
    point_path = save_dicom_seg(point_seg, volume, tmp_path / "point.seg.dcm")
    store = ReportStore(tmp_path / "reports.sqlite3")
    draft = store.create(draft_report(session), DR_A)
    signed = signed_report(session, store)
    exports = [seg_path, point_path,
               write_dicom_sr(draft, volume, tmp_path / "draft.sr.dcm"),
               write_dicom_sr(signed, volume, tmp_path / "signed.sr.dcm", [seg_path])]
    assert {str(pydicom.dcmread(p).Modality) for p in exports} == {"SEG", "SR"}
    assert {p.name: dciodvfy_errors(p) for p in exports} == {p.name: [] for p in exports}
