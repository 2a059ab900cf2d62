"""The generic engine worker: a greenmon engine driven over a pipe from another greenmon
process (greenmon/engines/worker_engine.py, ``RemoteEngine``).

Run as ``python -m greenmon.engines.engine_worker`` by the interpreter of a plan's
``[engines.<name>] python = ...``, with greenmon's source folder on PYTHONPATH.  One JSON
request per line on stdin, one answer per line on stdout:
- ``{"op": "load", "engine", "model", "provider", "options", "cache_dir"}`` ->
  ``{"ok": true, "load": {export_s, load_s, export_cache_hit, details}}``
- ``{"op": "generate", "prompts": [[id, text, task, references]], "max_new_tokens"}`` ->
  ``{"ok": true, "records": [RequestRecord fields]}``
- ``{"op": "close"}`` -> ``{"ok": true}``, then the worker exits.
A failure is ``{"ok": false, "error": TEXT, "title": TEXT}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any


def _engine(reference: str, cache_dir: str | None) -> Any:
    """An engine by greenmon name, or by ``module:Class``."""
    from greenmon.engines import get_engine

    if ":" not in reference:
        return get_engine(reference, cache_dir=cache_dir)
    import importlib

    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)(cache_dir=cache_dir)


def main() -> int:
    from greenmon.engines.base import Engine, Prompt

    out = sys.stdout
    # Whatever the engine's libraries print goes to stderr; stdout carries the protocol.
    sys.stdout = sys.stderr
    engine: Engine | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        request: dict[str, Any] = json.loads(line)
        op = request.get("op")
        answer: dict[str, Any]
        try:
            if op == "load":
                engine = _engine(request["engine"], request.get("cache_dir"))
                info = engine.load(request["model"], request["provider"], request["options"])
                answer = {"ok": True, "load": {
                    "export_s": info.export_s, "load_s": info.load_s,
                    "export_cache_hit": info.export_cache_hit,
                    "details": json.loads(json.dumps(dict(info.details), default=str)),
                }}  # fmt: skip
            elif op == "generate" and engine is not None:
                prompts = [Prompt(i, t, k, tuple(r)) for i, t, k, r in request["prompts"]]
                records = engine.generate(prompts, int(request["max_new_tokens"]))
                answer = {"ok": True, "records": [dataclasses.asdict(r) for r in records]}
            elif op == "close":
                if engine is not None:
                    engine.close()
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            else:
                answer = {"ok": False, "error": f"unexpected op {op!r}", "title": "Engine failed"}
        except Exception as error:  # carried to greenmon, which reports it as the unit's
            title = getattr(error, "title", None) or type(error).__name__
            answer = {"ok": False, "error": str(error), "title": str(title)}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
