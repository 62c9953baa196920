"""Builds the tool-calling training split from clinician phrasings, and loads either split.

`python -m evals.toolcalls.dataset` writes the training split to `prompts/agent/tool_examples.jsonl`: for every tool, realistic requests
(paraphrases, abbreviations, typos, follow-ups referring to an earlier turn, chit-chat and
out-of-scope questions needing no tool) with the expected tool and arguments. The held-out
split, `heldout.jsonl`, is written by hand with other phrasings and other scans, and is never
used for prompts, retrieval examples or training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from assistant.choosers import ToolCallExample, parse_examples

HERE = Path(__file__).parent
TRAIN = Path(__file__).parents[2] / "prompts" / "agent" / "tool_examples.jsonl"  # retrieval bank at run time
HELDOUT = HERE / "heldout.jsonl"


def load_examples(path: Path) -> list[ToolCallExample]:
    return parse_examples(path.read_text())


# --- templates: (text, tool, arguments); {slots} are filled from the lists below ----------

STRUCTURES_MR = ["brain", "left hippocampus", "right hippocampus", "thalamus", "left caudate", "cerebellum",
                 "right putamen", "frontal lobe", "left amygdala", "insula"]
STRUCTURES_CT = ["skull", "bone", "brain", "soft tissue", "air"]
TERMS = ["heart attack", "myocardial infarction", "pulmonary embolism", "kidney stone", "renal calculus",
         "stroke", "pleural effusion", "pneumonia", "COPD", "hydrocephalus", "subdural hematoma", "seizure",
         "atrial fibrillation", "DVT", "glioblastoma"]
LANGS = {"Spanish": "es", "Portuguese": "pt", "German": "de", "French": "fr"}
SENTENCES = ["No acute intracranial haemorrhage.", "The patient has a pulmonary embolism.",
             "Small pleural effusion on the left.", "Findings are consistent with an old infarct.",
             "The ventricles are normal in size."]
POINTS = [[64, 64, 30], [120, 130, 50], [40, 100, 60], [10, 20, 5], [200, 150, 80]]

TEMPLATES: list[tuple[str, str, dict[str, Any]]] = [
    # describe_scan
    ("what kind of scan is this?", "describe_scan", {}),
    ("Is this a CT or an MRI?", "describe_scan", {}),
    ("how many slices are there", "describe_scan", {}),
    ("What's the slice thickness?", "describe_scan", {}),
    ("slice thicknes?", "describe_scan", {}),
    ("What is the voxel size / resolution of this study?", "describe_scan", {}),
    ("How big is the field of view?", "describe_scan", {}),
    ("FOV?", "describe_scan", {}),
    ("what are the dimensions of the volume", "describe_scan", {}),
    ("give me an overview of the scan", "describe_scan", {}),
    ("which modality was used", "describe_scan", {}),
    ("what's the range of HU values in the whole scan", "describe_scan", {}),
    ("Tell me about this series", "describe_scan", {}),
    ("how many images does the stack have?", "describe_scan", {}),
    ("is it axial? what orientation is the volume in", "describe_scan", {}),
    ("what body part was scanned", "describe_scan", {}),
    # probe_intensity
    ("What is the intensity at the centre of the volume?", "probe_intensity", {}),
    ("HU at the center?", "probe_intensity", {}),
    ("What's the density in the middle of the scan", "probe_intensity", {}),
    ("what is the value at voxel {p0}, {p1}, {p2}", "probe_intensity", {"point": "{point}"}),
    ("intensity at {p0},{p1},{p2}?", "probe_intensity", {"point": "{point}"}),
    ("read the HU at point ({p0}, {p1}, {p2})", "probe_intensity", {"point": "{point}"}),
    ("mean HU in a 5 mm sphere around {p0} {p1} {p2}", "probe_intensity", {"point": "{point}", "radius_mm": 5}),
    ("average intensity within 10 mm of voxel {p0}, {p1}, {p2}", "probe_intensity", {"point": "{point}", "radius_mm": 10}),
    ("Is the tissue at {p0}, {p1}, {p2} fat or fluid? what's the HU there", "probe_intensity", {"point": "{point}"}),
    ("what's the signal at x={p0} y={p1} z={p2}", "probe_intensity", {"point": "{point}"}),
    # measure_distance
    ("distance between {p0},{p1},{p2} and {q0},{q1},{q2}?", "measure_distance", {"point_a": "{point}", "point_b": "{point2}"}),
    ("How far apart are voxel {p0} {p1} {p2} and voxel {q0} {q1} {q2}", "measure_distance", {"point_a": "{point}", "point_b": "{point2}"}),
    ("measure from ({p0}, {p1}, {p2}) to ({q0}, {q1}, {q2})", "measure_distance", {"point_a": "{point}", "point_b": "{point2}"}),
    ("what's the mm distance {p0},{p1},{p2} -> {q0},{q1},{q2}", "measure_distance", {"point_a": "{point}", "point_b": "{point2}"}),
    ("calc the length of the line from {p0} {p1} {p2} to {q0} {q1} {q2}", "measure_distance", {"point_a": "{point}", "point_b": "{point2}"}),
    # segment
    ("segment the {structure}", "segment", {"structure": "{structure}"}),
    ("how big is the {structure}?", "segment", {"structure": "{structure}"}),
    ("what's the volume of the {structure}", "segment", {"structure": "{structure}"}),
    ("outline the {structure} please", "segment", {"structure": "{structure}"}),
    ("can you delineate the {structure} and give me its volume in mL", "segment", {"structure": "{structure}"}),
    ("mask the {structure}", "segment", {"structure": "{structure}"}),
    ("{structure} volume?", "segment", {"structure": "{structure}"}),
    ("segmnet {structure}", "segment", {"structure": "{structure}"}),
    ("segment the lesion at {p0}, {p1}, {p2}", "segment", {"points": "{points}"}),
    ("grow a region from voxel {p0} {p1} {p2}", "segment", {"points": "{points}"}),
    ("segment what I clicked: voxel {p0}, {p1}, {p2}", "segment", {"points": "{points}"}),
    ("make the mask 2 mm bigger", "segment", {"refine": "grow"}),
    ("shrink the segmentation a bit", "segment", {"refine": "shrink"}),
    ("keep only the largest component", "segment", {"refine": "keep_largest"}),
    # detect_anomalies
    ("is anything abnormal in this scan?", "detect_anomalies", {}),
    ("Does anything look unusual?", "detect_anomalies", {}),
    ("screen this brain for abnormalities", "detect_anomalies", {}),
    ("any lesions?", "detect_anomalies", {}),
    ("where is the abnormality", "detect_anomalies", {}),
    ("run anomaly detection", "detect_anomalies", {}),
    ("is this scan normal", "detect_anomalies", {}),
    ("check for anything suspicious pls", "detect_anomalies", {}),
    ("are there any focal hyperintensities?", "detect_anomalies", {}),
    # lookup_term
    ("what is the ICD-10 code for {term}?", "lookup_term", {"query": "{term}"}),
    ("ICD code {term}", "lookup_term", {"query": "{term}"}),
    ("is '{term}' a proper medical term? give me the code", "lookup_term", {"query": "{term}"}),
    ("what is {term} in {lang}?", "lookup_term", {"query": "{term}", "language": "{lang_code}"}),
    ("HPO term for {term}", "lookup_term", {"query": "{term}"}),
    ("SNOMED code of {term}?", "lookup_term", {"query": "{term}"}),
    ("look up {term}", "lookup_term", {"query": "{term}"}),
    ("what does {term} mean, and what's its code", "lookup_term", {"query": "{term}"}),
    # normalize_terms
    ("code this finding: {sentence}", "normalize_terms", {"text": "{sentence}"}),
    ("which medical concepts are mentioned in: {sentence}", "normalize_terms", {"text": "{sentence}"}),
    ("extract the terms and their codes from this report: {sentence}", "normalize_terms", {"text": "{sentence}"}),
    ("map the findings in '{sentence}' to ICD-10", "normalize_terms", {"text": "{sentence}"}),
    # translate_text
    ("translate into {lang}: {sentence}", "translate_text", {"target_language": "{lang_code}", "text": "{sentence}"}),
    ("Please translate '{sentence}' to {lang}", "translate_text", {"target_language": "{lang_code}", "text": "{sentence}"}),
    ("how would I say '{sentence}' in {lang} for the patient", "translate_text", {"target_language": "{lang_code}", "text": "{sentence}"}),
    ("{lang} version of: {sentence}", "translate_text", {"target_language": "{lang_code}", "text": "{sentence}"}),
    # no tool
    ("hello", "none", {}),
    ("hi there!", "none", {}),
    ("thanks, that's helpful", "none", {}),
    ("thank you", "none", {}),
    ("good morning", "none", {}),
    ("who are you?", "none", {}),
    ("what can you do?", "none", {}),
    ("ok", "none", {}),
    ("bye", "none", {}),
    ("what's the weather like today?", "none", {}),
    ("write me a poem", "none", {}),
    ("what tools do you have", "none", {}),
    ("should I start this patient on anticoagulation?", "none", {}),
    ("what's the capital of France", "none", {}),
    ("explain what a CT scan is in general", "none", {}),
]

FOLLOW_UPS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("segment the brain", "and how big is the left hippocampus?", "segment", {"structure": "left hippocampus"}),
    ("segment the left hippocampus", "and the right one?", "segment", {"structure": "right hippocampus"}),
    ("what is the HU at the centre?", "and at voxel 10, 20, 5?", "probe_intensity", {"point": [10, 20, 5]}),
    ("what's the ICD-10 code for stroke?", "and for heart attack?", "lookup_term", {"query": "heart attack"}),
    ("segment the skull", "now make it 1 mm larger", "segment", {"refine": "grow"}),
    ("is anything abnormal?", "thanks", "none", {}),
    ("what kind of scan is this?", "and the slice thickness?", "describe_scan", {}),
    ("translate 'no acute findings' into Spanish", "now into Portuguese", "translate_text", {"target_language": "pt"}),
]

TYPO_SWAPS = {"segment": "segemnt", "thickness": "thicknes", "intensity": "intesity", "abnormal": "abnormla",
              "translate": "tranlsate", "distance": "distnace"}


def _fill(value: Any, slots: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in slots:
        return slots[value[1:-1]]
    if isinstance(value, str):
        return value.format(**slots)
    return value


def build_training_examples(seed: int = 7, per_template: int = 4) -> list[ToolCallExample]:
    rng = random.Random(seed)
    examples: list[ToolCallExample] = []
    for t_index, (template, tool, arguments) in enumerate(TEMPLATES):
        needs_slots = "{" in template
        for n in range(per_template if needs_slots else 2):
            point, point2 = rng.sample(POINTS, 2)
            lang = rng.choice(list(LANGS))
            scan = "mr-t1-colin27" if tool in ("detect_anomalies",) else rng.choice(["ct-head", "mr-t1-colin27"])
            structure = rng.choice(STRUCTURES_MR if scan.startswith("mr") else STRUCTURES_CT)
            slots = {
                "p0": point[0], "p1": point[1], "p2": point[2], "q0": point2[0], "q1": point2[1], "q2": point2[2],
                "point": point, "point2": point2, "points": [point], "structure": structure,
                "term": rng.choice(TERMS), "lang": lang, "lang_code": LANGS[lang], "sentence": rng.choice(SENTENCES),
            }
            text = template.format(**slots)
            if n == 1 and rng.random() < 0.5:  # a typo variant
                for right, wrong in TYPO_SWAPS.items():
                    text = text.replace(right, wrong)
            filled = {k: _fill(v, slots) for k, v in arguments.items()}
            examples.append(ToolCallExample(id=f"t{t_index}-{n}", text=text, tool=tool, arguments=filled, scan=scan))
    for f_index, (previous, text, tool, arguments) in enumerate(FOLLOW_UPS):
        examples.append(ToolCallExample(id=f"f{f_index}", text=text, previous=previous, tool=tool,
                                        arguments=arguments, scan="mr-t1-colin27"))
    unique = {(e.text.lower(), e.previous): e for e in examples}
    return list(unique.values())


def main() -> None:
    examples = build_training_examples()
    TRAIN.write_text("".join(e.model_dump_json(exclude_none=True) + "\n" for e in examples))
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.tool] = counts.get(e.tool, 0) + 1
    print(f"wrote {len(examples)} examples to {TRAIN}: {json.dumps(counts)}")


if __name__ == "__main__":
    main()
