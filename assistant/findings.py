"""Typed findings: what a report is assembled from (never from chat text).

Every tool result that belongs in a report turns itself into findings (`ToolResult.findings()`):
what was found or measured, where, its value with a unit, and which tool with which parameters
produced it, so that every number in a report can be traced back.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

FindingKind = Literal["technique", "measurement", "structure", "anomaly", "term", "observation"]


class Quantity(BaseModel):
    value: float
    unit: str  # UCUM-style where possible: "mm", "mL", "[hnsf'U]" is written "HU" for readability

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}"


class Finding(BaseModel):
    kind: FindingKind
    what: str = Field(description="the finding or measured thing, e.g. 'brain volume', 'slice thickness'")
    where: str | None = Field(None, description="anatomical location or coordinates, when known")
    quantities: list[Quantity] = []
    concept_id: str | None = Field(None, description="term-index concept, once normalised")
    codes: dict[str, str] = {}
    source_tool: str
    parameters: dict[str, Any] = {}
    model_observation: bool = Field(False, description="stated by a model looking at the image, not measured")
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
