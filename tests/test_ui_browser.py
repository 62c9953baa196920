"""Drive the running app in headless Chromium: upload -> question -> visible tool call -> answer."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from assistant.scans.samples import sample_path

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is required for the browser test (scripts/setup installs it)")
    port = _free_port()
    database = tmp_path_factory.mktemp("reports") / "reports.sqlite3"  # no conversation restored from earlier runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "SCANCHAT_REPORTS_DB": str(database)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the app exited: {proc.stdout.read()[-2000:]}")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the app did not start within 180 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


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
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(app_url)
    yield page
    page.close()


def test_upload_question_tool_call_answer(page, tmp_path):
    from playwright.sync_api import expect

    scan = sample_path("ct-head")
    page.locator("input[type=file]").first.set_input_files(str(scan))
    page.get_by_role("button", name="Load scan").click()
    page.get_by_text("256 × 256 × 108 voxels").wait_for(timeout=60_000)
    assert page.locator("#view-axial img").count() == 1  # the axial view shows a slice

    page.locator("#message textarea").fill("What is the slice thickness of this scan?")
    page.locator("#send").click()
    page.locator("#chat").get_by_text("describe_scan").first.wait_for(timeout=300_000)
    page.locator("#chat").get_by_text("1.5", exact=False).last.wait_for(timeout=300_000)
    page.screenshot(path=str(tmp_path / "answer.png"))
    chat = page.locator("#chat")  # Gradio re-renders the chat as the answer streams: assertions retry until it settles
    expect(chat).to_contain_text("describe_scan", timeout=60_000)
    expect(chat).to_contain_text("1.5", timeout=60_000)


def test_question_before_any_scan_gets_a_message_not_a_crash(page):
    page.locator("#message textarea").fill("What is the slice thickness?")
    page.locator("#send").click()
    page.locator("#chat").get_by_text("scan", exact=False).last.wait_for(timeout=300_000)
    assert "Traceback" not in page.locator("#chat").inner_text()
