"""The data files a MetaImage (.mhd/.mha) or NRRD (.nhdr/.nrrd) header names, confined to its upload.

These headers may keep their voxels in other files (``ElementDataFile = scan.raw``,
``data file: scan.raw``), and ITK opens whatever they name: ``/etc/passwd`` or another user's
upload would be read as voxels and shown back. So the header is read here first, every named
file must be a plain relative name (no absolute path, no ``..``, no link) of a readable file in
the same upload (the folder or archive it came in), and the refusal reads the same whether or not
the named file exists. The search is wider than ITK's parser (any case, any separator), so what
ITK would follow is always checked.
"""

from __future__ import annotations

import re
from pathlib import Path

from assistant.paths import file_inside, plain_relative_name
from assistant.volume import ScanLoadError

HEADER_BYTES = 1024 * 1024  # a header (with a LIST of slice files) is far smaller; more is refused
MAX_DATA_FILES = 20_000
_META_DATA_FILE = re.compile(r"element\s*data\s*file\s*[=:]\s*([^\r\n]*)", re.IGNORECASE)
_NRRD_DATA_FILE = re.compile(r"data\s*file\s*:=?\s*([^\r\n]*)", re.IGNORECASE)
_NRRD_HEADER_END = re.compile(r"\r?\n\r?\n")
# printf-style slice-name pattern "slice%03d.raw <first> <last> <step>"; the optional fifth field
# (slice dimension) is refused: MetaIO 5.4 then fills the volume with uninitialised memory.
_PATTERN = re.compile(r"(\S*%0?\d*d\S*)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)")


def refusal(header: Path) -> ScanLoadError:
    """One message for every rejected data file: missing, outside, linked or unreadable alike."""
    return ScanLoadError(
        f"{header.name} keeps its voxels in a data file that is not part of this upload; upload the header "
        "together with its data file(s) in one zip, named relative to the header (no folders above it, "
        "no absolute paths, no links)."
    )


def named_data_files(header: Path) -> list[str]:
    """The names of the data files `header` points at; [] when the voxels follow the header itself."""
    with open(header, "rb") as stream:
        raw = stream.read(HEADER_BYTES + 1)
    text = raw.decode("latin-1")
    if text.startswith("NRRD"):
        end = _NRRD_HEADER_END.search(text)
        head, rest = (text[: end.start()], text[end.end():]) if end else (text, "")
        matches = list(_NRRD_DATA_FILE.finditer(head))
        if not matches:
            return []
        if len(raw) > HEADER_BYTES and not end:
            raise refusal(header)
        return _expand(header, matches, head, rest)
    first = _META_DATA_FILE.search(text)  # MetaIO stops reading the header at this field; voxels may follow
    if first is None:
        return []  # no voxels anywhere: ITK refuses the file itself
    if first.group(1).strip().upper() == "LOCAL":
        return []
    if len(raw) > HEADER_BYTES:
        raise refusal(header)
    return _expand(header, [first], text, "")


def _expand(header: Path, matches: list[re.Match], text: str, rest: str) -> list[str]:
    names: list[str] = []
    for match in matches:
        value = match.group(1).strip()
        if value.upper().startswith("LIST"):  # the names follow, one per line, to the end of the header
            listed = text[match.end():] + "\n" + rest
            names += [line.strip() for line in listed.splitlines() if line.strip()]
        elif pattern := _PATTERN.fullmatch(value):
            names += _pattern_names(header, *pattern.groups())
        else:
            names.append(value)
        if len(names) > MAX_DATA_FILES:
            raise refusal(header)
    return names


def _pattern_names(header: Path, pattern: str, first: str, last: str, step: str) -> list[str]:
    if pattern.replace("%%", "").count("%") != 1 or int(step) == 0:
        raise refusal(header)
    numbers = range(int(first), int(last) + (1 if int(step) > 0 else -1), int(step))
    if len(numbers) > MAX_DATA_FILES:
        raise refusal(header)
    return [pattern % number for number in numbers]


def confined_data_files(header: Path, root: Path) -> list[Path]:
    """The files `header` names, each a readable regular file inside `root`; raises ScanLoadError."""
    try:
        names = named_data_files(header)
    except OSError as exc:
        raise ScanLoadError(f"{header.name} could not be read ({exc.strerror or exc}).") from exc
    files = []
    for name in names:
        found = file_inside(name, [root], base=header.parent) if plain_relative_name(name) else None
        if found is None:
            raise refusal(header)
        files.append(found)
    return files
