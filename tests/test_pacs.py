"""The PACS round trip against a real Orthanc with its DICOMweb plugin: search, retrieve, segment, report,
sign, push, read the pushed objects back from Orthanc and validate them with dciodvfy; and every way the
PACS can fail (down, silent, partial or mixed series, no images, too big, refusing a push)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from assistant.cli import main as scanchat
from assistant.config import get_settings
from assistant.reports.model import ReportError
from assistant.reports.store import ReportStore
from assistant.scans.pacs import (PacsError, StudyQuery, list_series, open_series, push_files, push_results,
                                  push_session, search_studies)
from assistant.scans.samples import load_sample, sample_path
from assistant.volume import ScanLoadError
from tests.orthanc_server import free_port, orthanc_missing, running_orthanc
from tests.report_cases import DR_A, dciodvfy_errors, session_with_segmentation, signed_report

pytestmark = pytest.mark.skipif(orthanc_missing() is not None, reason=orthanc_missing() or "")

SAMPLE_PATIENT = "SAMPLE-0001"  # what assistant/scans/samples.py writes into the sample series


def _copy_series(folder: Path, files: list[Path], **fields) -> list[Path]:
    """Copies of sample slices as a new study and series, with the given header fields."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = fields.pop("StudyInstanceUID", generate_uid()), fields.pop("SeriesInstanceUID", generate_uid())
    written = []
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in fields.items():
            setattr(dataset, keyword, value)
        written.append(folder / path.name)
        dataset.save_as(written[-1])
    return written


@pytest.fixture(scope="module")
def sample_files() -> list[Path]:
    return sorted(sample_path("ct-head-dicom").iterdir())


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, sample_files):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        server.upload(sample_files)
        yield server


@pytest.fixture(scope="module")
def other_study(orthanc, sample_files, tmp_path_factory) -> str:
    """A second patient's study: 20 slices with an accession number and a study date."""
    files = _copy_series(tmp_path_factory.mktemp("other"), sample_files[40:60], PatientID="P-0002",
                         PatientName="DOE^JANE", AccessionNumber="ACC-7", StudyDate="20240301")
    orthanc.upload(files)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID)


@pytest.fixture
def settings(orthanc, tmp_path):
    return get_settings().model_copy(update={"dicomweb_url": orthanc.dicomweb_url, "pacs_cache": tmp_path / "pacs",
                                             "reports_db": tmp_path / "reports.sqlite3"})


@pytest.fixture(scope="module")
def sample_study() -> str:
    return str(pydicom.dcmread(sample_path("ct-head-dicom") / "IM0000.dcm", stop_before_pixels=True).StudyInstanceUID)


def _cached_series(settings) -> list[Path]:
    folder = settings.pacs_dir / "series"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_search_by_patient_name_accession_date_and_modality(settings, sample_study, other_study):
    def found(**query) -> set[str]:
        return {s.study_uid for s in search_studies(StudyQuery(**query), settings)}

    assert found(patient_id=SAMPLE_PATIENT) == {sample_study}
    assert found(patient_name="DOE*") == {other_study}
    assert found(accession_number="ACC-7") == {other_study}
    assert found(study_date="20240101-20241231") == {other_study}
    assert found(modality="CT") == {sample_study, other_study}
    assert found(modality="MR") == set()
    [other] = search_studies(StudyQuery(accession_number="ACC-7"), settings)
    assert (other.patient_id, other.patient_name, other.study_date, other.instance_count) == ("P-0002", "DOE^JANE",
                                                                                              "20240301", 20)


def test_a_retrieved_series_is_the_series_on_disk(settings, sample_study):
    from_pacs = open_series(sample_study, settings=settings)
    from_disk = load_sample("ct-head-dicom")
    np.testing.assert_array_equal(from_pacs.data, from_disk.data)
    np.testing.assert_allclose(from_pacs.affine, from_disk.affine)
    assert from_pacs.identifiers.patient_id == SAMPLE_PATIENT and len(from_pacs.dicom_sources) == 108
    assert all(p.is_relative_to(settings.pacs_dir) for p in from_pacs.dicom_sources)
    assert SAMPLE_PATIENT not in from_pacs.name and sample_study not in from_pacs.name


def test_round_trip_segment_report_sign_push_read_back_and_validate(settings, sample_study, orthanc, tmp_path):
    volume = open_series(sample_study, settings=settings)
    session, segmentation = session_with_segmentation(volume, "brain")
    store = ReportStore(settings.reports_db)
    report = signed_report(session, store)

    result = push_session(session, report, settings)  # what "Send to PACS" does: a SEG per segmentation, the SR
    assert result.ok and [o.kind for o in result.objects] == ["SEG", "SR"]

    # Read back through DICOMweb with the library alone, not through ScanChat's code.
    client = DICOMwebClient(orthanc.dicomweb_url)
    by_modality = {}
    for series in client.search_for_series(sample_study):
        modality = series["00080060"]["Value"][0]
        uid = series["0020000E"]["Value"][0]
        if modality in ("SEG", "SR"):
            [by_modality[modality]] = client.retrieve_series(sample_study, uid)
    source = pydicom.dcmread(volume.dicom_sources[0], stop_before_pixels=True)
    seg, sr = by_modality["SEG"], by_modality["SR"]
    for pushed in (seg, sr):
        assert (pushed.PatientID, pushed.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
        path = tmp_path / f"{pushed.Modality}.dcm"
        pushed.save_as(path, enforce_file_format=False)
        assert dciodvfy_errors(path) == []
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"  # SNOMED brain
    assert int(hd.seg.Segmentation.from_dataset(seg).get_volume().array.sum()) == segmentation.voxel_count
    evidence = {s.SeriesInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence}
    assert evidence == {source.SeriesInstanceUID, seg.SeriesInstanceUID}
    assert sr.VerificationFlag == "VERIFIED" and store.latest(report.report_id, DR_A).signed


def test_cli_opens_a_pacs_series_and_pushes_its_segmentation(settings, sample_study, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SCANCHAT_DICOMWEB_URL", settings.dicomweb_url)
    monkeypatch.setenv("SCANCHAT_PACS_CACHE", str(settings.pacs_dir))
    get_settings.cache_clear()
    try:
        before = len(list_series(sample_study, settings))
        assert scanchat(["pacs", "search", "--patient-id", SAMPLE_PATIENT]) == 0
        assert f"dicomweb:{sample_study}" in capsys.readouterr().out
        assert scanchat(["segment", f"dicomweb:{sample_study}", "--structure", "skull",
                         "--out", str(tmp_path / "skull.nii.gz"), "--push"]) == 0
        assert "SEG stored after 1 attempt(s)" in capsys.readouterr().out
        assert len(list_series(sample_study, settings)) == before + 1
    finally:
        get_settings.cache_clear()


def test_cli_report_is_pushed_only_once_signed(settings, sample_study, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SCANCHAT_DICOMWEB_URL", settings.dicomweb_url)
    monkeypatch.setenv("SCANCHAT_PACS_CACHE", str(settings.pacs_dir))
    get_settings.cache_clear()
    scan, seg = f"dicomweb:{sample_study}", tmp_path / "skull.seg.dcm"
    command = ["report", scan, "--no-llm", "--seg", str(seg), "--db", str(tmp_path / "r.sqlite3"), "--push"]
    try:
        assert scanchat(command) == 2
        assert "Only a signed report goes to the PACS" in capsys.readouterr().err
        before = {s.series_uid for s in list_series(sample_study, settings)}
        assert scanchat(["segment", scan, "--structure", "skull", "--out", str(tmp_path / "m.nii.gz"), "--seg", str(seg),
                         "--push"]) == 0
        assert scanchat([*command, "--sign"]) == 0  # as the implicit local user, a reviewer
        assert "SR stored after 1 attempt(s)" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    new = [s for s in list_series(sample_study, settings) if s.series_uid not in before]
    assert sorted(s.modality for s in new) == ["SEG", "SR"]  # the SEG sent twice is one object on the PACS
    sr_series = next(s for s in new if s.modality == "SR")
    [sr] = DICOMwebClient(settings.dicomweb_url).retrieve_series(sample_study, sr_series.series_uid)
    assert sr.VerificationFlag == "VERIFIED" and "local" in str(sr.VerifyingObserverSequence[0].VerifyingObserverName)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=False)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    evidence = {r.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    assert pydicom.dcmread(seg).SOPInstanceUID in evidence


def test_a_pacs_that_is_down_gets_a_clear_message(settings, sample_study):
    down = settings.model_copy(update={"dicomweb_url": f"http://127.0.0.1:{free_port()}/dicom-web"})
    with pytest.raises(PacsError, match="cannot be reached"):
        search_studies(StudyQuery(), down)
    with pytest.raises(PacsError, match="cannot be reached"):
        open_series(sample_study, settings=down)
    assert _cached_series(down) == []


def test_a_pacs_that_never_answers_times_out(settings, sample_study):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    silent = settings.model_copy(update={"dicomweb_url": f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web",
                                         "dicomweb_timeout_s": 1.0})
    started = time.monotonic()
    try:
        with pytest.raises(PacsError, match="did not answer within 1 s"):
            open_series(sample_study, settings=silent)
    finally:
        listener.close()
    assert time.monotonic() - started < 10 and _cached_series(silent) == []


def test_a_study_without_image_series_is_refused(settings, orthanc, tmp_path):
    volume = load_sample("ct-head-dicom")
    session, segmentation = session_with_segmentation(volume, "skull")
    report = signed_report(session, ReportStore(settings.reports_db))
    from assistant.reports.dicom_sr import dicom_sr

    sr = dicom_sr(report, volume)
    sr.StudyInstanceUID = generate_uid()  # a study holding only this report
    sr.save_as(tmp_path / "sr.dcm")
    orthanc.upload([tmp_path / "sr.dcm"])
    with pytest.raises(PacsError, match="no image series, only SR"):
        open_series(sr.StudyInstanceUID, settings=settings)
    with pytest.raises(PacsError, match="not images"):
        open_series(sr.StudyInstanceUID, sr.SeriesInstanceUID, settings=settings)


def test_partial_and_mixed_series_load_nothing(settings, orthanc, sample_files, tmp_path):
    gap = _copy_series(tmp_path / "gap", sample_files[10:20] + sample_files[25:30])  # five slices missing
    mixed = _copy_series(tmp_path / "mixed", sample_files[10:20])
    stranger = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # another scanner's 128x128 slice, same series
    head = pydicom.dcmread(mixed[0])
    stranger.StudyInstanceUID, stranger.SeriesInstanceUID = head.StudyInstanceUID, head.SeriesInstanceUID
    stranger.PatientID, stranger.PatientName = head.PatientID, head.PatientName
    stranger.save_as(tmp_path / "stranger.dcm")
    orthanc.upload(gap + mixed + [tmp_path / "stranger.dcm"])
    for files, message in ((gap, "regular volume"), (mixed, "regular volume")):
        with pytest.raises(ScanLoadError, match=message):
            open_series(str(pydicom.dcmread(files[0]).StudyInstanceUID), settings=settings)
    assert _cached_series(settings) == []


def test_series_over_the_limits_is_refused_before_or_while_retrieving(settings, sample_study):
    few_voxels = settings.model_copy(update={"max_voxels": 1_000_000})
    with pytest.raises(PacsError, match="more than the 1,000,000 allowed"):
        open_series(sample_study, settings=few_voxels)
    few_bytes = settings.model_copy(update={"max_upload_bytes": 2_000_000})
    with pytest.raises(PacsError, match="larger than the .* allowed"):
        open_series(sample_study, settings=few_bytes)
    assert _cached_series(settings) == [] and not list((settings.pacs_dir / "series").glob(".retrieving-*"))


def test_a_failed_push_is_retried_reported_and_loses_nothing(settings, sample_study):
    volume = open_series(sample_study, settings=settings)
    session, segmentation = session_with_segmentation(volume, "skull")
    store = ReportStore(settings.reports_db)
    report = signed_report(session, store)
    down = settings.model_copy(update={"dicomweb_url": f"http://127.0.0.1:{free_port()}/dicom-web",
                                       "dicomweb_push_attempts": 2})
    failed = push_results(volume, [segmentation], report, down)
    assert not failed.ok and [(o.attempts, o.stored) for o in failed.objects] == [(2, False), (2, False)]
    assert "cannot be reached" in failed.objects[1].error and "Nothing is lost" in failed.summary()
    assert store.latest(report.report_id, DR_A).signed  # the signed report is still there
    before = len(list_series(sample_study, settings))
    sent = push_files([o.path for o in failed.objects], settings)  # the kept files, sent again
    assert all(o.stored and o.attempts == 1 for o in sent)
    assert len(list_series(sample_study, settings)) == before + 2


def test_no_push_without_a_real_identity_or_a_signature(settings, orthanc, sample_files, tmp_path):
    anonymous = _copy_series(tmp_path / "anon", sample_files[10:20], PatientID="", PatientName="")
    orthanc.upload(anonymous)
    volume = open_series(str(pydicom.dcmread(anonymous[0]).StudyInstanceUID), settings=settings)
    session, segmentation = session_with_segmentation(volume, "skull")
    with pytest.raises(PacsError, match="no patient ID"):
        push_results(volume, [segmentation], settings=settings)
    store = ReportStore(settings.reports_db)
    from assistant.reports.draft import draft_report

    unsigned = store.create(draft_report(session), DR_A)
    with pytest.raises(ReportError, match="signed"):
        push_results(volume, [], unsigned, settings)


def test_the_ui_study_browser_searches_lists_and_opens_a_series(settings, sample_study, tmp_path):
    """The UI's PACS panel through the app's own handlers: search, choose the series, open it in the viewer."""
    import gradio as gr

    from ui.app import ScanChatApp

    app = ScanChatApp(settings.model_copy(update={"ui_exports_dir": tmp_path / "exports"}))
    assert "Search the PACS" in str(app.build().config)  # the browser is shown when a PACS is configured
    studies, _ = app.search_pacs(SAMPLE_PATIENT, "", "", "CT")
    assert sample_study in [uid for _, uid in studies["choices"]]  # other tests add studies of the same patient
    series = app.pacs_series(sample_study)
    [(label, series_uid)] = series["choices"]
    assert label.startswith("CT") and "108 images" in label and series["value"] == series_uid
    state, _window, *views_sliders, info, chat = app.open_from_pacs(None, sample_study, series_uid, "auto",
                                                                   gr.Request(), progress=lambda *a, **k: None)
    assert state.session.volume.shape == (256, 256, 108) and state.scan_path == f"dicomweb:{sample_study}/{series_uid}"
    assert [v.ndim for v in views_sliders[:3]] == [3, 3, 3] and "256 × 256 × 108" in info
    assert SAMPLE_PATIENT not in info  # identifiers stay in the browser's list, never in the scan line or the chat
    missing, _ = app.search_pacs("NO-SUCH-PATIENT", "", "", "")
    assert missing["choices"] == []
