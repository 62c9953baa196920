"""PACS round trip on this machine, against a real Orthanc 1.10 + DICOMweb plugin started for the run.

1. Time to first view: the sample CT series (108 slices, 256x256) opened from disk (`load_scan` of the
   folder) vs retrieved from Orthanc (`open_series`, WADO-RS, no cache), each followed by rendering the
   three viewer planes; runs alternate disk and PACS, and the ratio PACS/disk is the figure.
2. Push latency: STOW-RS of one DICOM SEG and one DICOM SR, fresh objects each run.
3. Validator errors over every export type: dciodvfy on SEG (a structure, a point), SR (draft, signed
   with its SEG) as written and as read back from Orthanc; FHIR R4B validation (fhir.resources); the
   NIfTI mask's grid against the input's. Target: 0.

Prints a table and writes JSON to evals/results/bench_pacs.json. Needs the Debian packages orthanc,
orthanc-dicomweb and dicom3tools (scripts/setup installs them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from dicomweb_client.api import DICOMwebClient
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.config import get_settings  # noqa: E402
from assistant.reports.dicom_sr import dicom_sr  # noqa: E402
from assistant.reports.draft import draft_report  # noqa: E402
from assistant.reports.fhir import fhir_bundle  # noqa: E402
from assistant.reports.model import ReportError  # noqa: E402
from assistant.reports.store import ReportStore  # noqa: E402
from assistant.scans.display import render_slice, slice_count  # noqa: E402
from assistant.scans.loading import load_scan  # noqa: E402
from assistant.scans.pacs import open_series, push_files  # noqa: E402
from assistant.scans.samples import sample_path  # noqa: E402
from assistant.segmentation.export import dicom_seg, save_nifti  # noqa: E402
from tests.orthanc_server import orthanc_missing, running_orthanc  # noqa: E402
from tests.report_cases import session_with_segmentation, signed_report  # noqa: E402
from tools.segment import SegmentArgs, run_segmentation  # noqa: E402

RESULTS = ROOT / "evals" / "results" / "bench_pacs.json"


def first_view(volume) -> None:
    """What the viewer draws first: the middle slice of each plane."""
    for plane in ("axial", "coronal", "sagittal"):
        render_slice(volume, plane, slice_count(volume, plane) // 2)


def bootstrap_ratio(pacs: list[float], disk: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% percentile interval of median(PACS) / median(disk) over resampled runs."""
    rng = np.random.default_rng(0)
    ratios = [np.median(rng.choice(pacs, len(pacs))) / np.median(rng.choice(disk, len(disk))) for _ in range(rounds)]
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def nifti_grid_errors(mask: nib.Nifti1Image, source_files: list[Path]) -> int:
    """0 when the mask is on the source frames: frames x rows x columns, and frame k's first pixel where one
    source header's ImagePositionPatient puts it (each header used once)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in source_files]
    if mask.shape != (len(headers), int(headers[0].Rows), int(headers[0].Columns)):
        return 1
    corners = {tuple(np.round(mask.affine @ [k, 0, 0, 1], 2)[:3]) for k in range(len(headers))}
    positions = {tuple(np.round(np.array(h.ImagePositionPatient, dtype=float) * [-1, -1, 1], 2)) for h in headers}
    return int(corners != positions)


def bench(repeats: int, work: Path) -> dict:
    folder = sample_path("ct-head-dicom")
    with running_orthanc(work / "orthanc") as orthanc:
        orthanc.upload(sorted(folder.iterdir()))
        settings = get_settings().model_copy(update={"dicomweb_url": orthanc.dicomweb_url, "pacs_cache": work / "pacs"})
        study = str(pydicom.dcmread(folder / "IM0000.dcm", stop_before_pixels=True).StudyInstanceUID)
        disk, pacs = [], []
        first_view(load_scan(folder, settings))  # warm-up (imports, file cache), not timed
        open_series(study, settings=settings, use_cache=False)
        for _ in range(repeats):
            started = time.perf_counter()
            first_view(load_scan(folder, settings))
            disk.append(time.perf_counter() - started)
            started = time.perf_counter()
            volume = open_series(study, settings=settings, use_cache=False)
            first_view(volume)
            pacs.append(time.perf_counter() - started)

        session, segmentation = session_with_segmentation(volume, "brain")
        store = ReportStore(work / "reports.sqlite3")
        draft = store.create(draft_report(session), "Dr A")
        signed = signed_report(session, store)
        outbox = work / "outbox"
        outbox.mkdir()
        push_seconds = {"SEG": [], "SR": []}
        for run in range(repeats):
            seg_path, sr_path = outbox / f"seg-{run}.dcm", outbox / f"sr-{run}.dcm"
            dicom_seg(segmentation, volume).save_as(seg_path)
            dicom_sr(signed, volume, [seg_path]).save_as(sr_path)
            for kind, path in (("SEG", seg_path), ("SR", sr_path)):
                started = time.perf_counter()
                [pushed] = push_files([path], settings)
                push_seconds[kind].append(time.perf_counter() - started)
                assert pushed.stored, pushed.error

        exports = {"SEG brain": outbox / "seg-0.dcm", "SR signed + SEG": outbox / "sr-0.dcm"}
        point = run_segmentation(volume, SegmentArgs(points=[[128, 128, 60]], backend="classical"))
        exports["SEG point"] = outbox / "seg-point.dcm"
        dicom_seg(point, volume).save_as(exports["SEG point"])
        exports["SR draft"] = outbox / "sr-draft.dcm"
        dicom_sr(draft, volume).save_as(exports["SR draft"])
        client = DICOMwebClient(orthanc.dicomweb_url)
        for series in client.search_for_series(study, search_filters={"Modality": "SEG"}, limit=1):
            [dataset] = client.retrieve_series(study, series["0020000E"]["Value"][0])[:1]
            exports["SEG read back from Orthanc"] = outbox / "seg-readback.dcm"
            dataset.save_as(exports["SEG read back from Orthanc"], enforce_file_format=False)
        for series in client.search_for_series(study, search_filters={"Modality": "SR"}, limit=1):
            [dataset] = client.retrieve_series(study, series["0020000E"]["Value"][0])[:1]
            exports["SR read back from Orthanc"] = outbox / "sr-readback.dcm"
            dataset.save_as(exports["SR read back from Orthanc"], enforce_file_format=False)
        errors = {name: len(dciodvfy_errors(path)) for name, path in exports.items()}
        for name, version in (("FHIR draft", draft), ("FHIR signed", signed)):
            try:
                fhir_bundle(version, volume)
                errors[name] = 0
            except (ReportError, ValidationError):
                errors[name] = 1
        errors["NIfTI mask grid"] = nifti_grid_errors(nib.load(save_nifti(segmentation, volume, work / "mask.nii.gz")),
                                                      sorted(folder.iterdir()))

    def summary(values: list[float]) -> dict:
        return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
                "max_s": round(max(values), 3), "runs": len(values)}

    low, high = bootstrap_ratio(pacs, disk)
    return {
        "series": {"slices": len(list(folder.iterdir())), "shape": list(volume.shape)},
        "first_view": {"disk": summary(disk), "pacs": summary(pacs),
                       "ratio_pacs_over_disk": round(statistics.median(pacs) / statistics.median(disk), 2),
                       "ratio_95ci": [round(low, 2), round(high, 2)]},
        "push": {kind: summary(values) for kind, values in push_seconds.items()},
        "validator_errors": errors,
        "validator_errors_total": sum(errors.values()),
    }


def print_table(results: dict) -> None:
    view = results["first_view"]
    print(f"first view of the {results['series']['slices']}-slice series (median of {view['disk']['runs']} runs, "
          "min-max):")
    for source in ("disk", "pacs"):
        row = view[source]
        print(f"  {source:<5} {row['median_s']:.3f} s  ({row['min_s']:.3f}-{row['max_s']:.3f})")
    print(f"  PACS / disk: {view['ratio_pacs_over_disk']}x (95% CI {view['ratio_95ci'][0]}-{view['ratio_95ci'][1]})")
    print("push latency (STOW-RS, one object):")
    for kind, row in results["push"].items():
        print(f"  {kind:<4} {row['median_s']:.3f} s  ({row['min_s']:.3f}-{row['max_s']:.3f})")
    print("validator errors (dciodvfy for DICOM, fhir.resources R4B for FHIR, grid check for NIfTI):")
    for name, count in results["validator_errors"].items():
        print(f"  {name:<28} {count}")
    print(f"  total {results['validator_errors_total']} (target 0)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each timing (alternating disk and PACS)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if reason := orthanc_missing():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as work:
        results = bench(args.repeats, Path(work))
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0 if results["validator_errors_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
