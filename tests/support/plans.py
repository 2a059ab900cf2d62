"""One builder for the plan TOML that tests and bench/ run: small plans on the fake engine.

``fake_plan`` writes the keys every such plan shares (the tiny model, the gaissa-164
workload, a cooldown, the fake engine registered under each configuration's engine name)
and takes the rest as arguments: ``probes`` ({"rapl": {"sysfs_root": ...}}) and any other
``[table]`` or top-level key.  What it returns is plan text as a person would write it, so
the `greenmon` command parses it the same way (nothing is built around the parser).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FAKE_ENGINE = "tests.fakes.engine:FakeEngine"


def toml_value(value: Any) -> str:
    """A TOML value: strings (JSON escapes are TOML's), numbers, booleans, paths, lists,
    inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def fake_plan(
    name: str,
    *,
    configurations: Sequence[str] = ("fake/cpu", "fake2/cpu"),
    models: Sequence[str] = ("tiny",),
    prompts: int = 4,
    max_new_tokens: int = 8,
    repetitions: int = 2,
    seed: int | None = 3,
    warmup_requests: int = 1,
    cooldown_s: tuple[float, float] = (0.3, 0.1),
    engines: Mapping[str, str] | None = None,
    probes: Mapping[str, Mapping[str, Any]] | None = None,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    **keys: Any,
) -> str:
    """Plan text on the fake engine.  ``engines``: custom engines by name (default: each
    configuration's engine is the fake engine); ``cooldown_s``: (before, after);
    ``probes``: ``[probes.NAME]`` tables; ``tables``: any other ``[NAME]`` tables
    (``{"engine_options.fake": {"load_s": 1}}``); ``keys``: more top-level keys."""
    if engines is None:
        engines = {c.split("/")[0]: FAKE_ENGINE for c in configurations}
    top: dict[str, Any] = {
        "name": name, "models": list(models), "configurations": list(configurations),
        "workload": "gaissa-164", "prompts": prompts, "max_new_tokens": max_new_tokens,
        "repetitions": repetitions, "seed": seed, "warmup_requests": warmup_requests,
        **keys, "custom_engines": dict(engines) or None,
    }  # fmt: skip
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items() if value is not None]
    sections: dict[str, Mapping[str, Any]] = {
        "cooldown": {"before_s": cooldown_s[0], "after_s": cooldown_s[1]},
        **(tables or {}),
        **{f"probes.{probe}": options for probe, options in (probes or {}).items()},
    }
    for section, options in sections.items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def write_fake_plan(path: Path, name: str, **kwargs: Any) -> Path:
    """``fake_plan`` written to ``path``; returns the path."""
    path.write_text(fake_plan(name, **kwargs))
    return path
