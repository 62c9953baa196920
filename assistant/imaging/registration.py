"""Template registration: put a scan and a labelled brain template in one frame.

Atlas-based segmentation (named brain structures) and normative anomaly scoring both need to
know where each scan voxel lies on a template. `register_to_template` estimates that mapping
with SimpleITK (Mattes mutual information, multi-resolution, on downsampled copies so that it
stays under ~20 s on 2 cores); the `Registration` it returns moves label maps from the template
onto the scan grid and scan arrays onto the template grid.

Templates ship with installed packages only: "mni152" (nilearn's ICBM-2009 T1 and brain mask)
and "colin27" (Debian mricron-data: ch2 T1, ch2bet brain, AAL labels with names).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from assistant.imaging.progress import OperationCancelled, ProgressCallback, report
from assistant.volume import Modality, ScanMetadata, Volume

RegistrationKind = Literal["affine", "affine+bspline"]
TemplateName = Literal["mni152", "colin27"]

MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
REGISTRATION_SPACING_MM = 3.0  # both images are resampled to this isotropic grid before registering
BRAIN_MARGIN_MM = 6.0  # the affine metric sees the template brain and this much around it
LINEAR_ITERATIONS = 100  # per resolution level, for each of the rigid and affine stages
LINEAR_SAMPLING = 0.3  # fraction of the grid's voxels the metric samples (regular grid)
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


class TemplateUnavailableError(ValueError):
    """The files of a template are not installed on this machine."""


@dataclass(eq=False)
class Template:
    """A labelled reference brain: T1 volume, brain mask and (optionally) a named label map."""

    name: str
    volume: Volume
    brain_mask: np.ndarray  # bool, template grid
    labels: np.ndarray | None = None  # int label map, template grid; 0 is background
    label_names: dict[int, str] = field(default_factory=dict)


def array_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image (LPS physical frame) holding `array` (i, j, k order) at `affine` (RAS)."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((_LPS_FROM_RAS @ (linear / spacing)).flatten().tolist())
    image.SetOrigin((_LPS_FROM_RAS @ np.asarray(affine, dtype=np.float64)[:3, 3]).tolist())
    return image


def sitk_to_array(image: sitk.Image) -> np.ndarray:
    """The voxels of `image` in (i, j, k) order, the inverse of `array_to_sitk`."""
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def _template_volume(image: nib.Nifti1Image, name: str) -> tuple[Volume, nib.Nifti1Image]:
    canonical = nib.as_closest_canonical(image)
    metadata = ScanMetadata(source_format="NIfTI", modality=Modality.MR, series_description=f"{name} template T1")
    return Volume(canonical.get_fdata(dtype=np.float32), canonical.affine, metadata, name=name), canonical


def _canonical_data(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(image).dataobj)


def _read_aal_names(path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


@cache
def load_template(name: TemplateName) -> Template:
    """A template from installed packages, loaded once per process."""
    if name == "mni152":
        from nilearn import datasets

        volume, _ = _template_volume(datasets.load_mni152_template(resolution=1), "mni152")
        mask = _canonical_data(datasets.load_mni152_brain_mask(resolution=1)) > 0
        return Template(name=name, volume=volume, brain_mask=mask)
    if name == "colin27":
        files = {key: MRICRON_TEMPLATES / f"{key}.nii.gz" for key in ("ch2", "ch2bet", "aal")}
        missing = [str(path) for path in files.values() if not path.exists()]
        if missing:
            raise TemplateUnavailableError(
                f"Colin27 template files are missing ({', '.join(missing)}); install the Debian package mricron-data."
            )
        volume, _ = _template_volume(nib.load(files["ch2"]), "colin27")
        brain = _canonical_data(nib.load(files["ch2bet"])) > 0
        labels = _canonical_data(nib.load(files["aal"])).astype(np.int16)
        return Template(
            name=name,
            volume=volume,
            brain_mask=brain,
            labels=labels,
            label_names=_read_aal_names(MRICRON_TEMPLATES / "aal.nii.txt"),
        )
    raise ValueError(f"Unknown template {name!r}; choose 'mni152' or 'colin27'.")


def _registration_image(volume: Volume) -> sitk.Image:
    """A smoothed, isotropic, robustly scaled copy of `volume`: what the metric actually sees."""
    data = np.nan_to_num(volume.data.astype(np.float32, copy=False))
    low, high = np.percentile(data[::2, ::2, ::2], [0.5, 99.5])
    scaled = np.clip((data - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
    image = array_to_sitk(scaled, volume.affine)
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.maximum(old_spacing, REGISTRATION_SPACING_MM)
    new_size = np.maximum(np.round(np.array(image.GetSize()) * old_spacing / new_spacing), 8).astype(int)
    sigma = [float(max(s / 2.0, 0.0)) for s in new_spacing]
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(
        smoothed, new_size.tolist(), sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing.tolist(),
        image.GetDirection(), 0.0, sitk.sitkFloat32,
    )


@cache
def _template_registration_image(template: Template) -> sitk.Image:
    return _registration_image(template.volume)


@cache
def _template_brain_region(template: Template) -> sitk.Image:
    """The template's brain plus a margin, on its registration grid: where the metric compares the images.

    Without it a whole-head scan registered to a skull-stripped template (nilearn's MNI152) shrinks
    until its skull lies on the template's brain.
    """
    grid = _template_registration_image(template)
    mask = sitk.Resample(array_to_sitk(template.brain_mask, template.volume.affine), grid, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.BinaryDilate(mask, [round(BRAIN_MARGIN_MM / REGISTRATION_SPACING_MM)] * 3)


@contextmanager
def _single_threaded():
    """ITK's metric sums per thread, so a multi-threaded registration differs slightly from run to run; one thread
    makes the same scan give the same alignment (and anomaly map) every time, for about 0.2 s more per registration."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


class _CancellableRegistration:
    """A SimpleITK registration method that reports progress and stops when asked to."""

    def __init__(self, iterations: int, sampling: float, progress: ProgressCallback | None, start: float, span: float) -> None:
        self.method = sitk.ImageRegistrationMethod()
        self.method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        self.method.SetMetricSamplingStrategy(self.method.RANDOM)
        self.method.SetMetricSamplingPercentage(sampling, seed=7)
        self.method.SetInterpolator(sitk.sitkLinear)
        self.method.AddCommand(sitk.sitkIterationEvent, self._on_iteration)
        self.progress, self.start, self.span = progress, start, span
        self.total_steps = iterations * 2
        self.steps = 0
        self.cancelled = False

    def _on_iteration(self) -> None:
        self.steps += 1
        try:
            report(self.progress, self.start + self.span * min(self.steps / self.total_steps, 1.0), "registering to template")
        except OperationCancelled:
            self.cancelled = True
            self.method.StopRegistration()

    def execute(self, fixed: sitk.Image, moving: sitk.Image) -> None:
        with _single_threaded():
            self.method.Execute(fixed, moving)
        if self.cancelled:
            raise OperationCancelled("Registration to the template was cancelled.")


def _linear_stage(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, brain_region: sitk.Image,
                  run: _CancellableRegistration) -> None:
    """Optimise `transform` in place, coarse to fine, comparing the images only around the template brain.

    Regular-step descent on a regular sample grid: registering an image to itself stays at identity,
    where stochastic sampling with an estimated learning rate drifted by 5 mm and 3% scale.
    """
    method = run.method
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(LINEAR_SAMPLING, seed=7)  # the default seed is the wall clock
    method.SetMetricMovingMask(brain_region)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=LINEAR_ITERATIONS, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(transform, inPlace=True)
    run.execute(fixed, moving)


def _affine(fixed: sitk.Image, moving: sitk.Image, brain_region: sitk.Image, progress: ProgressCallback | None,
            span: float) -> sitk.AffineTransform:
    """Centre-of-mass start, then rigid, then affine: each stage starts where the simpler one converged."""
    rigid = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    half = span / 2
    _linear_stage(fixed, moving, rigid, brain_region,
                  _CancellableRegistration(LINEAR_ITERATIONS, LINEAR_SAMPLING, progress, 0.05, half))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    _linear_stage(fixed, moving, affine, brain_region,
                  _CancellableRegistration(LINEAR_ITERATIONS, LINEAR_SAMPLING, progress, 0.05 + half, half))
    return affine


def _bspline(fixed: sitk.Image, moving: sitk.Image, affine: sitk.AffineTransform, progress: ProgressCallback | None, start: float) -> sitk.BSplineTransform:
    mesh_size = [max(2, int(round(size * spacing / 50.0))) for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh_size, order=3)
    run = _CancellableRegistration(20, 0.05, progress, start, 0.95 - start)
    method = run.method
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=20, maximumNumberOfCorrections=5)
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([0])
    run.execute(fixed, moving)
    return bspline


@dataclass(eq=False)
class Registration:
    """The mapping between one scan and one template.

    `forward` takes a point on the scan (LPS mm) to the template; `inverse` takes a template
    point back to the scan. Both are SimpleITK transforms, so any image can be resampled either
    way. After a B-spline stage `inverse` is None until first needed (`inverse_transform()`):
    inverting the deformation costs seconds that atlas segmentation never needs.
    """

    template: Template
    kind: RegistrationKind
    forward: sitk.Transform
    inverse: sitk.Transform | None
    volume_shape: tuple[int, int, int]
    volume_affine: np.ndarray
    metric_value: float
    seconds: float
    affine: sitk.AffineTransform | None = None
    bspline: sitk.BSplineTransform | None = None
    registration_grid: sitk.Image | None = None  # the downsampled scan the B-spline was estimated on

    @property
    def nbytes(self) -> int:
        """Memory of what the registration holds of its own (the template is shared), for the scan cache."""
        grid = self.registration_grid
        pixels = grid.GetNumberOfPixels() * grid.GetNumberOfComponentsPerPixel() * 4 if grid is not None else 0
        parameters = sum(t.GetNumberOfParameters() for t in (self.forward, self.inverse, self.bspline) if t is not None)
        return pixels + 8 * parameters + 4096

    def inverse_transform(self) -> sitk.Transform:
        if self.inverse is None:
            assert self.affine is not None and self.bspline is not None and self.registration_grid is not None
            self.inverse = sitk.CompositeTransform(
                [_inverse_bspline(self.bspline, self.registration_grid), self.affine.GetInverse()]
            )
        return self.inverse

    def _resample(self, array: np.ndarray, source_affine: np.ndarray, target_shape: tuple[int, int, int], target_affine: np.ndarray, transform: sitk.Transform, nearest: bool) -> np.ndarray:
        reference = array_to_sitk(np.zeros(target_shape, dtype=np.uint8), target_affine)
        source = array_to_sitk(array if nearest else array.astype(np.float32), source_affine)
        interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        return sitk_to_array(sitk.Resample(source, reference, transform, interpolator, 0.0))

    def warp_labels(self, labels_on_template: np.ndarray) -> np.ndarray:
        """A template label map (or mask) moved onto the scan grid, nearest neighbour."""
        return self.warp_from_template(labels_on_template, nearest=True)

    def warp_from_template(self, array: np.ndarray, *, nearest: bool = False) -> np.ndarray:
        """Any template-grid array on the scan grid; linear for probabilities, nearest for labels."""
        return self._resample(
            array, self.template.volume.affine, self.volume_shape, self.volume_affine, self.forward, nearest
        )

    def warp_to_template(self, volume_array: np.ndarray, *, nearest: bool = False) -> np.ndarray:
        """A scan-grid array (intensities, a map, a mask) on the template grid."""
        template_volume = self.template.volume
        return self._resample(volume_array, self.volume_affine, template_volume.shape, template_volume.affine, self.inverse_transform(), nearest)


def _inverse_bspline(bspline: sitk.BSplineTransform, fixed: sitk.Image) -> sitk.Transform:
    field = sitk.TransformToDisplacementField(
        bspline, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection()
    )
    inverse_field = sitk.InvertDisplacementField(field, maximumNumberOfIterations=20, enforceBoundaryCondition=True)
    return sitk.DisplacementFieldTransform(inverse_field)


def register_to_template(
    volume: Volume,
    template: Template,
    *,
    kind: RegistrationKind = "affine",
    progress: ProgressCallback | None = None,
) -> Registration:
    """Estimate where `volume`'s voxels lie on `template` (and back).

    Raises `OperationCancelled` when `progress` returns False.
    """
    if kind not in ("affine", "affine+bspline"):
        raise ValueError(f"Unknown registration kind {kind!r}; use 'affine' or 'affine+bspline'.")
    started = time.perf_counter()
    report(progress, 0.0, "preparing registration")
    fixed = _registration_image(volume)
    moving = _template_registration_image(template)
    affine_span = 0.9 if kind == "affine" else 0.5
    affine = _affine(fixed, moving, _template_brain_region(template), progress, affine_span)
    bspline = _bspline(fixed, moving, affine, progress, 0.05 + affine_span) if kind == "affine+bspline" else None
    registration = Registration(
        template=template, kind=kind,
        forward=affine if bspline is None else sitk.CompositeTransform([affine, bspline]),  # right to left
        inverse=affine.GetInverse() if bspline is None else None,
        volume_shape=volume.shape, volume_affine=volume.affine, metric_value=0.0, seconds=0.0,
        affine=affine, bspline=bspline, registration_grid=fixed,
    )
    metric = sitk.ImageRegistrationMethod()
    metric.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    metric.SetMetricSamplingStrategy(metric.RANDOM)
    metric.SetMetricSamplingPercentage(0.1, seed=7)
    metric.SetInterpolator(sitk.sitkLinear)
    metric.SetMovingInitialTransform(registration.forward)
    metric.SetInitialTransform(sitk.TranslationTransform(3))
    with _single_threaded():
        registration.metric_value = float(metric.MetricEvaluate(fixed, moving))
    registration.seconds = time.perf_counter() - started
    report(progress, 1.0, "registration done")
    return registration
