"""greenmon: measure what it costs to serve a language model.

The core package holds no heavy imports: torch, transformers, onnxruntime, openvino,
textual and vendor libraries are imported only inside the engine, probe and TUI modules
that need them, so the daemon and the store start fast and stay small.
"""

__version__ = "0.1.0"
