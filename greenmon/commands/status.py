"""``greenmon status``: what the running daemon is doing, or what the database last saw.

With a daemon listening on its API socket, the answer comes from the daemon (probes and
their health, the plan in progress).  Without one, the database is opened read-only and
the last session and the last experiment's units are summarised from its tables.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from greenmon.api.client import ApiClient, call_daemon, find_daemon
from greenmon.api.messages import DaemonStatus, Progress
from greenmon.commands.common import add_db_argument, existing_db, format_table, resolve_db
from greenmon.estimates import domains_of, mark, source_lines
from greenmon.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser, socket=True)
    parser.add_argument(
        "campaign", nargs="?", default=None,
        help="a campaign directory (greenmon slurm --out): every shard's progress",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print as JSON")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress_lines(progress: Progress | None) -> list[str]:
    if progress is None:
        return ["runner: starting"]
    if progress.experiment_id is None:
        idle = "runner: idle, waiting for a plan (`greenmon run PLAN --db ...`)"
        return [idle, *queue_lines(progress)]
    lines = [
        f"plan {progress.plan_name or '-'} ({progress.experiment_id or '-'}): "
        f"{progress.status}, unit {progress.unit_index}/"
        f"{progress.units_total}, ETA {_duration(progress.eta_s)}"
    ]
    unit = progress.unit
    if unit is not None:
        phase = progress.phase or "-"
        if progress.phase_remaining_s is not None:
            phase += f" ({_duration(progress.phase_remaining_s)} left)"
        lines.append(
            f"  now: {unit.model} {unit.configuration} repetition "
            f"{unit.repetition}, phase {phase}"
            + (
                f", request {progress.request_index}/{progress.requests_total}"
                if progress.requests_total
                else ""
            )
        )
    return (
        lines
        + result_lines(progress)
        + background_lines((r.configuration, r.background_load_units) for r in progress.results)
        + queue_lines(progress)
    )


def result_lines(progress: Progress) -> list[str]:
    """The running plan's medians so far, per configuration, estimated figures marked."""
    lines = []
    for row in progress.results:
        domains = domains_of(row.estimated_domains)
        figures = [
            mark(f"{float(value):.4g} {unit}", column, domains)
            for column, value, unit in (
                ("median_energy_j", row.median_energy_j, "J"),
                ("median_j_per_token", row.median_j_per_token, "J/token"),
            )
            if value is not None
        ]
        lines.append(
            f"  {row.configuration}: {row.units} units done, median "
            + (", ".join(figures) or "energy not measured")
        )
    return lines


def background_lines(results: Iterable[tuple[str, int]]) -> list[str]:
    """How many finished units ran beside other load, per configuration: (configuration,
    units the flag marks) pairs."""
    counts = {configuration: int(units) for configuration, units in results if units}
    if not counts:
        return []
    by_configuration = ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
    return [
        f"  background_load: {sum(counts.values())} finished units ran beside other load "
        f"({by_configuration})"
    ]


def queue_lines(progress: Progress) -> list[str]:
    return [
        f"  queued {position}: {queued.plan_name} ({queued.experiment_id}), "
        f"{queued.units_done}/{queued.units_total} units done"
        for position, queued in enumerate(progress.queue, start=1)
    ]


def daemon_report(status: DaemonStatus) -> str:
    lines = [
        f"daemon pid {status.pid} running: {status.db_path}, "
        f"session {status.session_id}, API {status.socket_path}"
    ]
    rows = [
        (
            p.probe,
            p.state,
            f"{p.achieved_hz:.2f}/{p.target_hz:g}",
            p.errors,
            p.missed_ticks,
            "" if p.jitter_p99_us is None else f"{p.jitter_p99_us:.0f}",
            p.last_error or p.reason or "",
        )
        for p in status.probes
    ]
    columns = ["probe", "state", "Hz", "errors", "missed", "p99 jitter us", "last error"]
    lines.append(format_table(columns, rows, max_width=60))
    lines += source_lines(
        (c.domain, c.probe, c.name, c.estimated) for c in status.channels if c.energy_source
    )
    lines += progress_lines(status.progress)
    return "\n".join(lines)


def file_status(path: Path) -> dict[str, Any]:
    """The last session and experiment from the file, opened read-only."""
    with Store.open(path, read_only=True) as store:
        columns, rows = store.query(
            "SELECT session_id, host, started_at::VARCHAR AS started_at, started_ns, ended_ns "
            "FROM sessions "
            "ORDER BY started_ns DESC NULLS LAST, started_at DESC LIMIT 1"
        )
        session = dict(zip(columns, rows[0], strict=True)) if rows else None
        if session:
            _, counts = store.query(
                "SELECT count(DISTINCT c.channel_id), count(s.t_ns) FROM channels c "
                "LEFT JOIN samples s USING (channel_id) WHERE c.session_id = ?",
                [session["session_id"]],
            )
            session["channels"], session["samples"] = counts[0]
            session["duration_s"] = (
                (session["ended_ns"] - session["started_ns"]) / 1e9
                if session["ended_ns"] is not None
                else None
            )
            # which channel answered for each domain, and whether it was estimated
            columns, rows = store.query(
                "SELECT domain, probe, name, estimated FROM energy_sources "
                "WHERE session_id = ? ORDER BY domain, name",
                [session["session_id"]],
            )
            session["energy_sources"] = [dict(zip(columns, r, strict=True)) for r in rows]
        columns, rows = store.query(
            "SELECT experiment_id, name, plan_path, status, created_ns FROM experiments "
            "ORDER BY created_ns DESC NULLS LAST LIMIT 1"
        )
        experiment = dict(zip(columns, rows[0], strict=True)) if rows else None
        if experiment:
            _, unit_rows = store.query(
                "SELECT status, count(*) FROM units WHERE experiment_id = ? GROUP BY status "
                "ORDER BY status",
                [experiment["experiment_id"]],
            )
            experiment["units"] = {status: count for status, count in unit_rows}
            # finished units flagged background_load, per configuration
            _, flagged = store.query(
                "SELECT configuration, count(*) AS background_load_units "
                "FROM unit_results_for(?) WHERE status = 'done' "
                "AND list_contains(flags, 'background_load') GROUP BY ALL ORDER BY 1",
                [experiment["experiment_id"]],
            )
            experiment["background_load"] = [
                {"configuration": c, "background_load_units": n} for c, n in flagged
            ]
    return {"daemon": None, "db_path": str(path), "session": session, "experiment": experiment}


def file_report(report: dict[str, Any]) -> str:
    lines = [f"no daemon runs; read {report['db_path']} (read-only)"]
    session = report["session"]
    if session is None:
        lines.append("no session recorded yet")
    else:
        state = "ended" if session["ended_ns"] is not None else "did not end cleanly"
        lines.append(
            f"last session {session['session_id']} on {session['host']}, started "
            f"{session['started_at']}, {state}, {_duration(session['duration_s'])}, "
            f"{session['channels']} channels, {session['samples']} samples"
        )
        sources = session.get("energy_sources") or []
        lines += [
            f"  {line}"
            for line in source_lines(
                (s["domain"], s["probe"], s["name"], bool(s["estimated"])) for s in sources
            )
        ]
    experiment = report["experiment"]
    if experiment is None:
        lines.append("no experiment recorded yet")
    else:
        units = ", ".join(f"{count} {status}" for status, count in experiment["units"].items())
        lines.append(
            f"last experiment {experiment['experiment_id']} ({experiment['name']}, "
            f"{experiment['plan_path']}): {experiment['status']}; units: {units or 'none'}"
        )
        lines += background_lines(
            (r["configuration"], r["background_load_units"])
            for r in experiment.get("background_load") or []
        )
    return "\n".join(lines)


def campaign_report(directory: Path, as_json: bool) -> str:
    """Every shard of a campaign directory, from its files and logs."""
    from greenmon.campaign import read_campaign, shard_progress

    campaign = read_campaign(directory)
    rows = shard_progress(directory)
    if as_json:
        return json.dumps({"campaign": campaign, "shards": rows}, default=str, indent=2)
    done = sum(r["done"] for r in rows)
    lines = [
        f"campaign {directory}: plan '{campaign['plan']}', {campaign['shards']} shards, "
        f"job {campaign.get('job_id') or 'not submitted'}; {done}/{campaign['units']} "
        "units done"
    ]
    columns = ["shard", "host", "state", "done", "failed", "units", "detail"]
    table = [
        [r["shard"], r["host"], r["state"], r["done"], r["failed"],
         r["total"] if r["total"] is not None else size, r["detail"]]
        for r, size in zip(rows, campaign.get("units_per_shard", [None] * len(rows)), strict=False)
    ]  # fmt: skip
    lines.append(format_table(columns, table, max_width=70))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.campaign is not None:
        print(campaign_report(Path(args.campaign), args.json))
        return 0
    db = resolve_db(args.db)
    client = find_daemon(db, args.socket)
    if client is not None:
        status: DaemonStatus = call_daemon(client, ApiClient.status)
        if args.json:
            print(json.dumps({"daemon": msgspec.to_builtins(status)}, default=str, indent=2))
        else:
            print(daemon_report(status))
        return 0
    report = file_status(existing_db(args.db))
    if args.json:
        print(json.dumps(report, default=str, indent=2))
    else:
        print(file_report(report))
    return 0
