"""Prompt and report templates, kept as text files and loaded as package data."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_prompt(name: str) -> str:
    """Text of `prompts/<name>` (e.g. ``"tools/describe_scan.md"``), without trailing whitespace."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8").strip()
