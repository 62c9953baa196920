"""File paths from outside (an upload's header, a chat message, a model's argument), confined.

A path is accepted only when it names a readable regular file inside one of an allow-list of
folders, reached without following a link. Callers refuse every other case with ONE message:
a different wording for "missing", "unreadable", "a link" and "outside" would tell whoever
wrote the path which server files exist.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath


def file_inside(path: str | Path, roots: Iterable[Path], base: Path | None = None) -> Path | None:
    """The file `path` names (relative paths start at `base`) when it lies inside one of `roots`
    with no link on the way and can be read; None otherwise, whatever the reason."""
    text = str(path)
    if not text or "\0" in text:
        return None
    candidate = Path(os.path.abspath(Path(base or Path.cwd()) / text))  # `..` resolved lexically, links not followed
    for root in roots:
        top = Path(os.path.abspath(root))
        if candidate != top and top in candidate.parents:
            return _unlinked_file(top, candidate.relative_to(top).parts)
    return None


def _unlinked_file(top: Path, parts: tuple[str, ...]) -> Path | None:
    current = top
    for part in parts:
        current = current / part
        if current.is_symlink():
            return None
    if current.is_file() and os.access(current, os.R_OK):
        return current
    return None


def plain_relative_name(name: str) -> bool:
    """A relative name without `..`, drive letters or backslashes: how a header may name a file
    that travels with it."""
    if not name or "\0" in name or "\\" in name:
        return False
    posix = PurePosixPath(name)
    return not (posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts)
