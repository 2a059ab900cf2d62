"""The daemon with injected probes: supervision, gaps, events, and orderly shutdown."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from greenmon.config import parse_config
from greenmon.daemon import Daemon
from greenmon.store import Store
from tests.fakes.probes import CountingProbe

pytestmark = pytest.mark.anyio


async def _run(
    db: Path, probes: dict[str, CountingProbe], config_text: str, seconds: float
) -> Daemon:
    config = parse_config(config_text)
    store = Store.open(db)
    daemon = Daemon(store, config, probes=probes, handle_signals=False)
    summary = await daemon.run(seconds)
    store.close()
    daemon.summary = summary  # type: ignore[attr-defined]
    return daemon


async def test_failing_probe_leaves_gaps_and_events_while_the_other_stays_complete(
    db_path: Path,
) -> None:
    flaky = CountingProbe("flaky", fail_every=3)
    steady = CountingProbe("steady")
    daemon = await _run(
        db_path, {"flaky": flaky, "steady": steady}, "[probes.host]\nrate_hz = 50\n", 1.5
    )
    with Store.open(db_path, read_only=True) as store:
        _, rows = store.query(
            "SELECT c.probe, list(s.value ORDER BY s.t_ns), list(s.t_ns ORDER BY s.t_ns) "
            "FROM samples s JOIN channels c USING (channel_id) GROUP BY c.probe"
        )
        traces = {probe: (values, times) for probe, values, times in rows}
        _, event_rows = store.query("SELECT probe, message FROM events WHERE level = 'warning'")
    flaky_values, _ = traces["flaky"]
    steady_values, _ = traces["steady"]
    # the flaky probe: every third read is missing, each failure is an event
    assert all(int(v) % 3 != 0 for v in flaky_values)
    assert set(range(1, int(max(flaky_values)) + 1)) - {int(v) for v in flaky_values} == {
        n for n in range(1, int(max(flaky_values)) + 1) if n % 3 == 0
    }
    failure_events = [m for p, m in event_rows if p == "flaky"]
    assert failure_events and all("simulated read failure" in m for m in failure_events)
    # the steady probe: every read it served is stored, in order, no errors
    assert steady_values == [float(n) for n in range(1, steady.reads + 1)]
    steady_health = next(h for h in daemon.summary.probes if h.probe == "steady")
    assert steady_health.errors == 0
    assert daemon.summary.samples_written == len(flaky_values) + len(steady_values)
    assert flaky.closed and steady.closed


async def test_lost_probe_stops_alone(db_path: Path) -> None:
    lost = CountingProbe("lost", lose_after=5)
    steady = CountingProbe("steady")
    daemon = await _run(db_path, {"lost": lost, "steady": steady}, "", 0.5)
    states = {h.probe: h.state for h in daemon.summary.probes}
    assert states == {"lost": "lost", "steady": "stopped"}
    with Store.open(db_path, read_only=True) as store:
        _, rows = store.query("SELECT message FROM events WHERE probe = 'lost' AND level = 'error'")
    assert rows and "fell off the bus" in rows[0][0]
    assert steady.reads > 20


async def test_probe_that_cannot_open_is_reported_and_the_others_run(db_path: Path) -> None:
    class Broken(CountingProbe):
        def open(self):  # type: ignore[no-untyped-def]
            from greenmon.probes.base import ProbeUnavailable

            raise ProbeUnavailable("no such device: plug it in")

    steady = CountingProbe("steady")
    daemon = await _run(db_path, {"broken": Broken("broken"), "steady": steady}, "", 0.3)
    assert daemon.unavailable == {"broken": "no such device: plug it in"}
    assert steady.reads > 5


async def test_stop_request_flushes_everything_read(db_path: Path) -> None:
    probe = CountingProbe("steady")
    store = Store.open(db_path)
    daemon = Daemon(store, parse_config(""), probes={"steady": probe}, handle_signals=False)
    async with anyio.create_task_group() as group:
        group.start_soon(daemon.run)
        await daemon.started.wait()
        await anyio.sleep(0.35)
        daemon.request_stop()
    store.close()
    with Store.open(db_path, read_only=True) as reader:
        _, [(count,)] = reader.query("SELECT count(*) FROM samples")
    assert count == probe.reads


async def test_each_event_is_stored_once_when_the_writer_falls_behind(db_path: Path) -> None:
    """A sampler whose batch could not be queued put back every event
    of its hand-off, including those already queued, so they were stored twice.  Samplers
    now hand a batch and its events over as one item (``Sampler.sink``), whatever the
    writer's stream holds; a stream of one item must not change what is stored."""
    flaky = CountingProbe("flaky", fail_every=2)
    store = Store.open(db_path)
    daemon = Daemon(store, parse_config(""), probes={"flaky": flaky}, handle_signals=False,
                    stream_buffer=1)  # fmt: skip
    await daemon.run(2.5)
    store.close()
    with Store.open(db_path, read_only=True) as reader:
        _, events = reader.query(
            "SELECT t_ns, message FROM events WHERE probe = 'flaky' AND level = 'warning'"
        )
    assert len(events) >= 2  # one failure event a second gets through the throttle
    assert len(set(events)) == len(events), sorted(events)
