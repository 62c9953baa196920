"""PDF export with reportlab: the report, its sign-off state, then each translation."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer

from assistant.reports.export import status_line
from assistant.reports.model import SECTION_TITLES, SECTIONS, ReportText, ReportVersion
from assistant.translation.refine import LANGUAGE_NAMES


def _text_flowables(text: ReportText, styles) -> list:
    flowables = [Paragraph(escape(text.title), styles["Title"])]
    for section in SECTIONS:
        flowables.append(Paragraph(SECTION_TITLES[section], styles["Heading2"]))
        for line in text.section(section).splitlines() or [""]:
            if line.strip():
                flowables.append(Paragraph(escape(line.lstrip("- ")), styles["Bullet" if line.startswith("- ") else "BodyText"]))
    return flowables


def write_pdf(version: ReportVersion, path: Path) -> Path:
    styles = getSampleStyleSheet()
    story = _text_flowables(version.content.text, styles)
    story += [Spacer(1, 6 * mm), Paragraph(f"<i>{escape(status_line(version))}</i>", styles["BodyText"])]
    for translation in version.content.translations:
        language = LANGUAGE_NAMES.get(translation.language, translation.language)
        story += [PageBreak(), Paragraph(f"<i>{escape(language)} translation</i>", styles["BodyText"])]
        story += _text_flowables(translation.text, styles)
        for sentence in translation.flagged_sentences:
            story.append(Paragraph(f"<b>Check:</b> {escape(sentence)}", styles["BodyText"]))
    document = SimpleDocTemplate(str(path), pagesize=A4, title=version.content.text.title,
                                 leftMargin=20 * mm, rightMargin=20 * mm, topMargin=18 * mm, bottomMargin=18 * mm)
    document.build(story)
    return path
