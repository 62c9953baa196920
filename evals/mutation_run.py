"""A small mutation run over the modules behind the answers: do the tests fail when that code is wrong?

Each mutant is one plausible bug written by hand (a dropped rounding, a swapped comparison, a wrong unit, an
off-by-one), applied alone to a fresh copy of the tracked tree; the fast tests covering its module then run on
that copy. A mutant is *killed* when they fail (or hang past the time limit), *survived* when they pass. The
unmutated copy must pass the same tests first, or the run stops. Prints a Markdown table per module and writes
evals/results/mutation_run.json.

    OMP_NUM_THREADS=1 python evals/mutation_run.py                 # every module
    OMP_NUM_THREADS=1 python evals/mutation_run.py --module grounding --list
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "evals" / "results" / "mutation_run.json"


@dataclass(frozen=True)
class Module:
    """Files under test and the fast tests that cover them (pytest arguments)."""

    name: str
    tests: tuple[str, ...]


MODULES = {
    # without the test that reads arguments through the full term index (built by scripts/setup; minutes to load)
    "grounding": Module("assistant/grounding.py", ("tests/test_grounding.py", "-k", "not tools_read_their_arguments")),
    "tool results": Module("tools/{describe_scan,measure_distance,probe_intensity}.py", (
        "tests/test_scan_facts.py",)),
    "term lookup": Module("tools/lookup_term.py, tools/normalize_terms.py, index.py's argument checks", (
        "tests/test_terminology.py", "-k", "at_their_limits or lookup_result or normalized_terms_list or refuse_bad_input")),
    # needs the term embedder fine-tuned by scripts/setup, and builds a small index on every run (1-2 min)
    "term index search": Module("assistant/terminology/index.py (search, normalise)", (
        "tests/test_terminology.py", "-k", "lay_term or code_query or label_in_another or misspelt or source_filter or "
        "bad_search or normalize_finds or lower_case or lookup_summary or empty_source or no_mentions")),
    "segmentation result": Module("assistant/segmentation/result.py, tools/segment.py (result)", (
        "tests/test_segmentation.py", "-k", "hand_built")),
    "anomaly result": Module("assistant/anomaly/result.py, regions.py, tools/detect_anomalies.py", (
        "tests/test_anomaly.py", "-k", "summary or claims or regions_rank or arguments")),
}


@dataclass(frozen=True)
class Mutant:
    module: str
    path: str
    old: str
    new: str
    what: str


M = Mutant
MUTANTS = [
    # --- grounding -------------------------------------------------------------------------------------
    M("grounding", "assistant/grounding.py", '_TRIVIAL = {"0", "1", "2", "3"}', '_TRIVIAL = {"0", "1", "2", "3", "4", "5"}',
      "bare 4 and 5 count as counts"),
    M("grounding", "assistant/grounding.py", "return round(abs(source), _decimals(token)) == abs(value)",
      "return round(abs(source)) == abs(value)", "precision of the written number ignored"),
    M("grounding", "assistant/grounding.py", "return round(abs(source), _decimals(token)) == abs(value)",
      "return abs(round(abs(source), _decimals(token)) - abs(value)) <= 1", "off-by-one tolerance"),
    M("grounding", "assistant/grounding.py", 'len(mantissa.split(".")[1]) if "." in mantissa else 0',
      '1 if "." in mantissa else 0', "decimals counted as one"),
    M("grounding", "assistant/grounding.py", r'_NUMBER = re.compile(r"(?<![\w.])', r'_NUMBER = re.compile(r"(?<![\w])',
      "digits after a dot inside codes count as numbers"),
    M("grounding", "assistant/grounding.py", r'(?:\d{1,3}(?:,\d{3})+|\d+)', r'(?:\d+)', "thousands separators split numbers"),
    M("grounding", "assistant/grounding.py", "return match.group(0) in _TRIVIAL and not _UNIT_AFTER.match(text, match.end())",
      "return match.group(0) in _TRIVIAL", "a small number with a unit counts as a count"),
    M("grounding", "assistant/grounding.py", r'(?:mm|cm|m|ml|', r'(?:cm|m|ml|', "mm not recognised as a unit"),
    M("grounding", "assistant/grounding.py", "    if isinstance(value, bool):\n        return []\n", "",
      "booleans read as numbers 0/1"),
    M("grounding", "assistant/grounding.py", "if any(n not in known for n in _numbers_of(value))",
      "if all(n not in known for n in _numbers_of(value)) and _numbers_of(value)", "invented only when every number is"),
    M("grounding", "assistant/grounding.py", "if any(w[:4] not in stems for w in words)",
      "if any(w not in {s for text in sources for s in _words(text)} for w in words)", "no stemming: plurals are invented"),
    M("grounding", "assistant/grounding.py", "        return max(quoted, key=len)", "        return quoted[0]",
      "first quoted passage instead of the longest"),
    M("grounding", "assistant/grounding.py", "return after if len(after.split()) >= 2 else request.strip()",
      "return after if after else request.strip()", "one word after a colon taken as the passage"),
    M("grounding", "assistant/grounding.py", "return sides.pop() if len(sides) == 1 else None",
      "return sides.pop() if sides else None", "either side when both are named"),
    M("grounding", "assistant/grounding.py", "if len(m.group(1).split()) >= min_words else", "if len(m.group(1).split()) > min_words else",
      "quotes of exactly min_words words kept"),
    M("grounding", "assistant/grounding.py", r'_TRIPLE = re.compile(r"(-?\d+', r'_TRIPLE = re.compile(r"(\d+',
      "negative first coordinate loses its sign"),
    M("grounding", "assistant/grounding.py", '    re.IGNORECASE,\n)\n\n\ndef reads_like_instruction', '    0,\n)\n\n\ndef reads_like_instruction',
      "injection check case-sensitive"),
    M("grounding", "assistant/grounding.py", r'|\bcall (the )?\w+ tool\b', r'', "'call the X tool' not an instruction"),
    # --- tool results ----------------------------------------------------------------------------------
    M("tool results", "tools/describe_scan.py", 'Quantity(value=self.number_of_slices, unit="slices")',
      'Quantity(value=self.dimensions[0], unit="slices")', "slice count from the wrong axis"),
    M("tool results", "tools/describe_scan.py", 'for v in self.field_of_view_mm)),', 'for v in self.field_of_view_mm[::-1])),',
      "field of view axes reversed"),
    M("tool results", "tools/describe_scan.py", 'dims = " x ".join(str(v) for v in self.dimensions)',
      'dims = " x ".join(str(v) for v in self.dimensions[::-1])', "dimensions reversed in the summary"),
    M("tool results", "tools/describe_scan.py", "field_of_view_mm=tuple(round(v, 1) for v in volume.field_of_view_mm)",
      "field_of_view_mm=tuple(round(v) for v in volume.field_of_view_mm)", "field of view rounded to whole mm"),
    M("tool results", "tools/measure_distance.py", '{self.distance_mm:.1f} mm (offset', '{self.distance_mm:.0f} mm (offset',
      "distance rounded to whole mm in the summary"),
    M("tool results", "tools/measure_distance.py", 'quantities=[Quantity(value=self.distance_mm, unit="mm")]',
      'quantities=[Quantity(value=self.distance_mm, unit="cm")]', "finding in the wrong unit"),
    M("tool results", "tools/measure_distance.py", "offset = wb - wa", "offset = wa - wb", "offset sign flipped"),
    M("tool results", "tools/probe_intensity.py", 'value = self.value if self.region == "voxel" else self.stats.mean',
      'value = self.value if self.region == "voxel" else self.stats.p50', "region finding reports the median"),
    M("tool results", "tools/probe_intensity.py", "median {s.p50:.1f}.", "median {s.mean:.1f}.", "median shows the mean"),
    M("tool results", "tools/probe_intensity.py", "values = volume.data[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]",
      "values = volume.data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]", "box misses its far faces"),
    M("tool results", "tools/probe_intensity.py", 'what = "intensity" if self.region == "voxel" else f"mean intensity ({self.region})"',
      'what = "intensity"', "region finding named as a single voxel"),
    # --- term lookup -----------------------------------------------------------------------------------
    M("term index search", "assistant/terminology/index.py", "hits.sort(key=lambda hit: hit.score == 1.0 and hit.label is not None, reverse=True)",
      "hits.sort(key=lambda hit: hit.score == 1.0 and hit.label is not None)", "labelled exact matches sorted last"),
    M("term index search", "assistant/terminology/index.py", "label=concept.label(lang)))", "label=concept.label(\"en\")))",
      "labels always in English"),
    M("term index search", "assistant/terminology/index.py", "if not is_abbreviation(self._texts[e]) or self._texts[e] == surface]",
      "if not is_abbreviation(self._texts[e]) or self._texts[e].casefold() == surface.casefold()]",
      "abbreviations matched in lower case"),
    M("term lookup", "assistant/terminology/index.py", "if not 1 <= k <= MAX_K:", "if not 0 <= k <= MAX_K:", "k = 0 accepted"),
    M("term lookup", "assistant/terminology/index.py", "if len(query) > MAX_QUERY_CHARS:", "if len(query) >= MAX_QUERY_CHARS:",
      "a query of exactly the limit refused"),
    M("term index search", "assistant/terminology/index.py",
      "        if missing := [name for name in names if name not in indexed]:",
      "        if missing := [name for name in names if name not in indexed and name != GLOSSARY_SOURCE]:",
      "a glossary filter on an index without one is not refused"),
    M("term index search", "assistant/terminology/index.py", "            exact += keep(self._by_text.get(normalize_text(query), []))\n", "",
      "no exact text match"),
    M("term index search", "assistant/terminology/index.py", "FUSION_WEIGHTS = (10.0, 1.0, 1.0)", "FUSION_WEIGHTS = (1.0, 1.0, 1.0)",
      "exact matches weigh no more than fuzzy ones"),
    M("term index search", "assistant/terminology/index.py", "if row >= 0 and score >= threshold:", "if row >= 0:",
      "every embedded span is a mention"),
    M("term index search", "assistant/terminology/index.py", "if all(end <= m.start or start >= m.end for m in chosen):",
      "if True:", "overlapping mentions kept"),
    M("term lookup", "assistant/terminology/index.py", "    return query\n\n\ndef _check_lang", "    return query + ' '\n\n\ndef _check_lang",
      "query not stripped"),
    M("term lookup", "tools/lookup_term.py", "concept = self.hits[0].concept", "concept = self.hits[-1].concept",
      "report term from the last hit"),
    M("term lookup", "tools/lookup_term.py", "if self.language != \"en\" and best.label:", "if best.label:",
      "English label added as a key fact"),
    M("term lookup", "tools/lookup_term.py", '            lines += [f"- {self._line(hit)}" for hit in others]\n', "",
      "other candidates dropped"),
    M("term index search", "tools/lookup_term.py", "hits = get_term_index(settings).search(query, k=k, lang=language, sources=sources or None)",
      "hits = get_term_index(settings).search(query, k=k, lang=language, sources=sources)", "an empty source list finds nothing"),
    M("term lookup", "tools/normalize_terms.py", "where=f\"'{m.text}' [{m.start}:{m.end}]\"", "where=f\"'{m.text}'\"",
      "mention span dropped"),
    # --- segmentation result ---------------------------------------------------------------------------
    M("segmentation result", "assistant/segmentation/result.py", "volume_ml=round(float(voxels.shape[0] * voxel_ml), 2)",
      "volume_ml=round(float(voxels.shape[0] * voxel_ml), 1)", "volume rounded to 0.1 mL"),
    M("segmentation result", "assistant/segmentation/result.py",
      "corners = volume.voxel_to_world(np.array([voxels.min(axis=0) - 0.5, voxels.max(axis=0) + 0.5]))",
      "corners = volume.voxel_to_world(np.array([voxels.min(axis=0), voxels.max(axis=0)]))", "box from voxel centres"),
    M("segmentation result", "assistant/segmentation/result.py", "volume.voxel_to_world(voxels.mean(axis=0))",
      "volume.voxel_to_world(np.median(voxels, axis=0))", "centroid as the median voxel"),
    M("segmentation result", "assistant/segmentation/result.py", "_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)",
      "_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)", "6-connectivity"),
    M("segmentation result", "assistant/segmentation/result.py", "largest_component_ml=round(float(sizes.max() * voxel_ml), 2)",
      "largest_component_ml=round(float(sizes[0] * voxel_ml), 2)", "first component taken as the largest"),
    M("segmentation result", "assistant/segmentation/result.py", "edited = ndimage.distance_transform_edt(~mask, sampling=volume.spacing) <= amount_mm",
      "edited = ndimage.distance_transform_edt(~mask) <= amount_mm", "grow ignores the voxel spacing"),
    M("segmentation result", "assistant/segmentation/result.py", "edited = ndimage.distance_transform_edt(mask, sampling=volume.spacing) > amount_mm",
      "edited = ndimage.distance_transform_edt(mask, sampling=volume.spacing) >= amount_mm", "shrink keeps the boundary layer"),
    M("segmentation result", "assistant/segmentation/result.py", "ranked = np.argsort(sizes)[::-1]", "ranked = np.argsort(sizes)",
      "components ranked smallest first"),
    M("segmentation result", "assistant/segmentation/result.py", "return labels == (int(np.argmax(sizes)) + 1)",
      "return labels == 1", "keep the first component, not the largest"),
    M("segmentation result", "assistant/segmentation/result.py", "confidence=previous.confidence, notes=previous.notes,",
      "notes=previous.notes,", "an edit loses the confidence"),
    M("segmentation result", "assistant/segmentation/result.py", "if not 0 < amount_mm <= 50:", "if not 0 <= amount_mm <= 50:",
      "grow by 0 mm accepted"),
    M("segmentation result", "assistant/segmentation/result.py", "confidence=None if confidence is None else round(float(confidence), 3)",
      "confidence=None if confidence is None else round(float(confidence), 2)", "confidence rounded to 2 places"),
    M("segmentation result", "assistant/segmentation/result.py", "        if self.components > 1:\n", "        if self.components >= 1:\n",
      "'largest' shown for a single component"),
    M("segmentation result", "tools/segment.py", 'quantities=[Quantity(value=seg.volume_ml, unit="mL")]',
      'quantities=[Quantity(value=seg.voxel_count, unit="mL")]', "report volume is the voxel count"),
    # --- anomaly result --------------------------------------------------------------------------------
    M("anomaly result", "assistant/anomaly/result.py", 'verdict = "ABOVE" if self.exceeds_threshold else "below"',
      'verdict = "ABOVE" if not self.exceeds_threshold else "below"', "summary verdict inverted"),
    M("anomaly result", "assistant/anomaly/result.py", '            where = f" in/near {region.label}" if region.label else ""\n',
      '            where = ""\n', "region labels dropped from the summary"),
    M("anomaly result", "assistant/anomaly/result.py", "f\"voxel {list(region.centroid_voxel)}, peak score {region.peak_score:.1f}",
      "f\"voxel {list(region.centroid_voxel)}, peak score {region.mean_score:.1f}", "peak shows the mean"),
    M("anomaly result", "assistant/anomaly/result.py", 'verdict = "above" if self.exceeds_threshold else "below"\n        sentence',
      'verdict = "above"\n        sentence', "key fact always 'above'"),
    M("anomaly result", "assistant/anomaly/result.py", 'return {f"{self.image_score:.2f}": sentence, f"{self.threshold:.2f}": sentence}',
      'return {f"{self.image_score:.2f}": sentence}', "threshold not a key fact"),
    M("anomaly result", "assistant/anomaly/result.py",
      'quantities=[Quantity(value=region.size_ml, unit="mL"), Quantity(value=region.peak_score, unit="score")]',
      'quantities=[Quantity(value=region.size_ml, unit="mL"), Quantity(value=region.mean_score, unit="score")]',
      "area finding quotes the mean score"),
    M("anomaly result", "assistant/anomaly/result.py", 'parameters={**parameters, "rank": region.rank})',
      "parameters=parameters)", "area finding loses its rank"),
    M("anomaly result", "assistant/anomaly/result.py", "        return [score, *areas]", "        return [score]",
      "areas not reported"),
    M("anomaly result", "assistant/anomaly/regions.py", "for rank, position in enumerate(np.argsort(-masses)[:max_regions], start=1):",
      "for rank, position in enumerate(np.argsort(-sizes)[:max_regions], start=1):", "regions ranked by size"),
    M("anomaly result", "assistant/anomaly/regions.py", "for rank, position in enumerate(np.argsort(-masses)[:max_regions], start=1):",
      "for rank, position in enumerate(np.argsort(-peaks)[:max_regions], start=1):", "regions ranked by peak"),
    M("anomaly result", "assistant/anomaly/regions.py", "components, count = ndimage.label(score_map > voxel_threshold)",
      "components, count = ndimage.label(score_map >= voxel_threshold)", "voxels at the threshold count"),
    M("anomaly result", "assistant/anomaly/regions.py", "centroid_voxel=tuple(int(round(c)) for c in centroid_voxel)",
      "centroid_voxel=tuple(int(c) for c in centroid_voxel)", "centroid voxel truncated"),
    M("anomaly result", "assistant/anomaly/regions.py", "size_ml=round(float(sizes[position]) * volume.voxel_volume_ml, 3)",
      "size_ml=round(float(sizes[position]) * volume.voxel_volume_ml, 1)", "size rounded to 0.1 mL"),
    M("anomaly result", "assistant/anomaly/regions.py", "mean_score=round(float(masses[position] / sizes[position]), 2)",
      "mean_score=round(float(peaks[position]), 2)", "mean score is the peak"),
    M("anomaly result", "tools/detect_anomalies.py", 'max_regions: int = Field(5, ge=1, le=10,',
      'max_regions: int = Field(5, ge=0, le=100,', "region count unbounded"),
    M("anomaly result", "tools/detect_anomalies.py", "MethodName = Literal[(DEFAULT_METHOD, *(m for m in SCREENING_METHODS if m != DEFAULT_METHOD))]",
      "MethodName = Literal[SCREENING_METHODS]", "schema's first method is not the default"),
]


def tracked_copy() -> Path:
    """The tracked files (plus uncommitted edits) in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="scanchat-mutants-"))
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    return folder


# Third-party modules imported once by this process; each test run is a fork of it, so a run pays for importing
# only the project's (possibly mutated) modules. None of these imports the project.
PRELOAD = ("numpy", "scipy.ndimage", "torch", "nibabel", "pydicom", "highdicom", "SimpleITK", "sklearn.metrics",
           "pydantic", "pydantic_settings", "langchain_core.tools", "langgraph", "faiss", "onnxruntime", "transformers",
           "monai", "fhir.resources", "pytest")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def run_tests(folder: Path, module: Module, timeout_s: float) -> tuple[str, float]:
    """'passed', 'failed', 'error' (collection or usage) or 'timeout', and the seconds it took: pytest in a fork
    of this process, importing the project from `folder`."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            os.chdir(folder)
            sys.path.insert(0, str(folder))
            os.environ.update(PYTHONPATH=str(folder), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
            sink = os.open(os.devnull, os.O_WRONLY)
            os.dup2(sink, 1)
            os.dup2(sink, 2)
            import pytest

            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *module.tests]))
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - started > timeout_s:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - started
        time.sleep(0.2)
    code = os.waitstatus_to_exitcode(status)
    outcome = {0: "passed", 1: "failed"}.get(code, "error")  # error: the mutant broke an import or collection
    return outcome, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=list(MODULES), help="only these modules (repeatable)")
    parser.add_argument("--only", action="append", help="only mutants whose description contains this text (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run; longer counts as killed")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if (not args.module or m.module in args.module) and (not args.only or any(text in m.what for text in args.only))]
    if args.list:
        for mutant in chosen:
            print(f"{mutant.module:20} {mutant.path:40} {mutant.what}")
        return 0
    folder = tracked_copy()
    preload()
    results: list[dict] = []
    try:
        for module_name in dict.fromkeys(m.module for m in chosen):
            module = MODULES[module_name]
            baseline, seconds = run_tests(folder, module, args.timeout)
            print(f"== {module_name}: unmutated tests {baseline} ({seconds:.0f} s)", flush=True)
            if baseline != "passed":
                print(f"the unmutated tests of {module_name} must pass first: {' '.join(module.tests)}", file=sys.stderr)
                return 1
            for mutant in (m for m in chosen if m.module == module_name):
                path = folder / mutant.path
                original = path.read_text(encoding="utf-8")
                if original.count(mutant.old) != 1:
                    raise SystemExit(f"mutant '{mutant.what}': its text occurs {original.count(mutant.old)} times in {mutant.path}")
                path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
                try:
                    outcome, seconds = run_tests(folder, module, args.timeout)
                finally:
                    path.write_text(original, encoding="utf-8")
                verdict = "survived" if outcome == "passed" else "killed"
                results.append({**asdict(mutant), "outcome": outcome, "verdict": verdict, "seconds": round(seconds, 1)})
                print(f"  {verdict:8} ({outcome}, {seconds:.0f} s) {mutant.path}: {mutant.what}", flush=True)
                save(results)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results = save(results)
    print("\n| module | mutants | killed | survived | killed % |\n|---|---|---|---|---|")
    for module_name in dict.fromkeys(r["module"] for r in results):
        rows = [r for r in results if r["module"] == module_name]
        killed = sum(r["verdict"] == "killed" for r in rows)
        print(f"| {module_name} | {len(rows)} | {killed} | {len(rows) - killed} | {100 * killed / len(rows):.0f}% |")
    killed = sum(r["verdict"] == "killed" for r in results)
    print(f"| **all** | {len(results)} | {killed} | {len(results) - killed} | {100 * killed / max(len(results), 1):.0f}% |")
    for survivor in (r for r in results if r["verdict"] == "survived"):
        print(f"survived: {survivor['path']}: {survivor['what']}")
    return 0


def save(results: list[dict]) -> list[dict]:
    """Write `results` with the earlier results of the mutants this run did not touch; returns them all."""
    run = {(r["path"], r["what"]) for r in results}
    earlier = json.loads(RESULTS.read_text())["mutants"] if RESULTS.exists() else []
    merged = [r for r in earlier if (r["path"], r["what"]) not in run] + results
    merged.sort(key=lambda r: [(m.path, m.what) for m in MUTANTS].index((r["path"], r["what"])))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"modules": {k: asdict(v) for k, v in MODULES.items()}, "mutants": merged}, indent=2))
    return merged


if __name__ == "__main__":
    raise SystemExit(main())
