"""The `Volume`: one scan, in one frame, for every tool.

Loaders convert whatever arrives (NIfTI, DICOM, NRRD, ...) into this type once, at the edge,
so that every tool works in the same frame and no tool re-parses a file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from enum import Enum
from pathlib import Path

import nibabel as nib
import numpy as np
from pydantic import BaseModel, ConfigDict


class Modality(str, Enum):
    CT = "CT"
    MR = "MR"
    PT = "PT"
    NM = "NM"
    US = "US"
    XRAY = "XR"  # CR, DX, MG: projection radiography
    SEG = "SEG"
    OTHER = "OT"

    @property
    def intensity_unit(self) -> str:
        return "HU" if self is Modality.CT else "a.u."


class ScanLoadError(ValueError):
    """A scan could not be turned into a `Volume`; the message is shown to the user as is."""


class ScanMetadata(BaseModel):
    """De-identified facts about a scan: safe to put into a prompt or a log.

    Patient identifiers (name, id, dates of birth, accession numbers, institutions) are never
    copied here; they stay in `Volume.identifiers`, which only leaves the process when the user
    allows it (`Settings.share_identifiers`) or in a DICOM export for the same patient.
    """

    model_config = ConfigDict(frozen=True)

    source_format: str  # "NIfTI", "DICOM series", "DICOM multi-frame", "NRRD", "MHA", "NumPy"
    modality: Modality = Modality.OTHER
    body_part: str | None = None
    series_description: str | None = None
    study_description: str | None = None
    manufacturer: str | None = None
    slice_thickness_mm: float | None = None
    contrast_agent: str | None = None
    kvp: float | None = None
    magnetic_field_strength_t: float | None = None
    sequence_name: str | None = None
    num_source_files: int = 1
    other_series: list[str] = []  # descriptions of series found but not loaded (e.g. in a zip)
    notes: list[str] = []  # what the loader had to assume or fix


class PatientIdentifiers(BaseModel):
    """Identifying DICOM fields, kept apart from everything that may reach a model."""

    model_config = ConfigDict(frozen=True)

    patient_name: str | None = None
    patient_id: str | None = None
    birth_date: str | None = None
    accession_number: str | None = None
    institution: str | None = None
    study_date: str | None = None
    file_names: tuple[str, ...] = ()  # the upload's own file and folder names (its label is neutral)
    withheld_texts: tuple[str, ...] = ()  # free-text header values the privacy gate withheld


@dataclass(eq=False)
class Volume:
    """A 3D scan: float32 voxels, a voxel-to-world affine (RAS+, mm) and de-identified metadata.

    World coordinates are nibabel's RAS+: +x towards the patient's Right, +y Anterior,
    +z Superior (DICOM's LPS is converted at load time). Loaders re-order `data` to the closest
    canonical voxel order (`nibabel.as_closest_canonical`), so axis 0 grows towards the right,
    axis 1 towards anterior and axis 2 towards superior; the affine stays the truth and
    `axcodes` names it. CT intensities are Hounsfield units (rescale slope/intercept applied).
    """

    data: np.ndarray
    affine: np.ndarray
    metadata: ScanMetadata
    name: str = "scan"
    identifiers: PatientIdentifiers = field(default_factory=PatientIdentifiers)
    dicom_sources: list[Path] = field(default_factory=list)  # for DICOM SEG/SR exports only
    # RAS affine of the input file's own voxel order (for DICOM: source frames, rows, columns), before
    # the canonical re-ordering; results written back to files go onto that grid (`to_source_grid`).
    source_affine: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ScanLoadError(f"A volume must be 3D; got an array of shape {self.data.shape}.")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise ScanLoadError("The scan's voxel-to-world transform is missing or invalid.")

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the voxels and the voxel-to-world transform: what results computed from the scan depend on
        (names and identifiers do not), computed once; volumes are not changed in place."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{self.data.dtype.str}{self.data.shape}".encode())
        digest.update(np.ascontiguousarray(self.data).data)
        digest.update(self.affine.tobytes())
        return digest.hexdigest()

    @property
    def modality(self) -> Modality:
        return self.metadata.modality

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def axcodes(self) -> str:
        """Anatomical direction each array axis increases towards, e.g. 'RAS'."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def field_of_view_mm(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def intensity_unit(self) -> str:
        return self.modality.intensity_unit

    @property
    def center_voxel(self) -> tuple[int, int, int]:
        return tuple(n // 2 for n in self.shape)  # type: ignore[return-value]

    def voxel_to_world(self, ijk: np.ndarray | list[float]) -> np.ndarray:
        """Voxel indices (..., 3) to world coordinates in mm (RAS+)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray | list[float]) -> np.ndarray:
        """World coordinates in mm (RAS+) to fractional voxel indices (..., 3)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def contains_voxel(self, ijk: np.ndarray | list[float]) -> bool:
        ijk = np.asarray(ijk, dtype=np.float64)
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(self.shape) - 0.5))

    def voxel_of(self, point: list[float] | tuple[float, ...], units: str = "voxel") -> np.ndarray:
        """A user's point (voxel indices or RAS mm) as integer voxel indices inside the volume.

        Raises ValueError, naming the valid index range, when the point lies outside the scan.
        """
        if len(point) != 3 or not np.all(np.isfinite(point)):
            raise ValueError(f"A point needs three finite coordinates (x, y, z); got {list(point)}.")
        ijk = self.world_to_voxel(point) if units == "mm" else np.asarray(point, dtype=np.float64)
        if not self.contains_voxel(ijk):
            limits = ", ".join(f"0-{n - 1}" for n in self.shape)
            where = f"{list(point)} mm is voxel {np.round(ijk, 1).tolist()}" if units == "mm" else f"voxel {list(point)}"
            raise ValueError(f"The point is outside the scan: {where}; valid voxel indices are {limits}.")
        return np.clip(np.rint(ijk), 0, np.asarray(self.shape) - 1).astype(int)

    def to_source_grid(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An array on this volume's grid, re-ordered onto the input file's own grid, with that grid's affine.

        Loaders only permute and flip axes (`nibabel.as_closest_canonical`), so the inverse is exact: a mask
        written this way has the same shape and affine as the file the user gave, as other tools expect.
        """
        if self.source_affine is None:
            return array, self.affine
        transform = nib.orientations.ornt_transform(nib.io_orientation(self.affine), nib.io_orientation(self.source_affine))
        return nib.orientations.apply_orientation(array, transform), self.source_affine

    def to_nifti(self) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.data.astype(np.float32, copy=False), self.affine)
        img.header.set_xyzt_units("mm")
        return img
