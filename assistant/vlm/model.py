"""ScanChat's own small 3D VLM: frozen 3D encoder -> spatial pooling -> MLP projector -> Qwen2.5-0.5B + LoRA.

The encoder's feature grid keeps its spatial layout (one visual token per cell, plus a learned
position embedding), because "which side?" is a question about where, not what. Visual tokens are
spliced in at the `<|image_pad|>` placeholders that the Qwen tokenizer already has, the same
mechanism M3D-LaMed uses with its own image token.

Trained weights (projector, position embedding, LoRA adapter, config) live in one folder,
by default ``models_dir/scanchat-vlm-0.5b``; the LLM is the transformers backend's cached
dequantised Qwen2.5-Coder-0.5B folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from assistant.models.base import ModelError
from assistant.vlm.encoder import encoder_info

IMAGE_TOKEN = "<|image_pad|>"


@dataclass
class VLMConfig:
    encoder: str = "merlin"
    encoder_version: int | None = None  # the encoder's feature version at training (None: not recorded, older models)
    feature_dim: int = 2048
    grid: tuple[int, int, int] = (3, 2, 2)  # (z, x, y) cells of the encoder output
    llm_folder: str = ""
    lora_rank: int = 8
    lora_alpha: int = 16
    hemisphere_token: bool = True  # one more visual token: the left half of the grid minus its mirrored right half
    presence_channels: tuple[int, ...] = ()  # one more visual token when set: how far these channels' largest cell stands above their median
    hemisphere_channels: tuple[int, ...] = ()  # the channels the hemisphere token compares (empty: all)
    acts: bool = False  # trained on the tool-calling bank as well: it chooses tools and fills their arguments itself

    @property
    def visual_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2] + int(self.hemisphere_token) + int(bool(self.presence_channels))

    def save(self, folder: Path) -> None:
        (folder / "vlm_config.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> VLMConfig:
        path = folder / "vlm_config.json"
        if not path.is_file():
            raise ModelError(f"{folder} is not a trained ScanChat VLM (no vlm_config.json); train one with `scanchat vlm train`")
        values = json.loads(path.read_text())
        values["grid"] = tuple(values["grid"])
        for key in ("presence_channels", "hemisphere_channels"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)


class VisualProjector(nn.Module):
    """Feature grid [B, C, z, x, y] -> visual tokens [B, z*x*y (+1), hidden]: standardise, 2-layer MLP, add position.

    Each channel is standardised with statistics gathered over the training batches (batch norm
    without affine), not each token over its channels: a per-token layer norm erases how large a
    cell's values are, and for the weight-free encoder that size (how strong an asymmetry is) is the
    lesion signal.

    The hemisphere token (x is the patient's left-to-right axis of the RAS grid) is the mean of the
    grid's left half minus its mirrored right half, through its own MLP. With cell tokens alone, the
    side of a finding is *which* token carries it, and the LLM did not learn that from a few hundred
    side questions (side accuracy at chance while a linear probe on the same features read it at 0.95);
    in this token the side is the sign of the content, which an MLP and LoRA can map to a word. It compares
    the encoder's side channels only: left-right differences of intensity or height are how a head is
    lit and cut, not where a finding is.

    The presence token (when the encoder names finding channels) is how far those channels' largest
    standardised value over the cells stands above their median cell, through its own MLP. Whether there
    is a finding is a question about the whole grid; with cell tokens alone the model learned it from how
    the training heads differ (presence 0.45 on a left-out training base). Above the median, not the raw maximum:
    how asymmetric a normal head is varies from head to head (largest asymmetry 0.05 in MNI152's normal
    copies, 0.10-0.14 in the ITK T1's), a lesion stands out from the head's own level (0.11 or more above
    the median in both, 0.04 or less without one). Only finding channels: the maximum of every channel
    (intensity, height, air share) carries which head it is, and a token built from it cut presence to 0.55.
    """

    def __init__(self, feature_dim: int, hidden: int, cells: int, hemisphere_token: bool,
                 presence_channels: tuple[int, ...] = (), hemisphere_channels: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(feature_dim, affine=False)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.position = nn.Parameter(torch.zeros(cells + int(hemisphere_token) + int(bool(presence_channels)), hidden))
        self.hemisphere_channels = list(hemisphere_channels or range(feature_dim))
        compared = len(self.hemisphere_channels)
        self.hemisphere = nn.Sequential(nn.BatchNorm1d(compared, affine=False), nn.Linear(compared, hidden), nn.GELU(),
                                        nn.Linear(hidden, hidden)) if hemisphere_token else None
        self.presence_channels = list(presence_channels)
        self.presence = nn.Sequential(nn.Linear(len(presence_channels), hidden), nn.GELU(),
                                      nn.Linear(hidden, hidden)) if presence_channels else None

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        standardised = self.norm(grid.flatten(2))
        tokens = [self.mlp(standardised.transpose(1, 2))]
        if self.hemisphere is not None:
            tokens.append(self.hemisphere(left_minus_right(grid[:, self.hemisphere_channels]))[:, None])
        if self.presence is not None:
            finding = standardised[:, self.presence_channels]
            tokens.append(self.presence(finding.amax(dim=2) - finding.median(dim=2).values)[:, None])
        return torch.cat(tokens, dim=1) + self.position


def left_minus_right(grid: torch.Tensor) -> torch.Tensor:
    """[B, C, z, x, y] (RAS: x from the patient's left to right) -> [B, C]: the left half's mean minus the mirrored right half's."""
    half = grid.shape[3] // 2
    return (grid[:, :, :, :half] - grid.flip(3)[:, :, :, :half]).mean(dim=(2, 3, 4))


def splice_visual_tokens(embeddings: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                         visual: torch.Tensor) -> torch.Tensor:
    """Replace the embeddings at the placeholder positions with the visual tokens: the rows that show a scan
    (a tool request made without one has no placeholders) take the scans of `visual` in order."""
    placeholder = input_ids == image_token_id
    counts = placeholder.sum(dim=1)
    showing = counts > 0
    if int(showing.sum()) != visual.shape[0] or not torch.all(counts[showing] == visual.shape[1]):
        raise ModelError(f"{visual.shape[0]} scans need {visual.shape[1]} image placeholders in as many prompts; "
                         f"found {counts.tolist()}")
    spliced = embeddings.clone()
    spliced[placeholder] = visual.reshape(-1, visual.shape[-1]).to(embeddings.dtype)
    return spliced


def prompt_text(question: str, visual_tokens: int) -> str:
    """The ChatML prompt with the placeholders where the scan goes (none when the model is not shown a volume).

    Written by hand, without a system turn: Qwen's chat template would add a default system prompt,
    and on a CPU every prompt token is paid for at each training step (38 tokens instead of 57).
    """
    image = f"<|vision_start|>{IMAGE_TOKEN * visual_tokens}<|vision_end|>\n" if visual_tokens else ""
    return f"<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n"


def load_llm(folder: str, quantization: str = "none") -> tuple[nn.Module, object]:
    """The causal LLM and tokenizer; 4-bit/8-bit (bitsandbytes) only on a CUDA machine, else a clear error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": torch.float32}
    if quantization != "none":
        if not torch.cuda.is_available():
            raise ModelError(f"{quantization} loading needs a CUDA GPU with bitsandbytes; this machine has none (use quantization 'none')")
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit",
                                                            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4"),
                  "device_map": {"": 0}, "dtype": torch.bfloat16}
    elif torch.cuda.is_available():
        kwargs = {"device_map": {"": 0}, "dtype": torch.bfloat16}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        llm = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except OSError as exc:
        raise ModelError(f"could not load the VLM's language model from {folder!r}: {exc}") from exc
    # The GGUF-derived tokenizer has the vision tokens in its vocabulary but does not split text on them.
    tokenizer.add_tokens(["<|vision_start|>", IMAGE_TOKEN, "<|vision_end|>"], special_tokens=True)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        raise ModelError(f"the tokenizer in {folder} lacks Qwen's vision tokens; use a Qwen2/2.5 language model")
    return llm, tokenizer


class ScanChatVLM(nn.Module):
    """LLM (optionally with a LoRA adapter) + projector; works on cached feature grids or on volumes."""

    def __init__(self, config: VLMConfig, llm: nn.Module, tokenizer) -> None:
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        cells = config.grid[0] * config.grid[1] * config.grid[2]
        self.projector = VisualProjector(config.feature_dim, llm.config.hidden_size, cells, config.hemisphere_token,
                                         config.presence_channels, config.hemisphere_channels).to(llm.device)

    @property
    def device(self) -> torch.device:
        return self.llm.device

    def input_embeddings(self, input_ids: torch.Tensor, grids: torch.Tensor | None) -> torch.Tensor:
        embeddings = self.llm.get_input_embeddings()(input_ids)
        if grids is None:
            return embeddings
        visual = self.projector(grids.to(self.device, dtype=self.projector.position.dtype))
        return splice_visual_tokens(embeddings, input_ids, self.image_token_id, visual)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, grids: torch.Tensor | None):
        return self.llm(inputs_embeds=self.input_embeddings(input_ids, grids), attention_mask=attention_mask)

    def answer_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, grids: torch.Tensor | None,
                    labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of a left-padded batch (answers end every row).

        Logits are computed for the answer positions only: the vocabulary projection (151k x 896)
        over every prompt token was about a quarter of a CPU training step.
        """
        answer_width = int((labels != -100).sum(dim=1).max())
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = self.llm(inputs_embeds=self.input_embeddings(input_ids, grids), attention_mask=attention_mask,
                          position_ids=positions, logits_to_keep=answer_width + 1).logits[:, :-1]
        targets = labels[:, -answer_width:]
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    def _prompt_ids(self, question: str, with_volume: bool) -> torch.Tensor:
        text = prompt_text(question, self.config.visual_tokens if with_volume else 0)
        return self.tokenizer(text, return_tensors="pt").input_ids.to(self.device)

    @torch.inference_mode()
    def option_log_likelihoods(self, grid: torch.Tensor | None, question: str, options: list[str]) -> list[float]:
        """Summed log-probability of each option as the answer (closed questions, M3D-Bench style); one
        right-padded batch for all options, so the prompt is read once per option but in one forward."""
        prompt = self._prompt_ids(question, grid is not None)[0]
        answers = [self.tokenizer(option, return_tensors="pt").input_ids[0].to(self.device) for option in options]
        ids = torch.full((len(options), len(prompt) + max(len(a) for a in answers)), self.tokenizer.pad_token_id or 0, device=self.device)
        mask = torch.zeros_like(ids)
        for row, answer in enumerate(answers):
            ids[row, : len(prompt) + len(answer)] = torch.cat([prompt, answer])
            mask[row, : len(prompt) + len(answer)] = 1
        grids = None if grid is None else grid[None].expand(len(options), *grid.shape)
        log_probs = self(ids, mask, grids).logits.float().log_softmax(-1)
        return [float(log_probs[row, len(prompt) - 1 : len(prompt) - 1 + len(answer)].gather(1, answer[:, None]).sum())
                for row, answer in enumerate(answers)]

    def generate_ids(self, grid: torch.Tensor | None, question: str, max_new_tokens: int, streamer=None,
                     min_new_tokens: int = 0) -> torch.Tensor:
        ids = self._prompt_ids(question, grid is not None)
        with torch.inference_mode():
            embeddings = self.input_embeddings(ids, None if grid is None else grid[None])
            return self.llm.generate(inputs_embeds=embeddings, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     min_new_tokens=min_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None, streamer=streamer,
                                     pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)

    def generate_json(self, grid: torch.Tensor | None, question: str, constraint, max_new_tokens: int) -> str:
        """A reply held to a JSON schema by `constraint` (a `prefix_allowed_tokens_fn`), the scan's tokens in front.

        The prompt's ids go with its embeddings, so the constraint reads the generated tokens after them, as it
        does for the text model."""
        from transformers import StoppingCriteriaList

        from assistant.models.transformers_backend import StopWhenJsonComplete

        ids = self._prompt_ids(question, grid is not None)
        with torch.inference_mode():
            embeddings = self.input_embeddings(ids, None if grid is None else grid[None])
            output = self.llm.generate(input_ids=ids, inputs_embeds=embeddings, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                       prefix_allowed_tokens_fn=constraint,
                                       stopping_criteria=StoppingCriteriaList([StopWhenJsonComplete(self.tokenizer, ids.shape[1])]),
                                       pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        torch.save(self.projector.state_dict(), folder / "projector.pt")
        if hasattr(self.llm, "peft_config"):
            self.llm.save_pretrained(folder / "adapter")


def load_vlm(folder: Path, quantization: str = "none") -> ScanChatVLM:
    """A trained VLM folder -> model in eval mode; missing or mismatched files are named in the error."""
    from peft import PeftModel

    config = VLMConfig.load(folder)
    info = encoder_info(config.encoder)
    if config.feature_dim != info.feature_dim or config.encoder_version not in (None, info.version):
        raise ModelError(f"the VLM in {folder} was trained on an older version of the {info.name} features "
                         f"({config.feature_dim} channels, now {info.feature_dim}, version {info.version}); retrain it with `scanchat vlm train`")
    projector_file, adapter = folder / "projector.pt", folder / "adapter"
    missing = [str(path.name) for path in (projector_file, adapter / "adapter_config.json") if not path.exists()]
    if missing:
        raise ModelError(f"the VLM folder {folder} lacks {', '.join(missing)}; retrain with `scanchat vlm train`")
    llm, tokenizer = load_llm(config.llm_folder, quantization)
    llm = PeftModel.from_pretrained(llm, adapter)
    model = ScanChatVLM(config, llm, tokenizer)
    state = torch.load(projector_file, map_location=model.device)
    try:
        model.projector.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"projector weights in {projector_file} do not fit the config ({exc})") from exc
    return model.eval()
