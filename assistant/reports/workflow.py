"""What the report panel and the CLI do with a report, in one place: draft, edit, fix, sign, translate, export.

Every operation that touches a stored report first checks that the scan on screen is the one
the report describes, and every change is saved as a new version in the `ReportStore`.
"""

from __future__ import annotations

from pathlib import Path

from assistant.config import Settings, get_settings
from assistant.imaging.progress import ProgressCallback
from assistant.models.base import ChatModel
from assistant.reports.checks import ReportFlag, apply_all_fixes, check_report
from assistant.reports.collect import require_same_scan, scan_fingerprint
from assistant.reports.draft import draft_report
from assistant.reports.export import ExportPaths, export_report, require_exportable
from assistant.reports.model import ReportError, ReportText, ReportVersion
from assistant.reports.store import ReportStore
from assistant.reports.translate import translate_report, with_translation
from assistant.session import ScanSession
from assistant.terminology.glossary import Glossary
from assistant.volume import Volume

EXPORT_FORMATS = {"markdown": ".md", "pdf": ".pdf", "fhir": ".fhir.json", "dicom_sr": ".sr.dcm"}


class ReportDesk:
    """Report operations over one store and the shared term index (loaded on first use)."""

    def __init__(self, settings: Settings | None = None, store: ReportStore | None = None, index=None):
        self.settings = settings or get_settings()
        self.store = store or ReportStore(settings=self.settings)
        self._index = index

    @property
    def index(self):
        if self._index is None:
            from assistant.terminology import get_term_index

            self._index = get_term_index(self.settings)
        return self._index

    def draft(self, session: ScanSession, author: str, *, model: ChatModel | None = None,
              clinical_information: str = "", progress: ProgressCallback | None = None) -> ReportVersion:
        content = draft_report(session, model=model, index=self.index, wordings=self.store.wordings(),
                               clinical_information=clinical_information, progress=progress)
        return self.store.create(content, author)

    def check(self, version: ReportVersion) -> list[ReportFlag]:
        return check_report(version.content.text, version.content.findings, self.index)

    def latest_for_scan(self, volume: Volume | None) -> ReportVersion:
        """The newest report of this scan (after a restart or a closed browser), to go on editing."""
        if volume is None:
            raise ReportError("Load the scan whose report you want to open.")
        reports = self.store.reports_for_scan(scan_fingerprint(volume))
        if not reports:
            raise ReportError("This scan has no saved report yet; draft one from the findings.")
        return self.store.latest(reports[-1])

    def edit(self, report_id: str, text: ReportText, author: str, based_on: int, volume: Volume | None,
             note: str = "") -> ReportVersion:
        latest = self.store.latest(report_id)
        require_same_scan(latest.content.scan, volume)
        content = latest.content.model_copy(update={"text": text})
        return self.store.save(report_id, content, author, note, based_on=based_on)

    def fix_all(self, report_id: str, author: str, volume: Volume | None) -> ReportVersion:
        """Apply every fix the checker offers (one wording per concept, spelled-out abbreviations)."""
        latest = self.store.latest(report_id)
        fixed = apply_all_fixes(latest.content.text, self.check(latest))
        return self.edit(report_id, fixed, author, latest.number, volume, "applied the checker's fixes")

    def sign(self, report_id: str, signer: str, volume: Volume | None) -> ReportVersion:
        """Sign the latest version, unless it states numbers no finding supports."""
        latest = self.store.latest(report_id)
        require_same_scan(latest.content.scan, volume)
        require_exportable(latest)
        return self.store.sign(report_id, signer)

    def translate(self, report_id: str, language: str, author: str, volume: Volume | None, *,
                  glossary: Glossary | None = None, progress: ProgressCallback | None = None) -> ReportVersion:
        latest = self.store.latest(report_id)
        require_same_scan(latest.content.scan, volume)
        translation = translate_report(latest.content, language, glossary=glossary, settings=self.settings,
                                       progress=progress)
        return self.store.save(report_id, with_translation(latest.content, translation), author,
                               f"translated to {language}", based_on=latest.number)

    def export(self, report_id: str, folder: Path, formats: list[str], volume: Volume | None,
               segmentations: list[Path] | None = None) -> list[Path]:
        """Write the latest version in each format into `folder` (file names: report id and version)."""
        latest = self.store.latest(report_id)
        require_same_scan(latest.content.scan, volume)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"report-{report_id}-v{latest.number}"
        paths = ExportPaths(**{fmt: stem.with_name(stem.name + EXPORT_FORMATS[fmt]) for fmt in formats})
        return export_report(latest, paths, volume=volume, segmentations=segmentations or ())
