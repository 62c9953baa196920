"""Who is using ScanChat: users with roles, their passwords (scrypt), and the checks that guard a deployment.

Roles: a *clinician* chats and drafts; a *reviewer* also reads every report and signs; an
*evaluator* runs evaluations; an *admin* manages users. A loopback-only install with no users
configured has one implicit user, ``local`` (a reviewer: one person on a laptop signs their own
reports, as before); anything reachable from the network needs users (`check_can_bind`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from assistant.db import Database
from assistant.network import is_loopback
from assistant.db.schema import users

log = logging.getLogger(__name__)


class Role(str, Enum):
    clinician = "clinician"
    reviewer = "reviewer"
    evaluator = "evaluator"
    admin = "admin"


class User(BaseModel, frozen=True):
    """The logged-in identity every store operation is made on behalf of."""

    name: str
    role: Role

    @property
    def may_sign(self) -> bool:
        return self.role is Role.reviewer

    @property
    def reads_all_reports(self) -> bool:
        return self.role is Role.reviewer


LOCAL_USER = User(name="local", role=Role.reviewer)


class AuthError(ValueError):
    """Not allowed, or not configured to allow it safely; the message says what to do."""


# --- passwords: scrypt (hashlib, RFC 7914) at OWASP's recommended minimum cost -----------------------------------
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}  # 128 MiB per check; stored with each hash, so it can be raised later
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise AuthError("A password needs at least 8 characters.")
    salt = os.urandom(16)
    digest = _scrypt(password, salt, **_SCRYPT)
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + "$".join(base64.b64encode(v).decode() for v in (salt, digest))


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        return hmac.compare_digest(_scrypt(password, base64.b64decode(salt), n=int(n), r=int(r), p=int(p)), expected)
    except ValueError:
        log.warning("a stored password hash is malformed; that user cannot log in until `scanchat users add` resets it")
        return False


def _scrypt(password: str, salt: bytes, *, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024**2, dklen=32)


_DUMMY_HASH = None  # computed on first failed lookup, so unknown names cost as much time as wrong passwords


class Users:
    """The users table: add, list, disable, authenticate."""

    def __init__(self, db: Database):
        self.db = db

    def add(self, name: str, role: Role | str, password: str) -> User:
        """A new user, or a new password and role for an existing one (which is enabled again)."""
        if not _NAME.match(name or ""):
            raise AuthError(f"{name!r} is not a valid user name: 1-64 letters, digits, '.', '_', '@' or '-'.")
        if name == LOCAL_USER.name:
            raise AuthError(f"'{LOCAL_USER.name}' is the implicit user of an install without users; choose another name.")
        user = User(name=name, role=Role(role))
        row = {"role": user.role.value, "password_hash": hash_password(password), "disabled": False}
        with self.db.transaction() as db:
            if db.execute(sa.select(users.c.name).where(users.c.name == name)).first():
                db.execute(users.update().where(users.c.name == name).values(**row))
            else:
                db.execute(users.insert().values(name=name, created=datetime.now(timezone.utc).isoformat(), **row))
        return user

    def disable(self, name: str) -> None:
        with self.db.transaction() as db:
            if not db.execute(users.update().where(users.c.name == name).values(disabled=True)).rowcount:
                raise AuthError(f"There is no user {name!r}.")

    def list(self) -> list[tuple[User, bool]]:
        """(user, enabled) in name order."""
        with self.db.reading() as db:
            rows = db.execute(sa.select(users.c.name, users.c.role, users.c.disabled).order_by(users.c.name)).all()
        return [(User(name=name, role=Role(role)), not disabled) for name, role, disabled in rows]

    def any_enabled(self) -> bool:
        with self._reading() as db:
            return db.execute(sa.select(users.c.name).where(users.c.disabled == sa.false()).limit(1)).first() is not None

    def get(self, name: str) -> User | None:
        """The enabled user of that name, if any."""
        with self._reading() as db:
            row = db.execute(sa.select(users.c.role).where(users.c.name == name, users.c.disabled == sa.false())).first()
        return User(name=name, role=Role(row[0])) if row else None

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        """Nobody is let in while the database cannot say who they are; the message says why."""
        try:
            with self.db.reading() as db:
                yield db
        except SQLAlchemyError as exc:
            log.warning("the users table cannot be read", exc_info=True)
            raise AuthError(f"Logins cannot be checked right now: the database {self.db.where} is not available.") from exc

    def authenticate(self, name: str, password: str) -> bool:
        """Gradio's ``launch(auth=...)`` callable: True for an enabled user with this password."""
        global _DUMMY_HASH
        try:
            with self._reading() as db:
                row = db.execute(sa.select(users.c.password_hash)
                                 .where(users.c.name == name, users.c.disabled == sa.false())).first()
        except AuthError:
            return False
        if row is None:
            _DUMMY_HASH = _DUMMY_HASH or hash_password("not a password of anyone")
            verify_password(password or "", _DUMMY_HASH)
            return False
        return verify_password(password or "", row[0])


def request_user(username: str | None, headers: Mapping[str, str] | None, users_table: Users,
                 trusted_header: str | None) -> User:
    """The user of one request: Gradio's logged-in name, else the trusted proxy header (when configured),
    else the implicit local user when no users exist. Raises `AuthError` for anyone else."""
    name = username
    if not name and trusted_header and headers is not None:
        name = next((v for k, v in headers.items() if k.lower() == trusted_header.lower()), None)
    if name:
        user = users_table.get(name.strip())
        if user is None:
            raise AuthError(f"The user {name!r} is unknown or disabled; an admin adds users with `scanchat users add`.")
        return user
    if users_table.any_enabled():
        raise AuthError("Log in first.")
    return LOCAL_USER



def check_can_bind(host: str, users_table: Users, trusted_header: str | None = None) -> None:
    """Refuse to serve a network address with nobody to log in: everyone who reached it would be 'local'."""
    if trusted_header and not is_loopback(host):
        log.warning("listening on %s while trusting the %s header: anyone who reaches this address directly, not "
                    "through the authenticating proxy, can claim any user name", host, trusted_header)
    if not is_loopback(host) and not users_table.any_enabled():
        raise AuthError(
            f"Refusing to listen on {host}: no users are configured, so anyone who can reach this address could read "
            "every conversation and report. Add users first (`scanchat users add NAME --role clinician`, password on "
            "stdin) or listen on 127.0.0.1.")


_CHECKS_AT_ONCE = threading.BoundedSemaphore(2)  # each scrypt check takes 128 MiB: a login burst stays bounded


def gradio_auth(users_table: Users, trusted_header: str | None) -> Callable[[str, str], Awaitable[bool]] | None:
    """What to pass as ``launch(auth=...)``: the password check when users exist and no proxy authenticates.

    Gradio awaits a coroutine function on its event loop; the scrypt check (about half a second of CPU) runs in a
    thread, so a login never stalls the chats and viewers of users already in."""
    if trusted_header or not users_table.any_enabled():
        return None

    def check(name: str, password: str) -> bool:
        with _CHECKS_AT_ONCE:
            return users_table.authenticate(name, password)

    async def authenticate(name: str, password: str) -> bool:
        return await asyncio.to_thread(check, name, password)

    return authenticate


def command_line_user(users_table: Users, name: str | None) -> User:
    """Who a terminal command acts as: `--user NAME` (the shell account already reaches the database), or the
    implicit local user on an install without users."""
    if name:
        user = users_table.get(name)
        if user is None:
            raise AuthError(f"There is no enabled user {name!r} (see `scanchat users list`).")
        return user
    if users_table.any_enabled():
        raise AuthError("This install has users: say which one with --user NAME.")
    return LOCAL_USER
