"""Typed results of anomaly detection: what the tool, the CLI, the report writer and the UI read."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from assistant.findings import Claim, Finding, Quantity, meaning, not_an_answer
from tools.base import MAX_LISTED, ToolResult


class AnomalyRegion(BaseModel):
    """One connected area whose deviation from normal exceeds the calibrated voxel threshold."""

    rank: int = not_an_answer(description="1 = the most deviating area")
    centroid_mm: tuple[float, float, float] = meaning(description="centre (world position, RAS+)", unit="mm", fmt=".0f",
                                                      asked_as=["where", "coordinates of the area", "location"])
    centroid_voxel: tuple[int, int, int] = meaning(description="centre voxel (x, y, z indices; usable as a segmentation point prompt)",
                                                   kind="count", asked_as=["which voxel"])
    size_ml: float = meaning(description="size", unit="mL", fmt=".2f", asked_as=["how big is the area", "size of the lesion"])
    peak_score: float = meaning(description="peak voxel score (multiples of the voxel threshold)", fmt=".1f")
    mean_score: float = meaning(description="mean voxel score (multiples of the voxel threshold)", fmt=".1f")
    label: str | None = meaning(None, description="atlas region (AAL) at the centre", kind="label",
                                asked_as=["which region", "where in the brain", "anatomical location"])


class AnomalyResult(ToolResult):
    """Image-level deviation score against a calibrated threshold, plus a voxel map and its top regions.

    Image scores are in standard deviations of held-out normal scans (on a log scale), voxel scores in multiples of
    the voxel threshold; they measure how unusual the scan is compared with normal scans, not how likely a disease is.
    """

    method: str = meaning(description="screening method", kind="label", asked_as=["which method"])
    body_model: str = meaning(description="normal model compared against (scan type and the normal subjects)", kind="label")
    image_score: float = meaning(description="anomaly screening score (standard deviations of held-out normal scans, log scale)",
                                 fmt=".2f", headline=True, asked_as=["score", "anomaly score", "how abnormal"])
    score_parts: dict[str, float] = not_an_answer({}, description="Each image-score component ('<method>: <component>'), in standard "
                                                          "deviations of held-out normal scans above their mean (log scale).")
    threshold: float = meaning(description="calibrated threshold (the highest score among held-out normal scans)", fmt=".2f",
                               headline=True, asked_as=["threshold", "cut-off"])
    exceeds_threshold: bool = meaning(
        description="screening verdict", kind="verdict", headline=True,
        says=["below the calibrated threshold: no deviation from normal scans detected (a screening result, not a diagnosis)",
              "ABOVE the calibrated threshold: the scan deviates from normal scans (a screening result, not a diagnosis)"],
        asked_as=["is anything abnormal", "is it normal", "any abnormality", "is something wrong", "verdict", "above threshold"])
    voxel_threshold: float = meaning(description="voxel threshold (voxel scores above it form areas)", fmt=".2f")
    regions: list[AnomalyRegion] = Field([], description="deviating area")
    cannot_detect: list[str] = not_an_answer([], description="what the method cannot detect (said in the summary)")
    notes: list[str] = not_an_answer([], description="method notes")
    anomaly_map: np.ndarray | None = Field(None, exclude=True, repr=False, description="Voxel scores on the scan's grid.")

    def claims(self, tool: str) -> list[Claim]:
        """The fields' claims, each area's side read from its atlas label (AAL ends in _L / _R), and the area count."""
        claims = super().claims(tool)
        claims.append(Claim(tool=tool, path="regions", meaning="number of deviating areas", kind="count",
                            value=len(self.regions), text=str(len(self.regions)), asked_as=["how many areas", "how many lesions"]))
        for index, region in enumerate(self.regions[:MAX_LISTED]):
            base, _, suffix = (region.label or "").rpartition("_")
            side = {"L": "left", "R": "right"}.get(suffix)
            if side:
                claims.append(Claim(tool=tool, path=f"regions.{index}.side", meaning=f"side, deviating area #{index + 1}",
                                    kind="side", value=f"{side} {base.replace('_', ' ').lower()}",
                                    text=f"{side} (atlas label {region.label})", asked_as=["which side", "left or right"]))
        return claims

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
