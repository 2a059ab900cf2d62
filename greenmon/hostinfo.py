"""What machine and software a session ran on, recorded with every session.

Library versions are read from installed distribution metadata, never by importing the
libraries, so recording them costs nothing and pulls in no torch.
"""

from __future__ import annotations

import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

TRACKED_DISTRIBUTIONS = (
    "greenmon",
    "duckdb",
    "anyio",
    "aiohttp",
    "psutil",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "optimum-intel",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "nvidia-ml-py",
    "textual",
    "scipy",
    "pingouin",
    "scikit-posthocs",
)


def library_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str | None:
    # Monotonic timestamps are only comparable within one boot; this says which boot.
    try:
        return path.read_text().strip()
    except OSError:
        return None


def nvidia_gpus(root: Path = Path("/proc/driver/nvidia")) -> tuple[str | None, str | None]:
    """(GPU models, driver version) from the NVIDIA driver's /proc files; (None, None)
    without the driver.  Read from files so recording a session never loads NVML."""
    try:
        version = (root / "version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None, None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar 5 ..."
    words = version.split()
    driver = next((w for w in words if w[:1].isdigit() and "." in w), version.strip())
    models: list[str] = []
    for info in sorted((root / "gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    models.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return (", ".join(models) or None), driver


def host_info() -> dict[str, Any]:
    gpu_model, gpu_driver = nvidia_gpus()
    return {
        "host": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "kernel": platform.version(),
        "cpu_model": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "versions": library_versions(),
        "boot_id": boot_id(),
        "gpu_model": gpu_model,
        "gpu_driver": gpu_driver,
    }
