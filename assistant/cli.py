"""`scanchat`: the command line. Each area registers its own subcommands (``add_cli``)."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

# Modules that contribute subcommands through `add_cli(subparsers)`; a new area adds one line.
CLI_MODULES: tuple[str, ...] = (
    "assistant.commands",
    "assistant.scans.samples",
    "assistant.scans.pacs",
    "assistant.models.registry",
    "assistant.models.server",
    "tools.describe_scan",
    "tools.probe_intensity",
    "tools.measure_distance",
    "tools.segment",
    "tools.detect_anomalies",
    "tools.translate_text",
    "assistant.terminology.cli",
    "evals.harness.cli",
    "assistant.reports.cli",
    "assistant.vlm.cli",
    "assistant.db.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanchat", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in CLI_MODULES:
        import_module(name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line to stderr and exit non-zero, never a traceback."""
    from assistant.models.base import ModelError
    from assistant.volume import ScanLoadError
    from tools.base import ToolError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ScanLoadError, ToolError, ModelError, FileNotFoundError, ValueError) as exc:
        logging.getLogger("scanchat").debug("command failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
