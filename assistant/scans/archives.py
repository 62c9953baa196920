"""Unpacking uploaded zip archives without trusting them.

A zip from a browser may hold path-traversal names (``../x``, ``/etc/x``), symlinks, or a
decompression bomb. Everything is checked from the central directory BEFORE anything is
written, and the declared sizes are enforced again while streaming (they can lie). Members
are written only into a fresh folder under `Settings.uploads_dir`.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from assistant.config import Settings, get_settings
from assistant.paths import plain_relative_name
from assistant.volume import ScanLoadError

# Real DICOM/NIfTI compresses at most ~10-20x; bombs reach 1000x and more.
MAX_COMPRESSION_RATIO = 100
# Small members may compress extremely well (blank headers); the ratio check starts above this.
RATIO_CHECK_MIN_BYTES = 1024 * 1024
_COPY_CHUNK = 1024 * 1024


def format_bytes(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_archive(archive: zipfile.ZipFile, settings: Settings) -> list[zipfile.ZipInfo]:
    """The members to extract, after refusing anything hostile; raises ScanLoadError."""
    members = archive.infolist()
    if len(members) > settings.max_archive_members:
        raise ScanLoadError(
            f"The zip holds {len(members)} entries, more than the {settings.max_archive_members} allowed; "
            "upload one series at a time."
        )
    total = 0
    for info in members:
        if not plain_relative_name(info.filename.replace("\\", "/")):
            raise ScanLoadError(
                f"The zip contains an unsafe path ({info.filename!r}); re-create it with relative paths only."
            )
        if _is_symlink(info):
            raise ScanLoadError(f"The zip contains a symbolic link ({info.filename!r}); zip the files themselves.")
        total += info.file_size
        if info.file_size > RATIO_CHECK_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise ScanLoadError(
                f"The zip entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x, "
                "which looks like a decompression bomb; upload the scan files directly."
            )
    if total > settings.max_upload_bytes:
        raise ScanLoadError(
            f"The zip would unpack to {format_bytes(total)}, more than the {format_bytes(settings.max_upload_bytes)} "
            "allowed; upload a smaller series."
        )
    return [info for info in members if not info.is_dir()]


def _copy_bounded(source, target, limit: int, name: str) -> int:
    """Copy at most `limit` bytes; an entry larger than it declared is a bomb."""
    written = 0
    while chunk := source.read(_COPY_CHUNK):
        written += len(chunk)
        if written > limit:
            raise ScanLoadError(f"The zip entry {name!r} is larger than it declares; the archive is not trustworthy.")
        target.write(chunk)
    return written


def extract_archive(path: str | Path, settings: Settings | None = None) -> Path:
    """Unpack a zip into a fresh folder under `uploads_dir` and return that folder."""
    settings = settings or get_settings()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ScanLoadError(f"{Path(path).name} is not a readable zip archive ({exc}); re-create the zip.") from exc
    with archive:
        members = check_archive(archive, settings)
        settings.uploads_dir.mkdir(parents=True, exist_ok=True)
        target_dir = Path(tempfile.mkdtemp(prefix="zip-", dir=settings.uploads_dir))
        try:
            for info in members:
                destination = target_dir.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as target:
                    _copy_bounded(source, target, info.file_size, info.filename)
        except ScanLoadError:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise ScanLoadError(f"{Path(path).name} is damaged or encrypted ({exc}); re-create the zip.") from exc
    return target_dir
