"""Scenarios as Ray tasks: `scanchat eval run ... --ray [ADDRESS]`.

Each Ray worker is an actor that builds its own model client once (an OpenAI-compatible client
when the LLM is behind a server, else the local model loaded once per worker) and then plays one
scenario per task. Results come back to the driver as each task finishes, where they are appended
to the run's JSONL, so a killed run loses only the scenarios in flight. Without an address a
local Ray cluster with one CPU per worker is started for the run and stopped after it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from assistant.config import Settings
from assistant.models.base import ModelError
from evals.harness.runner import Job, ProgressCallback
from evals.harness.trace import ScenarioResult

LOCAL = "local"
# The object store only carries scenarios and results (kilobytes); Ray's default (30 % of RAM) would
# reserve gigabytes on a small shared machine.
OBJECT_STORE_BYTES = 128 * 1024**2


class WorkerConfig(BaseModel):
    """What each worker needs to build its own model client."""

    settings: Settings
    model: str | None  # registry name or path; None = settings' default (or the server's model)
    judge: str | None = None
    temperature: float = 0.0
    seed: int = 0
    gpus: float = 0.0  # GPU share per worker for a local model (Ray hides GPUs from workers that ask for none)


class ScenarioWorker:
    """One Ray actor: a model client built once, then one scenario per call."""

    def __init__(self, config: WorkerConfig):
        from assistant.models.registry import load_chat_model
        from evals.harness.runner import EvalRunner

        model = load_chat_model(config.settings, name=config.model)
        judge = load_chat_model(config.settings, name=config.judge) if config.judge else None
        self.runner = EvalRunner(
            model, config.settings, serialize=model.runtime != "openai", judge=judge, temperature=config.temperature, seed=config.seed
        )

    def runtime(self) -> str:
        return self.runner.model.runtime

    def warm_up(self, scenario) -> str:
        self.runner.warm_up(scenario)
        return self.runtime()

    def run(self, scenario, repeat: int) -> str:
        return self.runner.run_scenario(scenario, repeat).model_dump_json()


def worker_settings(settings: Settings, workers: int) -> Settings:
    """A local model per worker shares the CPU threads out equally instead of oversubscribing them."""
    return settings.model_copy(update={"llm_threads": max(1, settings.llm_threads // workers)})


def gpu_share(settings: Settings, workers: int) -> float:
    """Workers loading a local model share the machine's GPU (if any); server clients need none."""
    if settings.openai_base_url or settings.runtime == "openai":
        return 0.0
    import torch

    return 1.0 / workers if torch.cuda.is_available() else 0.0


@dataclass
class RayRun:
    results: list[ScenarioResult]  # in job order
    runtime: str  # the workers' model runtime
    ready_seconds: float  # until every worker had built its model client and played the first scenario once, unrecorded


def run_on_ray(
    jobs: Sequence[Job], configs: Sequence[WorkerConfig], address: str = LOCAL, progress: ProgressCallback | None = None
) -> RayRun:
    """Run the jobs on one actor per config (e.g. one server URL each), as each actor frees up."""
    try:
        import ray
        from ray.exceptions import RayError
        from ray.util import ActorPool
    except ImportError as exc:
        raise ModelError("--ray needs Ray: pip install 'ray>=2.9'") from exc
    if not jobs:
        return RayRun([], "none", 0.0)
    started = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(**ray_init_arguments(address, len(configs)))
    actors = []
    try:
        for config in configs[: len(jobs)]:
            actors.append(ray.remote(num_cpus=1, num_gpus=config.gpus)(ScenarioWorker).remote(config))
        try:
            runtime = ray.get([actor.warm_up.remote(jobs[0][0]) for actor in actors])[0]
        except RayError as exc:
            raise ModelError(f"the Ray workers could not load the model: {_cause(exc)}") from exc
        ready_seconds = time.perf_counter() - started
        pool = ActorPool(actors)
        for job in jobs:
            pool.submit(lambda actor, job: actor.run.remote(*job), job)
        results: dict[tuple[str, int], ScenarioResult] = {}
        while pool.has_next():
            try:
                result = ScenarioResult.model_validate_json(pool.get_next_unordered())
            except RayError as exc:  # a worker died (killed, out of memory): its scenario is not recorded
                raise ModelError(f"a Ray worker failed: {_cause(exc)}; the finished scenarios are saved, rerun with --resume") from exc
            results[(result.key, result.repeat)] = result
            if progress:
                progress(len(results), len(jobs), result)
        return RayRun([results[(s.key, r)] for s, r in jobs], runtime, ready_seconds)
    finally:
        for actor in actors:
            ray.kill(actor)  # frees its model and CPU now, not when Ray collects the handle
        if started_here:
            ray.shutdown()


def ray_init_arguments(address: str, workers: int) -> dict:
    """ray.init's arguments: an existing cluster by address, else a small local one for this checkout."""
    if address != LOCAL:
        return {"address": address, "log_to_driver": False}
    # Workers import this checkout's packages as the driver does.
    paths = [str(Path(__file__).resolve().parents[2]), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {
        "address": "local",
        "num_cpus": workers,
        "include_dashboard": False,
        "log_to_driver": False,
        "object_store_memory": OBJECT_STORE_BYTES,
        "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}},
    }


def _cause(exc: BaseException) -> str:
    return str(getattr(exc, "cause", None) or exc).strip().splitlines()[-1][:300]
