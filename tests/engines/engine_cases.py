"""Shared cases of the engine tests (a plain module: tests/ is not a package)."""

from greenmon.engines.base import Prompt

CPU_ENGINES = ("torch", "onnx", "openvino", "torchscript")
PROMPTS = (
    Prompt("p0", "def add(a, b):"),
    Prompt("p1", "from typing import List\n\n\ndef has_close_elements(numbers: List[float]"),
    Prompt("p2", "    return"),
    Prompt("p3", "    >>> sort_numbers('three one five')"),
    Prompt("p4", "import math\n"),
)
NEW_TOKENS = 16
