"""Fuzz the scan loader: mutated files of every supported format, each loaded under a 10 s watchdog.

Per format, a small valid seed (from nibabel's and pydicom's test data, converted with SimpleITK
and NumPy) is mutated N times: truncated, bit-flipped, or with one header field set to an
extreme (sizes 0 / -1 / 2^31, spacings 0 / NaN / 1e308, unknown data types, huge offsets).
Files go one by one to a worker process that calls `load_scan` with the default settings. The
benchmark counts:

- crashes: anything but a `ScanLoadError` (an uncaught exception, or the worker dying: a
  segfault or the kernel's OOM killer), target 0;
- hangs: a load that has not returned after 10 s (the worker is killed and restarted), target 0;
- peak memory: the worker's peak RSS per format (restarted per format), next to the peak of
  loading the unmutated seed in the same run (the baseline).

    python -m evals.bench_fuzz                          # 1000 per format, JSON in evals/results/
    python -m evals.bench_fuzz --per-format 50 --formats nifti dicom
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import re
import resource
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

HANG_S = 10.0
SEED = 20261204
INT_EXTREMES = [0, 1, -1, 2, 255, 32767, -32768, 65535, 2**31 - 1, -(2**31), 2**32 - 1]
FLOAT_EXTREMES = [0.0, -0.0, 1e-30, -1.0, 1e30, 1e308, float("inf"), float("-inf"), float("nan")]
TEXT_EXTREMES = ["0", "-1", "2147483647", "4294967296", "99999999999999999999", "1e308", "nan", "inf", "-inf",
                 "0.0", "", "x", "1e-320"]


# --- seeds: one small valid file (or upload) per format -----------------------------------------


def _seeds() -> dict[str, dict[str, bytes]]:
    """Format -> the upload's files (one file, or several that travel zipped)."""
    import nibabel as nib
    import numpy as np
    import pydicom
    import SimpleITK as sitk
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    anatomical = Path(data_path) / "anatomical.nii"  # 33 x 41 x 25, 67 KB
    image = sitk.ReadImage(str(anatomical))
    seeds: dict[str, dict[str, bytes]] = {
        "nifti": {"scan.nii": anatomical.read_bytes()},
        "nifti-gz": {"scan.nii.gz": gzip.compress(anatomical.read_bytes())},
        "dicom": {"scan.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes()},
        "npy": {"scan.npy": _npy_bytes(np.asarray(nib.load(anatomical).dataobj, dtype=np.float32)[None])},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for fmt, name in (("nrrd", "scan.nrrd"), ("mha", "scan.mha"), ("mhd-zip", "scan.mhd"), ("nhdr-zip", "scan.nhdr")):
            folder = Path(scratch) / fmt
            folder.mkdir()
            sitk.WriteImage(image, str(folder / name))  # a detached header writes its data file beside it
            seeds[fmt] = {p.name: p.read_bytes() for p in folder.iterdir()}
    series, template = generate_uid(), pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    slices = {}
    for index in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series, generate_uid(), index + 1
        ds.ImagePositionPatient = [*template.ImagePositionPatient[:2], float(template.ImagePositionPatient[2]) + 5 * index]
        buffer = io.BytesIO()
        ds.save_as(buffer)
        slices[f"series/slice{index}.dcm"] = buffer.getvalue()
    seeds["dicom-zip"] = slices
    return seeds


def _npy_bytes(array) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# --- mutations ---------------------------------------------------------------------------------


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(len(data), 1))]


def _bitflip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    mutable = bytearray(data)
    header_bias = rng.random() < 0.7  # most format logic lives in the first KB
    for _ in range(rng.randint(1, 16)):
        position = rng.randrange(min(len(mutable), 1024) if header_bias else len(mutable))
        mutable[position] ^= 1 << rng.randrange(8)
    return bytes(mutable)


_NIFTI_FIELDS = [  # (offset, struct format) of NIfTI-1 header fields that drive reading
    *((40 + 2 * i, "<h") for i in range(8)), (70, "<h"), (72, "<h"), *((76 + 4 * i, "<f") for i in range(8)),
    (108, "<f"), (112, "<f"), (116, "<f"), (252, "<h"), (254, "<h"), *((256 + 4 * i, "<f") for i in range(6)),
    *((280 + 4 * i, "<f") for i in range(12)), (0, "<i"),
]


def _nifti_extreme(data: bytes, rng: random.Random) -> bytes:
    offset, fmt = rng.choice(_NIFTI_FIELDS)
    if fmt == "<f":
        value = rng.choice(FLOAT_EXTREMES)
    else:
        bits = 8 * struct.calcsize(fmt)
        value = rng.choice([v for v in INT_EXTREMES if -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)])
    try:
        packed = struct.pack(fmt, value)
    except OverflowError:  # 1e308 as float32
        packed = struct.pack(fmt, float("inf"))
    mutable = bytearray(data)
    mutable[offset:offset + len(packed)] = packed
    return bytes(mutable)


_DICOM_FIELDS = {
    "Rows": INT_EXTREMES, "Columns": INT_EXTREMES, "BitsAllocated": [0, 1, 7, 12, 24, 64, 65535],
    "BitsStored": [0, 1, 17, 64, 65535], "HighBit": [0, 31, 65535], "PixelRepresentation": [0, 1, 2, 65535],
    "SamplesPerPixel": [0, 3, 4, 65535], "NumberOfFrames": ["0", "-1", "2147483647", "nan", "x"],
    "PixelSpacing": [["0", "0"], ["nan", "1"], ["1e308", "1e308"], ["-1", "-1"], ["1"]],
    "SliceThickness": TEXT_EXTREMES, "RescaleSlope": TEXT_EXTREMES, "RescaleIntercept": TEXT_EXTREMES,
    "ImagePositionPatient": [["nan", "0", "0"], ["1e308", "1e308", "1e308"], ["0"], []],
    "ImageOrientationPatient": [["0"] * 6, ["nan"] * 6, ["1", "0", "0", "1", "0", "0"], ["1", "0"]],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL", "", "MONOCHROME1"],
    "Modality": ["", "SEG", "XX"],
}


def _dicom_extreme(data: bytes, rng: random.Random) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    keyword = rng.choice(sorted(_DICOM_FIELDS))
    value = rng.choice(_DICOM_FIELDS[keyword])
    try:
        if value in ([], "") and keyword in ds:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
        if rng.random() < 0.2:
            ds.file_meta.TransferSyntaxUID = rng.choice(["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.3"])
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        return buffer.getvalue()
    except Exception:  # the value cannot even be written (e.g. -1 in an unsigned field): patch the bytes instead
        return _bitflip(data, rng)


_TEXT_HEADER_NUMBER = re.compile(rb"-?\d+(\.\d+)?(e[+-]?\d+)?", re.IGNORECASE)
_TYPE_WORDS = [b"MET_UCHAR", b"MET_DOUBLE", b"MET_OTHER", b"MET_FLOAT_ARRAY", b"uchar", b"double", b"block",
               b"int64", b"gzip", b"bzip2", b"hex", b"ascii", b"LIST", b"LOCAL", b"raw", b"True", b"False"]


def _text_header_extreme(data: bytes, rng: random.Random) -> bytes:
    """NRRD / MetaImage: one header line's numbers set to an extreme, or a keyword swapped."""
    end = data.find(b"\n\n") if data.startswith(b"NRRD") else data.find(b"ElementDataFile")
    end = len(data) if end < 0 else end
    head, tail = data[:end], data[end:]
    lines = head.split(b"\n")
    index = rng.randrange(len(lines))
    if rng.random() < 0.7 and _TEXT_HEADER_NUMBER.search(lines[index]):
        extreme = rng.choice(TEXT_EXTREMES).encode()
        lines[index] = _TEXT_HEADER_NUMBER.sub(lambda m: extreme if rng.random() < 0.6 else m.group(0), lines[index])
    elif b"=" in lines[index] or b":" in lines[index]:
        separator = b"=" if b"=" in lines[index] else b":"
        key = lines[index].split(separator, 1)[0]
        lines[index] = key + separator + b" " + rng.choice(_TYPE_WORDS)
    return b"\n".join(lines) + tail


def _npy_extreme(data: bytes, rng: random.Random) -> bytes:
    header_end = data.index(b"\n") + 1
    header = data[:header_end].decode("latin-1")
    choice = rng.random()
    if choice < 0.4:
        shape = rng.choice(["(0, 0, 0)", "(1, 2147483647, 2, 2)", "(-1, 4, 4)", "()", "(5,)", "(1, 33, 41, 25, 7)",
                            "(99999, 99999, 99999)"])
        header = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", header)
    elif choice < 0.8:
        header = re.sub(r"'descr': '[^']*'", f"'descr': '{rng.choice(['|O', '<U10', '>i2', '<c16', '<f2', '|b1', 'V8', '<M8[s]'])}'", header)
    else:
        header = header.replace("'fortran_order': False", "'fortran_order': True")
    new_header = header.rstrip("\n").ljust(header_end - 1) + "\n"
    return new_header.encode("latin-1")[: max(header_end, len(new_header))] + data[header_end:]


_EXTREME = {"nifti": _nifti_extreme, "dicom": _dicom_extreme, "npy": _npy_extreme, "nrrd": _text_header_extreme,
            "mha": _text_header_extreme, "mhd": _text_header_extreme, "nhdr": _text_header_extreme}


def _member_kind(name: str) -> str:
    lower = name.lower()
    for suffix, kind in ((".nii.gz", "nifti-gz"), (".nii", "nifti"), (".dcm", "dicom"), (".npy", "npy"),
                         (".nrrd", "nrrd"), (".mha", "mha"), (".mhd", "mhd"), (".nhdr", "nhdr")):
        if lower.endswith(suffix):
            return kind
    return "data"


def mutate(files: dict[str, bytes], rng: random.Random) -> tuple[dict[str, bytes], str]:
    """One mutation of one file of the upload, and its name."""
    files = dict(files)
    headers = [n for n in files if _member_kind(n) != "data"]
    name = rng.choice(headers if headers and rng.random() < 0.8 else list(files))
    kind, data = _member_kind(name), files[name]
    operation = rng.choice(["truncate", "bitflip", "extreme"])
    if kind == "nifti-gz" and (operation == "extreme" or rng.random() < 0.5):
        inner = gzip.decompress(data)  # mutate the NIfTI inside, then compress again
        inner = {"truncate": _truncate, "bitflip": _bitflip, "extreme": _nifti_extreme}[operation](inner, rng)
        files[name] = gzip.compress(inner)
        return files, f"{operation} (inside gzip)"
    if operation == "extreme" and kind in _EXTREME:
        files[name] = _EXTREME[kind](data, rng)
    else:
        operation = "bitflip" if operation == "extreme" else operation
        files[name] = (_truncate if operation == "truncate" else _bitflip)(data, rng)
    return files, f"{operation} {kind}"


def write_upload(files: dict[str, bytes], folder: Path, fmt: str, index: int) -> Path:
    """A single file as is, several files (or a '-zip' format) as one zip."""
    if len(files) == 1 and not fmt.endswith("-zip"):
        [(name, data)] = files.items()
        path = folder / f"{index:05d}-{name}"
        path.write_bytes(data)
        return path
    path = folder / f"{index:05d}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


# --- the worker ----------------------------------------------------------------------------------


def _worker() -> None:
    """Load each path read from stdin; answer one JSON line per path."""
    from assistant.config import Settings
    from assistant.scans.loading import load_scan
    from assistant.volume import ScanLoadError

    settings = Settings(cache_dir=Path(os.environ["BENCH_FUZZ_CACHE"]))
    for line in sys.stdin:
        outcome, detail = "loaded", ""
        try:
            volume = load_scan(Path(line.strip()), settings)
            detail = "x".join(map(str, volume.shape))
        except ScanLoadError as exc:
            outcome, detail = "refused", str(exc)[:160]
        except Exception as exc:  # what the benchmark is looking for
            outcome = "crash"
            detail = f"{type(exc).__name__}: {str(exc)[:200]} | {traceback.format_exc().strip().splitlines()[-3][:200]}"
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"outcome": outcome, "detail": detail, "peak_mb": peak_kb / 1024}), flush=True)


class Worker:
    def __init__(self, cache: Path):
        env = {**os.environ, "BENCH_FUZZ_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "evals.bench_fuzz", "--worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent)

    def load(self, path: Path, timeout: float) -> dict:
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.process.kill()
            self.process.wait()
            return {"outcome": "hang", "detail": f"no answer after {timeout:.0f} s"}
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            return {"outcome": "crash", "detail": f"worker died with exit code {code}"}
        return json.loads(line)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.alive:
            self.process.stdin.close()
            self.process.wait(timeout=30)


@dataclass
class FormatResult:
    fmt: str
    files: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    mutations: dict[str, int] = field(default_factory=dict)
    crashes: list[dict] = field(default_factory=list)
    hangs: list[dict] = field(default_factory=list)
    seed_peak_mb: float = 0.0
    peak_mb: float = 0.0
    slowest_s: float = 0.0
    seconds: float = 0.0


def fuzz_format(fmt: str, seed_files: dict[str, bytes], count: int, rng: random.Random, scratch: Path,
                keep: Path | None) -> FormatResult:
    result = FormatResult(fmt)
    outcomes, mutations = Counter(), Counter()
    started = time.perf_counter()
    folder = scratch / fmt
    folder.mkdir()
    worker = Worker(scratch / "cache")
    seed_answer = worker.load(write_upload(seed_files, folder, fmt, 99999), 120)
    if seed_answer["outcome"] != "loaded":
        raise RuntimeError(f"the {fmt} seed does not load: {seed_answer}")
    result.seed_peak_mb = seed_answer["peak_mb"]
    for index in range(count):
        files, mutation = mutate(seed_files, rng)
        path = write_upload(files, folder, fmt, index)
        began = time.perf_counter()
        answer = worker.load(path, HANG_S)
        result.slowest_s = max(result.slowest_s, time.perf_counter() - began)
        outcomes[answer["outcome"]] += 1
        mutations[mutation] += 1
        result.peak_mb = max(result.peak_mb, answer.get("peak_mb", 0.0))
        if answer["outcome"] in ("crash", "hang"):
            record = {"mutation": mutation, "detail": answer["detail"], "file": path.name}
            (result.crashes if answer["outcome"] == "crash" else result.hangs).append(record)
            if keep is not None:
                (keep / fmt).mkdir(parents=True, exist_ok=True)
                path.replace(keep / fmt / path.name)
        if path.exists():
            path.unlink()
        if not worker.alive:
            worker = Worker(scratch / "cache")
    worker.close()
    result.files, result.outcomes, result.mutations = count, dict(outcomes), dict(mutations)
    result.seconds = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-format", type=int, default=1000)
    parser.add_argument("--formats", nargs="*", help="subset of formats (default: all)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_fuzz.json")
    parser.add_argument("--keep", type=Path, help="keep the files that crashed or hung in this folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return 0
    seeds = _seeds()
    formats = args.formats or list(seeds)
    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as scratch:
        (Path(scratch) / "cache").mkdir()
        for fmt in formats:
            result = fuzz_format(fmt, seeds[fmt], args.per_format, rng, Path(scratch), args.keep)
            results.append(result)
            print(f"{fmt}: {result.outcomes} in {result.seconds:.0f} s", file=sys.stderr, flush=True)
    print(_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "per_format": args.per_format, "hang_s": HANG_S,
                                    "results": [asdict(r) for r in results]}, indent=2))
    print(f"\nJSON: {args.out}")
    return 1 if any(r.crashes or r.hangs for r in results) else 0


def _table(results: list[FormatResult]) -> str:
    lines = ["| format | files | loaded | refused (ScanLoadError) | crashes | hangs > 10 s | slowest s | peak RSS MB (seed) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.fmt} | {r.files} | {r.outcomes.get('loaded', 0)} | {r.outcomes.get('refused', 0)} | "
                     f"{len(r.crashes)} | {len(r.hangs)} | {r.slowest_s:.2f} | {r.peak_mb:.0f} ({r.seed_peak_mb:.0f}) |")
    for r in results:
        for record in (r.crashes + r.hangs)[:5]:
            lines.append(f"- {r.fmt} {record['mutation']}: {record['detail']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
