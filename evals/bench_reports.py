"""Terminology-consistent reports, measured.

1. Real radiology reports (Indiana University chest X-ray collection, inside the torchxrayvision
   wheel; CC BY-NC-ND 4.0, read in memory for evaluation only, never copied into the repo):
   share of finding terms (the reports' MeSH finding annotations) the normaliser maps to a concept,
   and how often one concept appears under different wordings before and after normalisation
   (within a report, and across the corpus).
2. Generated reports for sample scans, from real tool results: numbers traceable to findings,
   term consistency, FHIR R4B validation, DICOM SR read back (highdicom and dcmtk's dsrdump),
   translation required-term success rate, and time to draft with the default model against
   the template-only draft in the same run.

    python evals/bench_reports.py [--reports 200] [--samples ct-head ct-head-dicom mr-t1-mni152] [--lang es]
                                  [--wheel torchxrayvision-*.whl] [--no-llm]

Prints a table and writes JSON to evals/results/bench_reports.json.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path

from assistant.auth import LOCAL_USER
from assistant.config import get_settings
from assistant.grounding import numbers_in
from assistant.reports.checks import apply_all_fixes, check_report
from assistant.reports.draft import draft_report
from assistant.reports.fhir import fhir_bundle
from assistant.reports.model import ReportError, ReportVersion
from assistant.reports.store import ReportStore
from assistant.reports.terms import group_mentions, map_term
from assistant.reports.translate import translate_report
from assistant.reports.workflow import ReportDesk
from assistant.scans.samples import load_sample
from assistant.session import ScanSession, ToolRecord
from assistant.terminology import get_term_index
from tools.lookup_term import LookupTermArgs, lookup_term
from tools.measure_distance import MeasureDistanceArgs, measure_distance
from tools.probe_intensity import ProbeIntensityArgs, probe_intensity

RESULTS = Path(__file__).parent / "results" / "bench_reports.json"
REPORTS_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
# MeSH annotations that say "nothing found" or "not indexed" rather than naming a finding.
NON_FINDINGS = {"normal", "no indexing", "technical quality of image unsatisfactory"}


# --- 1. real reports ---------------------------------------------------------------------------


def find_wheel(explicit: str | None) -> Path:
    """The torchxrayvision wheel: given, already downloaded, or fetched with pip (not installed)."""
    if explicit:
        return Path(explicit)
    folder = get_settings().cache_dir / "downloads"
    found = sorted(folder.glob("torchxrayvision-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "torchxrayvision", "-d",
                        str(folder)], check=True)
        found = sorted(folder.glob("torchxrayvision-*.whl"))
    return found[-1]


def read_iu_reports(wheel: Path, limit: int) -> list[dict]:
    """Findings + impression text and the MeSH finding terms of the first `limit` reports with findings."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(REPORTS_MEMBER)
    reports = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                         key=lambda m: int(re.sub(r"\D", "", Path(m.name).stem) or 0))
        for member in members:
            root = ET.fromstring(tar.extractfile(member).read())
            sections = {t.get("Label"): (t.text or "").strip() for t in root.iter("AbstractText")}
            text = " ".join(s for s in (sections.get("FINDINGS"), sections.get("IMPRESSION")) if s)
            terms = [m.text.split("/")[0].strip() for m in root.iter("major") if m.text]
            terms = [t for t in terms if t.casefold() not in NON_FINDINGS]
            if text and terms:  # "XXXX" marks the collection's own de-identification; kept as is
                reports.append({"text": text, "terms": terms})
            if len(reports) >= limit:
                break
    return reports


def wording_variation(mentions_per_text: list[list], index) -> dict:
    """How often one idea is written in different ways, within a report and across all of them.

    Mentions are grouped as the checker groups them (`group_mentions`: the same concept, or
    concepts of different sources that share an exact synonym); a group with several distinct
    wordings is an inconsistency."""
    all_mentions = []
    reports_with_variants = 0
    for mentions in mentions_per_text:
        all_mentions += mentions
        reports_with_variants += any(len({m.text.casefold() for m in group}) > 1
                                     for _, group in group_mentions(mentions, index))
    groups = [Counter(m.text.casefold() for m in group) for _, group in group_mentions(all_mentions, index)]
    varied = [g for g in groups if len(g) > 1]
    minority = sum(sum(g.values()) - g.most_common(1)[0][1] for g in groups)
    return {
        "mentions": len(all_mentions),
        "concepts": len(groups),
        "concepts_with_several_wordings": len(varied),
        "share_concepts_with_several_wordings": len(varied) / max(len(groups), 1),
        "share_mentions_not_in_dominant_wording": minority / max(len(all_mentions), 1),
        "share_reports_with_a_concept_in_several_wordings": reports_with_variants / max(len(mentions_per_text), 1),
        "examples": [sorted(g) for g in sorted(varied, key=lambda g: -sum(g.values()))[:5]],
    }


def normalised_corpus(texts: list[str], mentions_per_text: list[list], index) -> list[str]:
    """Every mention rewritten to its idea's dominant wording across the corpus, as the checker's
    fixes and the store's remembered wordings do for one patient's or department's reports."""
    tagged = [(number, mention) for number, mentions in enumerate(mentions_per_text) for mention in mentions]
    by_mention = {id(m): n for n, m in tagged}
    replacements: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    for _, group in group_mentions([m for _, m in tagged], index):
        wording = Counter(m.text for m in group).most_common(1)[0][0]
        for mention in group:
            replacements[by_mention[id(mention)]].append((mention.start, mention.end, wording))
    rewritten = []
    for text, spans in zip(texts, replacements):
        for start, end, wording in sorted(spans, reverse=True):
            text = text[:start] + wording + text[end:]
        rewritten.append(text)
    return rewritten


def bench_real_reports(wheel: Path, limit: int, index) -> dict:
    reports = read_iu_reports(wheel, limit)
    started = time.perf_counter()
    terms = [t for r in reports for t in r["terms"]]
    distinct = sorted(set(terms))
    mapped = {t: map_term(t, index).mapped for t in distinct}
    texts = [r["text"] for r in reports]
    mentions = [index.normalize(text) for text in texts]
    rewritten = normalised_corpus(texts, mentions, index)
    # normalisation is deterministic: only the rewritten reports need to be read again
    mentions_after = [found if new == old else index.normalize(new) for old, new, found in zip(texts, rewritten, mentions)]
    before = wording_variation(mentions, index)
    after = wording_variation(mentions_after, index)
    return {
        "reports": len(reports),
        "reports_rewritten_by_normalisation": sum(old != new for old, new in zip(texts, rewritten)),
        "finding_terms": len(terms),
        "distinct_finding_terms": len(distinct),
        "share_terms_mapped": sum(mapped[t] for t in terms) / max(len(terms), 1),
        "share_distinct_terms_mapped": sum(mapped.values()) / max(len(distinct), 1),
        "unmapped_examples": [t for t in distinct if not mapped[t]][:15],
        "before": before,
        "after": after,
        "seconds": round(time.perf_counter() - started, 1),
    }


# --- 2. generated reports ----------------------------------------------------------------------


def measured_session(sample: str) -> ScanSession:
    """A session on `sample` with real tool results: the scan description (added by the drafter),
    a distance between two voxels, a mean intensity in a 5 mm sphere at the centre, and a term the
    clinician looked up (so the report has a coded concept for the checker and the translator)."""
    session = ScanSession()
    session.load(load_sample(sample))
    volume = session.volume
    far = [max(1, n - 2) for n in volume.shape]
    distance = MeasureDistanceArgs(point_a=[1, 1, 1], point_b=far)
    probe = ProbeIntensityArgs(radius_mm=5.0)
    term = LookupTermArgs(query="hydrocephalus", k=1)
    session.records += [
        ToolRecord("lookup_term", term.model_dump(), lookup_term(**term.model_dump())),
        ToolRecord("measure_distance", distance.model_dump(), measure_distance(volume, distance)),
        ToolRecord("probe_intensity", probe.model_dump(), probe_intensity(volume, probe)),
    ]
    return session


def report_numbers(version: ReportVersion) -> int:
    return sum(len(numbers_in(version.content.text.section(s))) for s in
               ("clinical_information", "technique", "findings", "impression"))


def sr_checks(desk: ReportDesk, version: ReportVersion, session: ScanSession, folder: Path) -> dict:
    import highdicom as hd

    if not version.content.scan.is_dicom:
        try:
            desk.export(version.report_id, folder, ["dicom_sr"], session.volume, LOCAL_USER)
            return {"sr": "exported for a non-DICOM input (wrong)"}
        except ReportError:
            return {"sr": "refused (not DICOM)"}
    [path] = desk.export(version.report_id, folder, ["dicom_sr"], session.volume, LOCAL_USER)
    sr = hd.sr.srread(path)
    containers = [item.ConceptNameCodeSequence[0].CodeMeaning for item in sr.ContentSequence]
    result = {"sr": "ok", "sr_highdicom_read": "Imaging Measurements" in containers, "sr_dsrdump_ok": None}
    if shutil.which("dsrdump"):
        run = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
        result["sr_dsrdump_ok"] = run.returncode == 0 and "Imaging Measurements" in run.stdout
    return result


def bench_generated(samples: list[str], lang: str | None, use_llm: bool, index) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    desk = ReportDesk(store=ReportStore(folder / "reports.sqlite3"), index=index)
    model = None
    if use_llm:
        from assistant.models.registry import load_chat_model

        started = time.perf_counter()
        model = load_chat_model(get_settings())
        model_load_seconds = time.perf_counter() - started
    rows = {}
    for sample in samples:
        session = measured_session(sample)
        started = time.perf_counter()
        version = desk.draft(session, LOCAL_USER)
        template_seconds = time.perf_counter() - started
        row: dict = {"template_draft_seconds": round(template_seconds, 2)}
        if model is not None:
            started = time.perf_counter()
            llm_version = desk.draft(session, LOCAL_USER, model=model)
            row["llm_draft_seconds"] = round(time.perf_counter() - started, 2)
            row["llm_draft_ratio_to_template"] = round(row["llm_draft_seconds"] / max(template_seconds, 1e-6), 1)
            row["llm_impression_kept"] = llm_version.content.drafted_by != "template"
            version = llm_version
        flags = desk.check(version)
        numbers = report_numbers(version)
        ungrounded = [f for f in flags if f.kind == "ungrounded_number"]
        inconsistent = [f for f in flags if f.kind == "inconsistent_term"]
        fixed = apply_all_fixes(version.content.text, flags)
        still = [f for f in check_report(fixed, version.content.findings, index) if f.kind == "inconsistent_term"]
        row.update({
            "numbers": numbers,
            "share_numbers_traceable": 1 - len(ungrounded) / max(numbers, 1),
            "inconsistent_terms_before_fix": len(inconsistent),
            "inconsistent_terms_after_fix": len(still),
            "unmapped_terms": sum(f.kind == "unmapped_term" for f in flags),
            "ambiguous_abbreviations": sum(f.kind == "ambiguous_abbreviation" for f in flags),
        })
        try:
            fhir_bundle(version)
            row["fhir_valid"] = True
        except ReportError as exc:
            row["fhir_valid"] = f"invalid: {exc}"
        row.update(sr_checks(desk, version, session, folder))
        if lang:
            started = time.perf_counter()
            try:
                translation = translate_report(version.content, lang)
                row["translation_term_success_rate"] = translation.term_success_rate
                row["translation_flagged_sentences"] = len(translation.flagged_sentences)
                row["translation_engine"] = translation.engine
            except ReportError as exc:
                row["translation_term_success_rate"] = f"failed: {exc}"
            row["translation_seconds"] = round(time.perf_counter() - started, 1)
        rows[sample] = row
    result = {"samples": rows}
    if model is not None:
        result["model"] = model.name
        result["model_load_seconds"] = round(model_load_seconds, 1)
    return result


def print_table(results: dict) -> None:
    real = results.get("real_reports")
    if real:
        print(f"\nIU chest X-ray reports: {real['reports']} reports, {real['finding_terms']} MeSH finding terms "
              f"({real['distinct_finding_terms']} distinct)")
        print(f"  terms mapped to a concept: {real['share_terms_mapped']:.1%} of mentions, "
              f"{real['share_distinct_terms_mapped']:.1%} of distinct terms")
        print(f"  {'':44}{'before':>10}{'after':>10}")
        for key in ("concepts", "concepts_with_several_wordings", "share_concepts_with_several_wordings",
                    "share_mentions_not_in_dominant_wording", "share_reports_with_a_concept_in_several_wordings"):
            b, a = real["before"][key], real["after"][key]
            fmt = (lambda v: f"{v:.1%}") if isinstance(b, float) else str
            print(f"  {key:44}{fmt(b):>10}{fmt(a):>10}")
    print("\nGenerated reports (sample scans):")
    for sample, row in results["generated"]["samples"].items():
        print(f"  {sample}")
        for key, value in row.items():
            print(f"    {key:40} {value:.3f}" if isinstance(value, float) else f"    {key:40} {value}")
    if "model" in results["generated"]:
        print(f"  model {results['generated']['model']} loaded in {results['generated']['model_load_seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--samples", nargs="+", default=["ct-head", "ct-head-dicom", "mr-t1-mni152"])
    parser.add_argument("--lang", default="es", help="translation target ('' to skip)")
    parser.add_argument("--wheel", help="torchxrayvision wheel (default: pip download into the cache)")
    parser.add_argument("--no-llm", action="store_true", help="skip the default model's draft timing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    started = time.perf_counter()
    index = get_term_index()
    results: dict = {"index_load_seconds": round(time.perf_counter() - started, 1)}
    if args.reports > 0:
        results["real_reports"] = bench_real_reports(find_wheel(args.wheel), args.reports, index)
    results["generated"] = bench_generated(args.samples, args.lang or None, not args.no_llm, index)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
