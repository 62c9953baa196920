"""Drive the running app in headless Chromium as a clinician would: every tool once, then the report flow.

After every turn the page must show no error (no component in an error state, no error toast), the chat must
still hold every earlier question, and the files the page offers must download and open with an independent
reader (nibabel, pydicom, the PDF header). Screenshots of each step and each turn's time in the browser are
written to the artifacts folder (``SCANCHAT_TEST_ARTIFACTS``, default ``tests/artifacts/browser``) for the CI log.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from assistant.scans.samples import sample_path

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SCANCHAT_TEST_ARTIFACTS", Path(__file__).parent / "artifacts" / "browser"))
TURN_TIMEOUT_MS = 420_000
TURN_SECONDS: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def exports_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, exports_dir, pytestconfig):
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is required for the browser test (scripts/setup installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    database = tmp_path_factory.mktemp("reports") / "reports.sqlite3"  # no conversation restored from earlier runs
    log_path = ARTIFACTS / "app.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "ui", "--port", str(port)],
        stdout=log_file, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "SCANCHAT_REPORTS_DB": str(database), "SCANCHAT_UI_EXPORTS_DIR": str(exports_dir)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # generous: a loaded CI machine imports slowly
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the app exited: {log_path.read_text()[-2000:]}")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the app did not start within 600 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log_file.close()
    server_log = log_path.read_text()
    assert "InvalidPathError" not in server_log, "the app refused to serve one of its own files"
    (ARTIFACTS / "turn_seconds.json").write_text(json.dumps(TURN_SECONDS, indent=1))
    terminal = pytestconfig.pluginmanager.get_plugin("terminalreporter")  # into the CI log, past output capture
    if terminal is not None:
        terminal.write_line(f"\nbrowser turn times (s): {json.dumps(TURN_SECONDS)}")
        terminal.write_line(f"screenshots in {ARTIFACTS}: {', '.join(sorted(p.name for p in ARTIFACTS.glob('*.png')))}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(app_url, browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1200})
    page.goto(app_url)
    yield page
    page.close()


# -- what a clinician sees -------------------------------------------------------------------


class Clinic:
    """One browser session: load a scan, ask, check the page after every step."""

    def __init__(self, page, name: str):
        self.page, self.name, self.questions, self.step = page, name, [], 0

    def shot(self, label: str) -> None:
        self.step += 1
        slug = re.sub(r"[^\w-]+", "-", label).strip("-")
        self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{self.step:02d}-{slug}.png"), full_page=True)

    def assert_no_error(self, label: str) -> None:
        """No component in Gradio's error state and no error toast; warnings are allowed (they are messages)."""
        self.shot(label)
        errors = self.page.evaluate(
            """() => [...document.querySelectorAll('.toast-body.error, .error')]
                   .filter(e => e.offsetParent !== null)
                   .map(e => (e.innerText || e.className).slice(0, 200))"""
        )
        assert errors == [], f"{label}: the page shows errors {errors}"
        chat = self.page.locator("#chat").inner_text()
        for earlier in self.questions:
            assert earlier[:40] in chat, f"{label}: the chat lost the earlier question {earlier!r}"

    def load_upload(self, path: Path, expected_info: str) -> None:
        self.page.locator("input[type=file]").first.set_input_files(str(path))
        self.page.get_by_role("button", name="Load scan").click()
        self.page.locator("#scan-info").get_by_text(expected_info).wait_for(timeout=120_000)
        self.assert_no_error("loaded")

    def load_sample(self, name: str, expected_info: str) -> None:
        self.page.locator("#sample input").click()
        self.page.get_by_role("option", name=name, exact=True).click()
        self.page.get_by_role("button", name="Load scan").click()
        self.page.locator("#scan-info").get_by_text(expected_info).wait_for(timeout=120_000)
        self.assert_no_error(f"loaded-{name}")

    def ask(self, question: str, tool: str, label: str, *, append: bool = False) -> str:
        """Send a question, wait for the tool's finished bubble and the end of the turn; returns the chat text."""
        box = self.page.locator("#message textarea")
        box.fill((box.input_value() if append else "") + question)
        full_question = box.input_value()
        turns_before = len(self.questions)
        started = time.monotonic()
        self.page.locator("#send").click()
        chat = self.page.locator("#chat")
        chat.get_by_text(re.compile(rf"{tool} \(\d+\.\d s\)")).last.wait_for(timeout=TURN_TIMEOUT_MS)
        self.page.locator("#model-info").get_by_text(f"Turn {turns_before + 1} took").wait_for(timeout=TURN_TIMEOUT_MS)
        TURN_SECONDS[label] = round(time.monotonic() - started, 1)
        self.questions.append(full_question)
        self.assert_no_error(label)
        return chat.inner_text()

    def downloads(self, tmp_path: Path, component: str = "#downloads") -> dict[str, Path]:
        """Fetch every file the component offers, as the browser would, by its link."""
        links = self.page.locator(f"{component} a[href]")
        links.first.wait_for(timeout=60_000)
        files = {}
        for href in links.evaluate_all("(links) => links.map(a => a.href)"):
            response = self.page.request.get(href)
            assert response.ok, f"{href}: HTTP {response.status}"
            name = Path(urllib.request.url2pathname(href.split("?")[0])).name
            target = tmp_path / name
            target.write_bytes(response.body())
            files[name] = target
        return files

    def view_colours(self, plane: str = "axial") -> int:
        """How many pixels of a view are coloured (an overlay): grey pixels have R = G = B."""
        src = self.page.locator(f"#view-{plane} img").get_attribute("src")
        data = self.page.request.get(src).body() if not src.startswith("data:") else _data_url_bytes(src)
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
        return int(((np.abs(pixels[..., 0] - pixels[..., 1]) > 30) | (np.abs(pixels[..., 1] - pixels[..., 2]) > 30)).sum())


def _data_url_bytes(src: str) -> bytes:
    import base64

    return base64.b64decode(src.split(",", 1)[1])


def _dicom_zip(tmp_path: Path) -> Path:
    series = sample_path("ct-head-dicom")
    archive = tmp_path / "head-ct-series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"series/{f.name}")
    return archive


# -- the tests ---------------------------------------------------------------------------------


def test_every_ct_tool_and_the_report_flow_through_the_page(page, tmp_path):
    from playwright.sync_api import expect

    clinic = Clinic(page, "ct")
    clinic.load_upload(_dicom_zip(tmp_path), "256 × 256 × 108 voxels")
    assert page.locator("#view-axial img").count() == 1

    chat = clinic.ask("What is the slice thickness of this scan?", "describe_scan", "describe")
    assert "1.5" in chat.split(clinic.questions[-1])[-1]

    page.locator("#view-axial img").click(position={"x": 120, "y": 120})
    expect(page.locator("#message textarea")).to_have_value(re.compile(r"Clicked point: voxel \[\d+, \d+, \d+\]"))
    clinic.ask("What is the intensity at this point?", "probe_intensity", "probe (click)", append=True)

    chat = clinic.ask("Measure the distance between voxel 10,10,10 and voxel 40,10,10.", "measure_distance", "measure")
    assert "mm" in chat.split(clinic.questions[-1])[-1]

    grey_pixels_coloured = clinic.view_colours()
    clinic.ask("Segment the skull and tell me its volume.", "segment", "segment")
    assert clinic.view_colours() > grey_pixels_coloured + 100, "the segmentation overlay is not shown"
    files = clinic.downloads(tmp_path)
    masks = [p for n, p in files.items() if n.endswith(".nii.gz")]
    assert len(masks) == 1, files
    mask = nib.load(masks[0])
    frames = sorted(sample_path("ct-head-dicom").iterdir())
    first = pydicom.dcmread(frames[0], stop_before_pixels=True)
    assert mask.shape == (len(frames), first.Rows, first.Columns)  # on the input's own grid: its frames, rows, columns
    assert int(np.asarray(mask.dataobj).sum()) > 1000
    segs = [pydicom.dcmread(p) for n, p in files.items() if n.endswith(".dcm")]
    assert len(segs) == 1 and segs[0].Modality == "SEG"

    chat = clinic.ask("What is the ICD-10 code for myocardial infarction?", "lookup_term", "lookup")
    assert "I21" in chat.split(clinic.questions[-1])[-1]

    clinic.ask("Which medical terms does this sentence mention: 'Acute pulmonary embolism with a small pleural effusion.'",
               "normalize_terms", "normalize")

    chat = clinic.ask("Translate into Spanish: The patient has a pulmonary embolism.", "translate_text", "translate")
    assert "embolia pulmonar" in chat.split(clinic.questions[-1])[-1].lower()

    _report_flow(clinic, tmp_path)


def _report_flow(clinic: Clinic, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = clinic.page
    page.get_by_role("tab", name="Report").click()
    panel = page.locator("#report-panel")
    panel.get_by_label("Clinical information", exact=True).first.fill("Headache after a fall.")
    started = time.monotonic()
    panel.get_by_role("button", name="Draft report from findings").click()
    findings = panel.get_by_label("Findings")
    expect(findings).not_to_have_value("", timeout=TURN_TIMEOUT_MS)
    TURN_SECONDS["report draft"] = round(time.monotonic() - started, 1)
    clinic.assert_no_error("report-drafted")

    findings.fill(findings.input_value() + "\nNo fracture seen by the reading doctor.")
    panel.get_by_role("button", name="Save edits").click()
    expect(panel).to_contain_text("Version 2 by local", timeout=60_000)
    clinic.assert_no_error("report-edited")

    panel.get_by_role("button", name="Sign off").click()
    expect(panel).to_contain_text("signed by local", timeout=60_000)  # the logged-in reviewer, never a typed name
    clinic.assert_no_error("report-signed")

    started = time.monotonic()
    panel.get_by_role("button", name="Translate", exact=True).click()
    expect(panel).to_contain_text("Spanish", timeout=TURN_TIMEOUT_MS)
    TURN_SECONDS["report translate"] = round(time.monotonic() - started, 1)
    clinic.assert_no_error("report-translated")

    panel.get_by_label("dicom_sr", exact=True).check()
    panel.get_by_role("button", name="Export").click()
    files = clinic.downloads(tmp_path, "#report-downloads")
    clinic.assert_no_error("report-exported")
    by_suffix = {"".join(Path(n).suffixes[-2:]): p for n, p in files.items()}
    assert by_suffix[".pdf"].read_bytes().startswith(b"%PDF")
    fhir = json.loads(by_suffix[".fhir.json"].read_text())
    assert fhir["resourceType"] in {"Bundle", "DiagnosticReport"}
    assert "No fracture seen by the reading doctor." in by_suffix[".md"].read_text()
    assert pydicom.dcmread(by_suffix[".sr.dcm"]).Modality == "SR"


def test_brain_mri_segmentation_and_anomaly_heat_map_through_the_page(page, tmp_path, exports_dir):
    clinic = Clinic(page, "mr")
    clinic.load_upload(sample_path("mr-t1-colin27"), "voxels")

    before = clinic.view_colours()
    chat = clinic.ask("Segment the brain and tell me its volume.", "segment", "segment brain (MR)")
    assert re.search(r"\d[\d,.]* ?(ml|mL|cm³|cm3)", chat.split(clinic.questions[-1])[-1]), "no volume in the answer"
    assert clinic.view_colours() > before + 100, "the brain mask overlay is not shown"
    mask = nib.load(clinic.downloads(tmp_path)["brain.nii.gz"])
    assert int(np.asarray(mask.dataobj).sum()) > 100_000  # a brain is over 1,000 ml of 1 mm voxels

    clinic.ask("Is anything abnormal in this brain?", "detect_anomalies", "anomaly")
    assert clinic.view_colours() > before + 100, "the anomaly heat map is not shown"
    anomaly_map = nib.load(clinic.downloads(tmp_path)["anomaly-map.nii.gz"])
    scan = nib.load(sample_path("mr-t1-colin27"))
    assert anomaly_map.shape[:3] == scan.shape[:3] and np.isfinite(np.asarray(anomaly_map.dataobj)).all()

    assert any(exports_dir.iterdir()), "the session's files should exist while its tab is open"
    page.close()  # closing the tab deletes the session's files (this session's and every earlier closed one's)
    deadline = time.time() + 60
    while any(exports_dir.iterdir()) and time.time() < deadline:
        time.sleep(1)
    assert not any(exports_dir.iterdir()), f"files left after the tab closed: {list(exports_dir.rglob('*'))}"


def test_single_slice_scan_opens_and_answers(page):
    clinic = Clinic(page, "single-slice")
    clinic.load_sample("ct-small-dicom", "128 × 128 × 1 voxels")
    assert page.locator("#view-axial img").count() == 1
    assert page.locator("#view-coronal img").count() == 1
    chat = clinic.ask("How many slices does this scan have?", "describe_scan", "describe (one slice)")
    assert "1" in chat.split(clinic.questions[-1])[-1]


def test_question_before_any_scan_gets_a_message_not_a_crash(page):
    clinic = Clinic(page, "no-scan")
    page.locator("#message textarea").fill("What is the slice thickness?")
    page.locator("#send").click()
    page.locator("#chat").get_by_text("No scan is loaded", exact=False).last.wait_for(timeout=TURN_TIMEOUT_MS)
    clinic.assert_no_error("no-scan")
    assert "Traceback" not in page.locator("#chat").inner_text()
