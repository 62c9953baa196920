"""What the report panel and the CLI do with a report, in one place: draft, edit, fix, sign, translate, export.

Every operation that touches a stored report first checks that the scan on screen is the one
the report describes, and every change is saved as a new version in the `ReportStore`. Each
operation is made by a logged-in `User`: the store decides what that user may open (own reports,
or all for a reviewer) and sign (reviewers only), and writes each change to the audit trail.
"""

from __future__ import annotations

from pathlib import Path

from assistant.auth import User
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

    def draft(self, session: ScanSession, user: User, *, model: ChatModel | None = None,
              clinical_information: str = "", progress: ProgressCallback | None = None) -> ReportVersion:
        """A new report owned by `user`; the patient is remembered only as a keyed hash, for erasure."""
        content = draft_report(session, model=model, index=self.index, wordings=self.store.wordings(),
                               clinical_information=clinical_information, progress=progress)
        return self.store.create(content, user, patient_id=session.require_volume().identifiers.patient_id)

    def check(self, version: ReportVersion) -> list[ReportFlag]:
        return check_report(version.content.text, version.content.findings, self.index)

    def latest_for_scan(self, volume: Volume | None, user: User) -> ReportVersion:
        """The newest report of this scan that `user` may open (after a restart or a closed browser)."""
        if volume is None:
            raise ReportError("Load the scan whose report you want to open.")
        reports = self.store.reports_for_scan(scan_fingerprint(volume), user)
        if not reports:
            raise ReportError("This scan has no saved report yet; draft one from the findings.")
        return self.store.latest(reports[-1], user)

    def edit(self, report_id: str, text: ReportText, user: User, based_on: int, volume: Volume | None,
             note: str = "") -> ReportVersion:
        latest = self.store.latest(report_id, user)
        require_same_scan(latest.content.scan, volume)
        content = latest.content.model_copy(update={"text": text})
        return self.store.save(report_id, content, user, note, based_on=based_on)

    def fix_all(self, report_id: str, user: User, volume: Volume | None) -> ReportVersion:
        """Apply every fix the checker offers (one wording per concept, spelled-out abbreviations)."""
        latest = self.store.latest(report_id, user)
        fixed = apply_all_fixes(latest.content.text, self.check(latest))
        return self.edit(report_id, fixed, user, latest.number, volume, "applied the checker's fixes")

    def sign(self, report_id: str, signer: User, volume: Volume | None) -> ReportVersion:
        """Sign the latest version as the logged-in reviewer, unless it states numbers no finding supports."""
        latest = self.store.latest(report_id, signer)
        require_same_scan(latest.content.scan, volume)
        require_exportable(latest)
        return self.store.sign(report_id, signer)

    def translate(self, report_id: str, language: str, user: User, volume: Volume | None, *,
                  glossary: Glossary | None = None, progress: ProgressCallback | None = None) -> ReportVersion:
        latest = self.store.latest(report_id, user)
        require_same_scan(latest.content.scan, volume)
        translation = translate_report(latest.content, language, glossary=glossary, settings=self.settings,
                                       progress=progress)
        return self.store.save(report_id, with_translation(latest.content, translation), user,
                               f"translated to {language}", based_on=latest.number, action="translate")

    def export(self, report_id: str, folder: Path, formats: list[str], volume: Volume | None, user: User,
               segmentations: list[Path] | None = None) -> list[Path]:
        """Write the latest version in each format into `folder` (file names: report id and version)."""
        latest = self.store.latest(report_id, user)
        require_same_scan(latest.content.scan, volume)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"report-{report_id}-v{latest.number}"
        paths = ExportPaths(**{fmt: stem.with_name(stem.name + EXPORT_FORMATS[fmt]) for fmt in formats})
        written = export_report(latest, paths, volume=volume, segmentations=segmentations or ())
        self.store.record_export(latest, user, formats)
        return written
