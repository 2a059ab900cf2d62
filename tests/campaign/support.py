"""A small plan on the fake engine, and the `greenmon` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.plans import write_fake_plan

REPO = Path(__file__).resolve().parents[2]


def write_plan(path: Path, root: Path, *, name: str = "campaign", repetitions: int = 3,
               seed: int = 11) -> Path:  # fmt: skip
    return write_fake_plan(
        path, name, prompts=3, repetitions=repetitions, seed=seed, cooldown_s=(0.2, 0.1),
        probes={"rapl": {"rate_hz": 50, "sysfs_root": root}, "host": {"enabled": False}},
    )


def cli_env(sock_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GREENMON_SOCKET": str(sock_dir / "g.sock"),
    }


def greenmon(*args: str, env: dict[str, str], cwd: Path | None = None,
             check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "greenmon.cli", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"greenmon {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result
