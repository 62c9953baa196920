"""Anomaly scoring methods behind one interface: fit on normal images, score a voxel map for a new one.

All methods see images already registered and intensity-normalised to the template space
(`template.py`), restricted to a mask; a score is 0 where nothing is known (outside the mask).

- ``zscore``: the baseline. Deviation from the scan's own mean intensity inside the mask; no normal model.
- ``normative``: voxel-wise deviation from the mean/std maps of normal scans, with a per-tissue std floor.
- ``feature_memory``: PatchCore-style nearest-neighbour distance (faiss) from multi-scale image features
  plus position to a memory bank of normal features.
- ``autoencoder``: residual of a small 3D convolutional autoencoder trained on normal patches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from functools import cached_property
from typing import ClassVar

import faiss
import numpy as np
import torch
from scipy import ndimage
from skimage.feature import multiscale_basic_features

from assistant.imaging.progress import ProgressCallback, report

SMOOTHING_VOXELS = 1.0  # scores are averaged over about one voxel's neighbourhood to damp noise


class AnomalyMethod(ABC):
    name: ClassVar[str]
    needs_normal_scans: ClassVar[bool] = True
    cannot_detect: ClassVar[tuple[str, ...]] = ()

    def fit(self, images: Iterable[np.ndarray], mask: np.ndarray, tissue: np.ndarray,
            progress: ProgressCallback | None = None) -> None:
        """Learn what normal looks like from augmented normal images on the template grid."""

    @abstractmethod
    def raw_score(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Unsmoothed voxel scores (higher = more unusual)."""

    def score(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        scores = ndimage.gaussian_filter(self.raw_score(image, mask).astype(np.float32), SMOOTHING_VOXELS)
        return np.where(mask, scores, 0.0).astype(np.float32)


class ZScoreBaseline(AnomalyMethod):
    """|intensity - mean| / std of the scan's own voxels inside the mask."""

    name = "zscore"
    needs_normal_scans = False
    cannot_detect = (
        "lesions whose intensity lies within the range of normal tissue (e.g. grey-matter-like lesions in grey matter)",
        "anything in tissue that is normally very bright or dark",
    )

    def raw_score(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        values = image[mask]
        return np.abs(image - values.mean()) / (values.std() + 1e-6)


def _mean_and_floored_std(images: Iterable[np.ndarray], mask: np.ndarray, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and std of normal images; the std is floored by its tissue median so tiny training sets stay calibrated."""
    total = total_sq = None
    count = 0
    for image in images:
        image = image.astype(np.float64)
        total = image if total is None else total + image
        total_sq = image**2 if total_sq is None else total_sq + image**2
        count += 1
    if count < 2:
        raise ValueError("The normative model needs at least two normal images.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    floor = np.zeros_like(std)
    for tissue_class in np.unique(tissue[mask]):
        in_class = mask & (tissue == tissue_class)
        floor[in_class] = np.median(std[in_class])
    return mean.astype(np.float32), np.sqrt(std**2 + floor**2).astype(np.float32)


class NormativeDeviation(AnomalyMethod):
    """Voxel-wise z-score against normal mean/std maps; the std is floored per tissue so tiny training sets stay calibrated."""

    name = "normative"
    cannot_detect = (
        "changes that keep the local intensity of normal tissue (isointense lesions, subtle atrophy)",
        "anything outside the brain mask",
        "lesions smaller than about 5 mm",
    )

    def fit(self, images, mask, tissue, progress=None):
        self.mean, self.std = _mean_and_floored_std(images, mask, tissue)

    def raw_score(self, image, mask):
        return np.abs(image - self.mean) / (self.std + 1e-6)


def _voxel_features(image: np.ndarray, mask: np.ndarray, position_weight: float) -> np.ndarray:
    """Multi-scale intensity/edge/texture features (scikit-image) plus the voxel's position, one row per masked voxel."""
    features = multiscale_basic_features(image, intensity=True, edges=True, texture=False,
                                         sigma_min=0.7, sigma_max=4.0, num_sigma=4, channel_axis=None)
    positions = np.argwhere(mask).astype(np.float32) / np.asarray(mask.shape, dtype=np.float32)
    return np.hstack([features[mask], position_weight * positions]).astype(np.float32)


class FeatureMemory(AnomalyMethod):
    """PatchCore-style: distance to the nearest normal feature vector (faiss HNSW over a subsampled memory bank)."""

    name = "feature_memory"
    memory_size: ClassVar[int] = 60_000
    position_weight: ClassVar[float] = 1.0
    cannot_detect = (
        "changes whose local texture and intensity occur elsewhere nearby in normal brains",
        "anything outside the brain mask",
        "lesions smaller than about 5 mm",
    )

    def fit(self, images, mask, tissue, progress=None):
        rng = np.random.default_rng(0)
        banks = [_voxel_features(image, mask, self.position_weight) for image in images]
        bank = np.vstack(banks)
        self.feature_scale = bank.std(axis=0) + 1e-6
        keep = rng.choice(len(bank), size=min(self.memory_size, len(bank)), replace=False)
        self.memory = (bank[keep] / self.feature_scale).astype(np.float32)

    @cached_property
    def index(self) -> faiss.Index:
        index = faiss.IndexHNSWFlat(self.memory.shape[1], 32)
        index.hnsw.efSearch = 32
        index.add(self.memory)
        return index

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key != "index"}

    def raw_score(self, image, mask):
        features = _voxel_features(image, mask, self.position_weight) / self.feature_scale
        distances, _ = self.index.search(features.astype(np.float32), 1)
        scores = np.zeros(mask.shape, dtype=np.float32)
        scores[mask] = np.sqrt(np.maximum(distances[:, 0], 0.0))
        return scores


class _PatchAutoencoder(torch.nn.Module):
    """Three stride-2 convolutions down to 1/8 resolution and back: too narrow to copy a lesion through."""

    def __init__(self, width: int = 16):
        super().__init__()
        act = torch.nn.LeakyReLU(0.1)
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv3d(1, width, 3, stride=2, padding=1), act,
            torch.nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), act,
            torch.nn.Conv3d(2 * width, 2 * width, 3, stride=2, padding=1), act,
            torch.nn.Conv3d(2 * width, 8, 1),
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.Conv3d(8, 2 * width, 1), act,
            torch.nn.ConvTranspose3d(2 * width, 2 * width, 4, stride=2, padding=1), act,
            torch.nn.ConvTranspose3d(2 * width, width, 4, stride=2, padding=1), act,
            torch.nn.ConvTranspose3d(width, 1, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Autoencoder(AnomalyMethod):
    """Residual |image - reconstruction| of a 3D conv autoencoder trained on random normal patches on the CPU."""

    name = "autoencoder"
    patch: ClassVar[int] = 32
    steps: ClassVar[int] = 300
    batch: ClassVar[int] = 8
    cannot_detect = (
        "lesions the autoencoder reconstructs well (low contrast, smooth)",
        "anything outside the brain mask",
        "lesions smaller than about 8 mm",
    )

    def fit(self, images, mask, tissue, progress=None):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        stack = np.stack(list(images)).astype(np.float32)
        half = self.patch // 2
        inside = np.argwhere(ndimage.binary_erosion(mask, iterations=self.patch // 4))
        whole_patch = np.all((inside >= half) & (inside <= np.asarray(mask.shape) - half), axis=1)
        inside = inside[whole_patch]  # patches that fit in the grid: np.stack needs equal shapes
        self.model = _PatchAutoencoder()
        optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        for step in range(self.steps):
            centers = inside[rng.integers(len(inside), size=self.batch)]
            volumes = rng.integers(len(stack), size=self.batch)
            batch = np.stack([
                stack[v, c[0] - half:c[0] + half, c[1] - half:c[1] + half, c[2] - half:c[2] + half]
                for v, c in zip(volumes, centers)
            ])
            x = torch.from_numpy(batch[:, None])
            loss = torch.nn.functional.l1_loss(self.model(x), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 20 == 0:
                report(progress, step / self.steps, f"training autoencoder (loss {loss.item():.4f})")
        self.model.eval()

    def raw_score(self, image, mask):
        pad = [(0, (-n) % 8) for n in image.shape]
        padded = np.pad(image.astype(np.float32), pad)
        with torch.no_grad():
            reconstruction = self.model(torch.from_numpy(padded)[None, None])[0, 0].numpy()
        reconstruction = reconstruction[: image.shape[0], : image.shape[1], : image.shape[2]]
        return np.abs(image - reconstruction)


METHODS: dict[str, type[AnomalyMethod]] = {
    cls.name: cls for cls in (ZScoreBaseline, NormativeDeviation, FeatureMemory, Autoencoder)
}
