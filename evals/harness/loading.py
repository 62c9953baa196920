"""Reading scenario YAML with errors that name the file, the line and the field.

The YAML is composed into nodes (which keep their line numbers) and also loaded into plain
data for pydantic; a validation error's location is walked back through the nodes to the line
it came from, so an evaluator reads ``smoke/x.yaml line 12: turns[1].expect.tools_called: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from evals.harness.schema import Scenario

SCENARIO_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    where: str
    message: str

    def __str__(self) -> str:
        where = f"{self.where}: " if self.where else ""
        return f"{self.file} line {self.line}: {where}{self.message}"


class ScenarioFileError(ValueError):
    """One or more scenario files are malformed; `problems` says where and why."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def scenario_files(path: str | Path) -> list[Path]:
    """A YAML file, or every YAML file under a folder (a suite, or a folder of suites), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a scenario file nor a folder of them")
    files = sorted(p for p in path.rglob("*") if p.suffix in SCENARIO_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{path} holds no .yaml scenario files")
    return files


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Every scenario under `path`, validated; all problems in all files are reported together."""
    scenarios: list[Scenario] = []
    problems: list[Problem] = []
    for file in scenario_files(path):
        try:
            scenarios.extend(load_file(file))
        except ScenarioFileError as exc:
            problems.extend(exc.problems)
    seen: dict[str, Scenario] = {}
    for scenario in scenarios:
        if scenario.key in seen:
            first = seen[scenario.key]
            problems.append(
                Problem(scenario.file, scenario.line, "name", f"{scenario.name!r} is already used in {first.file} line {first.line}")
            )
        seen[scenario.key] = scenario
    if problems:
        raise ScenarioFileError(problems)
    return scenarios


def load_file(file: Path) -> list[Scenario]:
    """The scenarios of one file: a mapping (one scenario) or a list of them. Suite = folder name."""
    shown = _display_path(file)
    try:
        text = file.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ScenarioFileError([Problem(shown, 1, "", f"not UTF-8 text ({exc.reason})")]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ScenarioFileError([Problem(shown, line, "", f"YAML syntax: {exc.problem or exc.context}")]) from exc
    if root is None:
        raise ScenarioFileError([Problem(shown, 1, "", "the file is empty")])
    problems = _duplicate_keys(root, shown)
    if isinstance(data, dict):
        items, nodes = [data], [root]
    elif isinstance(data, list):
        items, nodes = data, list(root.value)
    else:
        raise ScenarioFileError([Problem(shown, 1, "", "expected a scenario (a mapping) or a list of scenarios")])
    scenarios = []
    for index, (item, node) in enumerate(zip(items, nodes)):
        prefix = f"[{index}]" if isinstance(data, list) else ""
        try:
            scenario = Scenario.model_validate(item)
        except ValidationError as exc:
            problems.extend(_problems(exc, node, shown, prefix))
            continue
        scenarios.append(scenario.model_copy(update={"suite": file.parent.name, "file": shown, "line": node.start_mark.line + 1}))
    if problems:
        raise ScenarioFileError(sorted(problems, key=lambda p: p.line))
    return scenarios


def _display_path(file: Path) -> str:
    try:
        return str(file.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def _problems(error: ValidationError, node: yaml.Node, file: str, prefix: str) -> list[Problem]:
    problems = []
    for item in error.errors():
        line, where = _locate(node, item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        problems.append(Problem(file, line, prefix + where, message))
    return problems


def _locate(node: yaml.Node, loc: tuple[Any, ...]) -> tuple[int, str]:
    """Line of the deepest node on `loc`, and the readable path (pydantic's union tags left out)."""
    parts: list[str] = []
    for position, part in enumerate(loc):
        child = _child(node, part)
        if child is not None:
            node = child
            parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
        elif position == len(loc) - 1 and isinstance(part, str) and part.isidentifier():
            parts.append(f".{part}")  # a missing key: name it, point at its parent
    return node.start_mark.line + 1, "".join(parts).lstrip(".")


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        return next((value for key, value in node.value if key.value == part), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _duplicate_keys(node: yaml.Node, file: str) -> list[Problem]:
    """PyYAML keeps the last of two equal keys silently; a scenario would lose an expectation."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                problems.append(Problem(file, key.start_mark.line + 1, str(key.value), "duplicate key"))
            seen.add(key.value)
            problems.extend(_duplicate_keys(value, file))
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            problems.extend(_duplicate_keys(child, file))
    return problems
