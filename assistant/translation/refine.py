"""LLM repair of a draft that misses required terms (the WMT 2023 translate-then-refine step).

Any `ChatModel` works: the agent's own backend or an OpenAI-compatible endpoint. The reply is
constrained to a JSON object with one string, so no free-text parsing is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

from assistant.models.base import ChatModel, Message
from assistant.translation.terms import TermConstraint
from prompts import load_prompt

LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "pt": "Portuguese", "de": "German", "fr": "French"}
_REPLY_SCHEMA = {
    "type": "object",
    "properties": {"translation": {"type": "string"}},
    "required": ["translation"],
}


def refine_translation(model: ChatModel, source: str, draft: str, terms: Sequence[TermConstraint],
                       source_lang: str, target_lang: str) -> str:
    """The model's repaired translation of `source` (raises ModelError if the model fails)."""
    prompt = load_prompt("translation/refine.md").format(
        source_language=LANGUAGE_NAMES.get(source_lang, source_lang),
        target_language=LANGUAGE_NAMES.get(target_lang, target_lang),
        source=source,
        draft=draft,
        terms="\n".join(f"- {term.source} → {term.target}" for term in terms),
    )
    reply = model.complete_json([Message(role="user", content=prompt)], _REPLY_SCHEMA,
                                max_new_tokens=max(64, 3 * len(source.split()) + 32))
    return " ".join(str(reply.get("translation", "")).split())
