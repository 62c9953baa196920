"""An M3D-LaMed-compatible 3D VLM, built from the published design, and a loader for its checkpoints.

Design (Bai et al., "M3D: Advancing 3D Medical Image Analysis with Multi-Modal LLMs", 2024):
a 3D ViT reads a 1x32x256x256 volume in 4x16x16 patches (8x16x16 = 2048 patches), a 3D spatial
pooling reduces the patch grid to 256 visual tokens, a 2-layer MLP projects them into the LLM
(Phi-3-4B or Llama-2-7B), and the tokens replace the `<im_patch>` placeholders in the prompt.
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
    pooled_grid: tuple[int, int, int] = (4, 8, 8)  # 256 visual tokens after 3D spatial pooling

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        return tuple(i // p for i, p in zip(self.image_size, self.patch_size))  # type: ignore[return-value]

    @property
    def visual_tokens(self) -> int:
        return self.pooled_grid[0] * self.pooled_grid[1] * self.pooled_grid[2]


class ViT3D(nn.Module):
    """MONAI-style 3D ViT: Conv3d patch embedding + learned positions + pre-norm transformer blocks."""

    def __init__(self, config: M3DVisionConfig) -> None:
        super().__init__()
        self.config = config
        patches = config.patch_grid[0] * config.patch_grid[1] * config.patch_grid[2]
        self.patch_embedding = nn.Conv3d(1, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, patches, config.hidden_size))
        layer = nn.TransformerEncoderLayer(config.hidden_size, config.heads, config.mlp_dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden_size)
        for block in self.blocks.layers:  # MONAI's ViT has no qkv bias: keep it at zero
            nn.init.zeros_(block.self_attn.in_proj_bias)
            block.self_attn.in_proj_bias.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, 32, 256, 256] -> patch features [B, 2048, hidden]."""
        expected = (1, *self.config.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ModelError(f"M3D vision input must be [B, {', '.join(map(str, expected))}]; got {list(images.shape)}")
        tokens = self.patch_embedding(images).flatten(2).transpose(1, 2) + self.position_embedding
        return self.norm(self.blocks(tokens))


class SpatialPoolingProjector(nn.Module):
    """M3D's 'spp' projector: 3D average pooling of the patch grid, then a 2-layer MLP into the LLM."""

    def __init__(self, config: M3DVisionConfig, llm_hidden: int) -> None:
        super().__init__()
        self.config = config
        self.pool = nn.AdaptiveAvgPool3d(config.pooled_grid)
        self.linear_1 = nn.Linear(config.hidden_size, llm_hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(llm_hidden, llm_hidden)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, *self.config.patch_grid)
        pooled = self.pool(grid).flatten(2).transpose(1, 2)  # [B, 256, hidden]
        return self.linear_2(self.act(self.linear_1(pooled)))


class M3DLaMed(nn.Module):
    """Vision tower + projector + causal LLM; visual tokens replace the image placeholders."""

    def __init__(self, vision: M3DVisionConfig, llm: nn.Module, image_token_id: int) -> None:
        super().__init__()
        self.vision_tower = ViT3D(vision)
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


# Published M3D-LaMed names (LamedPhi3ForCausalLM / LamedLlamaForCausalLM) -> this module's names.
# The vision tower is MONAI's ViT: patch_embedding.patch_embeddings.1 is its Conv3d after a Rearrange,
# blocks.N.{norm1,attn,norm2,mlp}; the LLM keeps its own names under `llm.`.
_VISION_PREFIX = "model.vision_tower.vision_tower."
_BLOCK_NAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attn.qkv.weight": "self_attn.in_proj_weight", "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias", "mlp.linear1.weight": "linear1.weight", "mlp.linear1.bias": "linear1.bias",
    "mlp.linear2.weight": "linear2.weight", "mlp.linear2.bias": "linear2.bias",
}  # fmt: skip


def map_checkpoint_key(key: str) -> str | None:
    """One published parameter name -> this module's name; None for keys this design has no use for."""
    if key.startswith(_VISION_PREFIX):
        rest = key[len(_VISION_PREFIX):]
        if rest.startswith("patch_embedding.patch_embeddings.1."):
            return "vision_tower.patch_embedding." + rest.rsplit(".", 1)[1]
        if rest == "patch_embedding.position_embeddings":
            return "vision_tower.position_embedding"
        if rest.startswith("norm."):
            return "vision_tower." + rest
        if rest.startswith("blocks."):
            _, index, name = rest.split(".", 2)
            return f"vision_tower.blocks.layers.{index}.{_BLOCK_NAMES[name]}" if name in _BLOCK_NAMES else None
        return None
    if key.startswith("model.mm_projector."):
        rest = key[len("model.mm_projector."):]
        return "mm_projector." + rest.replace("projector.0.", "linear_1.").replace("projector.2.", "linear_2.")
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
    derived = {k for k in own if k.endswith(("rotary_emb.inv_freq", "in_proj_bias"))}  # buffers; MONAI's qkv has no bias
    missing = sorted(set(own) - set(mapped) - derived)
    report = CheckpointReport(len(mapped), missing, unexpected, mismatched)
    if strict and (missing or mismatched):
        problems = [f"{len(missing)} missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"] if missing else []
        if mismatched:
            problems.append(f"{len(mismatched)} mismatched ({'; '.join(mismatched[:3])})")
        raise ModelError(f"the M3D checkpoint does not fit the model: {' and '.join(problems)}")
    model.load_state_dict(mapped, strict=False)
    return report
