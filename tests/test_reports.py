"""Reports: drafted from real tool results on the sample scans, checked, versioned, exported and read back."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess

import highdicom as hd
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from assistant.auth import Role, User
from assistant.reports.checks import apply_all_fixes, check_report, term_flags
from assistant.reports.collect import collect_findings
from assistant.reports.draft import draft_report
from assistant.reports.export import ExportPaths, export_report
from assistant.reports.fhir import fhir_bundle
from assistant.reports.model import ReportError
from assistant.reports.store import ReportStore
from assistant.reports.workflow import ReportDesk
from assistant.scans.samples import load_sample
from assistant.session import ScanSession, ToolRecord
from assistant.terminology import get_term_index
from tools.measure_distance import MeasureDistanceArgs, measure_distance
from tools.probe_intensity import ProbeIntensityArgs, probe_intensity


DR_A = User(name="dr-a", role=Role.clinician)  # drafts and edits her own reports
DR_B = User(name="dr-b", role=Role.reviewer)  # reads every report and signs
DR_C = User(name="dr-c", role=Role.reviewer)


def _session_with_measurements(sample: str) -> ScanSession:
    """A session on a sample scan with two real tool results: a distance and a mean intensity."""
    session = ScanSession()
    session.load(load_sample(sample))
    volume = session.volume
    distance_args = MeasureDistanceArgs(point_a=[20, 30, 20], point_b=[200, 210, 80])
    probe_args = ProbeIntensityArgs(radius_mm=5.0)
    session.records += [
        ToolRecord("measure_distance", distance_args.model_dump(), measure_distance(volume, distance_args)),
        ToolRecord("probe_intensity", probe_args.model_dump(), probe_intensity(volume, probe_args)),
    ]
    return session


@pytest.fixture(scope="module")
def index():
    return get_term_index()


@pytest.fixture(scope="module")
def ct_session() -> ScanSession:
    return _session_with_measurements("ct-head")


@pytest.fixture(scope="module")
def dicom_session() -> ScanSession:
    return _session_with_measurements("ct-head-dicom")


@pytest.fixture
def desk(tmp_path, index) -> ReportDesk:
    return ReportDesk(store=ReportStore(tmp_path / "reports.sqlite3"), index=index)


def test_every_number_in_a_drafted_report_is_a_measured_finding(ct_session, index):
    content = draft_report(ct_session, index=index)
    distance = next(f for f in content.findings if f.source_tool == "measure_distance").quantities[0]
    assert f"{distance.value:g} mm" in content.text.findings
    assert "Slice thickness" in content.text.technique
    assert [f for f in check_report(content.text, content.findings, index) if f.kind == "ungrounded_number"] == []


def test_grounding_flags_an_edited_in_number_and_a_wrong_unit(ct_session, index):
    content = draft_report(ct_session, index=index)
    distance = next(f for f in content.findings if f.source_tool == "measure_distance").quantities[0]
    edited = content.text.model_copy(update={
        "impression": f"A 23 mm lesion. The distance is {distance.value / 10:g} cm, i.e. {distance.value:g} mm."})
    flagged = [f.text for f in check_report(edited, content.findings) if f.kind == "ungrounded_number"]
    assert flagged == ["23 mm", f"{distance.value / 10:g} cm"]


def test_export_is_refused_while_a_number_is_ungrounded(desk, ct_session, tmp_path):
    version = desk.draft(ct_session, DR_A)
    text = version.content.text.model_copy(update={"impression": "Haematoma of 31.5 mL."})
    edited = desk.edit(version.report_id, text, DR_A, version.number, ct_session.volume)
    with pytest.raises(ReportError, match="31.5 mL"):
        desk.export(version.report_id, tmp_path / "out", ["markdown"], ct_session.volume, DR_A)
    with pytest.raises(ReportError, match="31.5 mL"):
        desk.sign(version.report_id, DR_B, ct_session.volume)
    assert edited.number == 2


def test_a_scan_without_findings_and_a_session_without_a_scan_get_clear_messages():
    session = ScanSession()
    with pytest.raises(ValueError, match="No scan is loaded"):
        draft_report(session)
    session.load(load_sample("ct-small-dicom"))
    with pytest.raises(ReportError, match="no findings"):
        collect_findings(session)


def test_a_report_about_another_scan_is_refused(desk, ct_session, tmp_path):
    version = desk.draft(ct_session, DR_A)
    other = load_sample("ct-small-dicom")
    with pytest.raises(ReportError, match="another scan"):
        desk.edit(version.report_id, version.content.text, DR_A, version.number, other)
    with pytest.raises(ReportError, match="another scan"):
        desk.export(version.report_id, tmp_path, ["pdf"], other, DR_A)


def test_versions_and_sign_off_survive_reopening_the_database(desk, ct_session):
    first = desk.draft(ct_session, DR_A)
    rid = first.report_id
    second = desk.edit(rid, first.content.text.model_copy(update={"clinical_information": "Headache."}), DR_A,
                       first.number, ct_session.volume)
    desk.sign(rid, DR_B, ct_session.volume)
    third = desk.edit(rid, second.content.text.model_copy(update={"clinical_information": "Headache, fall."}), DR_C,
                      second.number, ct_session.volume)
    with pytest.raises(ReportError, match="after the version 2"):
        desk.edit(rid, second.content.text, DR_A, second.number, ct_session.volume)

    reopened = ReportStore(desk.store.path).versions(rid, DR_A)
    assert [(v.number, v.author, v.signed_by) for v in reopened] == [(1, "dr-a", None), (2, "dr-a", "dr-b"), (3, "dr-c", None)]
    assert reopened[1].signer_role == "reviewer" and {v.owner for v in reopened} == {"dr-a"}
    assert reopened[1].changed_sections == ["clinical_information"]
    assert reopened[2].change_note == "edited clinical_information after sign-off"
    assert reopened[2].content.text.clinical_information == "Headache, fall." == third.content.text.clinical_information
    with sqlite3.connect(desk.store.path) as db, pytest.raises(sqlite3.IntegrityError, match="signed versions are final"):
        db.execute("UPDATE versions SET content = '{}' WHERE report_id = ? AND number = 2", (rid,))


def test_text_typed_but_not_saved_survives_a_closed_browser(desk, ct_session):
    first = desk.draft(ct_session, DR_A)
    typed = first.content.text.model_copy(update={"impression": "Typed, never saved."})
    desk.store.keep_unsaved(first.report_id, first.number, DR_A, typed)

    reopened = ReportDesk(desk.settings, ReportStore(desk.store.path), desk.index)  # a restart: nothing in memory
    latest = reopened.latest_for_scan(ct_session.volume, DR_A)
    assert latest.report_id == first.report_id
    unsaved = reopened.store.unsaved(latest.report_id, DR_A)
    assert unsaved is not None and unsaved.based_on == first.number and unsaved.text.impression == "Typed, never saved."

    reopened.edit(latest.report_id, unsaved.text, DR_A, unsaved.based_on, ct_session.volume)
    assert reopened.store.unsaved(latest.report_id, DR_A) is None  # a saved version supersedes the kept text
    assert reopened.store.latest(latest.report_id, DR_A).content.text.impression == "Typed, never saved."
    with pytest.raises(ReportError, match="no saved report"):
        reopened.latest_for_scan(load_sample("mr-t1-mni152"), DR_A)


def test_fhir_bundle_validates_and_carries_the_measured_values(desk, ct_session):
    version = desk.sign(desk.draft(ct_session, DR_A).report_id, DR_B, ct_session.volume)
    bundle = Bundle.model_validate(fhir_bundle(version))
    report, *observations = [entry.resource for entry in bundle.entry]
    assert report.get_resource_type() == "DiagnosticReport" and report.status == "final"
    values = {(float(o.valueQuantity.value), o.valueQuantity.code) for o in observations if o.valueQuantity}
    distance = next(f for f in version.content.findings if f.source_tool == "measure_distance").quantities[0]
    assert (distance.value, "mm") in values
    assert len(report.result) == len(observations) == len(version.content.findings)
    # published codes: LOINC 18748-4 "Diagnostic imaging study", HL7 v2-0074 RAD, UCUM "mm" and "[hnsf'U]"
    assert [(c.system, c.code) for c in report.code.coding] == [("http://loinc.org", "18748-4")]
    assert [(c.system, c.code) for c in report.category[0].coding] == [("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD")]
    assert {entry.fullUrl for entry in bundle.entry[1:]} == {r.reference for r in report.result}
    units = {(o.valueQuantity.system, o.valueQuantity.code) for o in observations if o.valueQuantity}
    assert ("http://unitsofmeasure.org", "mm") in units and ("http://unitsofmeasure.org", "[hnsf'U]") in units
    # the patient and imaging-study links (subject, ImagingStudy) are the FHIR export rework's (branch pacs) to test


def test_fhir_observation_codes_a_finding_in_the_published_code_systems():
    """System URIs from the FHIR R4 terminology pages (SNOMED CT, ICD-10, ICD-10-CM); codes as the term index gave them."""
    from assistant.findings import Finding, Quantity
    from assistant.reports.fhir import observation

    coded = Finding(kind="term", what="pulmonary embolism", codes={"ICD-10": "I26", "SNOMED": "59282003", "UMLS": "C0034065"},
                    source_tool="lookup_term")
    resource = Observation.model_validate(observation(coded, "final"))
    assert [(c.system, c.code) for c in resource.code.coding] == [("http://hl7.org/fhir/sid/icd-10", "I26"),
                                                                   ("http://snomed.info/sct", "59282003")]
    assert resource.status == "final" and resource.valueQuantity is None
    cm = Observation.model_validate(observation(coded.model_copy(update={"codes": {"ICD-10-CM": "I26.99"}}), "preliminary"))
    assert [(c.system, c.code) for c in cm.code.coding] == [("http://hl7.org/fhir/sid/icd-10-cm", "I26.99")]
    measured = Finding(kind="measurement", what="intensity", quantities=[Quantity(value=-998.7, unit="HU")],
                       source_tool="probe_intensity")
    resource = Observation.model_validate(observation(measured, "final"))
    assert [(c.system, c.code) for c in resource.code.coding] == [("urn:scanchat:finding", "measurement")]
    assert (float(resource.valueQuantity.value), resource.valueQuantity.system, resource.valueQuantity.code) == (
        -998.7, "http://unitsofmeasure.org", "[hnsf'U]")
    fov = Finding(kind="technique", what="field of view", source_tool="describe_scan",
                  quantities=[Quantity(value=v, unit="mm") for v in (250.0, 250.0, 160.5)])
    components = Observation.model_validate(observation(fov, "final")).component
    assert [(float(c.valueQuantity.value), c.valueQuantity.code) for c in components] == [(250.0, "mm"), (250.0, "mm"), (160.5, "mm")]


def test_dicom_sr_references_the_source_series_and_reads_back(desk, dicom_session, tmp_path):
    version = desk.draft(dicom_session, DR_A)
    [path] = desk.export(version.report_id, tmp_path, ["dicom_sr"], dicom_session.volume, DR_A)
    sr = hd.sr.srread(path)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == version.content.scan.series_instance_uid
    assert len(evidence.ReferencedSOPSequence) == len(dicom_session.volume.dicom_sources)
    distance = next(f for f in version.content.findings if f.source_tool == "measure_distance").quantities[0]
    measured = [(float(m.value), m.unit.value) for group in sr.content.get_image_measurement_groups()
                for m in group.get_measurements()]
    assert (distance.value, "mm") in measured
    if shutil.which("dsrdump"):
        dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=True).stdout
        assert f'"{distance.value:g}" (mm,UCUM' in dump


def test_dicom_sr_for_a_nifti_scan_is_refused_with_a_reason(desk, ct_session, tmp_path):
    version = desk.draft(ct_session, DR_A)
    with pytest.raises(ReportError, match="needs a DICOM input"):
        export_report(version, ExportPaths(dicom_sr=tmp_path / "r.dcm"), volume=ct_session.volume)


def test_checker_unifies_synonyms_of_one_concept(index):
    from assistant.findings import Finding
    from assistant.reports.model import ReportText

    hits = [h for h in index.search("myocardial infarction", k=5) if len(h.concept.synonyms) >= 1]
    concept = hits[0].concept
    synonym = next(s for s in concept.synonyms if s.casefold() != concept.preferred.casefold())
    finding = Finding(kind="term", what=concept.preferred, concept_id=concept.id, source_tool="lookup_term")
    text = ReportText(impression=f"History of {concept.preferred}. No sign of new {synonym}.")
    flags = [f for f in term_flags("impression", text.impression, [finding], index) if f.kind == "inconsistent_term"]
    assert flags and flags[0].fix == concept.preferred
    fixed = apply_all_fixes(text, flags)
    assert fixed.impression.count(concept.preferred) == 2
    assert not [f for f in term_flags("impression", fixed.impression, [finding], index) if f.kind == "inconsistent_term"]


@pytest.mark.slow
def test_small_model_phrases_only_grounded_impressions(ct_session, index):
    from assistant.config import get_settings
    from assistant.models.registry import load_chat_model

    model = load_chat_model(get_settings(), name="smollm2-135m")
    content = draft_report(ct_session, model=model, index=index)
    assert content.text.impression.strip()
    assert not [f for f in check_report(content.text, content.findings) if f.kind == "ungrounded_number"]


@pytest.mark.slow
@pytest.mark.usefixtures("apertium")
def test_translation_keeps_the_report_and_is_exported_with_it(desk, ct_session, tmp_path):
    version = desk.draft(ct_session, DR_A)
    translated = desk.translate(version.report_id, "es", DR_A, ct_session.volume)
    [translation] = translated.content.translations
    assert translation.language == "es" and translation.text.findings != version.content.text.findings
    [markdown] = desk.export(version.report_id, tmp_path, ["markdown"], ct_session.volume, DR_A)
    text = markdown.read_text()
    assert version.content.text.findings in text and translation.text.findings in text


def test_report_panel_mounts_and_shows_flags_inline(ct_session, tmp_path):
    import gradio as gr

    from ui.report_panel import build_report_panel, inline_flags

    content = draft_report(ct_session)
    text = content.text.model_copy(update={"impression": "A 23 mm lesion."})
    segments = inline_flags(text, check_report(text, content.findings))
    assert ("23 mm", "ungrounded number") in segments
    with gr.Blocks():
        components = build_report_panel(gr.State(None), desk=ReportDesk(store=ReportStore(tmp_path / "r.sqlite3")))
    assert {"draft", "sign", "translate", "downloads"} <= set(components)


@pytest.mark.slow
@pytest.mark.usefixtures("apertium")
def test_a_glossary_conflict_on_a_reported_term_is_refused_and_saves_nothing(desk, ct_session, tmp_path):
    from assistant.terminology.glossary import load_glossary

    version = desk.draft(ct_session, DR_A)
    path = tmp_path / "conflict.csv"
    path.write_text("source,target,lang\nslice thickness,grosor de corte,es\nslice thickness,espesor de corte,es\n"
                    "brain,encéfalo,es\nbrain,cerebro,es\n", encoding="utf-8")
    assert "slice thickness" in version.content.text.technique.casefold()
    with pytest.raises(ReportError, match="grosor de corte / espesor de corte"):
        desk.translate(version.report_id, "es", DR_A, ct_session.volume, glossary=load_glossary(path))
    assert [v.number for v in desk.store.versions(version.report_id, DR_A)] == [1]  # nothing half-translated was saved


def test_a_crash_in_the_middle_of_a_save_loses_no_version(desk, ct_session):
    """A process killed between writing a version and committing it: the earlier versions are
    intact, the half-written one is gone, and the next save works (no lock left behind)."""
    import os
    import sys
    import textwrap

    first = desk.draft(ct_session, DR_A)
    desk.sign(first.report_id, DR_B, ct_session.volume)
    crash = textwrap.dedent(f"""
        import os, signal
        import sqlalchemy as sa
        from assistant.auth import User
        from assistant.reports.store import ReportStore
        store = ReportStore({str(desk.store.path)!r})
        latest = store.latest({first.report_id!r}, User(name="dr-a", role="clinician"))
        half = latest.model_copy(update={{"number": 2, "author": "Dr Crash", "signed_at": None, "signed_by": None}})
        with store.db.transaction() as db:
            store._insert(db, half)
            db.execute(sa.text("UPDATE reports SET created = 'x' WHERE id = :id"), {{"id": {first.report_id!r}}})
            os.kill(os.getpid(), signal.SIGKILL)  # dies before COMMIT, as a power cut would
    """)
    run = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, env=os.environ, timeout=120)
    assert run.returncode == -9, run.stderr[-2000:]
    versions = ReportStore(desk.store.path).versions(first.report_id, DR_A)
    assert [(v.number, v.author, v.signed_by) for v in versions] == [(1, "dr-a", "dr-b")]
    assert versions[0].content == first.content
    text = first.content.text.model_copy(update={"clinical_information": "Headache."})
    assert desk.edit(first.report_id, text, DR_B, 1, ct_session.volume).number == 2


def test_conversation_and_findings_survive_a_restart(ct_session, tmp_path):
    from assistant.models.base import Message
    from assistant.reports.conversations import conversation_of, restore_session

    def facts(findings):  # a finding's creation time is when it was collected, not part of the fact
        return [f.model_dump(exclude={"created"}) for f in findings]

    database = tmp_path / "reports.sqlite3"
    measurement = next(r for r in ct_session.records if r.name == "measure_distance")
    chat = [Message(role="user", content="How far apart are these two points?"),
            Message(role="tool", name="measure_distance", content=measurement.result.summary()),
            Message(role="assistant", content="Here is the measured distance.")]
    ReportStore(database).save_conversation(conversation_of(ct_session, "conv-1", DR_A, chat, "ct-head"))
    measured = facts(collect_findings(ct_session))

    saved = ReportStore(database).conversation("conv-1", DR_A)  # a new process would open the file like this
    assert saved.messages == chat and facts(saved.findings) == measured
    restored = restore_session(saved, load_sample("ct-head"))
    assert facts(collect_findings(restored)) == measured
    content = draft_report(restored)
    distance = measurement.result.findings(measurement.arguments)[0].quantities[0]
    assert f"{distance.value:g} mm" in content.text.findings
    with pytest.raises(ReportError, match="another scan"):
        restore_session(saved, load_sample("ct-small-dicom"))
