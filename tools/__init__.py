"""ScanChat's tools, one per module. `build_tools` gives a conversation its own bound instances."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from tools.base import ScanTool

if TYPE_CHECKING:
    from assistant.session import ScanSession

# "module:Class" of every tool the agent may call; a new tool adds one line here.
TOOL_CLASSES: tuple[str, ...] = (
    "tools.describe_scan:DescribeScanTool",
    "tools.probe_intensity:ProbeIntensityTool",
    "tools.measure_distance:MeasureDistanceTool",
    "tools.segment:SegmentTool",
    "tools.detect_anomalies:DetectAnomaliesTool",
    "tools.translate_text:TranslateTextTool",
    "tools.lookup_term:LookupTermTool",
    "tools.normalize_terms:NormalizeTermsTool",
)


def tool_class(path: str) -> type[ScanTool]:
    module, _, cls = path.partition(":")
    return getattr(import_module(module), cls)


def build_tools(session: ScanSession) -> list[ScanTool]:
    """Fresh tool instances bound to `session` (tools hold no state of their own)."""
    return [tool_class(path)(session=session) for path in TOOL_CLASSES]
