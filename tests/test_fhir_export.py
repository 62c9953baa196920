"""FHIR R4B export: the DiagnosticReport is filed against the Patient and ImagingStudy the DICOM header names."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from assistant.reports.export import ExportPaths, export_report
from assistant.reports.fhir import fhir_bundle
from assistant.reports.model import ReportError
from assistant.reports.store import ReportStore
from assistant.scans.loading import load_scan
from assistant.scans.samples import load_sample, sample_path
from tests.report_cases import session_with_segmentation, signed_report

ACCESSION = "ACC-2026-0042"


@pytest.fixture(scope="module")
def dicom_with_accession(tmp_path_factory):
    """The sample CT series with an accession number written into every header."""
    folder = tmp_path_factory.mktemp("accession")
    for source in sorted(sample_path("ct-head-dicom").iterdir()):
        dataset = pydicom.dcmread(source)
        dataset.AccessionNumber = ACCESSION
        dataset.save_as(folder / source.name)
    return folder


def _resources(bundle: dict) -> dict[str, list[dict]]:
    by_type: dict[str, list[dict]] = {}
    for entry in Bundle.model_validate(bundle).model_dump(mode="json")["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry | {"id": entry["fullUrl"]})
    return by_type


def test_report_links_patient_imaging_study_and_accession(dicom_with_accession, tmp_path):
    volume = load_scan(dicom_with_accession)
    session, _ = session_with_segmentation(volume, "skull")
    version = signed_report(session, ReportStore(tmp_path / "r.sqlite3"))
    header = pydicom.dcmread(next(dicom_with_accession.iterdir()), stop_before_pixels=True)

    resources = _resources(fhir_bundle(version, volume))
    [report], [patient], [study] = resources["DiagnosticReport"], resources["Patient"], resources["ImagingStudy"]
    assert report["resource"]["subject"]["reference"] == patient["fullUrl"]
    assert report["resource"]["imagingStudy"] == [{"reference": study["fullUrl"]}]
    assert study["resource"]["subject"]["reference"] == patient["fullUrl"]
    assert [i["value"] for i in patient["resource"]["identifier"]] == [str(header.PatientID)]
    identifiers = {i.get("type", {}).get("coding", [{}])[0].get("code", "uid"): i["value"]
                   for i in study["resource"]["identifier"]}
    assert identifiers == {"uid": f"urn:oid:{header.StudyInstanceUID}", "ACSN": ACCESSION}
    assert study["resource"]["series"][0]["uid"] == str(header.SeriesInstanceUID)
    assert study["resource"]["series"][0]["numberOfInstances"] == len(volume.dicom_sources)
    assert all(o["resource"]["subject"] == report["resource"]["subject"] for o in resources["Observation"])


def test_export_writes_the_linked_bundle_and_an_empty_impression_does_not_fail(tmp_path):
    volume = load_sample("ct-head-dicom")
    session, _ = session_with_segmentation(volume, "skull")
    version = signed_report(session, ReportStore(tmp_path / "r.sqlite3"), impression="")
    [path] = export_report(version, ExportPaths(fhir=tmp_path / "report.json"), volume=volume)
    resources = _resources(json.loads(path.read_text()))
    report = resources["DiagnosticReport"][0]["resource"]
    assert report["status"] == "final" and "conclusion" not in report
    assert report["subject"]["reference"] == resources["Patient"][0]["fullUrl"]


def test_a_nifti_scan_gives_a_report_without_an_invented_subject(tmp_path):
    session, _ = session_with_segmentation(load_sample("ct-head"), "skull")
    version = signed_report(session, ReportStore(tmp_path / "r.sqlite3"))
    resources = _resources(fhir_bundle(version, session.volume))
    assert set(resources) == {"DiagnosticReport", "Observation"}
    assert "subject" not in resources["DiagnosticReport"][0]["resource"]


def test_source_files_gone_is_a_clear_error_not_a_bundle_without_its_study(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(sample_path("ct-head-dicom"), folder)
    volume = load_scan(folder)
    session, _ = session_with_segmentation(volume, "skull")
    version = signed_report(session, ReportStore(tmp_path / "r.sqlite3"))
    shutil.rmtree(folder)
    with pytest.raises(ReportError, match="reload the series"):
        fhir_bundle(version, volume)
    assert set(_resources(fhir_bundle(version))) == {"DiagnosticReport", "Observation"}  # without the scan: unlinked
