"""The report panel mounted beside the chat: draft, edit with the checker's flags inline, versions,
sign-off, translation and export downloads. All work happens in `assistant.reports.workflow`.

Mount it inside the app's Blocks, passing the `gr.State` that holds the browser session's chat
state (an object with a ``session`` attribute and, once the chat has started, an ``agent``):

    build_report_panel(state)
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from assistant.auth import AuthError, User, request_user
from assistant.config import Settings
from assistant.reports.checks import ReportFlag
from assistant.reports.export import report_markdown, status_line
from assistant.reports.model import SECTION_TITLES, SECTIONS, ReportError, ReportText, ReportVersion
from assistant.reports.workflow import EXPORT_FORMATS, ReportDesk
from assistant.translation.refine import LANGUAGE_NAMES

log = logging.getLogger(__name__)

_USER_ERRORS = (ReportError, AuthError, ValueError)


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

    def user_of(request: gr.Request | None) -> User:
        """The logged-in user of this request (never a typed name); raises AuthError for anyone else."""
        return request_user(getattr(request, "username", None), dict(getattr(request, "headers", None) or {}),
                            get_desk().store.users, get_desk().settings.trusted_user_header)

    with gr.Column(elem_id="report-panel"):
        gr.Markdown("### Report")
        report_id = gr.State(None)
        clinical = gr.Textbox(label="Clinical information")
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
        pacs_configured = bool((settings or get_desk().settings).dicomweb_url)
        with gr.Row(visible=pacs_configured):
            push_button = gr.Button("Send to PACS", elem_id="send-to-pacs")
        push_status = gr.Markdown(elem_id="pacs-status")

    def show(version: ReportVersion, user: User, restore_unsaved: bool = False):
        flags = get_desk().check(version)
        text, status_text = version.content.text, status_line(version)
        unsaved = get_desk().store.unsaved(version.report_id, user) if restore_unsaved else None
        if unsaved is not None and unsaved.based_on == version.number:
            text = unsaved.text
            status_text += (f"\n\nUnsaved edits typed by {unsaved.author} at {unsaved.updated:%Y-%m-%d %H:%M} are restored "
                            "below; press **Save edits** to keep them as a version.")
        choices = [(f"v{v.number} · {v.author} · {v.created:%Y-%m-%d %H:%M}"
                    + (f" · signed by {v.signed_by}" if v.signed else "") + (f" · {v.change_note}" if v.change_note else ""),
                    v.number) for v in get_desk().store.versions(version.report_id, user)]
        translation = "\n\n".join(f"**{LANGUAGE_NAMES.get(t.language, t.language)}** ({t.engine}; required terms "
                                  f"{'n/a' if t.term_success_rate is None else f'{t.term_success_rate:.0%}'})\n\n"
                                  + "\n\n".join([*t.highlighted.values(), *(f"> {n}" for n in t.notes)])
                                  for t in version.content.translations)
        return (version.report_id, status_text, text.title, *(text.section(s) for s in SECTIONS),
                version.number, inline_flags(text, flags), flag_list(flags),
                gr.update(choices=choices, value=version.number), translation)

    outputs = [report_id, status, title, *sections.values(), version_number, highlighted, flags_md, versions,
               translation_view]

    def shown(action, request: gr.Request | None, restore_unsaved: bool = False) -> tuple:
        """Run one report action as the request's user and show the resulting version; a user error becomes a
        message and leaves the panel as it was (raising would mark every report field as an error)."""
        try:
            user = user_of(request)
            return show(action(user), user, restore_unsaved)
        except _USER_ERRORS as exc:
            gr.Warning(str(exc))
            return tuple(gr.update() for _ in outputs)

    def draft(chat_state, clinical_text, with_model, request: gr.Request, progress=gr.Progress()):
        if chat_state is None or chat_state.session.volume is None:
            return shown(lambda user: _refuse("Load a scan and ask the assistant to measure something first."), request)
        agent = getattr(chat_state, "agent", None)
        model = agent.model if with_model and agent is not None else None
        return shown(lambda user: get_desk().draft(chat_state.session, user, model=model,
                                                   clinical_information=clinical_text,
                                                   progress=lambda f, m: progress(f, desc=m)), request)

    def open_last(chat_state, request: gr.Request):
        return shown(lambda user: get_desk().latest_for_scan(volume_of(chat_state), user), request, restore_unsaved=True)

    def keep_typing(rid, based_on, title_text, clinical_information, technique, findings, impression,
                    request: gr.Request):
        """Every edit is kept as it is typed (not as a version), so a closed browser loses nothing."""
        if rid and based_on is not None:
            text = ReportText(title=title_text, clinical_information=clinical_information, technique=technique,
                              findings=findings, impression=impression)
            try:
                get_desk().store.keep_unsaved(rid, int(based_on), user_of(request), text)
            except _USER_ERRORS:
                log.exception("could not keep the unsaved report text")

    def save(chat_state, rid, based_on, title_text, clinical_information, technique, findings, impression,
             request: gr.Request):
        text = ReportText(title=title_text, clinical_information=clinical_information, technique=technique,
                          findings=findings, impression=impression)
        return shown(lambda user: get_desk().edit(_required(rid), text, user, int(based_on), volume_of(chat_state)),
                     request)

    def fix(chat_state, rid, request: gr.Request):
        return shown(lambda user: get_desk().fix_all(_required(rid), user, volume_of(chat_state)), request)

    def sign(chat_state, rid, request: gr.Request):
        return shown(lambda user: get_desk().sign(_required(rid), user, volume_of(chat_state)), request)

    def translate(chat_state, rid, lang, request: gr.Request, progress=gr.Progress()):
        return shown(lambda user: get_desk().translate(_required(rid), lang, user, volume_of(chat_state),
                                                       progress=lambda f, m: progress(f, desc=m)), request)

    def view_version(rid, number, request: gr.Request):
        if not rid or number is None:
            return ""
        try:
            return report_markdown(get_desk().store.version(rid, int(number), user_of(request)))
        except _USER_ERRORS as exc:
            gr.Warning(str(exc))
            return gr.update()

    def export(chat_state, rid, chosen, request: gr.Request):
        """Into the browser session's own export folder, which is deleted with the session."""
        try:
            if chat_state is None:
                raise ReportError("Load a scan and draft a report first.")
            return [str(p) for p in get_desk().export(_required(rid), chat_state.export_folder, list(chosen),
                                                      volume_of(chat_state), user_of(request))]
        except (*_USER_ERRORS, OSError) as exc:
            gr.Warning(f"The report could not be exported: {exc}")
            return gr.update()

    def send_to_pacs(chat_state, rid, request: gr.Request, progress=gr.Progress()):
        """The signed report (DICOM SR) and a DICOM SEG per segmentation, to the study they came from."""
        from assistant.scans.pacs import push_session

        try:
            user = user_of(request)
            version = get_desk().store.latest(_required(rid), user)
            if not version.signed:
                raise ReportError("Only a signed report goes to the PACS: a reviewer signs it first.")
            if chat_state is None or chat_state.session.volume is None:
                raise ReportError("Load the report's scan first.")
            progress(0.3, desc="Sending to the PACS")
            pushed = push_session(chat_state.session, version, get_desk().settings)
        except (*_USER_ERRORS, OSError) as exc:
            gr.Warning(str(exc))
            return f"Not sent: {exc}"
        try:
            get_desk().store.audit.record(user.name, "push", version.content.scan.scan_id, report_id=version.report_id,
                                          version=version.number, stored=pushed.ok)
        except ValueError as exc:
            log.warning("%s", exc)
        return pushed.summary()

    draft_button.click(draft, [state_component, clinical, use_model], outputs)
    push_button.click(send_to_pacs, [state_component, report_id], push_status)
    open_button.click(open_last, [state_component], outputs)
    for box in (title, *sections.values()):
        box.input(keep_typing, [report_id, version_number, title, *sections.values()], None,
                  trigger_mode="always_last", show_progress="hidden")
    save_button.click(save, [state_component, report_id, version_number, title, *sections.values()], outputs)
    fix_button.click(fix, [state_component, report_id], outputs)
    sign_button.click(sign, [state_component, report_id], outputs)
    translate_button.click(translate, [state_component, report_id, language], outputs)
    versions.change(view_version, [report_id, versions], version_view)
    export_button.click(export, [state_component, report_id, formats], downloads)
    return {"push": push_button, "push_status": push_status, "report_id": report_id, "status": status, "sections": sections, "flags": flags_md, "versions": versions,
            "downloads": downloads, "draft": draft_button, "open": open_button, "sign": sign_button, "translate": translate_button}


def _refuse(message: str):
    raise ReportError(message)


def _required(report_id: str | None) -> str:
    if not report_id:
        raise ReportError("Draft a report first.")
    return report_id
