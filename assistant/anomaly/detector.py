"""Fit, cache and apply normal models: `detect_anomalies(volume)` is the one entry point for tools and the CLI.

A normal model has one voxel method or several (the ``ensemble``: normative and feature_memory, which miss
different lesions). Each method's voxel map gives three image-score components: how far the largest compact
area of deviation from the normal model stands out from the scan's next largest ones; the same for deviation
in excess of the mirror image across the mid-sagittal plane (focal lesions are nearly always one-sided; much of
how a new normal brain differs from the model is not); and how far the most ball-shaped rise of that one-sided
deviation stands out from the scan's next ones (lesions are compact blobs, misfit runs in sheets and tubes along
ventricles, sulci and the brain's edge). Each component is standardised against held-out normal scans, and the
image score is the largest of them (an ensemble may leave some out: see ENSEMBLES).

Only brain T1 MR has a normal model (the offline normal scans are brain MRs); any other modality or
body region is refused with a message instead of a guess. Fitted models live under
``Settings.cache_dir/anomaly/`` and are fitted once (``scanchat anomaly fit``, or lazily on first use).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from assistant.anomaly.methods import METHODS, AnomalyMethod
from assistant.anomaly.normal_data import DEFAULT_NORMAL_SUBJECTS, WarpedScan, augment, warp_to_template, warped_normal_scan
from assistant.anomaly.regions import top_regions
from assistant.anomaly.result import AnomalyResult
from assistant.anomaly.template import TEMPLATE_RESOLUTION_MM, TemplateSpace, template_space
from assistant.config import Settings, get_settings
from assistant.imaging.progress import ProgressCallback, report, within
from assistant.imaging.scan_cache import get_or_compute
from assistant.volume import Modality, Volume
from tools.base import ToolError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ensemble:
    """Voxel methods screened together: a scan is flagged when any of them finds it more unusual than every held-out normal."""

    members: tuple[str, ...]
    cannot_detect: tuple[str, ...]  # what all members miss
    left_out: tuple[str, ...] = ()  # members' image-score components ('<method>: <component>') that do not count


ENSEMBLES = {
    "ensemble": Ensemble(("normative", "feature_memory"), cannot_detect=(
        "changes that keep both the local intensity and the local texture of normal tissue (isointense lesions, subtle atrophy)",
        "anything outside the brain mask",
        "lesions smaller than about 5 mm",
    ), left_out=(
        # Bilateral texture misfit: it flagged all three of ROBEX's held-out normals (a head whose anatomy and template
        # fit differ on both sides) on the development set (seed 11) and the test set (seed 7). Without it: false alarms
        # 3 -> 1 of 15 (dev) and 3 -> 0 of 15 (test), >= 10 mm image AUROC 0.807 -> 0.800 and 0.827 -> 0.821 (evals/README.md).
        "feature_memory: deviation",
    )),
}
SCREENING_METHODS: tuple[str, ...] = (*METHODS, *ENSEMBLES)
DEFAULT_METHOD = "ensemble"  # highest image AUROC for lesions >= 10 mm on the development sets (evals/README.md)
BODY_MODEL = "brain T1 MR"
MODEL_VERSION = 10  # 9: fitted on five normal subjects (was three); 10: the ensemble leaves out feature_memory's bilateral deviation
# Below this the scan does not look like a brain MR aligned to the template. ROBEX's reference head, a real normal T1
# that aligns well by eye, reaches only 0.38 (low grey/white contrast, noisy): at 0.4 it was refused and left out.
MIN_TEMPLATE_CORRELATION = 0.35
AUGMENTATIONS_PER_SCAN = 8
CALIBRATION_AUGMENTATIONS = 8
VOXEL_PERCENTILE = 99.5  # of voxel scores on held-out normal scans: the map's threshold for regions
VOXEL_THRESHOLD = 1.0  # maps are in multiples of that percentile, so members of an ensemble share a scale
SCORE_PERCENTILE = 95.0  # of a component's voxel values on held-out normals: where the image score starts counting
BACKGROUND_AREAS = 5  # the strongest finding (area or blob) is compared with the mean of the next this many
BACKGROUND_FLOOR = 0.005  # of the strongest normal finding, so scans with (almost) no other findings are not divided by 0
SMALLEST_STANDOUT = 1e-3  # a component with no finding at all, so its logarithm stays finite
BLOB_SIGMA_VOXELS = 2.5  # 5 mm: the scale of the blob detector; a ball about 17 mm across responds most
BLOB_SPACING_VOXELS = 5  # blob peaks closer than this (10 mm) count as one
MIN_SLICES = 8


def one_sided_deviation(score_map: np.ndarray, space: TemplateSpace) -> np.ndarray:
    """How much more a place deviates from normal than its mirror image across the mid-sagittal plane does.

    Much of how a new normal brain differs from the normal model after affine registration is the same
    on both sides (ventricle size, brain shape), while focal lesions are nearly always on one side.
    """
    return np.clip(score_map - space.mirror(score_map), 0.0, None)


def compact_area_excesses(score_map: np.ndarray, mask: np.ndarray, voxel_threshold: float) -> np.ndarray:
    """Excess score summed over each compact area above the voxel threshold (score x mL at 2 mm), largest first.

    A lesion raises a solid block of neighbouring voxels, while registration and anatomy differences
    between subjects leave isolated voxels and thin shells along tissue borders. An opening with a
    one-voxel cross removes everything thinner than 3 voxels (6 mm) before the areas are taken,
    so lesions under about 6 mm do not count towards the image score (they still show in the map).
    """
    excess = np.where(mask, score_map - voxel_threshold, 0.0)
    compact = ndimage.binary_opening(excess > 0, structure=ndimage.generate_binary_structure(3, 1))
    components, count = ndimage.label(compact)
    masses = ndimage.sum_labels(excess, components, np.arange(1, count + 1)) if count else np.zeros(0)
    return np.sort(masses)[::-1] * (TEMPLATE_RESOLUTION_MM / 10) ** 3


def blobness(score_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """How strongly each place is the centre of a ball-shaped rise of the map (scale-normalised Hessian).

    At a ball's centre the map curves down in all three directions; across a sheet (a ventricle wall, the
    brain's edge) in one only, across a tube (a sulcus) in two. The weakest of the three downward curvatures
    is therefore large only at balls: the blob case of Frangi et al. (1998), with Lindeberg's sigma^2 scale
    normalisation. Equal-volume sheets and tubes of misfit, which the compact areas cannot tell from a
    lesion, score near 0. As a third component it raised feature_memory's image AUROC for 10 mm lesions
    from 0.68 to 0.98 on the benchmark's held-out scans (chosen on the seed-11 development set; evals/README.md).
    """
    sigma = BLOB_SIGMA_VOXELS
    values = score_map.astype(np.float32)
    hessian = np.empty(score_map.shape + (3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            hessian[..., i, j] = hessian[..., j, i] = ndimage.gaussian_filter(values, sigma, order=order)
    blob = np.zeros(score_map.shape, np.float32)
    blob[mask] = np.clip(-np.linalg.eigvalsh(hessian[mask])[:, -1], 0.0, None) * sigma**2  # eigenvalues ascending
    return blob


def blob_peaks(score_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blobness at its local maxima inside the brain, largest first: one value per ball-shaped rise.

    Not restricted to places above the component's voxel threshold: on the development set (seed 11) that
    lowered image AUROC for lesions >= 10 mm (feature_memory 0.91 -> 0.87), a lesion's blob centre can lie
    where the one-sided deviation is still moderate.
    """
    blob = blobness(score_map, mask)
    peaks = mask & (blob > 0) & (blob == ndimage.maximum_filter(blob, size=BLOB_SPACING_VOXELS))
    return np.sort(blob[peaks])[::-1]


@dataclass(frozen=True)
class ScoreComponent:
    """One image-score component: a map derived from the voxel map, and its findings' strengths, largest first."""

    derive: Callable[[np.ndarray, TemplateSpace], np.ndarray]
    findings: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (derived map, brain mask, voxel threshold)


SCORE_COMPONENTS: dict[str, ScoreComponent] = {
    "deviation": ScoreComponent(lambda score_map, space: score_map, compact_area_excesses),  # keeps bilateral deviations
    "one-sided deviation": ScoreComponent(one_sided_deviation, compact_area_excesses),
    "one-sided blob": ScoreComponent(one_sided_deviation, lambda derived, mask, _voxel_threshold: blob_peaks(derived, mask)),
}


@dataclass(frozen=True)
class ComponentCalibration:
    """One image-score component calibrated on held-out normal scans: where its voxels start counting and how it varies."""

    voxel_threshold: float  # where areas start counting (the blob component measures shape, not this)
    background_floor: float  # added to the mean of the background findings' strengths
    log_mean: float  # of the component's standout over the held-out normal scans
    log_std: float

    def standardised(self, value: float) -> float:
        """How many of the held-out normals' standard deviations `value` lies above their mean, on a log scale.

        Components differ in how much they vary between normal brains (the blob standout is steady, the
        compact areas' much less so); on the development sets standardising each before taking the largest
        raised image AUROC for lesions >= 10 mm over dividing each by its normal maximum (evals/README.md).
        """
        return float((np.log(max(value, SMALLEST_STANDOUT)) - self.log_mean) / self.log_std)


@dataclass
class MemberModel:
    """One fitted voxel method of a normal model, with its voxel threshold and its calibrated image-score components."""

    method: AnomalyMethod
    voxel_threshold: float
    components: dict[str, ComponentCalibration]

    def score(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The voxel map in multiples of the voxel threshold, and each component's standardised image score."""
        space = template_space()
        score_map = self.method.score(image, space.brain_mask)
        return score_map / self.voxel_threshold, score_parts(score_map, self.components, self.method.name)


@dataclass
class NormalModel:
    """Fitted voxel methods and the thresholds calibrated on normal subjects they were not fitted on.

    The image score is the largest standardised component over the members; the image threshold is the
    largest image score among the held-out normal scans: above it, the scan deviates more than any of them did.
    """

    members: tuple[MemberModel, ...]
    training_scans: tuple[str, ...]
    image_threshold: float
    calibration_scores: tuple[float, ...]  # image scores of the held-out normal scans
    calibration: str  # how the thresholds were calibrated, for the result and the report
    cannot_detect: tuple[str, ...]
    # each held-out normal scan's standardised components, so a benchmark can compare ways of combining them
    calibration_parts: tuple[dict[str, float], ...] = ()
    version: int = MODEL_VERSION

    def score(self, image: np.ndarray) -> tuple[float, dict[str, float], np.ndarray]:
        """Image score, its components and the voxel map (the members' largest, in multiples of their voxel thresholds)."""
        maps, parts = [], {}
        for member in self.members:
            relative_map, member_parts = member.score(image)
            maps.append(relative_map)
            parts |= member_parts
        return max(parts.values()), parts, np.maximum.reduce(maps)


def score_parts(score_map: np.ndarray, components: dict[str, ComponentCalibration], method_name: str) -> dict[str, float]:
    """Each component's standardised image score against the held-out normals, named '<method>: <component>'."""
    space = template_space()
    return {
        f"{method_name}: {name}": calibration.standardised(
            standout(component_findings(name, score_map, space, calibration.voxel_threshold), calibration.background_floor))
        for name, calibration in components.items()
    }


def component_findings(name: str, score_map: np.ndarray, space: TemplateSpace, voxel_threshold: float) -> np.ndarray:
    """The strengths of component `name`'s findings in `score_map` (compact areas or blob peaks), largest first."""
    component = SCORE_COMPONENTS[name]
    return component.findings(component.derive(score_map, space), space.brain_mask, voxel_threshold)


def calibrated_components(maps: list[np.ndarray]) -> dict[str, ComponentCalibration]:
    """Each component's voxel threshold and the spread of its image score on the held-out normal maps.

    The voxel threshold is a low percentile (95th) because the held-out normal copies are augmented on the
    template grid and deviate more than registered uploads do: at the 99.5th percentile a quarter of the
    scans of a development set (`evals/bench_anomaly.py --seed 11`, not the reported cases) left no area above
    it at all, lesioned or not, and their image scores tied at 0.
    """
    space = template_space()
    components = {}
    for name, component in SCORE_COMPONENTS.items():
        values = [component.derive(score_map, space) for score_map in maps]
        threshold = float(np.percentile(np.concatenate([v[space.brain_mask] for v in values]), SCORE_PERCENTILE))
        findings = [component.findings(v, space.brain_mask, threshold) for v in values]
        floor = BACKGROUND_FLOOR * max((f[0] for f in findings if len(f)), default=0.0) + 1e-6
        logs = np.log(np.maximum([standout(f, floor) for f in findings], SMALLEST_STANDOUT))
        components[name] = ComponentCalibration(threshold, floor, float(logs.mean()), float(logs.std()) + 1e-6)
    return components


def standout(strengths: np.ndarray, floor: float) -> float:
    """How many times the strongest finding (area excess or blob peak) is the mean of the next few (plus a small floor).

    Each subject's brain misfits the normal model in several places of similar size (ventricles, sulci,
    the brain's edge), and how much differs by subject: in a scan that misfits everywhere the largest area
    is large but not alone. A focal lesion is one area far above the scan's others. On a development set
    (seed 11, not the reported cases) this ranked lesions >= 10 mm against held-out normals at image AUROC
    0.87 (normative) and 0.90 (feature_memory), against 0.77 and 0.79 for the largest area's excess alone
    (evals/README.md). Several lesions of similar size in one scan lower each other's standing.
    """
    if len(strengths) == 0:
        return 0.0
    background = strengths[1:1 + BACKGROUND_AREAS]
    return float(strengths[0] / ((background.sum() / BACKGROUND_AREAS) + floor))


@cache
def normal_images(name: str, augmentations: int, calibration: bool = False) -> tuple[np.ndarray, ...]:
    """Normal subject `name` on the template grid and `augmentations` plausible re-scans of it, intensity-normalised.

    Cached per process: leave-one-subject-out fits reuse each subject's copies (a fixed seed per subject,
    another one for the calibration copies, so calibration never scores the copies a model was fitted on).
    """
    space = template_space()
    scan = warped_normal_scan(name)
    rng = np.random.default_rng(DEFAULT_NORMAL_SUBJECTS.index(name) + (1000 if calibration else 0))
    images = [scan.image] + [augment(scan.image, rng) for _ in range(augmentations)]
    return tuple(space.normalize_intensity(image) for image in images)


FITTED_METHODS: dict[tuple[str, tuple[str, ...]], AnomalyMethod] = {}


def fitted_method(method_name: str, names: list[str], progress: ProgressCallback | None = None) -> AnomalyMethod:
    """`method_name` fitted on the normal subjects `names` and their augmented copies.

    Fitted once per process and set of subjects: with five subjects, leave-one-subject-out folds and their inner
    calibration folds fit the same subjects several times (the benchmark's 25 fits per ensemble member are 15 subsets).
    """
    key = (method_name, tuple(names))
    if key not in FITTED_METHODS:
        space = template_space()
        method = METHODS[method_name]()
        method.fit([image for name in key[1] for image in normal_images(name, AUGMENTATIONS_PER_SCAN)],
                   space.brain_mask, space.tissue, progress)
        FITTED_METHODS[key] = method
    return FITTED_METHODS[key]


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


def fit_normal_model(method_name: str, scans: tuple[str, ...] = DEFAULT_NORMAL_SUBJECTS,
                     progress: ProgressCallback | None = None) -> NormalModel:
    """Calibrate thresholds on held-out normal subjects, then fit `method_name` (each member of an ensemble) on all of them."""
    if method_name not in SCREENING_METHODS:
        raise ValueError(f"Unknown anomaly method {method_name!r}; choose from {', '.join(SCREENING_METHODS)}.")
    if method_name in ENSEMBLES:
        members = ENSEMBLES[method_name].members
        return ensemble_model(method_name, [fit_normal_model(member, scans, within(progress, index / len(members), 1 / len(members)))
                                            for index, member in enumerate(members)])
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
    report(progress, 0.2, f"calibrating {method_name} on held-out normal subjects")
    maps, calibration = held_out_normal_maps(method_name, names, within(progress, 0.2, 0.6))
    voxel_threshold = float(np.percentile(np.concatenate([m[space.brain_mask] for m in maps]), VOXEL_PERCENTILE))
    components = calibrated_components(maps)
    parts = tuple(score_parts(score_map, components, method_name) for score_map in maps)
    report(progress, 0.8, f"fitting {method_name} on {len(usable)} normal subjects")
    method = fitted_method(method_name, names, within(progress, 0.8, 0.2))
    report(progress, 1.0, "normal model ready")
    return NormalModel(
        members=(MemberModel(method, voxel_threshold, components),),
        training_scans=tuple(names),
        image_threshold=max(max(scan_parts.values()) for scan_parts in parts),
        calibration_scores=tuple(max(scan_parts.values()) for scan_parts in parts),
        calibration=calibration,
        cannot_detect=method.cannot_detect,
        calibration_parts=parts,
    )


def ensemble_model(name: str, models: list[NormalModel]) -> NormalModel:
    """Ensemble `name` (see ENSEMBLES) from its members' normal models, fitted on the same subjects.

    A held-out normal scan's score is its largest component over the members (less the ensemble's left-out
    components), and the largest of those is the threshold.
    """
    if len({model.training_scans for model in models}) != 1:
        raise ValueError("The members of an ensemble must be fitted on the same normal subjects.")
    left_out = set(ENSEMBLES[name].left_out)
    members = tuple(
        replace(member, components={component: calibration for component, calibration in member.components.items()
                                                if f"{member.method.name}: {component}" not in left_out})
        for model in models for member in model.members)
    parts = tuple({part: value for model_parts in scan_parts for part, value in model_parts.items() if part not in left_out}
                  for scan_parts in zip(*(model.calibration_parts for model in models)))
    scores = tuple(max(scan_parts.values()) for scan_parts in parts)
    return NormalModel(
        members=members,
        training_scans=models[0].training_scans,
        image_threshold=max(scores),
        calibration_scores=scores,
        calibration=models[0].calibration,
        cannot_detect=ENSEMBLES[name].cannot_detect,
        calibration_parts=parts,
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


def registered_scan(volume: Volume) -> WarpedScan:
    """`volume` on the template grid, registered once per scan and process (shared by screening and the VLM's encoder)."""
    space = template_space()
    return get_or_compute(volume.fingerprint, f"{space.template.name}-affine/1", "anomaly warp", lambda: warp_to_template(volume, space))


def detect_anomalies(volume: Volume, method: str | None = None, settings: Settings | None = None,
                     progress: ProgressCallback | None = None, max_regions: int = 5) -> AnomalyResult:
    """Screen `volume` against the normal model: image score vs threshold, voxel map on the scan grid, top regions."""
    started = time.perf_counter()
    method = method or DEFAULT_METHOD
    if method not in SCREENING_METHODS:
        raise ToolError(f"Unknown anomaly method {method!r}; choose from {', '.join(SCREENING_METHODS)}.")
    check_scan(volume)
    model = get_normal_model(method, settings, progress)
    space = template_space()
    report(progress, 0.1, "registering the scan to the brain template")
    warped = registered_scan(volume)
    if warped.template_correlation < MIN_TEMPLATE_CORRELATION:
        raise ToolError(
            f"The scan does not match the brain template (correlation {warped.template_correlation:.2f} after "
            f"registration), so it is probably not a {BODY_MODEL}, or it could not be aligned. "
            "There is no normal model for it; no anomaly scores are given."
        )
    report(progress, 0.6, f"scoring with {method}")
    score, parts, template_map = model.score(space.normalize_intensity(warped.image))
    scan_map = np.clip(warped.registration.warp_from_template(template_map), 0.0, None).astype(np.float32)
    regions = top_regions(scan_map, VOXEL_THRESHOLD, volume, max_regions, _atlas_labeller(warped, space))
    notes = [f"Thresholds calibrated on normal scans by {model.calibration}."]
    if volume.modality is Modality.OTHER:
        notes.append("The scan's modality was not recorded; it was treated as a T1 brain MR.")
    report(progress, 1.0, "anomaly screening done")
    log.info("anomaly screening with %s took %.1f s", method, time.perf_counter() - started)
    image_score, threshold = round(score, 3), round(model.image_threshold, 3)
    return AnomalyResult(
        method=method,
        body_model=f"{BODY_MODEL} ({', '.join(model.training_scans)})",
        image_score=image_score,
        score_parts={name: round(value, 3) for name, value in parts.items()},
        threshold=threshold,
        exceeds_threshold=image_score > threshold,  # from the stated numbers: within 0.0005 of the threshold they round equal
        voxel_threshold=VOXEL_THRESHOLD,
        regions=regions,
        cannot_detect=list(model.cannot_detect),
        notes=notes,
        anomaly_map=scan_map,
    )
