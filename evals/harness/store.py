"""A run folder: what the run was asked to do (run.json) and one JSON line per finished scenario.

Each result is appended and fsync'ed as soon as its scenario finishes, so a crash or a kill loses
only the scenarios in flight; `--resume` reads the lines back and skips them, and the report can
be rebuilt from the lines at any time, halfway through a run included. Shards of one run (job
arrays on a shared file system) each append to their own file, so no two processes write one file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from evals.harness.trace import ScenarioResult

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULTS_GLOB = "results*.jsonl"


class Shard(BaseModel):
    """Shard K of N (1-based): every N-th job, starting at the K-th."""

    index: int = Field(ge=1)
    count: int = Field(ge=1)

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes K/N with whole numbers, e.g. 2/8 (got {text!r})") from None
        if not 1 <= index <= count:
            raise ValueError(f"--shard {text}: K must be between 1 and N")
        return cls(index=index, count=count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class Session(BaseModel):
    """One invocation that added results: how long it took and with what."""

    started: str
    seconds: float
    scenarios: int
    runtime: str
    parallel: int
    ray: str | None = None
    shard: str | None = None


class RunSpec(BaseModel):
    """What a run was asked to do: enough to resume it on another day or machine."""

    path: str
    tags: list[str] = Field(default_factory=list)
    split: str | None = Field(None, description="Only scenarios of this split (dev or test).")
    backend: str | None = None
    judge: str | None = None
    repeat: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    started: str
    git_commit: str | None = None
    sessions: list[Session] = Field(default_factory=list)


class RunStore:
    """The folder of one run; results are read back from every shard's JSONL file."""

    def __init__(self, folder: Path, spec: RunSpec):
        self.folder = folder
        self.spec = spec

    @classmethod
    def create(cls, folder: Path, spec: RunSpec) -> RunStore:
        """A new run folder; one that already holds results must be resumed instead, never overwritten."""
        if (folder / RUN_FILE).exists() or any(folder.glob(RESULTS_GLOB)):
            raise ValueError(f"{folder} already holds a run; continue it with --resume {folder} or choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder, spec)
        store.save_spec()
        return store

    @classmethod
    def open(cls, folder: Path) -> RunStore:
        path = folder / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an eval run folder (no {RUN_FILE}); give the folder `eval run --out` wrote")
        try:
            return cls(folder, RunSpec.model_validate_json(path.read_text(encoding="utf-8")))
        except ValidationError as exc:
            raise ValueError(f"{path} is not a ScanChat eval run description: {str(exc).splitlines()[0]}") from exc

    def save_spec(self) -> None:
        """Write run.json atomically: a kill while writing leaves the previous version."""
        with tempfile.NamedTemporaryFile("w", dir=self.folder, prefix=".run.", suffix=".json", delete=False, encoding="utf-8") as tmp:
            tmp.write(self.spec.model_dump_json(indent=1))
        os.replace(tmp.name, self.folder / RUN_FILE)

    def add_session(self, session: Session) -> None:
        # Re-read first: another shard may have finished and saved its own session meanwhile.
        if (self.folder / RUN_FILE).is_file():
            self.spec = RunStore.open(self.folder).spec
        self.spec.sessions.append(session)
        self.save_spec()

    def results_file(self, shard: Shard | None) -> Path:
        return self.folder / (f"results-{shard.index}-of-{shard.count}.jsonl" if shard else "results.jsonl")

    def append(self, result: ScenarioResult, shard: Shard | None = None) -> None:
        """One line per finished scenario, on disk before the next one is reported."""
        with self.results_file(shard).open("a", encoding="utf-8") as file:
            file.write(result.model_dump_json() + "\n")
            file.flush()
            os.fsync(file.fileno())

    def results(self) -> list[ScenarioResult]:
        """Every recorded result, one per (scenario, repeat), in scenario order then repeat.

        A line cut short by a crash is skipped with a warning (its scenario runs again on resume).
        """
        found: dict[tuple[str, int], ScenarioResult] = {}
        for path in sorted(self.folder.glob(RESULTS_GLOB)):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    result = ScenarioResult.model_validate(json.loads(line))
                except (json.JSONDecodeError, ValidationError):
                    log.warning("%s line %d is incomplete or not a result; its scenario counts as not run", path, number)
                    continue
                found[(result.key, result.repeat)] = result
        return sorted(found.values(), key=lambda r: (r.repeat, r.suite, r.file, r.name))

    def done(self) -> set[tuple[str, int]]:
        return {(result.key, result.repeat) for result in self.results()}
