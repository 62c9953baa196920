"""The PHI gate: a DICOM series whose every text attribute, file and folder name identifies the patient
is loaded, asked about, segmented, reported and exported; no identifier may reach a prompt, a log
line (DEBUG), the database or a non-DICOM export, while the DICOM SEG and SR keep them."""

from __future__ import annotations

import base64
import json
import logging
import re
import sqlite3
import zipfile
import zlib
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from assistant.config import Settings, get_settings
from assistant.privacy import PrivacyGate, deidentified_header, is_plain_imaging_text
from assistant.scans.loading import load_scan
from assistant.volume import PatientIdentifiers

NAME, GIVEN, PATIENT_ID, BIRTH, STUDY_DATE = "Zyxwv", "Qorbert", "QZ4471X", "19600101", "20260314"
# every way the identifiers could be written out; checked case-insensitively
LEAKS = [NAME, GIVEN, PATIENT_ID, BIRTH, "1960-01-01", STUDY_DATE, "2026-03-14"]
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}
_KEPT_CODES = {"SpecificCharacterSet", "ImageType", "Modality", "PhotometricInterpretation", "PatientPosition"}
_ADDED = ["PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
          "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "SeriesDescription",
          "ProtocolName", "PatientComments", "RequestingPhysician", "SequenceName", "DeviceSerialNumber",
          "BodyPartExamined", "OtherPatientNames", "PatientAddress", "AdditionalPatientHistory"]


def _identifying(ds: pydicom.Dataset) -> pydicom.Dataset:
    """`ds` with the patient's identifiers in every text attribute (public and private) and date."""
    for keyword in _ADDED:
        ds.add_new(keyword, pydicom.datadict.dictionary_VR(keyword), "")
    for element in ds.iterall():
        if element.tag.is_private_creator or element.keyword in _KEPT_CODES:
            continue
        if element.VR in _TEXT_VRS:
            element.value = f"{NAME}^{GIVEN}" if element.VR == "PN" else (
                GIVEN.upper() if element.VR == "SH" else f"{GIVEN} {NAME} {PATIENT_ID}")
        elif element.VR == "DA":
            element.value = STUDY_DATE
    ds.PatientID, ds.PatientBirthDate, ds.BodyPartExamined = PATIENT_ID, BIRTH, GIVEN.upper()
    return ds


@pytest.fixture(scope="module")
def phi_zip(tmp_path_factory) -> Path:
    """Six CT slices (pydicom's CT_small pixels) in folders and a zip named after the patient."""
    root = tmp_path_factory.mktemp("upload")
    folder = root / f"{NAME}^{GIVEN} {BIRTH}" / f"CT {GIVEN}"
    folder.mkdir(parents=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series, study = generate_uid(), generate_uid()
    for index in range(6):
        ds = _identifying(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [*template.ImagePositionPatient[:2], float(template.ImagePositionPatient[2]) + 5 * index]
        ds.save_as(folder / f"{GIVEN}_{NAME}_{index:03d}.dcm")
    archive = root / f"{NAME}_{GIVEN}_{BIRTH}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.dcm")):
            zf.write(path, path.relative_to(root))
    return archive


def _leaks(text: str) -> list[str]:
    return [value for value in LEAKS if value.casefold() in text.casefold()]


def _pdf_text(path: Path) -> str:
    """The PDF's page content (reportlab compresses it with zlib), read without reportlab."""
    raw = path.read_bytes()
    streams = [s.strip() for s in re.findall(rb"stream\r?\n(.*?)endstream", raw, re.DOTALL)]
    texts = []
    for stream in streams:
        if stream.rstrip().endswith(b"~>"):  # reportlab's default: ASCII85 over zlib
            stream = base64.a85decode(stream.strip().removeprefix(b"<~").removesuffix(b"~>"))
        try:
            texts.append(zlib.decompress(stream).decode("latin-1"))
        except zlib.error:
            texts.append(stream.decode("latin-1"))
    return raw.decode("latin-1") + "\n".join(texts)


# --- the gate's parts --------------------------------------------------------------------------


def test_annex_e_removes_the_identifying_attributes_the_standard_lists(phi_zip):
    """Attributes PS3.15 Table E.1-1 marks X, Z or D in the basic profile (checked against the standard's
    text, not the library's table): none keeps the patient's value; the technique stays."""
    with zipfile.ZipFile(phi_zip) as zf:
        original = pydicom.dcmread(zf.open(zf.namelist()[0]))
    header = deidentified_header(original)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "InstitutionAddress",
                    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StationName",
                    "SeriesDescription", "StudyDescription", "ProtocolName", "ImageComments", "PatientComments",
                    "AdditionalPatientHistory", "OtherPatientNames", "PatientAddress", "DeviceSerialNumber",
                    "RequestingPhysician", "AccessionNumber", "StudyDate", "StudyID"):
        assert not _leaks(str(header.get(keyword, ""))), keyword
    assert not any(element.tag.is_private for element in header)
    assert header.Modality == "CT" and float(header.SliceThickness) == 5.0 and float(header.KVP) == float(original.KVP)
    assert "PixelData" in original and "PixelData" not in header


@pytest.mark.parametrize("text, plain", [
    ("T1 MPRAGE SAG 1mm", True), ("CT HEAD W/O CONTRAST 5mm", True), ("AX FLAIR fs", True),
    ("Brain^Qorbert", False), ("CT head 2024-01-05", False), ("Zyxwv study", False), ("Head 19600101", False),
])
def test_only_plain_imaging_terms_pass_as_free_text(text, plain):
    assert is_plain_imaging_text(text) is plain


def test_scrub_removes_name_parts_ids_dates_and_file_names_whole_words_only():
    ids = PatientIdentifiers(patient_name="Zyxwv^Qorbert", patient_id="QZ4471X", birth_date="19600101",
                             file_names=("Zyxwv_Qorbert.zip",))
    gate = PrivacyGate(Settings(share_identifiers=False))
    text = "Is Qorbert's scan (QZ4471X, born 1960-01-01, file Zyxwv_Qorbert.zip) normal? Qorberts stays."
    scrubbed = gate.scrub(text, ids)
    assert _leaks(scrubbed.replace("Qorberts", "")) == [] and "Qorberts stays" in scrubbed
    assert PrivacyGate(Settings(share_identifiers=True)).scrub(text, ids) == text


def test_sharing_identifiers_switches_the_gate_off(phi_zip, tmp_path):
    shared = load_scan(phi_zip, Settings(cache_dir=tmp_path, share_identifiers=True))
    gated = load_scan(phi_zip, Settings(cache_dir=tmp_path))
    assert shared.name == phi_zip.name and GIVEN in shared.metadata.series_description
    assert gated.name == "scan.zip" and gated.metadata.series_description is None
    assert not _leaks(gated.metadata.model_dump_json()) and _leaks(shared.metadata.model_dump_json())
    assert any("withheld" in note for note in gated.metadata.notes)
    np.testing.assert_array_equal(shared.data, gated.data)


# --- end to end --------------------------------------------------------------------------------


class _PromptRecorder:
    """Keeps every prompt the real model is given (the model still answers)."""

    def __init__(self, model):
        self.prompts: list[str] = []
        for method in ("stream", "complete_json"):
            original = getattr(model, method)

            def recorded(messages, *args, _original=original, **kwargs):
                self.prompts.append("\n".join(m.content for m in messages))
                return _original(messages, *args, **kwargs)

            setattr(model, method, recorded)


@pytest.mark.slow
def test_identifiers_stay_out_of_prompts_logs_database_and_exports(phi_zip, tmp_path, caplog):
    from assistant.agent import Agent
    from assistant.models.registry import load_chat_model
    from assistant.auth import LOCAL_USER
    from assistant.reports.conversations import conversation_of
    from assistant.reports.store import ReportStore
    from assistant.reports.workflow import ReportDesk
    from assistant.segmentation.export import save_dicom_seg, save_nifti
    from assistant.session import ScanSession, ToolRecord
    from assistant.terminology.index import IndexOptions, open_term_index
    from tools.segment import SegmentArgs, SegmentResult, run_segmentation

    caplog.set_level(logging.DEBUG)
    settings = get_settings().model_copy(update={"share_identifiers": False, "reports_db": tmp_path / "db.sqlite3",
                                                 "max_agent_steps": 1})
    volume = load_scan(phi_zip, settings)
    session = ScanSession()
    session.load(volume)
    model = load_chat_model(settings, name="smollm2-135m")
    recorder = _PromptRecorder(model)
    agent = Agent(model, session, settings)
    agent.ask(f"Is this {GIVEN} {NAME}'s scan? What is the slice thickness?")  # the user names the patient, too
    agent.ask(f"Hello, who are you? I am looking after {GIVEN} {NAME}.")  # no tool answers this: the model writes it
    segmentation = run_segmentation(volume, SegmentArgs(structure="bone"))
    session.records.append(ToolRecord("segment", {"structure": "bone"}, SegmentResult(segmentation=segmentation)))

    store = ReportStore(settings.reports_db)
    store.save_conversation(conversation_of(session, "c1", LOCAL_USER, agent.history, scan_path=str(phi_zip)),
                            patient_id=volume.identifiers.patient_id)
    # a small real term index (DICOM/SNOMED codes, packaged embedder): what it codes does not matter here
    index = open_term_index(IndexOptions(sources=["dicom"], embedder="minilm-onnx", limit=300),
                            settings.model_copy(update={"cache_dir": tmp_path / "cache"}))
    desk = ReportDesk(settings, store, index)
    version = desk.draft(session, LOCAL_USER)
    exports = desk.export(version.report_id, tmp_path / "out", ["markdown", "pdf", "fhir", "dicom_sr"], volume, LOCAL_USER)
    seg_nifti = save_nifti(segmentation, volume, tmp_path / "out" / "bone.nii.gz")
    seg_dicom = save_dicom_seg(segmentation, volume, tmp_path / "out" / "bone-seg.dcm")

    assert recorder.prompts and all(not _leaks(prompt) for prompt in recorder.prompts), \
        [_leaks(p) for p in recorder.prompts]
    lines = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    assert lines and not [(line, _leaks(line)) for line in lines if _leaks(line)]
    with sqlite3.connect(settings.reports_db) as db:
        dump = "\n".join(db.iterdump())
    assert "c1" in dump and not _leaks(dump)
    by_suffix = {path.suffix: path for path in exports}
    assert not _leaks(by_suffix[".md"].read_text())
    pdf = _pdf_text(by_suffix[".pdf"])
    assert " Tj" in pdf or "TJ" in pdf  # the page text was decompressed, so the check below reads it
    assert not _leaks(pdf)
    nifti = nib.load(seg_nifti)
    assert not _leaks(seg_nifti.name + str(nifti.header)) and sorted(nifti.shape) == sorted(volume.shape)
    # the FHIR bundle is filed in the EHR under its patient (issue 22), like the SR in the PACS: it names them
    fhir = json.loads(by_suffix[".json"].read_text())
    [patient] = [e["resource"] for e in fhir["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patient["identifier"][0]["value"] == PATIENT_ID

    sr, seg = pydicom.dcmread(by_suffix[".dcm"]), pydicom.dcmread(seg_dicom)
    for exported in (sr, seg):  # PACS objects go back to the same patient's record
        assert str(exported.PatientName) == f"{NAME}^{GIVEN}" and exported.PatientID == PATIENT_ID
    assert isinstance(hd.seg.segread(seg_dicom), hd.seg.Segmentation)


def test_file_names_that_are_plain_imaging_words_are_not_scrubbed():
    ids = PatientIdentifiers(file_names=("brain.nii.gz", "series", "Qorbert_Zyxwv.zip"))
    scrubbed = PrivacyGate(Settings()).scrub("Segment the brain in this series of Qorbert_Zyxwv.zip", ids)
    assert scrubbed == "Segment the brain in this series of [identifier removed]"
