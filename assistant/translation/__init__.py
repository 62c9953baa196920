"""Terminology-aware translation: engines, required-term enforcement and checks."""

from assistant.translation.engines import EngineError, TranslationError, pick_engine
from assistant.translation.pipeline import RequiredTerm, SentenceTranslation, TranslationResult, translate_text

__all__ = ["EngineError", "RequiredTerm", "SentenceTranslation", "TranslationError", "TranslationResult", "pick_engine",
           "translate_text"]
