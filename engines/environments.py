"""Engine environments: virtual environments of their own for engines whose libraries
cannot share greenmon's (MXNet 1.9.1 needs numpy < 1.24; greenmon's stack needs numpy 2).

Terms:
- *environment*: ``<cache root>/envs/<name>/``, a virtual environment made by
  ``greenmon engines install <name>`` from the interpreter greenmon runs on, with the
  packages of ``RECIPES[name]`` from the package registry pip is configured for.
- *record*: ``greenmon-env.json`` in the environment, written last: the installed
  versions and how long the install took.  An environment without it is incomplete and is
  made again; ``recorded_versions`` reads it without starting the environment's Python.

Nothing here imports a heavy library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from greenmon.errors import EngineError
from greenmon.models import cache_root

RECORD = "greenmon-env.json"
RECIPES: dict[str, tuple[str, ...]] = {
    # mxnet 1.9.1 is the last release (the project moved to the Apache Attic in 2023); it
    # runs only with numpy < 1.24 (np.bool), and reads ONNX through the onnx package.
    "mxnet": ("mxnet==1.9.1", "numpy==1.23.5", "onnx==1.14.1"),
}
# The distributions whose versions the record keeps (and `greenmon engines` shows).
RECORDED: dict[str, tuple[str, ...]] = {"mxnet": ("mxnet", "numpy", "onnx")}

Run = Callable[..., "subprocess.CompletedProcess[str]"]


def _user_cache() -> Path:
    """The per-user cache, whatever $GREENMON_CACHE_DIR says."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "greenmon"


def env_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the environment is: greenmon's cache (``cache_dir``, else
    $GREENMON_CACHE_DIR, else the user's cache) when installed there, else the user's
    cache, where an install made without $GREENMON_CACHE_DIR put it: a run with a cache of
    its own (a test's, a study's) still finds the machine's environment."""
    first = cache_root(cache_dir) / "envs" / name
    if (first / RECORD).is_file():
        return first
    fallback = _user_cache() / "envs" / name
    return fallback if (fallback / RECORD).is_file() else first


def env_python(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return env_dir(name, cache_dir) / "bin" / "python"


def recorded_versions(
    name: str, cache_dir: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """The versions the environment's install recorded; empty when it is not installed."""
    directory = env_dir(name, cache_dir)
    try:
        record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not (directory / "bin" / "python").exists():
        return {}
    return {str(k): str(v) for k, v in dict(record.get("versions", {})).items()}


def install_environment(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    python: str = sys.executable,
    run: Run = subprocess.run,
    packages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Make the environment ``name`` (again) and return its record.

    It is built beside its final place and renamed into it, so an interrupted install
    leaves nothing that looks usable.  A pip failure becomes an EngineError holding pip's
    last lines, which name the package the registry lacks.
    """
    if name not in RECIPES:
        raise EngineError(
            f"no environment recipe for {name!r}; greenmon installs: {', '.join(RECIPES)}",
            title="Unknown engine environment",
        )
    dest = cache_root(cache_dir) / "envs" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    start_s = time.perf_counter()
    try:
        _step(run, [python, "-m", "venv", str(tmp)], "create the virtual environment")
        env_py = str(tmp / "bin" / "python")
        _step(
            run,
            [env_py, "-m", "pip", "install", "--disable-pip-version-check", "-q",
             *(packages if packages is not None else RECIPES[name])],
            f"install {' '.join(RECIPES[name])}",
        )  # fmt: skip
        versions = _versions(run, env_py, RECORDED.get(name, ()))
        record = {
            "name": name,
            "versions": versions,
            "python": sys.version.split()[0],
            "install_s": round(time.perf_counter() - start_s, 1),
        }
        # venv writes absolute paths into its scripts; the interpreter link is what the
        # worker is started with, and it stays valid after the rename.
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        _fix_paths(dest, tmp)
        (dest / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _step(run: Run, command: list[str], what: str) -> None:
    result = run(command, capture_output=True, text=True, env=_clean_env())
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-6:])
        raise EngineError(
            f"could not {what} (exit {result.returncode}):\n{tail}",
            title="Engine environment not installed",
        )


def _clean_env() -> dict[str, str]:
    """The environment for pip in the new environment: without greenmon's own virtual
    environment in force, so pip installs into the new one."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return env


def _versions(run: Run, python: str, distributions: Sequence[str]) -> dict[str, str]:
    script = (
        "import json, sys\nfrom importlib import metadata\n"
        "print(json.dumps({d: metadata.version(d) for d in sys.argv[1:]}))"
    )
    result = run([python, "-c", script, *distributions], capture_output=True, text=True)
    if result.returncode != 0:
        raise EngineError(
            f"the new environment cannot report its versions: {result.stderr.strip()[-400:]}",
            title="Engine environment not installed",
        )
    versions: dict[str, str] = json.loads(result.stdout)
    return versions


def _fix_paths(dest: Path, old: Path) -> None:
    """Point the environment's activation scripts and pyvenv.cfg at its final place."""
    for path in [dest / "pyvenv.cfg", *(dest / "bin").iterdir()]:
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if str(old) in text:
                path.write_text(text.replace(str(old), str(dest)), encoding="utf-8")
