"""TOML configuration files -> validated, typed config.

A config file has a ``[daemon]`` table, one ``[probes.<name>]`` table per probe and a
``[report]`` table (carbon intensity and electricity price for reports); every
probe in ``probes.REGISTRY`` is configured with its defaults unless its table says
otherwise (``enabled = false`` turns one off).  Unknown keys and wrong types are errors
that name the key, the file and, where it can be found, the line.
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from greenmon.errors import ConfigError
from greenmon.probes import REGISTRY
from greenmon.probes.options import ProbeOptions


class DaemonOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    db: str | None = None
    # Each flush is one DuckDB statement and commit (1-5 ms of CPU whatever its size, more
    # on a loaded machine), so this sets most of the writer's cost; it also bounds what a
    # SIGKILL loses (README).  2 s halves the writer's cost against 1 s.
    flush_interval_s: float = 2.0
    # With the sample journal a flush is an append to <db>.journal (durable, no DuckDB
    # commit), and the journal is loaded into DuckDB this often, at every unit and window
    # end and before every read (greenmon/store/journal.py): so DuckDB commits every 30 s
    # instead of every flush when nothing reads.  0 turns the journal off: each flush
    # commits to DuckDB, as before.
    journal_load_interval_s: float = 30.0
    anchor_interval_s: float = 60.0
    max_backoff_s: float = 30.0
    # How long a thread may hold the GIL before another may run (CPython's default is
    # 5 ms).  A sampler thread woken at its deadline waits for the GIL; 0.5 ms keeps tick
    # jitter under a millisecond while the writer or an engine is busy in Python.
    gil_switch_interval_s: float = 0.0005
    # Prometheus metrics over HTTP (greenmon/metrics.py); off unless a port is set.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # DuckDB's ceiling for the daemon's connection (its buffer pool, the writer's rows not
    # yet checkpointed, query intermediates; beyond it queries spill to <db>.tmp).  DuckDB's
    # own default is 80% of RAM, and it keeps every block it has written cached up to that
    # limit: 6-13 bytes per sample, 0.65-1.4 GB over a 100-hour campaign, beside engines
    # that need the RAM.  Writing needs ~16 MB (rows up to a checkpoint) and re-reading a
    # block costs one read from the OS page cache; the results query the runner runs after
    # each unit needs ~128 MB at 10 M samples (64 MB fails it).  128 MB holds the daemon
    # flat near 385 MB once full (README, bench/soak.py).
    duckdb_memory_limit: str = "128MB"
    # Threads a query in the daemon may use.  Appends use one; two let a results query run
    # in parallel without taking every core from an engine that is being measured (and
    # each DuckDB thread has its own buffers, so fewer threads also means less memory).
    duckdb_threads: int = 2


# DuckDB's size units (1000^i and 1024^i).  Written here, not left to DuckDB, so a bad
# value is named with its file and line before the daemon starts; an absolute size only,
# since a share of RAM is the open-ended default this option exists to replace.
_MEMORY_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.I)
_MEMORY_UNITS = {
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
# Below this the writer's rows up to a checkpoint (~16 MB) and a small query do not fit.
MIN_DUCKDB_MEMORY_BYTES = 64 * 10**6


def memory_limit_bytes(text: str) -> int | None:
    """``"128MB"`` -> 128_000_000; None when ``text`` is not a size DuckDB accepts."""
    match = _MEMORY_LIMIT.match(text)
    if match is None:
        return None
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])


def _check_daemon(daemon: DaemonOptions, source: Path | None, text: str) -> None:
    """Checks msgspec's types cannot express: sizes and counts within what works."""
    limit = daemon.duckdb_memory_limit
    size = memory_limit_bytes(limit)
    if size is None or size < MIN_DUCKDB_MEMORY_BYTES:
        key = "daemon.duckdb_memory_limit"
        why = "is not a size" if size is None else "is below 64MB, too small to write and query"
        raise ConfigError(
            f"Wrong value for '{key}' in {_where(source, text, key)}: {limit!r} {why}. "
            'Give a size in quotes with its unit, e.g. "128MB", "1GB" or "512MiB".'
        )
    if daemon.journal_load_interval_s < 0:
        key = "daemon.journal_load_interval_s"
        raise ConfigError(
            f"Wrong value for '{key}' in {_where(source, text, key)}: "
            f"{daemon.journal_load_interval_s}. Give seconds between loads of the sample "
            "journal into DuckDB, e.g. 30, or 0 to commit every flush without a journal."
        )
    if daemon.duckdb_threads < 1:
        key = "daemon.duckdb_threads"
        raise ConfigError(
            f"Wrong value for '{key}' in {_where(source, text, key)}: "
            f"{daemon.duckdb_threads}. Give a whole number of threads, 1 or more."
        )


class ReportOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the energy costs, for ``greenmon report`` and ``greenmon analyze``: carbon
    intensity (a constant, or a CSV of ``time,g_per_kwh`` rows matched to each unit's start)
    and the price of electricity.  Left out, no carbon or cost is shown."""

    carbon_intensity_g_per_kwh: float | None = None
    carbon_intensity_file: str | None = None
    # Where the intensity comes from (a grid operator, Electricity Maps...), printed with it.
    carbon_intensity_source: str | None = None
    price_per_kwh: float | None = None
    currency: str = "EUR"


def _check_report(report: ReportOptions, source: Path | None, text: str) -> None:
    """The intensity given once, and no negative intensity or price."""
    if report.carbon_intensity_g_per_kwh is not None and report.carbon_intensity_file:
        key = "report.carbon_intensity_file"
        raise ConfigError(
            f"Both carbon_intensity_g_per_kwh and carbon_intensity_file are set in "
            f"{_where(source, text, key)}. Keep one: a constant intensity, or a CSV file of "
            "intensity over time."
        )
    for key in ("carbon_intensity_g_per_kwh", "price_per_kwh"):
        value = getattr(report, key)
        if value is not None and value < 0:
            raise ConfigError(
                f"Wrong value for 'report.{key}' in {_where(source, text, 'report.' + key)}: "
                f"{value} is negative. Give a value of 0 or more."
            )
    if report.carbon_intensity_file and source is not None:
        # A relative path is relative to the config file, not to where greenmon runs.
        path = Path(report.carbon_intensity_file)
        if not path.is_absolute():
            report.carbon_intensity_file = str(source.parent / path)


@dataclass
class Config:
    daemon: DaemonOptions = field(default_factory=DaemonOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    probes: dict[str, ProbeOptions] = field(default_factory=dict)
    source: Path | None = None
    # Probes whose module cannot be imported here (a missing optional library): name -> why.
    broken: dict[str, str] = field(default_factory=dict)

    def enabled_probes(self) -> dict[str, ProbeOptions]:
        return {name: options for name, options in self.probes.items() if options.enabled}

    def as_dict(self) -> dict[str, Any]:
        return {
            "daemon": msgspec.to_builtins(self.daemon),
            "report": msgspec.to_builtins(self.report),
            "probes": {name: msgspec.to_builtins(o) for name, o in self.probes.items()},
            "source": str(self.source) if self.source else None,
        }


def probe_module(name: str) -> ModuleType:
    return importlib.import_module(REGISTRY[name])


def find_key_line(text: str, dotted_key: str) -> int | None:
    """The 1-based line where ``dotted_key`` (e.g. ``probes.rapl.rate_hz``) is set.

    TOML parsers do not report positions, so this looks for the key's table header and
    then the key inside it; good enough to point a person at the right line.
    """
    parts = dotted_key.split(".")
    lines = text.splitlines()
    for table_len in range(len(parts) - 1, -1, -1):
        table, rest = parts[:table_len], parts[table_len:]
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]")
        key = re.compile(r"^\s*" + r"\s*\.\s*".join(map(re.escape, rest)) + r"\s*=")
        in_table = table_len == 0
        for number, line in enumerate(lines, start=1):
            if re.match(r"^\s*\[", line):
                in_table = bool(header.match(line)) if table else False
                if in_table and not rest:
                    return number
                continue
            if in_table and key.match(line):
                return number
    return None


def _where(source: Path | None, text: str, dotted_key: str) -> str:
    location = str(source) if source else "the configuration"
    line = find_key_line(text, dotted_key) if text else None
    return f"{location}, line {line}" if line else location


_MSGSPEC_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]*)`")


def convert_table(
    table: Mapping[str, Any], struct: type[Any], prefix: str, source: Path | None, text: str
) -> Any:
    """Decode one TOML table into ``struct``, translating errors to ConfigError."""
    try:
        return msgspec.convert(dict(table), type=struct)
    except msgspec.ValidationError as error:
        message = str(error)
        path_match = _MSGSPEC_PATH.search(message)
        inner = path_match.group(1).replace("[", ".").replace("]", "") if path_match else ""
        body = _MSGSPEC_PATH.sub("", message)
        unknown = _UNKNOWN_FIELD.match(body)
        if unknown:
            key = ".".join(p for p in (prefix, inner, unknown.group(1)) if p)
            allowed = ", ".join(sorted(struct.__struct_fields__))
            raise ConfigError(
                f"Unknown key '{key}' in {_where(source, text, key)}. "
                f"Allowed keys there: {allowed}."
            ) from None
        key = ".".join(p for p in (prefix, inner) if p)
        raise ConfigError(
            f"Wrong value for '{key}' in {_where(source, text, key)}: {body}. "
            "Fix the value's type (quotes make a string; numbers and true/false take none)."
        ) from None


def parse_config(text: str, source: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"{source or 'The configuration'} is not valid TOML: {error}. "
            "Fix the syntax at that position (see https://toml.io)."
        ) from None
    return config_from_tables(data, source, text)


def config_from_tables(data: Mapping[str, Any], source: Path | None, text: str) -> Config:
    """A Config from parsed TOML tables (``[daemon]``, ``[probes.<name>]``).  ``text`` is
    the file they were read from, for the line numbers in errors: a plan's ``[probes.*]``
    tables are checked against the plan's own text (commands/run.py)."""
    unknown_top = set(data) - {"daemon", "probes", "report"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise ConfigError(
            f"Unknown key '{key}' in {_where(source, text, key)}. "
            "Allowed top-level tables: [daemon], [probes.<name>], [report]."
        )
    daemon = convert_table(data.get("daemon", {}), DaemonOptions, "daemon", source, text)
    _check_daemon(daemon, source, text)
    report = convert_table(data.get("report", {}), ReportOptions, "report", source, text)
    _check_report(report, source, text)
    probe_tables = data.get("probes", {})
    if not isinstance(probe_tables, dict):
        raise ConfigError(f"'probes' in {_where(source, text, 'probes')} must be a table.")
    for name in probe_tables:
        if name not in REGISTRY:
            key = f"probes.{name}"
            raise ConfigError(
                f"Unknown probe '{name}' in {_where(source, text, key)}. "
                f"Known probes: {', '.join(sorted(REGISTRY))}."
            )
    probes: dict[str, ProbeOptions] = {}
    for name in REGISTRY:
        table = probe_tables.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(
                f"'probes.{name}' in {_where(source, text, 'probes')} must be a table."
            )
        options_type = probe_module(name).Options
        probes[name] = convert_table(table, options_type, f"probes.{name}", source, text)
    return Config(daemon=daemon, report=report, probes=probes, source=source)


# The database file when neither --db, $GREENMON_DB nor the config's [daemon] db names one.
DEFAULT_DB = "greenmon.duckdb"


def resolve_db(arg: str | None, config_db: str | None = None) -> Path:
    """The database file: ``--db``, else ``$GREENMON_DB``, else the config's, else
    ./greenmon.duckdb.  Here rather than in the commands because the Python ``Monitor``
    resolves it the same way."""
    return Path(arg or os.environ.get("GREENMON_DB") or config_db or DEFAULT_DB)


def load_config(path: str | Path | None) -> Config:
    """Read a config file; None gives the defaults (every known probe, default rates)."""
    if path is None:
        return parse_config("")
    config_path = Path(path)
    try:
        text = config_path.read_text()
    except OSError as error:
        raise ConfigError(
            f"Cannot read the configuration {config_path}: {error.strerror}. "
            "Check the path given to --config."
        ) from None
    return parse_config(text, config_path)
