"""Typed results of anomaly detection: what the tool, the CLI, the report writer and the UI read."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from assistant.findings import Finding, Quantity
from tools.base import ToolResult


class AnomalyRegion(BaseModel):
    """One connected area whose deviation from normal exceeds the calibrated voxel threshold."""

    rank: int
    centroid_mm: tuple[float, float, float] = Field(description="World position (RAS+, mm).")
    centroid_voxel: tuple[int, int, int] = Field(description="Voxel index in the scan; usable as a segmentation point prompt.")
    size_ml: float
    peak_score: float
    mean_score: float
    label: str | None = Field(None, description="Atlas region (AAL) at the centroid, when an atlas applies.")


class AnomalyResult(ToolResult):
    """Image-level deviation score against a calibrated threshold, plus a voxel map and its top regions.

    Image scores are in standard deviations of held-out normal scans (on a log scale), voxel scores in multiples of
    the voxel threshold; they measure how unusual the scan is compared with normal scans, not how likely a disease is.
    """

    method: str
    body_model: str = Field(description="Normal model used, e.g. 'brain MR (T1)'.")
    image_score: float = Field(description="The largest of score_parts.")
    score_parts: dict[str, float] = Field({}, description="Each image-score component ('<method>: <component>'), in standard "
                                                          "deviations of held-out normal scans above their mean (log scale).")
    threshold: float = Field(description="Image-level threshold: the highest image score among held-out normal scans.")
    exceeds_threshold: bool
    voxel_threshold: float = Field(description="Voxel scores above this (1: the 99.5th percentile of held-out normal scans) form regions.")
    regions: list[AnomalyRegion] = []
    cannot_detect: list[str] = []
    notes: list[str] = []
    anomaly_map: np.ndarray | None = Field(None, exclude=True, repr=False, description="Voxel scores on the scan's grid.")

    def summary(self) -> str:
        verdict = "ABOVE" if self.exceeds_threshold else "below"
        lines = [
            f"Anomaly screening ({self.method}, normal model: {self.body_model}): image score {self.image_score:.2f}, "
            f"{verdict} the calibrated threshold {self.threshold:.2f}"
            + (f" ({', '.join(f'{name} {value:.2f}' for name, value in self.score_parts.items())})." if self.score_parts else "."),
        ]
        if self.regions:
            lines.append("Areas deviating most from the normal model:")
            for region in self.regions:
                where = f" in/near {region.label}" if region.label else ""
                x, y, z = region.centroid_mm
                lines.append(
                    f"  {region.rank}. {region.size_ml:.2f} mL{where}, centre ({x:.0f}, {y:.0f}, {z:.0f}) mm RAS, "
                    f"voxel {list(region.centroid_voxel)}, peak score {region.peak_score:.1f}, mean {region.mean_score:.1f}"
                )
        else:
            lines.append("No area exceeds the voxel threshold.")
        lines.append(
            "These are statistical deviations from normal scans, not a diagnosis; a clinician must review them."
        )
        if self.cannot_detect:
            lines.append("Cannot detect: " + "; ".join(self.cannot_detect) + ".")
        lines.extend(self.notes)
        return "\n".join(lines)

    def key_facts(self) -> dict[str, str]:
        """The score and the threshold it is compared with: a screening answer without both says nothing checkable."""
        verdict = "above" if self.exceeds_threshold else "below"
        sentence = (f"Anomaly screening score {self.image_score:.2f}, {verdict} the calibrated threshold {self.threshold:.2f} "
                    "(a deviation from normal scans, not a diagnosis).")
        return {f"{self.image_score:.2f}": sentence, f"{self.threshold:.2f}": sentence}

    def findings(self, arguments: dict) -> list[Finding]:
        """The screening score and each deviating area; statistical deviations, not diagnoses."""
        parameters = {**arguments, "method": self.method, "normal_model": self.body_model}
        verdict = "above" if self.exceeds_threshold else "below"
        score = Finding(kind="measurement", what=f"anomaly screening score ({verdict} threshold {self.threshold:g})",
                        quantities=[Quantity(value=self.image_score, unit="score")], source_tool="detect_anomalies",
                        parameters=parameters)
        areas = [
            Finding(kind="anomaly", what="area deviating from normal",
                    where=f"{region.label or 'unlabelled'}, voxel {list(region.centroid_voxel)}",
                    quantities=[Quantity(value=region.size_ml, unit="mL"), Quantity(value=region.peak_score, unit="score")],
                    source_tool="detect_anomalies", parameters={**parameters, "rank": region.rank})
            for region in self.regions
        ]
        return [score, *areas]
