"""The report panel mounted beside the chat: draft, edit with the checker's flags inline, versions,
sign-off, translation and export downloads. All work happens in `assistant.reports.workflow`.

Mount it inside the app's Blocks, passing the `gr.State` that holds the browser session's chat
state (an object with a ``session`` attribute and, once the chat has started, an ``agent``):

    build_report_panel(state)
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import gradio as gr

from assistant.config import Settings
from assistant.reports.checks import ReportFlag
from assistant.reports.export import report_markdown, status_line
from assistant.reports.model import SECTION_TITLES, SECTIONS, ReportError, ReportText, ReportVersion
from assistant.reports.workflow import EXPORT_FORMATS, ReportDesk
from assistant.translation.refine import LANGUAGE_NAMES

log = logging.getLogger(__name__)

_USER_ERRORS = (ReportError, ValueError)


def inline_flags(text: ReportText, flags: list[ReportFlag]) -> list[tuple[str, str | None]]:
    """(segment, label) pairs for gr.HighlightedText: every section, with flagged spans labelled."""
    segments: list[tuple[str, str | None]] = []
    for section in SECTIONS:
        body = text.section(section)
        segments.append((f"\n{SECTION_TITLES[section]}\n", None))
        cursor = 0
        for flag in sorted((f for f in flags if f.section == section and f.end > f.start), key=lambda f: f.start):
            if flag.start < cursor:
                continue
            segments += [(body[cursor:flag.start], None), (body[flag.start:flag.end], flag.kind.replace("_", " "))]
            cursor = flag.end
        segments.append((body[cursor:] + "\n", None))
    return segments


def flag_list(flags: list[ReportFlag]) -> str:
    if not flags:
        return "No flags: every number matches a finding and every concept has one wording."
    lines = [f"- **{f.kind.replace('_', ' ')}** ({SECTION_TITLES[f.section]}): {f.message}"
             + (f" Fix: *{f.fix}*" if f.fix else "") for f in flags]
    return "\n".join(lines)


def build_report_panel(state_component: gr.State, settings: Settings | None = None,
                       desk: ReportDesk | None = None) -> dict[str, Any]:
    """Create the panel's components in the current Blocks context and wire them; returns them by name."""
    desks: list[ReportDesk] = [desk] if desk else []

    def get_desk() -> ReportDesk:
        if not desks:
            desks.append(ReportDesk(settings))
        return desks[0]

    def volume_of(chat_state):
        return chat_state.session.volume if chat_state is not None else None

    with gr.Column(elem_id="report-panel"):
        gr.Markdown("### Report")
        report_id = gr.State(None)
        with gr.Row():
            author = gr.Textbox(label="Your name (saved with each version)", scale=2)
            clinical = gr.Textbox(label="Clinical information", scale=3)
        with gr.Row():
            draft_button = gr.Button("Draft report from findings", variant="primary")
            open_button = gr.Button("Open this scan's last report")
            use_model = gr.Checkbox(False, label="Let the chat model phrase the impression")
        status = gr.Markdown()
        title = gr.Textbox(label="Title")
        sections = {name: gr.Textbox(label=SECTION_TITLES[name], lines=4 if name == "findings" else 2) for name in SECTIONS}
        version_number = gr.Number(visible=False, precision=0)
        highlighted = gr.HighlightedText(label="Checker", combine_adjacent=True, show_legend=True)
        flags_md = gr.Markdown()
        with gr.Row():
            save_button = gr.Button("Save edits")
            fix_button = gr.Button("Apply suggested fixes")
            sign_button = gr.Button("Sign off", variant="stop")
        versions = gr.Dropdown(label="Versions", choices=[], interactive=True)
        version_view = gr.Markdown()
        with gr.Row():
            language = gr.Dropdown(choices=[(n, c) for c, n in LANGUAGE_NAMES.items() if c != "en"], value="es",
                                   label="Translate into")
            translate_button = gr.Button("Translate")
        translation_view = gr.Markdown()
        with gr.Row():
            formats = gr.CheckboxGroup(list(EXPORT_FORMATS), value=["markdown", "pdf", "fhir"], label="Export formats")
            export_button = gr.Button("Export")
        downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="report-downloads")

    def show(version: ReportVersion, restore_unsaved: bool = False):
        flags = get_desk().check(version)
        text, status_text = version.content.text, status_line(version)
        unsaved = get_desk().store.unsaved(version.report_id) if restore_unsaved else None
        if unsaved is not None and unsaved.based_on == version.number:
            text = unsaved.text
            status_text += (f"\n\nUnsaved edits typed by {unsaved.author} at {unsaved.updated:%Y-%m-%d %H:%M} are restored "
                            "below; press **Save edits** to keep them as a version.")
        choices = [(f"v{v.number} · {v.author} · {v.created:%Y-%m-%d %H:%M}"
                    + (f" · signed by {v.signed_by}" if v.signed else "") + (f" · {v.change_note}" if v.change_note else ""),
                    v.number) for v in get_desk().store.versions(version.report_id)]
        translation = "\n\n".join(f"**{LANGUAGE_NAMES.get(t.language, t.language)}** ({t.engine}; required terms "
                                  f"{'n/a' if t.term_success_rate is None else f'{t.term_success_rate:.0%}'})\n\n"
                                  + "\n\n".join([*t.highlighted.values(), *(f"> {n}" for n in t.notes)])
                                  for t in version.content.translations)
        return (version.report_id, status_text, text.title, *(text.section(s) for s in SECTIONS),
                version.number, inline_flags(text, flags), flag_list(flags),
                gr.update(choices=choices, value=version.number), translation)

    outputs = [report_id, status, title, *sections.values(), version_number, highlighted, flags_md, versions,
               translation_view]

    def shown(action, restore_unsaved: bool = False) -> tuple:
        """Run one report action and show the resulting version; a user error becomes a message and leaves the
        panel as it was (raising would mark every report field as an error)."""
        try:
            return show(action(), restore_unsaved)
        except _USER_ERRORS as exc:
            gr.Warning(str(exc))
            return tuple(gr.update() for _ in outputs)

    def draft(chat_state, who, clinical_text, with_model, progress=gr.Progress()):
        if chat_state is None or chat_state.session.volume is None:
            return shown(lambda: _refuse("Load a scan and ask the assistant to measure something first."))
        agent = getattr(chat_state, "agent", None)
        model = agent.model if with_model and agent is not None else None
        return shown(lambda: get_desk().draft(chat_state.session, who, model=model, clinical_information=clinical_text,
                                              progress=lambda f, m: progress(f, desc=m)))

    def open_last(chat_state):
        return shown(lambda: get_desk().latest_for_scan(volume_of(chat_state)), restore_unsaved=True)

    def keep_typing(rid, who, based_on, title_text, *bodies):
        """Every edit is kept as it is typed (not as a version), so a closed browser loses nothing."""
        if rid and based_on is not None:
            try:
                get_desk().store.keep_unsaved(rid, int(based_on), who, ReportText(title=title_text, **dict(zip(SECTIONS, bodies))))
            except sqlite3.Error:
                log.exception("could not keep the unsaved report text")

    def save(chat_state, rid, who, based_on, title_text, *bodies):
        text = ReportText(title=title_text, **dict(zip(SECTIONS, bodies)))
        return shown(lambda: get_desk().edit(_required(rid), text, who, int(based_on), volume_of(chat_state)))

    def fix(chat_state, rid, who):
        return shown(lambda: get_desk().fix_all(_required(rid), who, volume_of(chat_state)))

    def sign(chat_state, rid, who):
        return shown(lambda: get_desk().sign(_required(rid), who, volume_of(chat_state)))

    def translate(chat_state, rid, who, lang, progress=gr.Progress()):
        return shown(lambda: get_desk().translate(_required(rid), lang, who, volume_of(chat_state),
                                                  progress=lambda f, m: progress(f, desc=m)))

    def view_version(rid, number):
        if not rid or number is None:
            return ""
        return report_markdown(get_desk().store.version(rid, int(number)))

    def export(chat_state, rid, chosen):
        """Into the browser session's own export folder, which is deleted with the session."""
        try:
            if chat_state is None:
                raise ReportError("Load a scan and draft a report first.")
            return [str(p) for p in get_desk().export(_required(rid), chat_state.export_folder, list(chosen),
                                                      volume_of(chat_state))]
        except (*_USER_ERRORS, OSError) as exc:
            gr.Warning(f"The report could not be exported: {exc}")
            return gr.update()

    draft_button.click(draft, [state_component, author, clinical, use_model], outputs)
    open_button.click(open_last, [state_component], outputs)
    for box in (title, *sections.values()):
        box.input(keep_typing, [report_id, author, version_number, title, *sections.values()], None,
                  trigger_mode="always_last", show_progress="hidden")
    save_button.click(save, [state_component, report_id, author, version_number, title, *sections.values()], outputs)
    fix_button.click(fix, [state_component, report_id, author], outputs)
    sign_button.click(sign, [state_component, report_id, author], outputs)
    translate_button.click(translate, [state_component, report_id, author, language], outputs)
    versions.change(view_version, [report_id, versions], version_view)
    export_button.click(export, [state_component, report_id, formats], downloads)
    return {"report_id": report_id, "status": status, "sections": sections, "flags": flags_md, "versions": versions,
            "downloads": downloads, "draft": draft_button, "open": open_button, "sign": sign_button, "translate": translate_button}


def _refuse(message: str):
    raise ReportError(message)


def _required(report_id: str | None) -> str:
    if not report_id:
        raise ReportError("Draft a report first.")
    return report_id
