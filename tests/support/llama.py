"""llama-cpp-python's OpenAI server, for the tests that run greenmon against a server it did
not write: where it is (from the environment `.ci/llama-server` prints), and why it cannot
run when it cannot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LLAMA_PYTHON = os.environ.get("GREENMON_LLAMA_PYTHON", "")
TINY_GGUF = os.environ.get("GREENMON_TINY_GGUF", "")


def llama_missing() -> str | None:
    """Why the llama.cpp server cannot be started here (a skip reason), or None."""
    if not LLAMA_PYTHON or not TINY_GGUF:
        return (
            "GREENMON_LLAMA_PYTHON and GREENMON_TINY_GGUF are not set: run "
            "`eval \"$(.ci/llama-server)\"` to build llama-cpp-python's server and the GGUF"
        )
    if not Path(LLAMA_PYTHON).exists():
        return f"no llama-cpp-python python at {LLAMA_PYTHON} (set GREENMON_LLAMA_PYTHON)"
    if not Path(TINY_GGUF).exists():
        return f"no GGUF of the tiny model at {TINY_GGUF} (set GREENMON_TINY_GGUF)"
    probe = subprocess.run([LLAMA_PYTHON, "-c", "import llama_cpp.server"], capture_output=True)
    if probe.returncode != 0:
        return f"llama_cpp.server does not import with {LLAMA_PYTHON}"
    return None
