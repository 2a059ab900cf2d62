"""greenmon: measure what it costs to serve a language model.

The core package holds no heavy imports: torch, transformers, onnxruntime, openvino,
textual and vendor libraries are imported only inside the engine, probe and TUI modules
that need them, so the daemon and the store start fast and stay small.  ``Monitor`` (the
Python API, greenmon/monitor.py) is imported only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenmon.monitor import Monitor

from greenmon._version import __version__

__all__ = ["Monitor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from greenmon.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'greenmon' has no attribute {name!r}")
