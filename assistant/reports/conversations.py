"""Conversations survive a restart: the chat and the findings of its tool calls, kept per (user, scan).

A conversation is saved (in the report store's database) after every answer and belongs to the
user who had it: it is found again by that user and that scan, never by the scan alone. Findings are
stored as the typed `Finding`s their tools produced, so a restored session can be reported on
exactly as before; the scan itself is not copied, only its fingerprint and where it was loaded
from, and findings are restored only onto the very scan they were measured on.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from assistant.auth import LOCAL_USER, User
from assistant.config import get_settings
from assistant.findings import Finding
from assistant.models.base import Message
from assistant.privacy import PrivacyGate
from assistant.reports.collect import require_same_scan, scan_reference, tool_findings
from assistant.reports.model import ReportError, ScanReference
from assistant.session import ScanSession, ToolRecord
from assistant.volume import Volume
from tools.base import ToolResult


class SavedConversation(BaseModel):
    conversation_id: str
    owner: str = Field(LOCAL_USER.name, description="The user who had it (saved before owners existed: 'local').")
    scan: ScanReference
    scan_path: str | None = Field(None, description="Where the scan was loaded from, to open it again.")
    messages: list[Message] = Field(default_factory=list, description="The agent's history: questions, tool results, answers.")
    findings: list[Finding] = Field(default_factory=list, description="Findings of the successful tool calls, in call order.")
    observations: list[Finding] = Field(default_factory=list, description="What a vision model said it saw (not measured).")
    updated: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class StoredFindings(ToolResult):
    """A tool result restored from the store: only its findings were kept, and they are what it says."""

    stored: list[Finding]

    def summary(self) -> str:
        return "; ".join(f"{f.what}: {', '.join(map(str, f.quantities))}" if f.quantities else f.what
                         for f in self.stored)

    def findings(self, arguments: dict[str, Any]) -> list[Finding]:
        return list(self.stored)


def conversation_of(session: ScanSession, conversation_id: str, owner: User, messages: list[Message] | None = None,
                    scan_path: str | None = None) -> SavedConversation:
    """What to save of `owner`'s `session` (which must have a scan): its findings, observations and the chat,
    through the PHI gate (the path's folders and a name typed in the chat may identify the patient)."""
    volume, gate = session.require_volume(), PrivacyGate(get_settings())
    return SavedConversation(conversation_id=conversation_id, owner=owner.name, scan=scan_reference(volume),
                             scan_path=gate.path(scan_path), messages=gate.messages(list(messages or []), volume.identifiers),
                             findings=tool_findings(session), observations=list(session.observations))


def restore_session(saved: SavedConversation, volume: Volume) -> ScanSession:
    """A session on `volume` holding the saved findings, one record per original tool call;
    refused when `volume` is not the scan the findings were measured on."""
    try:
        require_same_scan(saved.scan, volume)
    except ReportError as exc:
        raise ReportError(f"The saved conversation {saved.conversation_id} is about another scan: {exc}") from exc
    session = ScanSession()
    session.load(volume)
    calls: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    arguments: dict[tuple[str, str], dict[str, Any]] = {}
    for finding in saved.findings:
        key = (finding.source_tool, repr(sorted(finding.parameters.items())))
        calls[key].append(finding)
        arguments[key] = finding.parameters
    session.records += [ToolRecord(name=tool, arguments=arguments[(tool, params)], result=StoredFindings(stored=found))
                        for (tool, params), found in calls.items()]
    session.observations += saved.observations
    return session
