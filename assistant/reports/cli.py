"""`scanchat report SCAN [--ask ...] [--lang es] --out report.pdf [--md] [--fhir] [--sr]`: batch reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


def _progress_bar(description: str):
    bar = tqdm(total=100, desc=description, file=sys.stderr, leave=False, bar_format="{desc}: {percentage:3.0f}% {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message)

    return bar, progress


def _run(args: argparse.Namespace) -> int:
    from assistant.agent import Agent
    from assistant.auth import command_line_user
    from assistant.commands import settings_from_args as settings_from  # one settings object for every command
    from assistant.models.registry import load_chat_model
    from assistant.reports.export import ExportPaths, export_report
    from assistant.reports.model import ReportError
    from assistant.reports.workflow import ReportDesk
    from assistant.scans.loading import load_scan
    from assistant.session import ScanSession
    from assistant.terminology.glossary import load_glossary

    if not (args.out or args.md or args.fhir or args.sr or args.push):
        raise ReportError("Say where to write the report: --out report.pdf, --md, --fhir, --sr or --push.")
    if args.push and not args.sign:
        raise ReportError("Only a signed report goes to the PACS: add --sign (as a reviewer, --user NAME).")
    settings = settings_from(args)
    if args.db:
        settings = settings.model_copy(update={"reports_db": Path(args.db)})
    session = ScanSession()
    session.load(load_scan(args.scan, settings))
    model = None if args.no_llm and not args.ask else load_chat_model(settings)
    if args.ask:
        agent = Agent(model, session, settings)
        for question in tqdm(args.ask, desc="tool calls", file=sys.stderr, leave=False):
            agent.ask(question)
    desk = ReportDesk(settings)
    user = command_line_user(desk.store.users, args.user)
    bar, progress = _progress_bar("report")
    with bar:
        version = desk.draft(session, user, model=None if args.no_llm else model,
                             clinical_information=args.clinical or "", progress=progress)
        if args.lang:
            glossary = load_glossary(args.glossary) if args.glossary else None
            version = desk.translate(version.report_id, args.lang, user, session.volume, glossary=glossary,
                                     progress=progress)
    if args.sign:
        version = desk.sign(version.report_id, user, session.volume)
    for flag in desk.check(version):
        print(f"[{flag.kind}] {flag.section}: {flag.message}", file=sys.stderr)
    for translation in version.content.translations:
        for note in [*translation.notes, *(f"check translated sentence: {s}" for s in translation.flagged_sentences)]:
            print(f"[translation {translation.language}] {note}", file=sys.stderr)
    paths = ExportPaths(pdf=args.out, markdown=args.md, fhir=args.fhir, dicom_sr=args.sr)
    written = export_report(version, paths, volume=session.volume, segmentations=args.seg or ())
    desk.store.record_export(version, user, [fmt for fmt, path in paths.model_dump().items() if path])
    print(f"report {version.report_id} version {version.number} (drafted by {version.content.drafted_by}) "
          f"in {desk.store.db.where}")
    for path in written:
        print(f"wrote {path}")
    if args.push:  # after the signed version is stored: a failed push never loses it
        from assistant.scans.pacs import push_session

        pushed = push_session(session, version, settings, seg_files=args.seg or ())
        print(pushed.summary())
        return 0 if pushed.ok else 1
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="draft, check and export a report about a scan")
    p.add_argument("scan", help="scan file, DICOM folder, or dicomweb:STUDY_UID[/SERIES_UID]")
    p.add_argument("--ask", action="append", help="a request for the agent before drafting (repeatable)")
    p.add_argument("--lang", help="also translate the report into this language (es, pt, de, fr)")
    p.add_argument("--glossary", help="CSV or TBX glossary of required translations")
    p.add_argument("--out", type=Path, help="PDF file to write")
    p.add_argument("--md", type=Path, help="Markdown file to write")
    p.add_argument("--fhir", type=Path, help="FHIR R4B Bundle (DiagnosticReport, Observations, Patient, ImagingStudy) JSON to write")
    p.add_argument("--sr", type=Path, help="DICOM SR (TID 1500) to write; DICOM inputs only")
    p.add_argument("--seg", type=Path, action="append", help="DICOM SEG of this series to reference in the SR")
    p.add_argument("--clinical", help="clinical information (the request's question)")
    p.add_argument("--user", help="the user the report is saved as (required once users exist; see `scanchat users`)")
    p.add_argument("--sign", action="store_true", help="sign the drafted version as --user (a reviewer; refused if a "
                                                       "number is unsupported)")
    p.add_argument("--push", action="store_true", help="send the signed report (DICOM SR) and a DICOM SEG per "
                                                       "segmentation to the PACS (SCANCHAT_DICOMWEB_URL)")
    p.add_argument("--db", help="report database (default: Settings.reports_db)")
    p.add_argument("--no-llm", action="store_true", help="template impression only, no model")
    p.add_argument("--model", help="chat model (default: settings)")
    p.add_argument("--runtime", choices=["auto", "transformers", "llamacpp", "openai"])
    p.set_defaults(func=_run)
