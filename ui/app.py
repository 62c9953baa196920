"""The Gradio app: a three-plane scan viewer beside a chat that shows every tool call.

The UI only renders: scans are loaded by `assistant.scans`, questions answered by
`assistant.agent`, slices drawn by `assistant.scans.display`. Per-user state lives in a
`ChatState` held by Gradio for each browser session, never in module globals.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from assistant.agent import Agent, AnswerEvent, InputError, TokenEvent, ToolCallEvent, ToolResultEvent
from assistant.auth import AuthError, User, check_can_bind, gradio_auth, request_user
from assistant.config import Settings, get_settings
from assistant.imaging.progress import cancel_on
from assistant.lifecycle import LimitError, SessionLimits
from assistant.models.base import Message
from assistant.reports.conversations import conversation_of, restore_session
from assistant.reports.model import ReportError
from assistant.reports.store import ReportStore
from assistant.scans import display
from assistant.scans.loading import load_scan
from assistant.scans.samples import SAMPLES, sample_path
from assistant.session import ScanSession
from assistant.volume import ScanLoadError
from assistant.workers import WorkerPool
from ui.report_panel import build_report_panel

log = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")


@dataclass
class ChatState:
    """One browser session's conversation, scan and viewer position."""

    agent: Agent | None = None
    session: ScanSession = field(default_factory=ScanSession)
    cursor: dict[str, int] = field(default_factory=dict)  # plane -> slice index
    clicked: tuple[int, int, int] | None = None
    export_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this session's export folder
    conversation_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # key of the saved conversation
    scan_path: str | None = None
    restored_history: list[Message] = field(default_factory=list)  # the agent's memory of a restored conversation
    user: User | None = None  # who loaded the scan: the conversation is saved and restored as theirs
    cancel: threading.Event = field(default_factory=threading.Event)  # set by the Cancel button, checked by long tool runs
    exports_root: Path | None = None  # Settings.exports_dir, the only folder whose files the UI offers
    turns: int = 0  # chat turns answered in this session
    last_turn_seconds: float = 0.0
    limits: SessionLimits | None = None  # the app's per-user limits, where this session holds a slot
    workers: WorkerPool | None = None  # the app's tool workers, which keep this session's scan while it is open
    held_scan: str | None = None  # fingerprint of the scan this session holds in the workers

    def hold_scan(self, fingerprint: str | None) -> None:
        """The scan this session shows from now on (None: none); the workers drop a scan no session shows."""
        if self.workers is not None and fingerprint != self.held_scan:
            if fingerprint is not None:
                self.workers.hold(fingerprint)
            if self.held_scan is not None:
                self.workers.release(self.held_scan)
        self.held_scan = fingerprint

    @property
    def export_folder(self) -> Path:
        """This session's private download folder (masks, maps, reports), created on first use."""
        if self.exports_root is None:
            raise ValueError("this session has no export folder")
        folder = self.exports_root / self.export_id
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder

    def close(self) -> None:
        """The session ended (tab closed or expired): its exported files and its scan's cached results go with it."""
        self.cancel.set()
        self.session.close()
        self.hold_scan(None)
        if self.limits is not None:
            self.limits.close(self.export_id)
        if self.exports_root is not None:
            shutil.rmtree(self.exports_root / self.export_id, ignore_errors=True)


def end_session(state: ChatState | None) -> None:
    """Gradio's delete callback for the session state."""
    if state is not None:
        state.close()


class ScanChatApp:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._store: ReportStore | None = None
        # Open browser sessions by Gradio session hash, so that closing the tab can delete their files at once.
        self._open: weakref.WeakValueDictionary[str, ChatState] = weakref.WeakValueDictionary()
        self.limits = SessionLimits.from_settings(self.settings)
        self.workers = WorkerPool(self.settings.tool_workers)  # processes start with the first heavy tool call
        self._starting_agent = threading.Lock()  # a chat turn and the warm-up at scan load start one agent

    @property
    def store(self) -> ReportStore:
        """Conversations are saved beside the reports (`Settings.reports_db`)."""
        if self._store is None:
            self._store = ReportStore(settings=self.settings)
        return self._store

    # -- helpers -------------------------------------------------------------------------

    def new_state(self, request: gr.Request | None = None) -> ChatState:
        state = ChatState(exports_root=self.settings.exports_dir, limits=self.limits, workers=self.workers)
        if request is not None and request.session_hash:
            self._open[request.session_hash] = state
        return state

    def close_session(self, request: gr.Request) -> None:
        """The tab was closed: delete the session's files now rather than when its state expires."""
        state = self._open.pop(request.session_hash, None) if request.session_hash else None
        end_session(state)

    def _user(self, request: gr.Request | None) -> User:
        """The logged-in user (Gradio login or trusted proxy header), or the local user of an install without users."""
        return request_user(getattr(request, "username", None), dict(getattr(request, "headers", None) or {}),
                            self.store.users, self.settings.trusted_user_header)

    def _audit(self, user: User, action: str, scan_id: str | None, **detail) -> None:
        try:
            self.store.audit.record(user.name, action, scan_id, **detail)
        except ValueError as exc:
            log.warning("%s", exc)
            gr.Warning(str(exc))

    def _agent(self, state: ChatState, progress: gr.Progress | None = None) -> Agent:
        with self._starting_agent:
            if state.agent is None:
                from assistant.models.registry import load_chat_model

                if progress is not None:
                    progress(0.1, desc=f"Starting the model {self.settings.llm} (first start takes a while)")
                state.session.workers = self.workers
                state.agent = Agent(load_chat_model(self.settings), state.session, self.settings)
                state.agent.history = list(state.restored_history)
            return state.agent

    def _warm(self, state: ChatState) -> None:
        """While the clinician looks at the scan just shown, start the model and have it read the conversation's
        prompt opening, so that the first question does not wait for either (seconds of prefill on a CPU)."""
        def warm() -> None:
            try:
                self._agent(state).warm()
            except Exception:  # only a head start: the first question starts the model again and reports a failure
                log.debug("warming the model failed", exc_info=True)

        threading.Thread(target=warm, name="warm-model", daemon=True).start()

    def _save_conversation(self, state: ChatState) -> None:
        """After every answer, so that a restart or a closed browser loses nothing."""
        if state.session.volume is None or state.agent is None or state.user is None:
            return
        try:
            self.store.save_conversation(conversation_of(state.session, state.conversation_id, state.user,
                                                         state.agent.history, state.scan_path),
                                         patient_id=state.session.volume.identifiers.patient_id)
        except (ReportError, OSError) as exc:
            log.warning("the conversation could not be saved: %s", exc)
            gr.Warning(f"The conversation could not be saved: {exc}")

    def _restore_conversation(self, state: ChatState, volume) -> list[gr.ChatMessage]:
        """Pick up this user's last saved conversation about this very scan: its findings and its chat."""
        try:
            saved = self.store.latest_conversation(state.user, state.session.fingerprint, warn=gr.Warning)
        except ReportError as exc:
            gr.Warning(f"Saved conversations could not be read: {exc}")
            return []
        if saved is None:
            return []
        shown, state.session = state.session, restore_session(saved, volume)
        shown.close()  # after the restored session holds the scan: its cached registration stays
        state.conversation_id, state.restored_history = saved.conversation_id, list(saved.messages)
        return [_chat_message(m) for m in saved.messages if m.role != "system"]

    def _downloads(self, state: ChatState) -> list[str]:
        """The last segmentation (NIfTI; DICOM SEG for a DICOM scan) and the last anomaly map, ready to download."""
        from assistant.segmentation.export import save_dicom_seg, save_nifti
        from tools.detect_anomalies import AnomalyResult, save_anomaly_map
        from tools.segment import SegmentResult

        volume = state.session.volume
        if volume is None:
            return []
        results = [r.result for r in reversed(state.session.records) if r.result is not None]
        files: list[Path] = []
        mask = next((r for r in results if isinstance(r, SegmentResult)), None)
        if mask is not None:
            name = "".join(c if c.isalnum() else "_" for c in mask.segmentation.target)[:40] or "mask"
            files.append(save_nifti(mask.segmentation, volume, state.export_folder / f"{name}.nii.gz"))
            if volume.dicom_sources:
                files.append(save_dicom_seg(mask.segmentation, volume, state.export_folder / f"{name}-seg.dcm"))
        anomaly = next((r for r in results if isinstance(r, AnomalyResult)), None)
        if anomaly is not None and anomaly.anomaly_map is not None:
            files.append(save_anomaly_map(anomaly, volume, state.export_folder / "anomaly-map.nii.gz"))
        return [str(f) for f in files]

    def _model_info(self, agent: Agent) -> str:
        model, turn = agent.model, agent.traces[-1] if agent.traces else None  # this session's turn, not the model's
        if not model.sees_volumes:
            sees = "reads the tools' results (it does not see the image)"
        elif turn is not None and turn.looked_at_volume:
            sees = "looked at the volume for this answer; its statements are model observations, not measurements"
        else:
            why = "no answer yet" if turn is None else turn.volume_note or "the answer came from the tools' results"
            sees = f"did not look at the volume this time ({why})"
        return f"Model: **{model.name}** ({model.runtime}) — {sees}."

    def _views(self, state: ChatState, window: str, show_overlays: bool):
        volume = state.session.volume
        if volume is None:
            return [None, None, None]
        overlays = list(state.session.overlays.values()) if show_overlays else []
        return [display.render_slice(volume, plane, _cursor(state, plane), window, overlays) for plane in PLANES]

    def views(self, state: ChatState | None, window: str, show_overlays: bool):
        """The three views after a turn or a control change; a drawing failure leaves the last images, with a message."""
        try:
            return self._views(state or self.new_state(), window, show_overlays)
        except Exception as exc:  # a bad overlay or window must not take the chat down
            log.exception("the views could not be drawn")
            gr.Warning(f"The views could not be redrawn: {exc}")
            return [gr.update()] * len(PLANES)

    def offer_downloads(self, state: ChatState | None):
        """After each turn: the files of its results, or a visible note saying why there are none."""
        if state is None:
            return gr.update(), ""
        try:
            files = self._downloads(state)
        except Exception as exc:  # an export failure costs the download, never the chat
            log.exception("export failed")
            return gr.update(value=None), f"The result could not be exported for download: {exc}"
        return (files or None), ""

    def model_line(self, state: ChatState | None) -> str:
        if state is None or state.agent is None:
            return ""
        try:
            return f"{self._model_info(state.agent)} Turn {state.turns} took {state.last_turn_seconds:.1f} s."
        except Exception as exc:
            log.exception("model information unavailable")
            return f"Model information unavailable: {exc}"

    # -- events --------------------------------------------------------------------------

    def load(self, state: ChatState | None, upload, sample: str | None, window: str, request: gr.Request,
             progress=gr.Progress()):
        """An uploaded file or a bundled sample."""
        if upload:
            source = str(Path(upload if isinstance(upload, str) else upload.name))
        elif sample:
            progress(0.2, desc=f"Preparing sample {sample}")
            try:
                source = str(sample_path(sample))
            except (OSError, ValueError) as exc:
                gr.Warning(str(exc))
                return _unchanged(state or self.new_state(request))
        else:
            gr.Warning("Choose a file to upload or a sample scan first.")
            return _unchanged(state or self.new_state(request))
        return self._show(state, source, window, request, progress)

    def open_from_pacs(self, state: ChatState | None, study_uid: str | None, series_uid: str | None, window: str,
                       request: gr.Request, progress=gr.Progress()):
        """A series chosen in the study browser, retrieved over DICOMweb into the same viewer and chat."""
        if not study_uid:
            gr.Warning("Search the PACS and choose a study first.")
            return _unchanged(state or self.new_state(request))
        progress(0.2, desc="Retrieving the series from the PACS")
        return self._show(state, f"dicomweb:{study_uid}" + (f"/{series_uid}" if series_uid else ""), window, request,
                          progress)

    def _show(self, state: ChatState | None, source: str, window: str, request: gr.Request | None, progress):
        state = state or self.new_state(request)
        try:
            user = self._user(request)
            progress(0.5, desc="Reading the scan")
            volume = load_scan(source if source.startswith("dicomweb:") else Path(source), self.settings)
            self.limits.open(user.name, state.export_id)  # refused past the user's sessions or memory
            self.limits.charge(state.export_id, volume.data.nbytes)
        except (ScanLoadError, AuthError, LimitError, OSError, ValueError) as exc:
            gr.Warning(str(exc))
            return _unchanged(state)
        state.agent, state.restored_history = None, []
        state.conversation_id, state.scan_path, state.user = uuid.uuid4().hex, source, user
        state.session.load(volume)
        state.hold_scan(state.session.fingerprint)
        self._audit(user, "load_scan", state.session.fingerprint, source_format=volume.metadata.source_format)
        chat = self._restore_conversation(state, volume)
        self._warm(state)
        state.cursor = {plane: display.slice_count(volume, plane) // 2 for plane in PLANES}
        sliders = [_slider(display.slice_count(volume, plane), state.cursor[plane]) for plane in PLANES]
        if window == "auto" or volume.modality.value != "CT":
            window = "auto" if volume.modality.value != "CT" else "brain"
        info = _scan_info(volume)
        if chat:
            info += f"\n\nThe earlier conversation about this scan was restored ({len(state.session.records)} tool results)."
        return (state, gr.update(value=window), *self.views(state, window, True), *sliders, info, chat)  # type: ignore[misc]

    def search_pacs(self, patient_id: str, accession: str, study_date: str, modality: str):
        """Studies for the browser: shown to the clinician only, never to the model (they carry identifiers)."""
        from assistant.scans.pacs import PacsError, StudyQuery, search_studies

        try:
            query = StudyQuery(patient_id=patient_id or None, accession_number=accession or None,
                               study_date=study_date or None, modality=modality or None)
            studies = search_studies(query, self.settings)
        except (PacsError, ValueError) as exc:
            gr.Warning(str(exc))
            return gr.update(choices=[], value=None), gr.update(choices=[], value=None)
        if not studies:
            gr.Info("No study matches the search.")
        choices = [(f"{s.study_date} · {'/'.join(s.modalities)} · {s.description or 'no description'} · "
                    f"{s.patient_name} ({s.patient_id}) · acc. {s.accession_number or '-'}", s.study_uid) for s in studies]
        return gr.update(choices=choices, value=None), gr.update(choices=[], value=None)

    def pacs_series(self, study_uid: str | None):
        from assistant.scans.pacs import PacsError, list_series

        if not study_uid:
            return gr.update(choices=[], value=None)
        try:
            series = [s for s in list_series(study_uid, self.settings) if s.modality not in ("SEG", "SR", "PR", "KO")]
        except PacsError as exc:
            gr.Warning(str(exc))
            return gr.update(choices=[], value=None)
        choices = [(f"{s.modality} #{s.number if s.number is not None else '?'} · {s.description or 'no description'} "
                    f"· {s.instances} images", s.series_uid) for s in series]
        return gr.update(choices=choices, value=choices[0][1] if len(choices) == 1 else None)

    def move(self, state: ChatState | None, plane: str, index: int, window: str, show_overlays: bool):
        state = state or self.new_state()
        state.cursor[plane] = int(index)
        return self.views(state, window, show_overlays)

    def click(self, state: ChatState | None, plane: str, window: str, evt: gr.SelectData):
        """A click in a view becomes a point prompt the user can refer to ("segment what I clicked")."""
        state = state or self.new_state()
        volume = state.session.volume
        if volume is None:
            return state, gr.update()
        index = _cursor(state, plane)
        rendered_shape = display.display_shape(volume, plane)
        x, y = evt.index
        try:
            voxel = display.voxel_from_click(volume, plane, index, x, y, rendered_shape)
        except ValueError as exc:
            gr.Warning(str(exc))
            return state, gr.update()
        state.clicked = tuple(int(v) for v in voxel)
        return state, gr.update(value=f"Clicked point: voxel {list(state.clicked)}. ")

    def _click_handler(self, plane: str):
        def handler(state: ChatState | None, window: str, evt: gr.SelectData):
            return self.click(state, plane, window, evt)

        return handler

    @staticmethod
    def cancel(state: ChatState | None) -> None:
        """Ask the running turn's long tool run (registration, slice-by-slice model) to stop at its next step."""
        if state is not None:
            state.cancel.set()

    def respond(self, state: ChatState | None, message: str, history: list, request: gr.Request,
                progress=gr.Progress()):
        """One chat turn, streamed: tool calls as they start and finish, then the answer.

        Only the chat is updated here; views, downloads and the model line follow as their own events,
        so that a failure in any of them cannot turn the conversation into an error."""
        state = state or self.new_state(request)
        history = list(history or [])
        try:
            user = self._user(request)
            if state.user is not None and state.user != user:
                raise AuthError("This browser session belongs to another user; reload the page.")
        except AuthError as exc:
            gr.Warning(str(exc))
            yield state, history, message
            return
        state.user = user
        calls_before = len(state.session.records)
        try:
            agent = self._agent(state, progress)
        except Exception as exc:  # model missing or broken: say so in the chat
            log.exception("model failed to start")
            history.append(gr.ChatMessage(role="assistant", content=f"The model could not start: {exc}"))
            yield state, history, ""
            return
        history.append(gr.ChatMessage(role="user", content=message or ""))
        started = time.monotonic()
        state.cancel.clear()
        state.session.progress = cancel_on(state.cancel, lambda fraction, text: progress(fraction, desc=text))
        try:
            answer_index = None
            for event in agent.run(message):
                if isinstance(event, ToolCallEvent):
                    history.append(
                        gr.ChatMessage(
                            role="assistant",
                            content=f"```json\n{json.dumps(event.arguments, indent=1)}\n```",
                            metadata={"title": f"🛠 {event.name}", "id": event.call_id, "status": "pending"},
                        )
                    )
                elif isinstance(event, ToolResultEvent):
                    record = event.record
                    history[-1] = gr.ChatMessage(
                        role="assistant",
                        content=f"{history[-1].content}\n{_tool_result_markdown(record)}",
                        metadata={
                            "title": f"🛠 {record.name} ({record.seconds:.1f} s)" + ("" if record.ok else " failed"),
                            "id": event.call_id,
                            "status": "done",
                        },
                    )
                elif isinstance(event, TokenEvent):
                    if answer_index is None:
                        history.append(gr.ChatMessage(role="assistant", content=""))
                        answer_index = len(history) - 1
                    history[answer_index] = gr.ChatMessage(role="assistant", content=history[answer_index].content + event.text)
                elif isinstance(event, AnswerEvent):
                    content = event.text
                    if event.replaced and event.grounding.ungrounded:
                        content = (
                            f"_The model's wording contained figures no tool measured "
                            f"({', '.join(event.grounding.ungrounded)}); here are the measured results:_\n\n{content}"
                        )
                    final = gr.ChatMessage(role="assistant", content=content)
                    if answer_index is None:
                        history.append(final)
                    else:
                        history[answer_index] = final
                yield state, history, ""
        except InputError as exc:
            history.pop()
            gr.Warning(str(exc))
            yield state, history, message
            return
        except Exception as exc:  # a broken turn is reported in the chat; earlier turns stay on screen
            log.exception("the turn failed")
            history.append(gr.ChatMessage(role="assistant", content=f"This turn failed: {exc}. Earlier results are kept."))
            yield state, history, ""
        finally:
            state.session.progress = None
            state.turns += 1
            state.last_turn_seconds = time.monotonic() - started
        if state.session.volume is not None:
            self._audit(user, "ask", state.session.fingerprint, question=message,
                        tools=[r.name for r in state.session.records[calls_before:]])
        self._save_conversation(state)
        yield state, history, ""

    # -- layout --------------------------------------------------------------------------

    @staticmethod
    def _pacs_browser() -> dict:
        """Search the PACS (QIDO-RS) and open a series (WADO-RS), beside the upload box."""
        with gr.Accordion("PACS: search studies and open a series", open=False, elem_id="pacs"):
            with gr.Row():
                query = [gr.Textbox(label="Patient ID"), gr.Textbox(label="Accession"),
                         gr.Textbox(label="Study date (YYYYMMDD or range)"), gr.Textbox(label="Modality")]
            search = gr.Button("Search the PACS")
            study = gr.Dropdown(label="Study", choices=[], interactive=True)
            series = gr.Dropdown(label="Series", choices=[], interactive=True)
            open_button = gr.Button("Open series", variant="primary")
        return {"query": query, "search": search, "study": study, "series": series, "open": open_button}

    def build(self) -> gr.Blocks:
        ttl = self.settings.session_ttl_s
        with gr.Blocks(title="ScanChat", delete_cache=(min(ttl, 3600), ttl)) as demo:
            state = gr.State(None, time_to_live=ttl, delete_callback=end_session)
            gr.Markdown("## ScanChat\nUpload a CT or MRI scan (or pick a sample), then ask about it. "
                        "Answers come from measuring tools; each tool call is shown in the chat.")
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Row():
                        upload = gr.File(label="Upload scan (NIfTI, DICOM file/zip, NRRD, MHA, NPY)", file_count="single")
                        sample = gr.Dropdown(choices=list(SAMPLES), label="…or a sample scan", value=None, elem_id="sample")
                    pacs = self._pacs_browser() if self.settings.dicomweb_url else None
                    with gr.Row():
                        load_button = gr.Button("Load scan", variant="primary")
                        window = gr.Radio(list(display.WINDOW_NAMES), value="auto", label="Window")
                        show_overlays = gr.Checkbox(True, label="Show overlays")
                    info = gr.Markdown(elem_id="scan-info")
                    views, sliders = [], []
                    with gr.Row():
                        for plane in PLANES:
                            with gr.Column(min_width=200):
                                views.append(gr.Image(label=plane.capitalize(), interactive=False, elem_id=f"view-{plane}"))
                                sliders.append(gr.Slider(0, 1, step=1, value=0, label=f"{plane} slice", interactive=False))
                with gr.Column(scale=2):
                    with gr.Tab("Chat"):
                        chatbot = gr.Chatbot(label="Chat", height=560, elem_id="chat")
                        message = gr.Textbox(placeholder="Ask about the scan…", show_label=False, elem_id="message")
                        with gr.Row():
                            send = gr.Button("Send", elem_id="send")
                            cancel = gr.Button("Cancel", elem_id="cancel", variant="stop")
                        model_info = gr.Markdown(elem_id="model-info")
                        downloads = gr.File(label="Last mask (NIfTI; DICOM SEG for DICOM scans) and anomaly map",
                                            file_count="multiple", interactive=False, elem_id="downloads")
                        download_note = gr.Markdown(elem_id="download-note")
                    with gr.Tab("Report"):
                        build_report_panel(state, self.settings)

            # Viewer events have their own, unlimited lane: they never wait behind a chat reply.
            viewer = {"concurrency_id": "viewer", "concurrency_limit": None}
            shown = [state, window, *views, *sliders, info, chatbot]
            load_button.click(self.load, [state, upload, sample, window], shown)
            if pacs is not None:
                pacs["search"].click(self.search_pacs, pacs["query"], [pacs["study"], pacs["series"]])
                pacs["study"].change(self.pacs_series, [pacs["study"]], [pacs["series"]])
                pacs["open"].click(self.open_from_pacs, [state, pacs["study"], pacs["series"], window], shown)
            for plane, slider in zip(PLANES, sliders):
                slider.change(lambda s, i, w, o, p=plane: self.move(s, p, i, w, o),
                              [state, slider, window, show_overlays], views, **viewer)
            for plane, view in zip(PLANES, views):
                view.select(self._click_handler(plane), [state, window], [state, message], **viewer)
            refresh_inputs = [state, window, show_overlays]
            for control in (window, show_overlays):
                control.change(self.views, refresh_inputs, views, **viewer)
            for trigger in (send.click, message.submit):
                turn = trigger(self.respond, [state, message, chatbot], [state, chatbot, message],
                               concurrency_id="chat", concurrency_limit=self.settings.chat_concurrency)
                turn.then(self.views, refresh_inputs, views, **viewer).then(
                    self.offer_downloads, [state], [downloads, download_note], **viewer).then(
                    self.model_line, [state], model_info, **viewer)
            cancel.click(self.cancel, [state], None, queue=False)
            demo.unload(self.close_session)
        return demo


def _unchanged(state: ChatState) -> tuple:
    """What a refused load returns: the state, and every shown output (window, views, sliders, info, chat) as it was."""
    return (state, *[gr.update()] * (2 + 2 * len(PLANES) + 2))


def _tool_result_markdown(record) -> str:
    """A tool result as shown in its collapsible chat bubble (translations with their terms highlighted)."""
    if record.result is None:
        return f"Error: {record.error}"
    highlighted = getattr(record.result, "highlighted_markdown", None)
    return highlighted() if callable(highlighted) else record.result.summary()


def _chat_message(message: Message) -> gr.ChatMessage:
    """A saved agent message as the chat showed it: tool results folded under the tool's name."""
    if message.role == "tool":
        return gr.ChatMessage(role="assistant", content=message.content,
                              metadata={"title": f"🛠 {message.name or 'tool'}", "status": "done"})
    return gr.ChatMessage(role="user" if message.role == "user" else "assistant", content=message.content)


def _cursor(state: ChatState, plane: str) -> int:
    """The plane's shown slice, kept inside the scan whatever its shape (one slice, two, thin slabs)."""
    count = display.slice_count(state.session.require_volume(), plane)
    return min(max(state.cursor.get(plane, count // 2), 0), count - 1)


def _slider(count: int, value: int):
    """A slice slider; a plane with a single slice gets a fixed one (Gradio needs maximum > minimum)."""
    return gr.update(minimum=0, maximum=max(count - 1, 1), value=value, interactive=count > 1)


def _scan_info(volume) -> str:
    dims = " × ".join(map(str, volume.shape))
    spacing = " × ".join(f"{s:.2f}" for s in volume.spacing)
    notes = "".join(f"\n- {n}" for n in volume.metadata.notes)
    return f"**{volume.name}** — {volume.modality.value}, {dims} voxels, {spacing} mm{notes}"


def build_app(settings: Settings | None = None) -> gr.Blocks:
    return ScanChatApp(settings).build()


def launch(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    settings = settings or get_settings()
    app = ScanChatApp(settings)
    host = host or settings.host
    check_can_bind(host, app.store.users, settings.trusted_user_header)
    settings.exports_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    app.workers.start()  # the tool workers import the heavy modules while the page loads
    app.build().queue(default_concurrency_limit=settings.chat_concurrency).launch(
        server_name=host,
        server_port=port or settings.port,
        max_file_size=settings.max_upload_bytes,
        allowed_paths=[str(settings.exports_dir)],
        auth=gradio_auth(app.store.users, settings.trusted_user_header),
    )
