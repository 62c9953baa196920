"""A real Orthanc PACS with its DICOMweb plugin, started in a temporary folder for the PACS tests and benchmark.

Debian's `orthanc` and `orthanc-dicomweb` packages (scripts/setup installs them); the system service
never starts here, so this starts the binary itself. Orthanc 1.10 has no listen-address setting:
`RemoteAccessAllowed: false` makes it refuse every client but the loopback one, and its DICOM
(DIMSE) server is off.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which(ORTHANC) is None:
        return "Orthanc is not installed (Debian package orthanc, installed by scripts/setup)"
    if not DICOMWEB_PLUGIN.exists():
        return "the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    url: str
    process: subprocess.Popen

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, files: list[Path]) -> None:
        """Store files through Orthanc's own REST API (not DICOMweb, so that STOW is tested separately)."""
        with requests.Session() as session:
            for path in files:
                session.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30).raise_for_status()

    def clear(self) -> None:
        for study in requests.get(f"{self.url}/studies", timeout=10).json():
            requests.delete(f"{self.url}/studies/{study}", timeout=30).raise_for_status()


@contextmanager
def running_orthanc(folder: Path, ready_timeout_s: float = 60.0) -> Iterator[Orthanc]:
    """Orthanc on a free loopback port with its database in `folder`; stopped and waited for on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "scanchat-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpThreadsCount": 4, "ConcurrentJobs": 1,
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {process.returncode}; see {folder / 'orthanc.log'}")
            try:
                if requests.get(f"{url}/system", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer within {ready_timeout_s:g} s; see {folder / 'orthanc.log'}")
            time.sleep(0.2)
        yield Orthanc(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
