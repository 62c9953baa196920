"""Scan loading, samples and slice rendering, on real files from the installed packages."""

from __future__ import annotations

import gzip
import os
import stat
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path as NIBABEL_DATA
from pydicom.data import get_testdata_file

from assistant.config import Settings
from assistant.scans.display import display_shape, render_slice, resolve_window, slice_count, voxel_from_click
from assistant.scans.loading import load_scan
from assistant.scans.samples import SAMPLES, load_sample, sample_labels, sample_path
from assistant.volume import Modality, ScanLoadError, Volume

ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def ct_head(settings) -> Volume:
    return load_sample("ct-head", settings)


# --- formats -------------------------------------------------------------------------------


def test_nifti_loads_with_spacing_and_canonical_orientation(settings):
    volume = load_scan(ANATOMICAL, settings)
    assert volume.shape == (33, 41, 25)
    assert volume.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert volume.axcodes == "RAS"
    assert volume.modality is Modality.MR and any("guessed" in note for note in volume.metadata.notes)


def test_4d_nifti_takes_first_volume_and_says_so(settings):
    path = Path(NIBABEL_DATA) / "example4d.nii.gz"
    volume = load_scan(path, settings)
    expected = nib.as_closest_canonical(nib.load(path)).get_fdata()[..., 0]
    np.testing.assert_array_equal(volume.data, expected)
    assert any("first volume" in note for note in volume.metadata.notes)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_match_the_nifti_they_came_from(settings, tmp_path, suffix):
    path = tmp_path / f"anatomical{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(ANATOMICAL)), str(path))
    converted, original = load_scan(path, settings), load_scan(ANATOMICAL, settings)
    np.testing.assert_array_equal(converted.data, original.data)
    np.testing.assert_allclose(converted.affine, original.affine, atol=1e-4)


def test_single_ct_slice_is_in_hounsfield_units(settings):
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    volume = load_scan(path, settings)
    assert volume.shape == (128, 128, 1) and volume.modality is Modality.CT
    assert volume.spacing[:2] == pytest.approx((0.661468, 0.661468))
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert volume.data.min() == hu.min() and volume.data.max() == hu.max()
    assert volume.identifiers.patient_name and volume.identifiers.patient_name not in volume.metadata.model_dump_json()


def test_enhanced_multiframe_ct_uses_per_frame_positions(settings):
    volume = load_scan(get_testdata_file("eCT_Supplemental.dcm"), settings)
    assert volume.shape == (512, 512, 2)
    assert volume.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    assert volume.metadata.source_format == "DICOM multi-frame" and volume.data.min() == -1024


def test_multiframe_without_positions_is_stacked_with_a_note(settings):
    volume = load_scan(sample_path("mr-multiframe-dicom", settings), settings)
    assert volume.shape == (64, 64, 10) and volume.modality is Modality.MR
    assert any("no per-frame positions" in note for note in volume.metadata.notes)


def test_siemens_mosaic_unpacks_to_a_volume(settings, tmp_path):
    source = Path(nib.__file__).parent / "nicom" / "tests" / "data" / "siemens_dwi_1000.dcm.gz"
    path = tmp_path / "mosaic.dcm"
    path.write_bytes(gzip.decompress(source.read_bytes()))
    volume = load_scan(path, settings)
    assert volume.shape == (128, 128, 48) and volume.metadata.source_format == "DICOM mosaic"
    assert volume.spacing == pytest.approx((1.796875, 1.796875, 3.0), abs=1e-3)


def test_radiograph_loads_as_one_slice_with_notes(settings):
    volume = load_scan(get_testdata_file("RG1_UNCR.dcm"), settings)
    assert volume.shape[2] == 1 and volume.modality is Modality.XRAY
    assert any("2D image" in note for note in volume.metadata.notes)


def test_m3d_numpy_array_loads_with_assumed_geometry(settings, ct_head, tmp_path):
    normalised = np.clip((ct_head.data[:, :, 40:72] + 1024) / 4000, 0, 1).transpose(2, 1, 0)[np.newaxis]
    np.save(tmp_path / "m3d.npy", normalised.astype(np.float32))
    volume = load_scan(tmp_path / "m3d.npy", settings)
    assert volume.shape == (256, 256, 32) and volume.spacing == (1.0, 1.0, 1.0)
    assert volume.modality is Modality.OTHER and any("1 mm" in note for note in volume.metadata.notes)


# --- samples -------------------------------------------------------------------------------


def test_ct_head_sample_is_in_hounsfield_units(ct_head, settings):
    assert ct_head.axcodes == "RAS" and ct_head.spacing == pytest.approx((0.957031, 0.957031, 1.5), abs=1e-5)
    assert -1024 <= ct_head.data[0, 0, 0] <= -950  # air in the corner
    bone = np.asarray(nib.load(sample_labels("ct-head", settings)["bone"]).dataobj) > 0
    assert bone.shape == ct_head.shape and ct_head.data[bone].min() >= 226


def test_ct_head_superior_slices_are_the_skull_vertex(ct_head):
    head_area = (ct_head.data > -300).sum(axis=(0, 1))
    assert head_area[-1] < head_area[ct_head.shape[2] // 2]  # the head narrows towards the top


def test_dicom_series_equals_the_nifti_voxel_for_voxel(ct_head, settings):
    series = load_sample("ct-head-dicom", settings)
    np.testing.assert_array_equal(series.data, ct_head.data)
    np.testing.assert_allclose(series.affine, ct_head.affine, atol=1e-3)
    assert series.modality is Modality.CT and len(series.dicom_sources) == 108
    assert series.identifiers.patient_name == "ANONYMOUS^SAMPLE"
    assert "ANONYMOUS" not in series.metadata.model_dump_json()


def test_zip_with_two_series_loads_the_largest_in_any_file_order(ct_head, settings, tmp_path):
    series_dir = sample_path("ct-head-dicom", settings)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for number, path in enumerate(sorted(series_dir.iterdir(), reverse=True)):
            zf.write(path, f"study/{(number * 37) % 108:03d}.dcm")  # names unrelated to position
        zf.write(get_testdata_file("CT_small.dcm"), "other/ct_small.dcm")
    volume = load_scan(archive, settings)
    np.testing.assert_array_equal(volume.data, ct_head.data)
    assert len(volume.metadata.other_series) == 1 and "1 images" in volume.metadata.other_series[0]
    assert all(settings.uploads_dir in path.parents for path in volume.dicom_sources)


@pytest.mark.parametrize("name", [n for n in SAMPLES if n not in ("ct-head", "ct-head-dicom")])
def test_every_sample_loads_with_labels_on_its_grid(name, settings):
    volume = load_sample(name, settings)
    for label, path in sample_labels(name, settings).items():
        image = nib.load(path)
        assert image.shape == volume.shape, label
        np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
        assert np.asarray(image.dataobj).max() > 0, label


# --- bad input -------------------------------------------------------------------------------


def _zip_with(tmp_path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    path = tmp_path / "hostile.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.nii").write_bytes(b"")
    (tmp_path / "truncated.nii.gz").write_bytes(gzip.compress(ANATOMICAL.read_bytes())[:5000])
    (tmp_path / "truncated.nii").write_bytes(ANATOMICAL.read_bytes()[:2000])
    (tmp_path / "picture.nii").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 500)
    (tmp_path / "truncated.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:3000])
    (tmp_path / "notes.txt").write_text("not a scan")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (64 * 1024 * 1024))
    return {
        "missing": tmp_path / "missing.nii.gz",
        "empty": tmp_path / "empty.nii",
        "truncated nifti.gz": tmp_path / "truncated.nii.gz",
        "truncated nifti": tmp_path / "truncated.nii",
        "png renamed": tmp_path / "picture.nii",
        "truncated dicom": tmp_path / "truncated.dcm",
        "dicom without pixels": Path(get_testdata_file("test-SR.dcm")),
        "unsupported": tmp_path / "notes.txt",
        "pickled numpy": tmp_path / "objects.npy",
        "bomb": bomb,
    }


BAD_INPUTS = [
    "missing", "empty", "truncated nifti.gz", "truncated nifti", "png renamed", "truncated dicom",
    "dicom without pixels", "unsupported", "pickled numpy", "bomb",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_files_raise_scan_load_error(case, settings, tmp_path):
    with pytest.raises(ScanLoadError) as error:
        load_scan(_bad_inputs(tmp_path)[case], settings)
    assert str(error.value).endswith(".") and "Traceback" not in str(error.value)


@pytest.mark.parametrize(
    "entry, symlink",
    [("../escaped.dcm", False), ("/tmp/absolute.dcm", False), ("dir/../../escaped.dcm", False), ("link.dcm", True)],
)
def test_hostile_zip_entries_are_refused_before_extracting(entry, symlink, tmp_path):
    settings = Settings(cache_dir=tmp_path / "cache")
    with pytest.raises(ScanLoadError, match="unsafe path|symbolic link"):
        load_scan(_zip_with(tmp_path, entry, b"/etc/passwd", symlink), settings)
    assert not (tmp_path / "escaped.dcm").exists() and not Path("/tmp/absolute.dcm").exists()
    assert not settings.uploads_dir.exists() or not any(settings.uploads_dir.iterdir())


def test_zip_larger_than_the_upload_limit_is_refused(tmp_path):
    settings = Settings(cache_dir=tmp_path / "cache", max_upload_bytes=10_000)
    with pytest.raises(ScanLoadError, match="would unpack to 20.0 KB, more than the 10.0 KB"):
        load_scan(_zip_with(tmp_path, "big.dcm", b"\0" * 20_000), settings)
    with pytest.raises(ScanLoadError, match=r"hostile.zip is 20.\d KB, more than the 10.0 KB"):
        load_scan(_zip_with(tmp_path, "big.dcm", os.urandom(20_000)), settings)


def test_header_announcing_too_many_voxels_is_refused_before_reading(tmp_path):
    settings = Settings(cache_dir=tmp_path / "cache", max_voxels=10_000)
    with pytest.raises(ScanLoadError, match="more than the 10,000 allowed"):
        load_scan(ANATOMICAL, settings)


def test_nan_voxels_are_replaced_with_the_minimum_and_noted(settings, tmp_path):
    image = nib.load(ANATOMICAL)
    data = image.get_fdata(dtype=np.float32)
    data[5, 5, 5], data[6, 6, 6] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, image.affine), tmp_path / "nan.nii.gz")
    volume = load_scan(tmp_path / "nan.nii.gz", settings)
    assert np.isfinite(volume.data).all() and volume.data.min() == np.nanmin(data[np.isfinite(data)])
    assert any("2 NaN/infinite" in note for note in volume.metadata.notes)


# --- display ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def itk_t1(settings) -> Volume:
    return load_sample("mr-t1-itk", settings)  # anisotropic 2 x 3 x 2 mm


def _with_marker(volume: Volume, voxel: tuple[int, int, int]) -> Volume:
    data = np.zeros_like(volume.data)
    data[voxel] = 1000.0
    return Volume(data=data, affine=volume.affine, metadata=volume.metadata)


def _marker_pixel(image: np.ndarray) -> tuple[int, int]:
    row, column = np.unravel_index(np.argmax(image[..., 0]), image.shape[:2])
    return int(row), int(column)


def test_patient_right_is_on_the_image_left_in_axial_and_coronal(itk_t1):
    right_voxel = (itk_t1.shape[0] - 10, 30, 60)  # axis 0 grows towards the patient's right
    marked = _with_marker(itk_t1, right_voxel)
    for plane, index in (("axial", 60), ("coronal", 30)):
        image = render_slice(marked, plane, index, window="bone")
        assert _marker_pixel(image)[1] < image.shape[1] // 4, plane


def test_superior_is_up_and_anterior_is_up_in_axial(itk_t1):
    marked = _with_marker(itk_t1, (64, itk_t1.shape[1] - 5, itk_t1.shape[2] - 5))  # anterior, superior
    assert _marker_pixel(render_slice(marked, "coronal", itk_t1.shape[1] - 5, "bone"))[0] < 20
    assert _marker_pixel(render_slice(marked, "sagittal", 64, "bone"))[0] < 20
    assert _marker_pixel(render_slice(marked, "axial", itk_t1.shape[2] - 5, "bone"))[0] < 20


def test_anisotropic_voxels_are_shown_in_true_proportion(itk_t1):
    assert display_shape(itk_t1, "axial") == (93, 128)  # 62 rows x 3 mm over 2 mm pixels
    image = render_slice(itk_t1, "axial", 60)
    assert image.shape == (93, 128, 3) and image.dtype == np.uint8
    assert slice_count(itk_t1, "axial") == 128 and slice_count(itk_t1, "coronal") == 62


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_click_round_trips_to_the_rendered_voxel(itk_t1, plane, scale):
    for voxel in [(10, 5, 100), (100, 40, 20), (64, 31, 64)]:
        marked = _with_marker(itk_t1, voxel)
        index = voxel[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]
        image = render_slice(marked, plane, index, window="bone")
        row, column = _marker_pixel(image)
        shown = (round(image.shape[0] * scale), round(image.shape[1] * scale))
        clicked = voxel_from_click(marked, plane, index, (column + 0.5) * scale - 0.5, (row + 0.5) * scale - 0.5, shown)
        assert clicked == voxel


def test_mask_overlay_colours_only_the_mask(ct_head, settings):
    import tools  # noqa: F401  (assistant.session imported first hits the tools <-> session import cycle)
    from assistant.session import Overlay

    bone = np.asarray(nib.load(sample_labels("ct-head", settings)["bone"]).dataobj)
    plain = render_slice(ct_head, "axial", 60, "brain")
    tinted = render_slice(ct_head, "axial", 60, "brain", [Overlay("bone", bone)])
    changed = np.any(plain != tinted, axis=-1)
    mask_pixels = (bone[::-1, ::-1, 60].T > 0)
    assert changed[mask_pixels].mean() > 0.9 and not changed[~mask_pixels].any()


def test_brain_window_maps_its_level_to_mid_grey(ct_head):
    window = resolve_window(ct_head, "brain")
    assert (window.low, window.high) == (0, 80)
    with pytest.raises(ValueError, match="Unknown window"):
        render_slice(ct_head, "axial", 10, "liver-ish")
    with pytest.raises(ValueError, match="outside"):
        render_slice(ct_head, "axial", 500)


def test_data_cli_fetches_and_lists(tmp_path, monkeypatch, capsys):
    from assistant.cli import main
    from assistant.config import get_settings

    monkeypatch.setenv("SCANCHAT_CACHE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert main(["data", "fetch", "ct-small-dicom"]) == 0
        assert (tmp_path / "samples" / "ct-small-dicom" / "CT_small.dcm").exists()
        assert main(["data", "list"]) == 0 and "ct-small-dicom" in capsys.readouterr().out
        assert main(["data", "fetch", "no-such-sample"]) == 2
    finally:
        get_settings.cache_clear()


def test_itk_header_with_an_absurd_direction_matrix_is_refused_before_reading(settings, tmp_path):
    """ITK 5.4 never returns from reading a MetaImage whose TransformMatrix holds 1e308 (found by evals/bench_fuzz.py)."""
    path = tmp_path / "scan.mha"
    sitk.WriteImage(sitk.ReadImage(str(ANATOMICAL)), str(path))
    raw = path.read_bytes()
    start = raw.index(b"TransformMatrix")
    end = raw.index(b"\n", start)
    path.write_bytes(raw[:start] + b"TransformMatrix = 1 1e308 1e308 0 1e308 0 1e308 1e308 1e308" + raw[end:])
    with pytest.raises(ScanLoadError, match="invalid geometry"):
        load_scan(path, settings)
