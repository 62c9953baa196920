"""The real app over HTTP with logins: two users opening the same scan each get only their own conversation,
and a client without a login gets nothing; a user past the session limit is refused."""

from __future__ import annotations

import pytest
from gradio_client import Client

from assistant.auth import Role, User, gradio_auth
from assistant.config import get_settings
from assistant.models.base import Message
from assistant.reports.conversations import conversation_of
from assistant.scans.samples import load_sample
from assistant.session import ScanSession
from ui.app import ScanChatApp


def test_two_logged_in_users_opening_the_same_scan_see_only_their_own_conversation(tmp_path):
    settings = get_settings().model_copy(update={"reports_db": tmp_path / "reports.sqlite3", "max_sessions_per_user": 1})
    app = ScanChatApp(settings)
    app.store.users.add("alice", "clinician", "alice-password")
    app.store.users.add("bob", "clinician", "bob-password")
    session = ScanSession()
    session.load(load_sample("mr-multiframe-dicom"))
    chat = [Message(role="user", content="alice's private question"), Message(role="assistant", content="answer")]
    app.store.save_conversation(conversation_of(session, "alice-1", User(name="alice", role=Role.clinician), chat))

    demo = app.build()
    demo.queue().launch(server_name="127.0.0.1", auth=gradio_auth(app.store.users, None), prevent_thread_lock=True,
                        quiet=True)
    try:
        with pytest.raises(Exception):
            Client(demo.local_url, verbose=False).predict(None, "mr-multiframe-dicom", "auto", api_name="/load")
        shown = {}
        for name in ("alice", "bob"):
            client = Client(demo.local_url, auth=(name, f"{name}-password"), verbose=False)
            *_, info, chatbot = client.predict(None, "mr-multiframe-dicom", "auto", api_name="/load")
            shown[name] = (info, chatbot)
        assert "alice's private question" in str(shown["alice"][1]) and "restored" in shown["alice"][0]
        assert "alice's private question" not in str(shown["bob"][1]) and "restored" not in shown["bob"][0]
        # alice's second browser session is over her limit of one: refused with a warning, her scan is not opened
        *_, info, chatbot = Client(demo.local_url, auth=("alice", "alice-password"), verbose=False).predict(
            None, "mr-multiframe-dicom", "auto", api_name="/load")
        assert "alice's private question" not in str(chatbot) and "restored" not in str(info)
        assert app.limits.held("alice")[0] == 1 and app.limits.held("bob")[0] == 1
        entries = [(e.user, e.action) for e in app.store.audit.entries()]
        assert entries == [("alice", "load_scan"), ("bob", "load_scan")]
    finally:
        demo.close()
