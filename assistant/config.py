"""The one place where ScanChat is configured.

Every path and model can be overridden with an environment variable (prefix ``SCANCHAT_``,
for example ``SCANCHAT_CACHE_DIR`` or ``SCANCHAT_LLM=smollm2-135m``) or a CLI flag that
writes into the same object. Defaults work offline on a 2-core CPU machine.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Runtime = Literal["auto", "transformers", "llamacpp", "openai"]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "scanchat"


class Settings(BaseSettings):
    # No `.env` from the working folder: a file there could redirect prompts to another endpoint.
    # `get_settings` reads one only from the path in SCANCHAT_ENV_FILE.
    model_config = SettingsConfigDict(env_prefix="SCANCHAT_", env_file=None, extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Assembled models, samples, indexes.")

    # --- agent model -------------------------------------------------------------------
    llm: str = Field("qwen2.5-coder-0.5b", description="Registry name, a local GGUF/HF folder, or a hub id.")
    runtime: Runtime = Field("auto", description="auto picks llama.cpp when installed, else transformers.")
    llm_threads: int = Field(2, ge=1)
    llm_context: int = Field(4096, ge=512)
    max_new_tokens: int = Field(384, ge=16)
    openai_base_url: str | None = Field(None, description="OpenAI-compatible server (vLLM, llama.cpp, Ollama); "
                                        "plain http only on this machine (loopback).")
    openai_api_key: str | None = Field(None, description="Read from the environment only; never stored; sent only "
                                       "to the host of openai_base_url.")
    openai_allow_remote: bool = Field(False, description="Opt-in for an openai_base_url on another machine (https "
                                      "only): de-identified prompts then leave this machine.")
    openai_model: str | None = None
    quantization: Literal["none", "4bit", "8bit"] = Field("none", description="bitsandbytes loading on a GPU.")
    device_map: str | None = Field(None, description="accelerate device map, e.g. 'auto' on a GPU machine.")
    max_agent_steps: int = Field(4, ge=1, le=16, description="Tool calls per user turn before the agent must answer.")
    tool_chooser: Literal["llm-zero-shot", "llm-fixed", "llm-dynamic", "router", "hybrid", "vlm"] = Field(
        "router",
        description="Who picks the tool; chosen by evals/bench_tool_choice.py (held-out: router 94.4% in 0.05 s, "
        "hybrid 93.3% with the 0.5B LLM deciding the unsure cases, p95 70 s under load); 'vlm': the ScanChat VLM "
        "itself, looking at the scan (a VLM trained with --tool-bank only).",
    )

    # --- segmentation --------------------------------------------------------------------
    seg_checkpoint: Path | None = Field(None, description="A bigger local LiteMedSAM, SAM or MedSAM ViT-B .pth file.")
    seg_checkpoint_kind: Literal["litemedsam", "sam", "medsam"] = Field("medsam", description="Architecture of seg_checkpoint.")

    scan_cache_bytes: int = Field(
        1024**3, ge=0, description="Memory for per-scan intermediate results (registration transforms, atlas warps, "
                                   "warped scans) shared by tools and turns (assistant/imaging/scan_cache.py); least "
                                   "recently used go first, and a session's scan leaves it when the session closes.")

    # --- input limits (checked before allocating) ----------------------------------------
    max_voxels: int = Field(512 * 512 * 1024, description="Largest volume accepted, in voxels.")
    max_upload_bytes: int = Field(2 * 1024**3, description="Largest upload or unpacked archive, in bytes.")
    max_archive_members: int = Field(20_000)
    max_message_chars: int = Field(4000, description="Longer chat messages are refused with a message.")

    reports_db: Path | None = Field(None, description="SQLite file of report versions and saved conversations; default cache_dir/reports.sqlite3.")
    term_embedder: Literal["minilm-onnx", "minilm", "e5-small", "minilm-synonyms"] = Field(
        "minilm-synonyms", description="Embedding model of the term index, chosen by evals/terms (see its README): "
                                       "the MiniLM fine-tuned on the terminologies' own synonyms (scripts/setup trains "
                                       "it), int8 ONNX without torch, finds held-out synonyms better than the packaged "
                                       "models (fused recall@10 0.909 vs 0.852 for minilm-onnx) and embeds a query "
                                       "faster; e5-small wins only cross-lingual look-ups of labels the index does not "
                                       "hold.")
    term_synonym_model: Path | None = Field(
        None, description="The MiniLM fine-tuned on terminology synonyms (embedder 'minilm-synonyms', made by "
                          "`python -m assistant.terminology.finetune`); default cache_dir/models/minilm-synonyms.")
    term_glossary: Path | None = Field(
        None, description="A CSV or TBX glossary merged into the term index (source 'glossary'); "
                          "the index is rebuilt when the file changes.")

    glossary_dir: Path | None = Field(
        None, description="Folder of CSV/TBX glossaries that a chat message (or the model) may name; default "
                          "cache_dir/glossaries. A glossary path outside it and outside uploaded glossaries is refused.")

    # --- `scanchat serve-model` ------------------------------------------------------------

    # --- privacy ------------------------------------------------------------------------
    share_identifiers: bool = Field(
        False, description="Allow DICOM patient identifiers into prompts and remote endpoints."
    )

    # --- deployment: database, identity, lifecycle (assistant/db, assistant/auth.py, assistant/audit.py) ----------
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the database, e.g. postgresql+psycopg://scanchat@db/scanchat; "
                          "default: the SQLite file reports_db.")
    trusted_user_header: str | None = Field(
        None, description="HTTP header carrying the user name set by an authenticating reverse proxy (e.g. "
                          "X-Forwarded-User); off by default. Only for apps reachable through that proxy alone.")
    conversation_retention_days: int | None = Field(
        None, ge=1, description="Saved conversations not updated for this many days are deleted; None keeps them.")
    session_ttl_s: int = Field(4 * 3600, ge=60, description="An idle browser session expires (its uploads and exports deleted) after this.")
    max_sessions_per_user: int = Field(4, ge=1, description="Concurrent browser sessions one user may hold.")
    tool_workers: int = Field(2, ge=0, description="Worker processes running heavy tools (segmentation, registration, "
                              "anomaly detection) outside the web process; 0 runs them in it (the CLI always does).")
    max_session_bytes: int = Field(2 * 1024**3, ge=1, description="Memory one user's sessions may hold in loaded volumes.")

    # --- PACS (DICOMweb) ----------------------------------------------------------------
    dicomweb_url: str | None = Field(None, description="DICOMweb root of the PACS, e.g. http://pacs:8042/dicom-web.")
    dicomweb_username: str | None = Field(None, description="HTTP basic auth user for the PACS.")
    dicomweb_password: SecretStr | None = Field(None, description="Read from the environment only; never stored.")
    dicomweb_token: SecretStr | None = Field(None, description="Bearer token for the PACS (instead of user/password).")
    dicomweb_timeout_s: float = Field(30.0, gt=0, description="Seconds one PACS request may stay silent.")
    dicomweb_retrieve_timeout_s: float = Field(600.0, gt=0, description="Seconds a whole series retrieval may take.")
    dicomweb_push_attempts: int = Field(3, ge=1, le=10, description="Tries per object sent to the PACS (STOW-RS).")
    pacs_cache: Path | None = Field(None, description="Retrieved series and results kept until pushed; "
                                                      "default cache_dir/pacs.")

    # --- UI -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 7860
    ui_exports_dir: Path | None = Field(None, description="Where the UI writes downloads; default cache_dir/exports.")
    chat_concurrency: int = Field(
        4, ge=1, description="Chat replies of different sessions run at once, up to this many; viewer events never "
                             "wait behind them.")

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def synonym_model_dir(self) -> Path:
        return self.term_synonym_model or self.models_dir / "minilm-synonyms"

    @property
    def samples_dir(self) -> Path:
        return self.cache_dir / "samples"

    @property
    def uploads_dir(self) -> Path:
        return self.cache_dir / "uploads"

    @property
    def exports_dir(self) -> Path:
        """Files the UI offers for download, one private folder per browser session (the UI serves only these)."""
        return self.ui_exports_dir or self.cache_dir / "exports"

    @property
    def glossary_folder(self) -> Path:
        return self.glossary_dir or self.cache_dir / "glossaries"

    @property
    def glossary_roots(self) -> list[Path]:
        """Where a glossary named in a chat message may come from: the glossary folder, uploaded glossaries."""
        return [self.glossary_folder, self.uploads_dir / "glossaries"]

    @property
    def pacs_dir(self) -> Path:
        """Series retrieved from the PACS (keyed by a hash of their UIDs) and results kept until pushed."""
        return self.pacs_cache or self.cache_dir / "pacs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment (and the file SCANCHAT_ENV_FILE names)."""
    env_file = os.environ.get("SCANCHAT_ENV_FILE")
    if env_file and not Path(env_file).is_file():
        raise ValueError(f"SCANCHAT_ENV_FILE names {env_file}, which is not a file.")
    return Settings(_env_file=env_file or None)
