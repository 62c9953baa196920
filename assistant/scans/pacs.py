"""The PACS as a scan source and a destination, over DICOMweb (QIDO-RS, WADO-RS, STOW-RS).

Like MONAI Label's DICOMweb datastore: studies are searched with QIDO-RS, a series is retrieved
with WADO-RS into a local cache keyed by its UIDs (`Settings.pacs_dir`) and then loaded by the
same DICOM loader, with the same limits, as an upload, so the rest of ScanChat never knows where
a scan came from. Results go back with STOW-RS: a DICOM SEG per segmentation and a DICOM SR per
signed report, both in the source study, each kept as a file first so that a failed push loses
nothing and can be sent again.

The functions the UI calls: `search_studies`, `list_series`, `open_series`, `push_session`; the
CLI adds ``scanchat pacs search|series|push`` and every SCAN argument accepts
``dicomweb:STUDY_UID[/SERIES_UID]`` (`load_scan` hands those here).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import pydicom
import requests
from pydantic import BaseModel, Field, field_validator

from assistant.config import Settings, get_settings
from assistant.scans.archives import format_bytes
from assistant.volume import ScanLoadError, Volume

log = logging.getLogger(__name__)

DICOMWEB_PREFIX = "dicomweb:"
# Series that hold no images to look at: reports, segmentations, presentation states, RT objects, key objects.
NON_IMAGE_MODALITIES = frozenset({"SR", "SEG", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
_COMPLETE = ".complete"  # written last into a cached series folder: a folder without it is never used


class PacsError(ScanLoadError):
    """The PACS could not be searched, read or written; the message says what to check."""


class StudyQuery(BaseModel):
    """QIDO-RS study search; every field is optional and they combine with AND. `*` and `?` are wildcards
    in names and identifiers; dates are YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end open)."""

    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    modality: str | None = None
    limit: int = Field(50, ge=1, le=1000)

    @field_validator("study_date")
    @classmethod
    def _date_or_range(cls, value: str | None) -> str | None:
        if value is not None and (not value or not _DATE.match(value)):
            raise ValueError(f"{value!r} is not a date (YYYYMMDD) or a range (YYYYMMDD-YYYYMMDD).")
        return value

    def filters(self) -> dict[str, str]:
        fields = {"PatientID": self.patient_id, "PatientName": self.patient_name,
                  "AccessionNumber": self.accession_number, "StudyDate": self.study_date,
                  "ModalitiesInStudy": self.modality.upper() if self.modality else None}
        return {k: v for k, v in fields.items() if v}


class SeriesSummary(BaseModel):
    series_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    instances: int = 0

    @property
    def has_images(self) -> bool:
        return self.modality.upper() not in NON_IMAGE_MODALITIES


class StudySummary(BaseModel):
    """One row of the study browser. Holds patient identifiers: show it to the clinician, never to a model."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_date: str = ""
    description: str = ""
    modalities: list[str] = []
    series_count: int = 0
    instance_count: int = 0

    @property
    def reference(self) -> str:
        return f"{DICOMWEB_PREFIX}{self.study_uid}"


class PushedObject(BaseModel):
    kind: str = Field(description="The object's DICOM modality: SEG or SR for ScanChat's results.")
    path: Path = Field(description="The local copy, kept whether or not the push worked.")
    sop_instance_uid: str
    attempts: int
    error: str | None = Field(None, description="Why the last attempt failed; None once stored.")

    @property
    def stored(self) -> bool:
        return self.error is None


class PushResult(BaseModel):
    objects: list[PushedObject]
    study_uid: str

    @property
    def ok(self) -> bool:
        return all(o.stored for o in self.objects)

    def summary(self) -> str:
        lines = [f"{o.kind} {'stored' if o.stored else 'NOT stored'} after {o.attempts} attempt(s); kept at {o.path}"
                 + (f" ({o.error})" if o.error else "") for o in self.objects]
        if not self.ok:
            lines.append("Nothing is lost: send the kept files again with `scanchat pacs push FILE...` once the PACS answers.")
        return "\n".join(lines)


# --- the connection ----------------------------------------------------------------------------


def _session(settings: Settings) -> requests.Session:
    """An HTTP session with the PACS credentials (basic auth or a bearer token)."""
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    if not settings.dicomweb_url:
        raise PacsError("No PACS is configured: set SCANCHAT_DICOMWEB_URL to its DICOMweb root "
                        "(e.g. http://pacs:8042/dicom-web).")
    if settings.dicomweb_username:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        session = create_session_from_user_pass(settings.dicomweb_username, password)
    else:
        session = create_session()
    if settings.dicomweb_token:
        session.headers["Authorization"] = f"Bearer {settings.dicomweb_token.get_secret_value()}"
    if not settings.share_identifiers:  # the library logs request URLs, which carry the search terms (names, ids)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    return session


def _client(settings: Settings):
    """A DICOMweb client for `Settings.dicomweb_url` with its credentials and timeout."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(settings.dicomweb_url or "", session=_session(settings), timeout=settings.dicomweb_timeout_s)
    client.set_http_retry_params(retry=False)  # one request, one answer: retries are ours, and bounded
    return client


@contextmanager
def _talking_to_pacs(settings: Settings, what: str) -> Iterator[None]:
    """Turn network and HTTP failures into one sentence that names the PACS host and what to do."""
    host = urlsplit(settings.dicomweb_url or "").netloc or "the PACS"
    try:
        yield
    except requests.Timeout as exc:
        raise PacsError(f"The PACS at {host} did not answer within {settings.dicomweb_timeout_s:g} s while {what}; "
                        "it may be overloaded: try again, or raise SCANCHAT_DICOMWEB_TIMEOUT_S.") from exc
    except requests.ConnectionError as exc:
        raise PacsError(f"The PACS at {host} cannot be reached while {what}: check SCANCHAT_DICOMWEB_URL and that "
                        "the server is running.") from exc
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        hint = {401: "check SCANCHAT_DICOMWEB_USERNAME/PASSWORD or TOKEN", 403: "the account may not read this study",
                404: "it does not have this study or series"}.get(code, "see the PACS log")
        raise PacsError(f"The PACS at {host} answered HTTP {code} while {what}: {hint}.") from exc
    except requests.RequestException as exc:
        raise PacsError(f"The PACS at {host} failed while {what} ({type(exc).__name__}).") from exc


def _value(item: dict, tag: str, default=""):
    values = item.get(tag, {}).get("Value") or [default]
    value = values[0]
    return value.get("Alphabetic", "") if isinstance(value, dict) else value


def _uid(text: str, what: str) -> str:
    text = text.strip()
    if not _UID.match(text) or len(text) > 64:
        raise PacsError(f"{text[:80]!r} is not a DICOM {what} UID (digits and dots, at most 64 characters).")
    return text


def parse_reference(reference: str) -> tuple[str, str | None]:
    """``dicomweb:STUDY_UID[/SERIES_UID]`` -> (study UID, series UID or None)."""
    if not reference.startswith(DICOMWEB_PREFIX):
        raise PacsError(f"{reference[:80]!r} is not a PACS reference; write dicomweb:STUDY_UID[/SERIES_UID].")
    study, _, series = reference.removeprefix(DICOMWEB_PREFIX).strip("/").partition("/")
    return _uid(study, "study"), _uid(series, "series") if series else None


# --- search ------------------------------------------------------------------------------------


def search_studies(query: StudyQuery, settings: Settings | None = None) -> list[StudySummary]:
    """Studies matching the query (QIDO-RS), newest first."""
    settings = settings or get_settings()
    fields = ["PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
    # dicomweb-client percent-encodes the wildcards (`*` as %2A) and Orthanc then matches them literally;
    # `*` `?` `^` are legal in a query string (RFC 3986), so the search sends them as typed.
    params = {**query.filters(), "limit": str(query.limit), "includefield": fields}
    with _talking_to_pacs(settings, "searching studies"), _session(settings) as session:
        response = session.get(f"{settings.dicomweb_url.rstrip('/')}/studies",  # type: ignore[union-attr]
                               params=urlencode(params, doseq=True, safe="*?^", quote_via=quote),
                               headers={"Accept": "application/dicom+json"}, timeout=settings.dicomweb_timeout_s)
        response.raise_for_status()
        found = response.json() if response.content else []
    studies = [StudySummary(
        study_uid=_value(item, "0020000D"), patient_id=str(_value(item, "00100020")),
        patient_name=str(_value(item, "00100010")), accession_number=str(_value(item, "00080050")),
        study_date=str(_value(item, "00080020")), description=str(_value(item, "00081030")),
        modalities=[str(m) for m in item.get("00080061", {}).get("Value", [])],
        series_count=int(_value(item, "00201206", 0) or 0), instance_count=int(_value(item, "00201208", 0) or 0),
    ) for item in found if _value(item, "0020000D")]
    return sorted(studies, key=lambda s: s.study_date, reverse=True)


def list_series(study_uid: str, settings: Settings | None = None) -> list[SeriesSummary]:
    """The series of one study (QIDO-RS), in series-number order."""
    settings = settings or get_settings()
    study_uid = _uid(study_uid, "study")
    with _talking_to_pacs(settings, "listing the study's series"):
        found = _client(settings).search_for_series(
            study_uid, fields=["Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances"])
    series = [SeriesSummary(
        series_uid=_value(item, "0020000E"), modality=str(_value(item, "00080060")),
        description=str(_value(item, "0008103E")),
        number=int(_value(item, "00200011")) if str(_value(item, "00200011")).strip().lstrip("-").isdigit() else None,
        instances=int(_value(item, "00201209", 0) or 0),
    ) for item in found if _value(item, "0020000E")]
    return sorted(series, key=lambda s: (s.number is None, s.number or 0))


# --- retrieve ----------------------------------------------------------------------------------


def _choose_series(study_uid: str, series_uid: str | None, settings: Settings) -> SeriesSummary:
    series = list_series(study_uid, settings)
    if not series:
        raise PacsError("The PACS has no series for this study (wrong study UID, or the study was deleted).")
    if series_uid is not None:
        chosen = next((s for s in series if s.series_uid == series_uid), None)
        if chosen is None:
            raise PacsError(f"The study has no such series; it has {len(series)}: "
                            + "; ".join(f"{s.modality} {s.description or s.series_uid}" for s in series[:8]) + ".")
        if not chosen.has_images:
            raise PacsError(f"That series is a {chosen.modality} object, not images; open one of the study's image series.")
        return chosen
    images = [s for s in series if s.has_images]
    if not images:
        raise PacsError(f"The study has no image series, only {', '.join(sorted({s.modality for s in series}))}; "
                        "choose another study.")
    return max(images, key=lambda s: s.instances)


def _check_size(client, study_uid: str, series: SeriesSummary, settings: Settings) -> int:
    """Instances and voxels announced by QIDO-RS, checked against the limits before any pixel is fetched."""
    instances = client.search_for_instances(study_uid, series.series_uid, fields=["Rows", "Columns", "NumberOfFrames"],
                                            get_remaining=True)
    if not instances:
        raise PacsError("The series has no instances on the PACS (it may still be arriving); try again later.")
    if len(instances) > settings.max_archive_members:
        raise PacsError(f"The series has {len(instances)} instances, more than the {settings.max_archive_members} allowed.")
    voxels = sum(int(_value(i, "00280010", 0) or 0) * int(_value(i, "00280011", 0) or 0)
                 * int(_value(i, "00280008", 1) or 1) for i in instances)
    if voxels > settings.max_voxels:
        raise PacsError(f"The series announces {voxels:,} voxels in {len(instances)} instances, more than the "
                        f"{settings.max_voxels:,} allowed (SCANCHAT_MAX_VOXELS); open a smaller series.")
    return len(instances)


def _series_folder(study_uid: str, series_uid: str, settings: Settings) -> Path:
    """Cache folder of one series; named by a hash so that no UID from outside becomes a path."""
    return settings.pacs_dir / "series" / hashlib.sha256(f"{study_uid}/{series_uid}".encode()).hexdigest()[:32]


def _retrieve(client, study_uid: str, series_uid: str, expected: int, target: Path, settings: Settings) -> None:
    """WADO-RS into a staging folder, renamed to `target` only when every instance arrived and belongs to
    the series: a PACS that fails half-way leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".retrieving-", dir=target.parent))
    try:
        started, total, count = time.monotonic(), 0, 0
        for count, dataset in enumerate(client.iter_series(study_uid, series_uid), 1):
            if (str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SeriesInstanceUID", ""))) != (study_uid, series_uid):
                raise PacsError("The PACS returned an instance of another series inside this one (a mixed series); "
                                "nothing was loaded.")
            path = staging / f"{count:05d}.dcm"
            dataset.save_as(path, enforce_file_format=False)
            total += path.stat().st_size
            if total > settings.max_upload_bytes:
                raise PacsError(f"The series is larger than the {format_bytes(settings.max_upload_bytes)} allowed "
                                "(SCANCHAT_MAX_UPLOAD_BYTES); nothing was loaded.")
            if time.monotonic() - started > settings.dicomweb_retrieve_timeout_s:
                raise PacsError(f"Retrieving the series took longer than {settings.dicomweb_retrieve_timeout_s:g} s "
                                "(SCANCHAT_DICOMWEB_RETRIEVE_TIMEOUT_S); nothing was loaded.")
        if count != expected:
            raise PacsError(f"The PACS sent {count} of the {expected} instances it lists for this series (a partial "
                            "series); nothing was loaded. Try again once the series is complete.")
        (staging / _COMPLETE).write_text(str(count))
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def open_series(study_uid: str, series_uid: str | None = None, settings: Settings | None = None,
                use_cache: bool = True) -> Volume:
    """The series as a `Volume` (without `series_uid`: the study's largest image series).

    Retrieved once into the cache, then read by the DICOM loader with its limits; a series that
    fails to load is removed from the cache again, so that nothing half-loaded stays.
    """
    from assistant.scans.loading import load_scan

    settings = settings or get_settings()
    study_uid = _uid(study_uid, "study")
    series_uid = _uid(series_uid, "series") if series_uid else None
    series = _choose_series(study_uid, series_uid, settings)
    folder = _series_folder(study_uid, series.series_uid, settings)
    if not (use_cache and (folder / _COMPLETE).exists()):
        client = _client(settings)
        with _talking_to_pacs(settings, "retrieving the series"):
            expected = _check_size(client, study_uid, series, settings)
            shutil.rmtree(folder, ignore_errors=True)
            _retrieve(client, study_uid, series.series_uid, expected, folder, settings)
    try:
        volume = load_scan(folder, settings)
    except ScanLoadError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    volume.name = f"PACS {series.modality} series {series.number if series.number is not None else ''}".strip()
    return volume


def load_reference(reference: str, settings: Settings | None = None) -> Volume:
    """A ``dicomweb:STUDY_UID[/SERIES_UID]`` argument as a `Volume`."""
    return open_series(*parse_reference(reference), settings=settings)


# --- push --------------------------------------------------------------------------------------

_IDENTITY = ("PatientID", "PatientName", "StudyInstanceUID")


def _source_identity(volume: Volume) -> dict[str, str]:
    if not volume.dicom_sources:
        raise PacsError("Only results of a DICOM series can go to the PACS; this scan was not loaded from DICOM.")
    header = pydicom.dcmread(volume.dicom_sources[0], stop_before_pixels=True, specific_tags=list(_IDENTITY))
    identity = {k: str(header.get(k, "") or "").strip() for k in _IDENTITY}
    if not identity["PatientID"] or not identity["StudyInstanceUID"]:
        raise PacsError("The source series has no patient ID or study UID, so results cannot be filed with the right "
                        "patient; nothing was sent. Export them as files instead.")
    return identity


def _require_identity(dataset: pydicom.Dataset, identity: dict[str, str], kind: str) -> None:
    """A pushed object carries the source's patient and study, never a placeholder or another patient's."""
    found = {k: str(dataset.get(k, "") or "").strip() for k in _IDENTITY}
    if found != identity:
        wrong = ", ".join(k for k in _IDENTITY if found[k] != identity[k])
        raise PacsError(f"The {kind} does not carry the source series' {wrong}; it was not sent.")


def _read_for_push(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise PacsError(f"{Path(path).name} is not a readable DICOM file ({exc}); nothing was sent.") from exc


def push_files(paths: Sequence[Path], settings: Settings | None = None) -> list[PushedObject]:
    """STOW-RS each DICOM file, retried `Settings.dicomweb_push_attempts` times with a growing pause.

    Every file is read before the first is sent; then failures are reported per file, never raised
    half-way, and the files stay where they are. A file without a patient ID or study UID is not sent.
    """
    settings = settings or get_settings()
    datasets = [(Path(path), _read_for_push(Path(path))) for path in paths]
    client = _client(settings)
    results = []
    for path, dataset in datasets:
        kind = str(dataset.get("Modality", "") or "DICOM")
        uid = str(dataset.get("SOPInstanceUID", ""))
        if not str(dataset.get("PatientID", "") or "").strip() or not dataset.get("StudyInstanceUID"):
            results.append(PushedObject(kind=kind, path=path, sop_instance_uid=uid, attempts=0,
                                        error="it has no patient ID or study UID, so it was not sent"))
            continue
        error: str | None = None
        for attempt in range(1, settings.dicomweb_push_attempts + 1):
            try:
                with _talking_to_pacs(settings, f"storing the {kind}"):
                    response = client.store_instances([dataset])
                failed = response.get("FailedSOPSequence") if response is not None else None
                error = f"the PACS refused it (failure reason {failed[0].get('FailureReason', '?')})" if failed else None
            except PacsError as exc:
                error = str(exc)
            if error is None:
                break
            log.warning("push of a %s failed (attempt %d of %d)", kind, attempt, settings.dicomweb_push_attempts)
            if attempt < settings.dicomweb_push_attempts:
                time.sleep(0.5 * 2 ** (attempt - 1))
        results.append(PushedObject(kind=kind, path=path, sop_instance_uid=uid, attempts=attempt, error=error))
    return results


def push_results(volume: Volume, segmentations: Sequence = (), report=None, settings: Settings | None = None,
                 outbox: Path | None = None, seg_files: Sequence[Path] = ()) -> PushResult:
    """Send a DICOM SEG per segmentation (and the SEG files already written, `seg_files`) and a DICOM SR of the
    signed report, referencing those SEGs, to the source study. Every object is written to `outbox` (default:
    `Settings.pacs_dir`/outbox) before it is sent, so a failed push is reported with the file to send again;
    the signed report itself stays in the store."""
    from assistant.reports.dicom_sr import dicom_sr
    from assistant.reports.model import ReportError
    from assistant.segmentation.export import dicom_seg

    settings = settings or get_settings()
    if report is not None and not report.signed:
        raise ReportError("Only a signed report goes to the PACS: sign this version first.")
    if not segmentations and not seg_files and report is None:
        raise PacsError("Nothing to send: segment something or sign the report first.")
    identity = _source_identity(volume)
    outbox = outbox or settings.pacs_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    files = [Path(path) for path in seg_files]
    for path in files:
        _require_identity(_read_for_push(path), identity, f"segmentation {path.name}")
    for segmentation in segmentations:
        seg = dicom_seg(segmentation, volume)
        _require_identity(seg, identity, "segmentation")
        files.append(outbox / f"seg-{seg.SOPInstanceUID}.dcm")
        seg.save_as(files[-1])
    if report is not None:
        sr = dicom_sr(report, volume, files)
        _require_identity(sr, identity, "report")
        files.append(outbox / f"sr-{report.report_id}-v{report.number}.dcm")
        sr.save_as(files[-1])
    return PushResult(objects=push_files(files, settings), study_uid=identity["StudyInstanceUID"])


def push_session(session, report=None, settings: Settings | None = None, seg_files: Sequence[Path] = ()) -> PushResult:
    """`push_results` for a conversation: a SEG for each successful segmentation of the session's scan,
    and the signed `report` (a `ReportVersion`) if given. What the UI's "Send to PACS" button calls."""
    segmentations = [r.result.segmentation for r in session.records if r.ok and r.name == "segment"]
    return push_results(session.require_volume(), segmentations, report, settings, seg_files=seg_files)


# --- command line --------------------------------------------------------------------------------


def _search_cli(args) -> int:
    import json
    import sys

    query = StudyQuery(patient_id=args.patient_id, patient_name=args.name, accession_number=args.accession,
                       study_date=args.date, modality=args.modality, limit=args.limit)
    studies = search_studies(query)
    if args.json:
        print(json.dumps([s.model_dump() | {"reference": s.reference} for s in studies], indent=2))
        return 0
    for s in studies:
        print(f"{s.reference}  {s.study_date or '--------'}  {s.patient_id}  {s.patient_name}  acc {s.accession_number or '-'}"
              f"  {'/'.join(s.modalities)}  {s.series_count} series, {s.instance_count} images  {s.description}")
    if not studies:
        print("no study matches", file=sys.stderr)
    return 0


def _series_cli(args) -> int:
    study_uid, _ = parse_reference(args.study if args.study.startswith(DICOMWEB_PREFIX) else DICOMWEB_PREFIX + args.study)
    for s in list_series(study_uid):
        print(f"{DICOMWEB_PREFIX}{study_uid}/{s.series_uid}  {s.modality:<4} #{s.number if s.number is not None else '-'}"
              f"  {s.instances} instances  {s.description}{'' if s.has_images else '  (no images)'}")
    return 0


def _push_cli(args) -> int:
    objects = push_files([Path(p) for p in args.files])
    result = PushResult(objects=objects, study_uid="")
    print(result.summary())
    return 0 if result.ok else 1


def add_cli(subparsers) -> None:
    pacs = subparsers.add_parser("pacs", help="search the PACS (DICOMweb, SCANCHAT_DICOMWEB_URL) and send files to it")
    commands = pacs.add_subparsers(dest="pacs_command", required=True, metavar="ACTION")
    search = commands.add_parser("search", help="find studies (QIDO-RS); * and ? are wildcards")
    search.add_argument("--patient-id")
    search.add_argument("--name", help="patient name, DICOM style: FAMILY^GIVEN, e.g. 'DOE*'")
    search.add_argument("--accession")
    search.add_argument("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    search.add_argument("--modality", help="e.g. CT, MR")
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=_search_cli)
    series = commands.add_parser("series", help="list a study's series; open one as dicomweb:STUDY/SERIES")
    series.add_argument("study", help="study UID or dicomweb:STUDY_UID")
    series.set_defaults(func=_series_cli)
    push = commands.add_parser("push", help="send DICOM files (kept SEG/SR) to the PACS (STOW-RS), with retries")
    push.add_argument("files", nargs="+")
    push.set_defaults(func=_push_cli)
