"""Export: Markdown here; PDF, FHIR and DICOM SR in their own modules. Nothing leaves unchecked.

`export_report` runs the checker first and refuses while a number in the report matches no
finding; the Markdown, PDF and FHIR files hold the report and its translations together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from assistant.reports.checks import ReportFlag, check_report
from assistant.reports.draft import sections_markdown
from assistant.reports.model import ReportError, ReportText, ReportVersion
from assistant.translation.refine import LANGUAGE_NAMES
from assistant.volume import Volume


class ExportPaths(BaseModel):
    """Where to write each format; None skips it."""

    markdown: Path | None = None
    pdf: Path | None = None
    fhir: Path | None = None
    dicom_sr: Path | None = None


def status_line(version: ReportVersion) -> str:
    when = version.created.strftime("%Y-%m-%d %H:%M UTC")
    if version.signed:
        return f"Version {version.number}, signed by {version.signed_by} on {version.signed_at:%Y-%m-%d %H:%M UTC}."
    return f"Version {version.number} by {version.author}, {when}: DRAFT, not signed."


def text_markdown(text: ReportText, template: str) -> str:
    return f"# {text.title}\n\n{sections_markdown(text, template)}\n"


def report_markdown(version: ReportVersion) -> str:
    """The report, then each translation, as one Markdown document."""
    content = version.content
    parts = [text_markdown(content.text, content.template), f"*{status_line(version)}*\n"]
    for translation in content.translations:
        language = LANGUAGE_NAMES.get(translation.language, translation.language)
        parts.append(f"\n---\n\n*{language} translation ({translation.engine or 'no engine'}).*\n\n"
                     + text_markdown(translation.text, content.template))
        if translation.notes:
            parts.append("\n" + "\n".join(f"> {note}" for note in translation.notes) + "\n")
        if translation.flagged_sentences:
            parts.append("\n**Sentences to check (a required term is missing):**\n"
                         + "\n".join(f"- {s}" for s in translation.flagged_sentences) + "\n")
    return "\n".join(parts)


def blocking_flags(version: ReportVersion) -> list[ReportFlag]:
    return [f for f in check_report(version.content.text, version.content.findings) if f.blocks_export]


def require_exportable(version: ReportVersion) -> None:
    """Refuse to export numbers that no finding supports."""
    if flags := blocking_flags(version):
        listed = "; ".join(f"{f.section}: {f.text!r}" for f in flags[:5])
        raise ReportError(f"The report states {len(flags)} number(s) that match no finding ({listed}). "
                          "Correct or remove them before exporting.")


def export_report(version: ReportVersion, paths: ExportPaths, volume: Volume | None = None,
                  segmentations: Sequence[Path] = ()) -> list[Path]:
    """Write every requested format after the grounding check; returns the files written."""
    from assistant.reports.dicom_sr import write_dicom_sr
    from assistant.reports.fhir import write_fhir
    from assistant.reports.pdf import write_pdf

    require_exportable(version)
    if paths.dicom_sr is not None and not version.content.scan.is_dicom:
        raise ReportError(f"A DICOM SR needs a DICOM input; this scan came from {version.content.scan.source_format}. "
                          "Export Markdown, PDF or FHIR instead, or load the DICOM series.")
    written = []
    if paths.markdown:
        paths.markdown.write_text(report_markdown(version), encoding="utf-8")
        written.append(paths.markdown)
    if paths.pdf:
        written.append(write_pdf(version, paths.pdf))
    if paths.fhir:
        written.append(write_fhir(version, paths.fhir, volume))
    if paths.dicom_sr:
        if volume is None:
            raise ReportError("A DICOM SR references the source series: load the scan before exporting it.")
        written.append(write_dicom_sr(version, volume, paths.dicom_sr, segmentations))
    return written
