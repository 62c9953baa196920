"""Where an OpenAI-compatible runtime may send prompts and its API key.

Prompts leave the machine only by an explicit opt-in (`Settings.openai_allow_remote`) and only
over https; plain http is accepted on loopback, where nothing crosses a network. The key is the
one configured next to the URL (not a general OPENAI_API_KEY meant for another service), and it
goes only to that host: clients built from an `Endpoint` send requests relative to its URL and
do not follow redirects.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from assistant.config import Settings
from assistant.models.base import ModelError
from assistant.network import is_loopback


@dataclass(frozen=True)
class Endpoint:
    api_root: str  # ends in /v1/
    host: str
    api_key: str | None

    def __repr__(self) -> str:  # the key never reaches a log through a repr
        return f"Endpoint(api_root={self.api_root!r}, key={'set' if self.api_key else 'none'})"



def checked_endpoint(settings: Settings) -> Endpoint:
    """The configured server, after the opt-in and transport rules; raises ModelError saying what to set."""
    if not settings.openai_base_url:
        raise ModelError("the openai runtime needs a server: set SCANCHAT_OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1)")
    parts = urlsplit(settings.openai_base_url.strip())
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise ModelError(f"SCANCHAT_OPENAI_BASE_URL must be an http(s) URL without credentials; got "
                         f"{parts.scheme or 'no scheme'}://{host or '?'}.")
    if not is_loopback(host):
        if not settings.openai_allow_remote:
            raise ModelError(f"SCANCHAT_OPENAI_BASE_URL points at another machine ({host}); prompts would leave this "
                             "one. Set SCANCHAT_OPENAI_ALLOW_REMOTE=true to allow it.")
        if parts.scheme != "https":
            raise ModelError(f"The model server {host} is on another machine: use https, not http.")
    root = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    root = (root if root.endswith("/v1") else root + "/v1") + "/"
    return Endpoint(api_root=root, host=host, api_key=settings.openai_api_key or None)
