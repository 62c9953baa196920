"""Identity: scrypt-hashed passwords, users and roles in the database (both backends), the `scanchat users`
command, who a request is (login, trusted proxy header, the implicit local user), and the refusal to serve a
network address with nobody to log in."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys

import gradio as gr
import pytest

from assistant.auth import (LOCAL_USER, AuthError, Role, User, Users, check_can_bind, gradio_auth, hash_password,
                            request_user, verify_password)
from assistant.reports.store import ReportStore
from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures)


@pytest.fixture
def users(database_url) -> Users:  # noqa: F811
    return ReportStore(database_url).users


def test_passwords_are_stored_as_salted_scrypt_hashes():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("scrypt$131072$8$1$") and "correct horse" not in first
    assert first != second  # a fresh salt each time
    assert verify_password("correct horse", first) and not verify_password("correct hors", first)
    assert not verify_password("correct horse", "md5$abc")  # an unknown scheme never matches
    with pytest.raises(AuthError, match="at least 8"):
        hash_password("short")


def test_users_roles_and_disabling(users):
    assert not users.any_enabled()
    users.add("alice", "reviewer", "alice-password")
    users.add("bob", Role.clinician, "bob-password")
    assert users.authenticate("alice", "alice-password") and not users.authenticate("alice", "bob-password")
    assert not users.authenticate("carol", "alice-password")
    assert users.get("bob") == User(name="bob", role=Role.clinician)
    users.disable("bob")
    assert not users.authenticate("bob", "bob-password") and users.get("bob") is None
    assert [(u.name, enabled) for u, enabled in users.list()] == [("alice", True), ("bob", False)]
    users.add("bob", "clinician", "new-password")  # an admin resets the password: enabled again
    assert users.authenticate("bob", "new-password") and not users.authenticate("bob", "bob-password")
    with pytest.raises(AuthError, match="not a valid user name"):
        users.add("bob smith", "clinician", "long enough")
    with pytest.raises(AuthError, match="implicit user"):
        users.add("local", "admin", "long enough")
    with pytest.raises(ValueError):
        users.add("dave", "surgeon", "long enough")


def test_who_a_request_is(users):
    assert request_user(None, {}, users, trusted_header=None) == LOCAL_USER  # no users configured: one local user
    users.add("alice", "reviewer", "alice-password")
    with pytest.raises(AuthError, match="Log in first"):
        request_user(None, {}, users, trusted_header=None)
    assert request_user("alice", {}, users, trusted_header=None).role is Role.reviewer
    headers = {"X-Forwarded-User": "alice"}
    with pytest.raises(AuthError, match="Log in first"):  # a header is ignored unless configured: anyone can send one
        request_user(None, headers, users, trusted_header=None)
    assert request_user(None, headers, users, trusted_header="x-forwarded-user").name == "alice"
    with pytest.raises(AuthError, match="unknown or disabled"):
        request_user(None, {"X-Forwarded-User": "mallory"}, users, trusted_header="X-Forwarded-User")


def test_a_network_address_needs_users(users):
    check_can_bind("127.0.0.1", users)
    check_can_bind("localhost", users)
    check_can_bind("::1", users)
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(AuthError, match=f"Refusing to listen on {host}: no users are configured"):
            check_can_bind(host, users)
    assert gradio_auth(users, trusted_header=None) is None
    users.add("alice", "clinician", "alice-password")
    check_can_bind("0.0.0.0", users)
    check = gradio_auth(users, trusted_header=None)
    assert asyncio.iscoroutinefunction(check)  # gradio awaits it: the scrypt check runs off the event loop
    assert asyncio.run(check("alice", "alice-password")) and not asyncio.run(check("alice", "wrong-password"))
    assert gradio_auth(users, trusted_header="X-Forwarded-User") is None  # the proxy logs people in


def test_a_gradio_app_with_this_login_refuses_anonymous_clients(tmp_path):
    """The callable from `gradio_auth` in a real Gradio server: no session without a valid password."""
    from gradio_client import Client

    users = ReportStore(tmp_path / "auth.sqlite3").users
    users.add("alice", "clinician", "alice-password")
    def echo(text: str, request: gr.Request) -> str:
        return f"{request.username}: {text}"

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(echo, [box], box, api_name="echo")
    demo.launch(server_name="127.0.0.1", server_port=None, auth=gradio_auth(users, None), prevent_thread_lock=True,
                quiet=True)
    try:
        with pytest.raises(Exception):
            Client(demo.local_url, verbose=False).predict("hi", api_name="/echo")
        with pytest.raises(Exception):
            Client(demo.local_url, auth=("alice", "wrong-password"), verbose=False)
        assert Client(demo.local_url, auth=("alice", "alice-password"), verbose=False).predict(
            "hi", api_name="/echo") == "alice: hi"
    finally:
        demo.close()


def _cli(args: list[str], env: dict, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assistant.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=300)


def test_users_command_reads_the_password_from_stdin(tmp_path):
    env = {**os.environ, "SCANCHAT_REPORTS_DB": str(tmp_path / "cli.sqlite3"), "SCANCHAT_DATABASE_URL": ""}
    added = _cli(["users", "add", "alice", "--role", "reviewer"], env, "alice-password\n")
    assert added.returncode == 0, added.stderr
    refused = _cli(["users", "add", "bob", "--role", "clinician"], env, "short\n")
    assert refused.returncode == 2 and "at least 8 characters" in refused.stderr and "Traceback" not in refused.stderr
    listed = json.loads(_cli(["users", "list", "--json"], env).stdout)
    assert listed == [{"name": "alice", "role": "reviewer", "enabled": True}]
    store = ReportStore(tmp_path / "cli.sqlite3")
    assert store.users.authenticate("alice", "alice-password")
    assert [(e.user, e.action, e.detail) for e in store.audit.entries()] == [
        (f"cli:{getpass.getuser()}", "user_add", {"user": "alice", "role": "reviewer"})]
