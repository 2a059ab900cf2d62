"""The typed wire: what the daemon sends decodes into the messages its clients read
(greenmon/api/messages.py), during a plan and after it, and a message missing a field it
needs fails at the boundary, not as a KeyError in a client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from greenmon.api.client import ApiClient
from greenmon.api.messages import (
    ExperimentSummary,
    PlanEntry,
    ProbeStatusDetail,
    Progress,
    ResultRow,
    Snapshot,
    Status,
    WindowListing,
    decode,
)
from tests.api.fakes import fake_plan, running_daemon, short_socket_dir
from tests.fakes.probes import CountingProbe


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_socket_dir() as path:
        yield path


@pytest.mark.anyio

async def test_the_daemons_messages_decode_into_the_typed_wire(
    db_path: Path, sock_dir: Path
) -> None:
    path = sock_dir / "d.sock"
    async with (
        running_daemon(db_path, path, {"counting": CountingProbe()}),
        ApiClient(path) as client,
    ):
        submitted = await client.submit(fake_plan("typed", repetitions=1, cooldown_s=0.1), None)
        experiment_id = submitted.experiment_id
        running: Snapshot | None = None
        outcome: str | None = None
        with anyio.fail_after(90):
            async for snap in client.stream():
                assert isinstance(snap, Snapshot) and snap.t_ns > 0
                progress = snap.progress or Progress()
                if progress.experiment_id == experiment_id and progress.unit_index > 0:
                    running = snap
                outcome = progress.outcome_of(experiment_id)
                if outcome is not None:
                    break
        assert running is not None and running.values  # values arrived with the progress
        assert running.progress is not None and running.progress.units_total == 2
        assert outcome == "done"
        status = (await client.status()).progress
        assert status is not None
        assert [f.experiment_id for f in status.finished] == [experiment_id]
        results = await client.experiment_results(experiment_id)
        assert all(isinstance(row, ResultRow) for row in results)
        assert {row.configuration for row in results} == {"fake/cpu", "fake2/cpu"}
        assert all(row.units == 1 for row in results)
        assert isinstance(await client.windows(), WindowListing)


def test_a_message_without_a_field_it_needs_is_refused_at_the_boundary() -> None:
    with pytest.raises(msgspec.ValidationError, match="experiment_id"):
        decode({"results": []}, ExperimentSummary)
    entry = decode(
        {"experiment_id": "e1", "plan_name": "p", "units_total": 2, "units_done": 2,
         "outcome": "done", "added_later": 1},
        PlanEntry,
    )  # fmt: skip
    assert entry.outcome == "done"  # a field a newer daemon adds is ignored
    assert Progress(finished=[entry]).outcome_of("e1") == "done"


@pytest.mark.anyio
async def test_the_server_builds_the_structs_and_status_decodes_whole(
    db_path: Path, sock_dir: Path
) -> None:
    """The daemon hands the wire Structs, not dicts: a snapshot, its progress and the
    queued plans' entries; and ``GET /status`` decodes whole into ``Status`` (the snapshot
    with full health, the channel table and the writer's timings)."""
    path = sock_dir / "d.sock"
    async with (
        running_daemon(db_path, path, {"counting": CountingProbe()}) as daemon,
        ApiClient(path) as client,
    ):
        snap = daemon.snapshot()
        assert isinstance(snap, Snapshot) and isinstance(snap.progress, Progress)
        assert all(isinstance(value, tuple) for value in snap.values)
        await client.submit(fake_plan("first", repetitions=1, cooldown_s=0.1), None)
        await client.submit(fake_plan("second", repetitions=1, cooldown_s=0.1), None)
        progress = daemon.progress()
        assert progress is not None
        entries = [*progress.queue, *progress.finished]
        assert entries and all(isinstance(entry, PlanEntry) for entry in entries)
        status = await client.status()
        assert isinstance(status, Status) and status.pid == os.getpid()
        assert status.runner and status.channels and status.writer.flushes >= 0
        assert all(isinstance(probe, ProbeStatusDetail) for probe in status.probes)
        assert status.progress is not None and status.session_id == daemon.session_id
        await client.cancel()
