"""The export cache: ONNX, OpenVINO IR and TorchScript files made once per model and options.

Terms:
- *export*: a model converted to an engine's own format (an ``.onnx`` graph, an OpenVINO
  IR, a traced TorchScript module).  Exporting can take far longer than loading, so it is
  done once and timed apart from loading (``LoadInfo.export_s`` vs ``load_s``).
- *export key*: a hash of (model fingerprint, engine, export options, exporter library
  versions).  A new library version or a changed model gives a new key, never a stale file.

Layout: ``<cache root>/exports/<engine>/<key>/`` holding the export and a ``greenmon-export.json``
written last; a directory without that file is an interrupted export and is redone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from greenmon.errors import EngineError
from greenmon.models import ModelInfo, cache_root

MARKER = "greenmon-export.json"

# Called with (model, destination directory); writes the export there.
Exporter = Callable[[ModelInfo, Path], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    export_s: float
    cache_hit: bool
    key: str


def library_versions(*distributions: str) -> dict[str, str]:
    """Installed versions by distribution name, without importing the libraries."""
    versions: dict[str, str] = {}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def export_key(
    model: ModelInfo, engine: str, options: Mapping[str, Any], versions: Mapping[str, str]
) -> str:
    payload = json.dumps(
        {
            "model": model.fingerprint,
            "engine": engine,
            "options": dict(options),
            "versions": dict(versions),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cached_export(
    model: ModelInfo,
    engine: str,
    options: Mapping[str, Any],
    versions: Mapping[str, str],
    exporter: Exporter,
    *,
    cache_dir: str | Path | None = None,
) -> ExportResult:
    """Return the cached export, running ``exporter`` only when there is none."""
    key = export_key(model, engine, options, versions)
    dest = cache_root(cache_dir) / "exports" / engine / key
    if (dest / MARKER).is_file():
        return ExportResult(dest, 0.0, True, key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Export into a sibling directory and rename it into place, so readers only ever see a
    # complete export, and an export that fails or is killed leaves nothing behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=dest.parent))
    start_s = time.perf_counter()
    try:
        _run_exporter(exporter, model, engine, tmp)
        export_s = time.perf_counter() - start_s
        marker = {
            "model": model.spec,
            "fingerprint": model.fingerprint,
            "engine": engine,
            "options": dict(options),
            "versions": dict(versions),
            "export_s": export_s,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str))
        if dest.exists():  # an interrupted export from an earlier run
            shutil.rmtree(dest, ignore_errors=True)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / MARKER).is_file():  # not a concurrent exporter that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(dest, export_s, False, key)


def _run_exporter(exporter: Exporter, model: ModelInfo, engine: str, tmp: Path) -> None:
    """Run ``exporter`` into ``tmp``; its failures become an ``EngineError`` that names it."""
    try:
        # Exporters trace the model, and the tracer warns about every Python-side shape
        # read; under a warnings-as-errors policy (the tests') that would abort the
        # trace.  Whether the export computes the same thing is fidelity's job.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exporter(model, tmp)
    except MemoryError as error:
        raise EngineError(
            f"{engine} export of {model.spec} ran out of memory", title="Export failed"
        ) from error
    except EngineError:
        raise
    except Exception as error:  # exporters fail in library-specific ways
        raise EngineError(
            f"{engine} export of {model.spec} failed: {type(error).__name__}: {error}",
            title="Export failed",
        ) from error
