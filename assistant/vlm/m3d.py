"""An M3D-LaMed-compatible 3D VLM, built from the published design, and a loader for its checkpoints.

Design (Bai et al., "M3D: Advancing 3D Medical Image Analysis with Multi-Modal LLMs", 2024):
MONAI's 3D ViT (perceptron patch embedding, cls token) reads a 1x32x256x256 volume in 4x16x16 patches
(8x16x16 = 2048 patches), a 2x2x2 spatial pooling reduces the patch grid to 256 visual tokens, a 2-layer MLP
projects them into the LLM (Phi-3-4B or Llama-2-7B), and the tokens replace the `<im_patch>` placeholders in the prompt.
Preprocessing comes from `assistant.vlm.preprocess.m3d_input`, done explicitly from the Volume.

`load_m3d_checkpoint` maps the published parameter names (``model.vision_tower.vision_tower.*``,
``model.mm_projector.*``, ``model.layers.*``/``lm_head.*``) onto this module and names every
missing, unexpected or mismatched key; no weights are downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from assistant.models.base import ModelError

IMAGE_PLACEHOLDER = "<im_patch>"


@dataclass(frozen=True)
class M3DVisionConfig:
    image_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    pooling_size: int = 2  # M3D's proj_pooling_size: the 8x16x16 patch grid becomes 4x8x8 = 256 visual tokens

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        return tuple(i // p for i, p in zip(self.image_size, self.patch_size))  # type: ignore[return-value]

    @property
    def pooled_grid(self) -> tuple[int, int, int]:
        return tuple(n // self.pooling_size for n in self.patch_grid)  # type: ignore[return-value]

    @property
    def visual_tokens(self) -> int:
        return self.pooled_grid[0] * self.pooled_grid[1] * self.pooled_grid[2]


class ViT3DTower(nn.Module):
    """M3D's vision tower: MONAI's ViT with a perceptron patch embedding and a cls token; features are the
    final-norm patch tokens (M3D's vision_select_layer=-1, vision_select_feature='patch')."""

    def __init__(self, config: M3DVisionConfig) -> None:
        from monai.networks.nets import ViT

        super().__init__()
        self.config = config
        self.vision_tower = ViT(in_channels=1, img_size=config.image_size, patch_size=config.patch_size,
                                hidden_size=config.hidden_size, mlp_dim=config.mlp_dim, num_layers=config.layers,
                                num_heads=config.heads, proj_type="perceptron", classification=True, spatial_dims=3)
        # M3D's copy of MONAI's ViT has no classification head, and the MONAI it was trained with had no
        # (unused without cross-attention) norm_cross_attn: drop both so a published checkpoint loads strictly.
        del self.vision_tower.classification_head
        for block in self.vision_tower.blocks:
            del block.norm_cross_attn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, 32, 256, 256] -> patch features [B, 2048, hidden] (the cls token dropped)."""
        expected = (1, *self.config.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ModelError(f"M3D vision input must be [B, {', '.join(map(str, expected))}]; got {list(images.shape)}")
        last, _ = self.vision_tower(images)
        return last[:, 1:]


class SpatialPoolingProjector(nn.Module):
    """M3D's 'spp' projector (proj_layer_type='mlp', proj_layer_num=2): average pooling of the patch grid
    with kernel = stride = pooling_size, then Linear-GELU-Linear into the LLM."""

    def __init__(self, config: M3DVisionConfig, llm_hidden: int) -> None:
        super().__init__()
        self.config = config
        self.projector = nn.Sequential(nn.Linear(config.hidden_size, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        from einops import rearrange

        p1, p2, p3 = self.config.patch_grid
        grid = rearrange(patches, "b (p1 p2 p3) d -> b d p1 p2 p3", p1=p1, p2=p2, p3=p3)
        pooled = torch.nn.functional.avg_pool3d(grid, kernel_size=self.config.pooling_size, stride=self.config.pooling_size)
        return self.projector(rearrange(pooled, "b d p1 p2 p3 -> b (p1 p2 p3) d"))


class M3DLaMed(nn.Module):
    """Vision tower + projector + causal LLM; visual tokens replace the image placeholders."""

    def __init__(self, vision: M3DVisionConfig, llm: nn.Module, image_token_id: int) -> None:
        super().__init__()
        self.vision_tower = ViT3DTower(vision)
        self.mm_projector = SpatialPoolingProjector(vision, llm.config.hidden_size)
        self.llm = llm
        self.image_token_id = image_token_id

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(self.vision_tower(images))

    def input_embeddings(self, input_ids: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        from assistant.vlm.model import splice_visual_tokens

        embeddings = self.llm.get_input_embeddings()(input_ids)
        if images is None:
            return embeddings
        return splice_visual_tokens(embeddings, input_ids, self.image_token_id, self.visual_tokens(images))

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None):
        return self.llm(inputs_embeds=self.input_embeddings(input_ids, images), attention_mask=attention_mask)

    def generate(self, input_ids: torch.Tensor, images: torch.Tensor | None, max_new_tokens: int, **kwargs) -> torch.Tensor:
        with torch.inference_mode():
            embeddings = self.input_embeddings(input_ids, images)
            return self.llm.generate(inputs_embeds=embeddings, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


def map_checkpoint_key(key: str) -> str | None:
    """One published parameter name -> this module's name; None for keys this design has no use for.

    The tower and projector are built as M3D builds them, so their names match after the `model.` prefix;
    the LLM keeps its own names under `llm.`; M3D's segmentation module (seg_*) is not used here."""
    for part in ("vision_tower.", "mm_projector."):
        if key.startswith("model." + part):
            return key[len("model."):]
    if key.startswith("model.seg_"):
        return None
    if key.startswith("model.") or key.startswith("lm_head."):
        return "llm." + key
    return None


@dataclass
class CheckpointReport:
    loaded: int
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "name: checkpoint shape vs model shape"


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All safetensors (or .bin) shards in a checkpoint folder."""
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise ModelError(f"M3D checkpoint folder {folder} does not exist")
    shards = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not shards:
        raise ModelError(f"{folder} holds no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard) if shard.suffix == ".safetensors" else torch.load(shard, map_location="cpu"))
    return state


def load_m3d_checkpoint(model: M3DLaMed, state: dict[str, torch.Tensor], strict: bool = True) -> CheckpointReport:
    """Copy published weights into `model`; with `strict`, any missing or mismatched key is an error naming them."""
    own = model.state_dict()
    mapped, unexpected, mismatched = {}, [], []
    for key, tensor in state.items():
        target = map_checkpoint_key(key)
        if target is None or target not in own:
            unexpected.append(key)
        elif tuple(own[target].shape) != tuple(tensor.shape):
            mismatched.append(f"{key}: {list(tensor.shape)} vs {list(own[target].shape)}")
        else:
            mapped[target] = tensor
    derived = {k for k in own if k.endswith("rotary_emb.inv_freq")}  # a buffer computed from the config
    missing = sorted(set(own) - set(mapped) - derived)
    report = CheckpointReport(len(mapped), missing, unexpected, mismatched)
    if strict and (missing or mismatched):
        problems = [f"{len(missing)} missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"] if missing else []
        if mismatched:
            problems.append(f"{len(mismatched)} mismatched ({'; '.join(mismatched[:3])})")
        raise ModelError(f"the M3D checkpoint does not fit the model: {' and '.join(problems)}")
    model.load_state_dict(mapped, strict=False)
    return report
