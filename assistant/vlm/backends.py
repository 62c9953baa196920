"""The 3D vision-language backends behind ScanChat's one `ChatModel` interface.

* `ScanChatVLMChatModel`: the project's own VLM (`assistant.vlm.model`), trained by `scanchat vlm train`; trained
  with `--tool-bank` it is also the agent's `decider`: it chooses tools and fills their arguments looking at the scan.
* `M3DChatModel`: an M3D-LaMed checkpoint folder (Phi-3-4B or Llama-2-7B) loaded into `assistant.vlm.m3d`.
* `MultimodalChatModel`: any `AutoModelForImageTextToText` folder (MedGemma, Qwen2.5-VL, ...) fed windowed axial slices.

Each looks at the volume when one is given and usable. When it is not (no scan, a 2D image, NaNs),
the backend answers from the text alone and says so in `last_volume_note`; `last_looked_at_volume`
tells whether the answer came from looking at the scan. Both are kept per thread, since one loaded model
answers every user's turns at once; the agent copies them into its turn's trace, which the UI shows. `load_vision_model_or_text` turns a
load failure (missing weights, a GPU option on a CPU machine) into a fallback to the text model.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assistant.config import Settings, get_settings
from assistant.findings import Finding
from assistant.models.base import ChatModel, Message, ModelError, Usage
from assistant.vlm.preprocess import SliceSelection, VolumeNotSupported, axial_slices, m3d_input
from assistant.volume import Volume

log = logging.getLogger(__name__)


def last_user_question(messages: Sequence[Message]) -> str:
    """The user's question; the agent's closing instruction ("answer from the tool results") is not one."""
    from prompts import load_prompt

    instruction = load_prompt("agent/answer.md").strip()
    for message in reversed(messages):
        if message.role == "user" and message.content.strip() and message.content.strip() != instruction:
            return message.content
    raise ModelError("no user question to answer")


def model_observation(text: str, model_name: str, question: str) -> Finding:
    """A VLM statement, labelled as something a model saw, never as a measurement."""
    return Finding(kind="observation", what=text.strip(), source_tool=f"vlm:{model_name}",
                   parameters={"question": question}, model_observation=True)


class VisionChatModel(ChatModel):
    """Common path: look at the volume when it is usable, else (and for JSON decisions asked through `stream`: report
    impressions, translation checks, the LLM choosers' prompts) hand over to the text model."""

    sees_volumes = True

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self._volume_use = threading.local()  # per thread: one model serves every user's turn at once
        self._generating = threading.Lock()
        self._prepared: weakref.WeakKeyDictionary[Volume, Any] = weakref.WeakKeyDictionary()  # gone with the volume
        self._preparing = threading.Lock()

    @property
    def last_looked_at_volume(self) -> bool:
        """Whether this thread's last answer came from looking at the volume (not another user's answer)."""
        return getattr(self._volume_use, "looked", False)

    @property
    def last_volume_note(self) -> str | None:
        """Why this thread's last answer did not look at the volume."""
        return getattr(self._volume_use, "note", None)

    def _used_volume(self, looked: bool, note: str | None = None) -> None:
        self._volume_use.looked, self._volume_use.note = looked, note

    def prepare(self, volume: Volume) -> Any:
        """The backend's input from a volume; raises VolumeNotSupported."""
        raise NotImplementedError

    def prepared(self, volume: Volume) -> Any:
        """`prepare(volume)`, kept while the volume lives: a turn's decisions and answer look at the same scan, and
        encoding it can take seconds. Keyed by the volume object itself, so one user's scan never answers for another's."""
        with self._preparing:
            if volume not in self._prepared:
                self._prepared[volume] = self.prepare(volume)
            return self._prepared[volume]

    def answer(self, question: str, prepared: Any, max_new_tokens: int | None) -> Iterator[str]:
        raise NotImplementedError

    def text_model(self) -> ChatModel:
        """The configured text LLM (shared through the registry's cache); never a vision model."""
        from assistant.models.registry import load_chat_model

        name = self.settings.llm if not is_vision_model_name(self.settings.llm) else "qwen2.5-coder-0.5b"
        return load_chat_model(self.settings, name=name)

    def stream(self, messages: Sequence[Message], *, json_schema: dict[str, Any] | None = None,
               max_new_tokens: int | None = None, volume: Volume | None = None) -> Iterator[str]:
        if json_schema is not None:
            self._used_volume(False, "a structured (JSON) decision: answered by the text model")
        elif volume is None:
            self._used_volume(False, "no scan is loaded: answered by the text model")
        else:
            try:
                prepared = self.prepared(volume)
            except VolumeNotSupported as exc:
                self._used_volume(False, f"{exc}: answered by the text model")
                log.info("%s did not look at the volume: %s", self.name, exc)
            else:
                self._used_volume(True)
                yield from self.answer(last_user_question(messages), prepared, max_new_tokens)
                return
        text = self.text_model()
        yield from text.stream(messages, json_schema=json_schema, max_new_tokens=max_new_tokens, volume=volume)
        self.last_usage = text.last_usage

    def _stream_generation(self, generate, tokenizer, started: float, prompt_tokens: int,
                           skip_prompt: bool = False) -> Iterator[str]:
        """`skip_prompt` for models generating from input ids; from embeddings only new tokens arrive."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=True)
        failures: list[BaseException] = []

        def run() -> None:
            try:
                generate(streamer)
            except Exception as exc:  # re-raised in the consumer's thread
                failures.append(exc)
                streamer.end()

        pieces = []
        with self._generating:
            worker = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
            worker.start()
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    yield piece
            worker.join()
        if failures:
            raise ModelError(f"{self.name} failed while generating: {failures[0]}") from failures[0]
        completion = len(tokenizer("".join(pieces)).input_ids)
        self.last_usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, seconds=time.perf_counter() - started)


class ScanChatVLMChatModel(VisionChatModel):
    """The project's VLM; one trained on the tool-calling bank (`acts`) is also its own `decider`: it chooses the
    tool and fills the arguments looking at the scan, in the same model that writes the answer."""

    runtime = "scanchat-vlm"

    def __init__(self, folder: Path, settings: Settings) -> None:
        super().__init__(settings)
        from assistant.vlm.encoder import get_encoder
        from assistant.vlm.model import load_vlm

        self.name = folder.name
        self.vlm = load_vlm(folder, settings.quantization)
        self.encoder = get_encoder(self.vlm.config.encoder)
        self.decider = self if self.vlm.config.acts else None
        self._constraint_data: Any = None

    def prepare(self, volume: Volume) -> torch.Tensor:
        return self.encoder.features(volume)

    def choose_tool(self, request: str, previous: str | None, tools: Sequence[str], volume: Volume | None) -> str:
        from assistant.choosers import NO_TOOL, choice_schema
        from assistant.vlm.acting import choice_prompt

        allowed = [*tools, NO_TOOL]
        return self._decide(choice_prompt(request, previous, tools), choice_schema(allowed), volume, 24)["tool"]

    def fill_arguments(self, request: str, previous: str | None, tool: str, schema: dict[str, Any],
                       volume: Volume | None) -> dict[str, Any]:
        from assistant.vlm.acting import arguments_prompt

        return self._decide(arguments_prompt(request, previous, tool, schema), schema, volume, 160)

    def _decide(self, question: str, schema: dict[str, Any], volume: Volume | None, max_new_tokens: int) -> Any:
        """One JSON decision, looking at the volume when it is usable (as training showed it the scan)."""
        from assistant.models.transformers_backend import enforcer_tokenizer_data, json_constraint

        grid = None
        if volume is not None:
            try:
                grid = self.prepared(volume)
            except VolumeNotSupported as exc:
                log.info("%s decided without the volume: %s", self.name, exc)
        with self._generating:
            if self._constraint_data is None:
                self._constraint_data = enforcer_tokenizer_data(self.vlm.tokenizer)
            started = time.perf_counter()
            reply = self.vlm.generate_json(grid, question, json_constraint(self._constraint_data, schema), max_new_tokens)
        self.last_usage = Usage(completion_tokens=len(self.vlm.tokenizer(reply).input_ids), seconds=time.perf_counter() - started)
        try:
            return json.loads(reply)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{self.name} produced invalid JSON despite the schema: {reply[:200]!r}") from exc

    def answer(self, question: str, prepared: torch.Tensor, max_new_tokens: int | None) -> Iterator[str]:
        started = time.perf_counter()
        tokens = max_new_tokens or min(self.settings.max_new_tokens, 64)
        yield from self._stream_generation(lambda streamer: self.vlm.generate_ids(prepared, question, tokens, streamer),
                                           self.vlm.tokenizer, started, 0)


class M3DChatModel(VisionChatModel):
    """A published M3D-LaMed folder (config.json, tokenizer, safetensors) mapped into `M3DLaMed`."""

    runtime = "m3d"

    def __init__(self, folder: Path, settings: Settings) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from assistant.vlm.m3d import IMAGE_PLACEHOLDER, M3DLaMed, M3DVisionConfig, load_m3d_checkpoint, read_state_dict

        super().__init__(settings)
        if settings.quantization != "none" and not torch.cuda.is_available():
            raise ModelError(f"{settings.quantization} loading needs a CUDA GPU; this machine has none")
        self.name = folder.name
        llm_config = AutoConfig.for_model(**_llm_config_values(folder))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if image_token_id is None or image_token_id == self.tokenizer.unk_token_id:
            raise ModelError(f"the tokenizer in {folder} has no {IMAGE_PLACEHOLDER} token; is this an M3D-LaMed folder?")
        self.model = M3DLaMed(M3DVisionConfig(), AutoModelForCausalLM.from_config(llm_config), image_token_id)
        load_m3d_checkpoint(self.model, read_state_dict(folder))
        self.model.eval()
        if torch.cuda.is_available():
            self.model.to("cuda", dtype=torch.bfloat16)

    def prepare(self, volume: Volume) -> np.ndarray:
        return m3d_input(volume)

    def answer(self, question: str, prepared: np.ndarray, max_new_tokens: int | None) -> Iterator[str]:
        from assistant.vlm.m3d import IMAGE_PLACEHOLDER

        started = time.perf_counter()
        visual = IMAGE_PLACEHOLDER * self.model.mm_projector.config.visual_tokens
        device, dtype = self.model.llm.device, self.model.llm.dtype
        ids = self.tokenizer(visual + question, return_tensors="pt").input_ids.to(device)
        images = torch.from_numpy(prepared)[None].to(device, dtype)
        tokens = max_new_tokens or self.settings.max_new_tokens
        yield from self._stream_generation(lambda streamer: self.model.generate(ids, images, tokens, streamer=streamer),
                                           self.tokenizer, started, int(ids.shape[1]))


def _llm_config_values(folder: Path) -> dict[str, Any]:
    """M3D's config.json names its own model type (lamed_phi3 / lamed_llama); the LLM part is plain Phi-3 or Llama."""
    import json

    path = folder / "config.json"
    if not folder.is_dir():
        raise ModelError(f"the checkpoint folder {folder} does not exist")
    if not path.is_file():
        raise ModelError(f"{folder} has no config.json; it is not an M3D-LaMed checkpoint folder")
    values = json.loads(path.read_text())
    kind = values.get("model_type", "")
    values["model_type"] = "phi3" if "phi" in kind else "llama" if "llama" in kind else kind
    return values


class MultimodalChatModel(VisionChatModel):
    """`AutoModelForImageTextToText` + its processor; the volume goes in as windowed axial slices."""

    runtime = "hf-multimodal"

    def __init__(self, folder: str, settings: Settings, selection: SliceSelection = SliceSelection()) -> None:
        super().__init__(settings)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if settings.quantization != "none" and not torch.cuda.is_available():
            raise ModelError(f"{settings.quantization} loading needs a CUDA GPU; this machine has none")
        self.name, self.selection = Path(folder).name, selection
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if torch.cuda.is_available():
            kwargs = {"device_map": settings.device_map or "auto", "dtype": torch.bfloat16}
            if settings.quantization != "none":
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=settings.quantization == "4bit",
                                                                   load_in_8bit=settings.quantization == "8bit")
        try:
            self.processor = AutoProcessor.from_pretrained(folder)
            self.model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not load {folder!r} as an image-text-to-text model: {exc}") from exc

    def prepare(self, volume: Volume) -> tuple[list[np.ndarray], list[int]]:
        return axial_slices(volume, self.selection)

    def chat_inputs(self, question: str, prepared: tuple[list[np.ndarray], list[int]]) -> dict[str, torch.Tensor]:
        """Processor inputs: one image entry per selected slice, labelled with its index, then the question."""
        from PIL import Image

        content: list[dict[str, Any]] = []
        for image, index in zip(*prepared):
            content += [{"type": "text", "text": f"Axial slice {index}:"}, {"type": "image", "image": Image.fromarray(image)}]
        content.append({"type": "text", "text": question})
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True, return_tensors="pt").to(self.model.device)

    def answer(self, question: str, prepared: tuple[list[np.ndarray], list[int]], max_new_tokens: int | None) -> Iterator[str]:
        started = time.perf_counter()
        inputs = self.chat_inputs(question, prepared)
        tokens = max_new_tokens or self.settings.max_new_tokens

        def generate(streamer) -> None:
            with torch.inference_mode():
                self.model.generate(**inputs, max_new_tokens=tokens, do_sample=False, streamer=streamer)

        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        yield from self._stream_generation(generate, tokenizer, started, int(inputs["input_ids"].shape[1]), skip_prompt=True)


VISION_PREFIXES = ("scanchat-vlm", "m3d:", "hf-multimodal:")


def is_vision_model_name(name: str) -> bool:
    return name.startswith(VISION_PREFIXES)


def load_vision_model(name: str, settings: Settings | None = None) -> VisionChatModel:
    """'scanchat-vlm-0.5b' (or 'scanchat-vlm:<folder>'), 'm3d:<folder>', 'hf-multimodal:<folder>'."""
    settings = settings or get_settings()
    if name.startswith("scanchat-vlm"):
        folder = Path(name.split(":", 1)[1]) if ":" in name else settings.models_dir / name
        return ScanChatVLMChatModel(folder, settings)
    kind, _, location = name.partition(":")
    if not location:
        raise ModelError(f"{name!r} needs a local folder after '{kind}:'")
    if kind == "m3d":
        return M3DChatModel(Path(location), settings)
    if kind == "hf-multimodal":
        return MultimodalChatModel(location, settings)
    raise ModelError(f"unknown vision model {name!r}; use one of {', '.join(VISION_PREFIXES)}")


def load_vision_model_or_text(name: str, settings: Settings | None = None) -> tuple[ChatModel, str | None]:
    """The vision model, or the configured text model with the reason, so a bad VLM never stops the chat."""
    from assistant.models.registry import load_chat_model

    settings = settings or get_settings()
    try:
        return load_vision_model(name, settings), None
    except (ModelError, OSError, ValueError) as exc:
        note = f"vision model {name!r} unavailable ({exc}); answering with the text model {settings.llm!r}"
        log.warning(note)
        return load_chat_model(settings), note
