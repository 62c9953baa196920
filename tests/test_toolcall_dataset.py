"""The tool-calling training bank: shipped as generated, balanced, and every call valid for its tool's schema."""

from __future__ import annotations

from collections import Counter

import pytest

from assistant.choosers import NO_TOOL, example_bank
from evals.toolcalls.dataset import (
    HELDOUT,
    TRAIN,
    build_training_examples,
    kind_of,
    load_examples,
    normalized_request,
    template_of,
)
from tools import TOOL_CLASSES, tool_class

SCHEMAS = {cls.model_fields["name"].default: cls.model_fields["args_schema"].default
           for cls in map(tool_class, TOOL_CLASSES)}


@pytest.fixture(scope="module")
def bank():
    return list(example_bank())


def test_shipped_bank_is_what_the_generator_writes(bank):
    built = build_training_examples()
    assert bank == load_examples(TRAIN)
    assert [e.model_dump() for e in bank] == [e.model_dump() for e in built]  # regenerated after every edit
    assert build_training_examples() == built  # seeded: the same bank on every run


def test_every_tool_and_no_tool_have_a_fair_share(bank):
    counts = Counter(e.tool for e in bank)
    assert set(counts) == {*SCHEMAS, NO_TOOL}
    assert 700 <= len(bank) <= 1600
    assert min(counts.values()) >= 0.4 * max(counts.values())  # segment (names, points, boxes, follow-ups) spans more sub-cases
    assert len({e.id for e in bank}) == len(bank)
    assert len({(e.text.lower(), e.previous) for e in bank}) == len(bank)


def test_kinds_cover_variants_follow_ups_and_no_tool_subtypes(bank):
    kinds = Counter(kind_of(e) for e in bank)
    for kind in ("plain", "terse", "polite", "purpose", "boundary", "nonnative", "typo", "follow_up"):
        assert kinds[kind] >= 20, kind
    none_kinds = {kind_of(e) for e in bank if e.tool == NO_TOOL}
    assert {"greeting", "thanks", "meta", "knowledge", "decision", "missing_tool", "injection", "empty"} <= none_kinds
    follow_up_tools = {e.tool for e in bank if e.previous}
    assert set(SCHEMAS) <= follow_up_tools
    assert len({template_of(e) for e in bank}) >= 300  # many phrasings, not a few templates filled many times


def test_every_call_is_valid_for_its_tool_schema(bank):
    for example in bank:
        if example.tool == NO_TOOL:
            assert example.arguments == {}, example.id
            continue
        schema = SCHEMAS[example.tool]
        assert set(example.arguments) <= set(schema.model_fields), example.id
        required = [name for name, field in schema.model_fields.items() if field.is_required()]
        if example.arguments or not required:  # empty only where the UI's clicked points fill them
            schema.model_validate(example.arguments)


def test_quoted_texts_are_copied_exactly_into_the_arguments(bank):
    """In this turn, or in the earlier turn a follow-up refers to ("now into Spanish")."""
    for example in (e for e in bank if "text" in e.arguments):
        assert example.arguments["text"] in example.text + (example.previous or ""), example.id


def test_held_out_requests_never_appear_in_the_training_bank(bank):
    """The held-out split measures generalisation only if none of its requests was trained on."""
    trained = {normalized_request(e.text) for e in bank}
    held_out = load_examples(HELDOUT)
    assert len(held_out) >= 80
    assert [e.text for e in held_out if normalized_request(e.text) in trained] == []
