"""Fit, cache and apply normal models: `detect_anomalies(volume)` is the one entry point for tools and the CLI.

Only brain T1 MR has a normal model (the offline normal scans are brain MRs); any other modality or
body region is refused with a message instead of a guess. Fitted models live under
``Settings.cache_dir/anomaly/`` and are fitted once (``scanchat anomaly fit``, or lazily on first use).
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from assistant.anomaly.methods import METHODS, AnomalyMethod
from assistant.anomaly.normal_data import NORMAL_MR_SCANS, WarpedScan, augment, warp_to_template, warped_normal_scan
from assistant.anomaly.regions import top_regions
from assistant.anomaly.result import AnomalyResult
from assistant.anomaly.template import TEMPLATE_RESOLUTION_MM, TemplateSpace, template_space
from assistant.config import Settings, get_settings
from assistant.imaging.progress import ProgressCallback, report
from assistant.volume import Modality, Volume
from tools.base import ToolError

log = logging.getLogger(__name__)

DEFAULT_METHOD = "feature_memory"  # best image AUROC of the four at every size >= 10 mm, no false alarms (evals/bench_anomaly.py)
BODY_MODEL = "brain T1 MR"
MODEL_VERSION = 4
MIN_TEMPLATE_CORRELATION = 0.4  # below this the scan does not look like a brain MR aligned to the template
AUGMENTATIONS_PER_SCAN = 8
CALIBRATION_AUGMENTATIONS = 8
VOXEL_PERCENTILE = 99.5  # of voxel scores on held-out normal scans: the voxel threshold
MIN_SLICES = 8


@dataclass
class NormalModel:
    """A fitted method and the thresholds calibrated on normal subjects it was not fitted on."""

    method: AnomalyMethod
    training_scans: tuple[str, ...]
    image_threshold: float
    voxel_threshold: float
    calibration_scores: tuple[float, ...]  # image scores of the held-out normal scans
    calibration: str  # how the thresholds were calibrated, for the result and the report
    version: int = MODEL_VERSION


def image_score(score_map: np.ndarray, mask: np.ndarray, voxel_threshold: float) -> float:
    """Excess score summed over the largest compact area above the voxel threshold (score x mL at 2 mm).

    A lesion raises a solid block of neighbouring voxels, while registration and anatomy differences
    between subjects leave isolated voxels and thin shells along tissue borders. An opening with a
    one-voxel cross removes everything thinner than 3 voxels (6 mm) before the largest area is taken,
    so lesions under about 6 mm do not count towards the image score (they still show in the map).
    """
    excess = np.where(mask, score_map - voxel_threshold, 0.0)
    compact = ndimage.binary_opening(excess > 0, structure=ndimage.generate_binary_structure(3, 1))
    components, count = ndimage.label(compact)
    if count == 0:
        return 0.0
    masses = ndimage.sum_labels(excess, components, np.arange(1, count + 1))
    return float(masses.max()) * (TEMPLATE_RESOLUTION_MM / 10) ** 3


@cache
def normal_images(name: str, augmentations: int, calibration: bool = False) -> tuple[np.ndarray, ...]:
    """Normal subject `name` on the template grid and `augmentations` plausible re-scans of it, intensity-normalised.

    Cached per process: leave-one-subject-out fits reuse each subject's copies (a fixed seed per subject,
    another one for the calibration copies, so calibration never scores the copies a model was fitted on).
    """
    space = template_space()
    scan = warped_normal_scan(name)
    rng = np.random.default_rng(NORMAL_MR_SCANS.index(name) + (1000 if calibration else 0))
    images = [scan.image] + [augment(scan.image, rng) for _ in range(augmentations)]
    return tuple(space.normalize_intensity(image) for image in images)


def fitted_method(method_name: str, names: list[str], progress: ProgressCallback | None = None) -> AnomalyMethod:
    """`method_name` fitted on the normal subjects `names` and their augmented copies."""
    space = template_space()
    method = METHODS[method_name]()
    method.fit([image for name in names for image in normal_images(name, AUGMENTATIONS_PER_SCAN)],
               space.brain_mask, space.tissue, progress)
    return method


def held_out_normal_maps(method_name: str, names: list[str],
                         progress: ProgressCallback | None = None) -> tuple[list[np.ndarray], str]:
    """Score maps of normal scans under models that never saw their subject (leave one subject out).

    Thresholds calibrated on the training subject's own copies flag every new subject; these maps show
    how far an unseen normal brain deviates. With a single subject only its augmented copies remain.
    """
    mask = template_space().brain_mask
    if len(names) == 1:
        method = fitted_method(method_name, names)
        images = normal_images(names[0], CALIBRATION_AUGMENTATIONS, calibration=True)[1:]
        return [method.score(image, mask) for image in images], "augmented copies of the training subject"
    maps: list[np.ndarray] = []
    for index, held_out in enumerate(names):
        report(progress, index / len(names), f"calibrating: {held_out} held out")
        method = fitted_method(method_name, [name for name in names if name != held_out])
        maps += [method.score(image, mask) for image in normal_images(held_out, CALIBRATION_AUGMENTATIONS, calibration=True)]
    return maps, f"leave-one-subject-out over {len(names)} subjects, {len(maps)} held-out normal scans"


def fit_normal_model(method_name: str, scans: tuple[str, ...] = NORMAL_MR_SCANS,
                     progress: ProgressCallback | None = None) -> NormalModel:
    """Calibrate thresholds on held-out normal subjects, then fit `method_name` on all of them."""
    if method_name not in METHODS:
        raise ValueError(f"Unknown anomaly method {method_name!r}; choose from {', '.join(METHODS)}.")
    space = template_space()
    report(progress, 0.0, "registering normal scans")
    warped = [warped_normal_scan(name) for name in scans]
    usable = [scan for scan in warped if scan.template_correlation >= MIN_TEMPLATE_CORRELATION]
    for scan in warped:
        if scan not in usable:
            log.warning("normal scan %s left out: fits the template poorly (r=%.2f)", scan.name, scan.template_correlation)
    if not usable:
        raise ValueError("None of the normal scans could be aligned to the template.")
    names = [scan.name for scan in usable]
    report(progress, 0.2, "calibrating thresholds on held-out normal subjects")
    maps, calibration = held_out_normal_maps(method_name, names, progress)
    voxel_threshold = float(np.percentile(np.concatenate([m[space.brain_mask] for m in maps]), VOXEL_PERCENTILE))
    scores = tuple(image_score(score_map, space.brain_mask, voxel_threshold) for score_map in maps)
    report(progress, 0.8, f"fitting {method_name} on {len(usable)} normal subjects")
    method = fitted_method(method_name, names, progress)
    report(progress, 1.0, "normal model ready")
    return NormalModel(
        method=method,
        training_scans=tuple(names),
        image_threshold=float(max(scores)),
        voxel_threshold=voxel_threshold,
        calibration_scores=scores,
        calibration=calibration,
    )


def model_path(method_name: str, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.cache_dir / "anomaly" / f"brain-mr-{method_name}-v{MODEL_VERSION}.pkl"


def save_normal_model(model: NormalModel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(pickle.dumps(model))
    temporary.replace(path)


@cache
def _load_normal_model(path: Path) -> NormalModel:
    model = pickle.loads(path.read_bytes())  # our own cache file, written by save_normal_model
    if getattr(model, "version", None) != MODEL_VERSION:
        raise ValueError(f"Anomaly model {path} is from another version; run `scanchat anomaly fit`.")
    return model


def get_normal_model(method_name: str, settings: Settings | None = None,
                     progress: ProgressCallback | None = None) -> NormalModel:
    """The cached normal model for `method_name`, fitted and stored once if missing."""
    path = model_path(method_name, settings)
    if not path.exists():
        save_normal_model(fit_normal_model(method_name, progress=progress), path)
    return _load_normal_model(path)


def check_scan(volume: Volume) -> None:
    """Refuse inputs no normal model can judge, with a message the user can act on."""
    data = volume.data
    if min(volume.shape) < MIN_SLICES:
        raise ToolError(f"The scan has shape {volume.shape}: anomaly screening needs a 3D volume "
                        f"(at least {MIN_SLICES} slices in each direction), not a 2D image.")
    if not np.all(np.isfinite(data)):
        raise ToolError("The scan contains NaN or infinite voxel values; re-export it from the scanner or PACS.")
    if float(data.max()) == float(data.min()):
        raise ToolError("The scan is empty (every voxel has the same value); there is nothing to screen.")
    if volume.modality not in (Modality.MR, Modality.OTHER):
        raise ToolError(f"There is no normal model for {volume.modality.value} scans: anomaly screening only covers "
                        f"{BODY_MODEL} (the normal scans available offline are brain MRs).")
    if volume.modality is Modality.OTHER and float(data.min()) < -500:
        raise ToolError("The scan looks like a CT (values below -500); there is no normal model for CT, "
                        f"anomaly screening only covers {BODY_MODEL}.")


def _atlas_labeller(warped: WarpedScan, space: TemplateSpace):
    """World point on the scan (RAS mm) -> AAL label on the template, through the registration."""
    lps = np.array([-1.0, -1.0, 1.0])
    inverse_affine = np.linalg.inv(space.template.volume.affine)

    def label(world_ras: np.ndarray) -> str | None:
        template_lps = np.asarray(warped.registration.forward.TransformPoint(tuple(float(c) for c in world_ras * lps)))
        template_voxel = inverse_affine[:3, :3] @ (template_lps * lps) + inverse_affine[:3, 3]
        return space.label_at(template_voxel)

    return label


def detect_anomalies(volume: Volume, method: str | None = None, settings: Settings | None = None,
                     progress: ProgressCallback | None = None, max_regions: int = 5) -> AnomalyResult:
    """Screen `volume` against the normal model: image score vs threshold, voxel map on the scan grid, top regions."""
    started = time.perf_counter()
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise ToolError(f"Unknown anomaly method {method!r}; choose from {', '.join(METHODS)}.")
    check_scan(volume)
    model = get_normal_model(method, settings, progress)
    space = template_space()
    report(progress, 0.1, "registering the scan to the brain template")
    warped = warp_to_template(volume, space)
    if warped.template_correlation < MIN_TEMPLATE_CORRELATION:
        raise ToolError(
            f"The scan does not match the brain template (correlation {warped.template_correlation:.2f} after "
            f"registration), so it is probably not a {BODY_MODEL}, or it could not be aligned. "
            "There is no normal model for it; no anomaly scores are given."
        )
    report(progress, 0.6, f"scoring with {method}")
    template_map = model.method.score(space.normalize_intensity(warped.image), space.brain_mask)
    score = image_score(template_map, space.brain_mask, model.voxel_threshold)
    scan_map = np.clip(warped.registration.warp_from_template(template_map), 0.0, None).astype(np.float32)
    regions = top_regions(scan_map, model.voxel_threshold, volume, max_regions, _atlas_labeller(warped, space))
    notes = [f"Thresholds calibrated on normal scans by {model.calibration}."]
    if volume.modality is Modality.OTHER:
        notes.append("The scan's modality was not recorded; it was treated as a T1 brain MR.")
    report(progress, 1.0, "anomaly screening done")
    log.info("anomaly screening with %s took %.1f s", method, time.perf_counter() - started)
    return AnomalyResult(
        method=method,
        body_model=f"{BODY_MODEL} ({', '.join(model.training_scans)})",
        image_score=round(score, 3),
        threshold=round(model.image_threshold, 3),
        exceeds_threshold=score > model.image_threshold,
        voxel_threshold=round(model.voxel_threshold, 3),
        regions=regions,
        cannot_detect=list(model.method.cannot_detect),
        notes=notes,
        anomaly_map=scan_map,
    )
