"""Every message of the wire survives the trip: an answer built as the server builds it,
written by the server's own encoder (``web.json_response`` with ``greenmon.api.wire.dumps``)
and read back by the client's decoder (``greenmon.api.client.answer``), is the same message;
so is a request the client writes (``client_json``) as the server reads it (``request_as``).

The JSON keep the field names an external client reads (README: the local API): the
probe health, writer, serving and results rows are pinned to the names their producers
wrote before they were typed.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from greenmon.api import messages
from greenmon.api.client import answer
from greenmon.api.errors import ApiError
from greenmon.api.messages import (
    CancelRequest,
    ChannelRow,
    ControlReply,
    DaemonEvent,
    DaemonStatus,
    EventList,
    ExperimentList,
    ExperimentRow,
    ExperimentSummary,
    GridCell,
    OpenedWindow,
    PlanEntry,
    PlanRequest,
    PlanSubmitted,
    ProbeStatus,
    ProbeStatusDetail,
    Progress,
    ResultRow,
    ServingStats,
    Snapshot,
    SqlRequest,
    SqlResult,
    Status,
    UnitInfo,
    WindowListing,
    WindowRequest,
    WindowResult,
    WriterStats,
)
from greenmon.api.wire import client_json, dumps, error_response, request_as
from greenmon.runner import _SUMMARY_SQL
from greenmon.sampling import ProbeHealth
from greenmon.store.batches import FlushStats

ENTRY = PlanEntry(experiment_id="e1", plan_name="p", units_total=4, units_done=1)
RESULT = ResultRow(
    configuration="torch/cpu", units=3, median_energy_j=12.5, median_duration_s=1.25,
    median_j_per_token=None, flags=["background_load"], background_load_units=1,
    estimated_domains=["gpu"],
)  # fmt: skip
SERVING = ServingStats(
    requests_in_flight=2, requests_done=10, tokens_per_s=55.5, latency_p50_s=0.2,
    latency_p90_s=0.4, ttft_p50_s=0.05, concurrency=2,
)  # fmt: skip
PROGRESS = Progress(
    status="running", experiment_id="e1", plan_name="p", unit_index=2, units_total=4,
    unit=UnitInfo(unit_id=1, model="tiny", engine="torch", provider="cpu",
                  configuration="torch/cpu", repetition=1, factors={"batch": 8}),
    phase="measure", phase_remaining_s=3.5, request_index=1, requests_total=5, eta_s=60.0,
    grid=[GridCell(model="tiny", configuration="torch/cpu", done=1, running=1, total=2)],
    results=[RESULT], queue=[ENTRY], finished=[PlanEntry(
        experiment_id="e0", plan_name="q", units_total=2, units_done=2, outcome="done")],
    serving=SERVING,
)  # fmt: skip
PROBE = ProbeStatus(probe="rapl", state="running", target_hz=50.0, achieved_hz=49.9)
DETAIL = ProbeStatusDetail(
    probe="rapl", state="running", target_hz=50.0, achieved_hz=49.9, reads=10, samples=20,
    jitter_p50_us=12.0, jitter_p99_us=80.0, last_t_ns=5, last_values={"a": 1.5, "b": None},
)  # fmt: skip
CHANNEL = ChannelRow(
    channel_id=1, probe="rapl", name="package-0.energy_uj", unit="uJ", kind="counter",
    domain="cpu", energy_source=True, metadata={"counter_range": 2**32},
)  # fmt: skip
WRITER = WriterStats(flushes=3, rows=300, recent_flushes=3, recent_ms_p50=1.5)
STATUS_FIELDS: dict[str, Any] = {
    "t_ns": 7, "session_id": "s1", "values": [(1, 7, 2.5)], "probes": [DETAIL],
    "progress": PROGRESS, "writer": WRITER, "channels": [CHANNEL], "runner": True,
}  # fmt: skip
OPENED = OpenedWindow(
    window_id=3, name="prefill", kind="window", tags={"batch": 8}, start_ns=5, elapsed_s=1.5
)
CLOSED = WindowResult(
    window_id=2, name="decode", kind="window", tags={}, start_ns=1, end_ns=9, duration_s=8e-9,
    baseline_window_id=1, energy_j={"cpu": 2.0}, dynamic_j={"cpu": 1.0},
    baseline_w={"cpu": 0.5}, mean_power_w={"cpu": 0.25}, utilisation={"cpu_percent": 50.0},
    coverage=0.99, flags=["low_coverage"], interpolated=["wall"],
)  # fmt: skip
REQUESTS: list[msgspec.Struct] = [
    PlanRequest(plan_toml="name = 'p'\n", plan_path="/p.toml", force=True, shard="1/2"),
    CancelRequest(experiment_id="e1"),
    CancelRequest(),
    SqlRequest(sql="SELECT 1", limit=10),
    WindowRequest(name="w", tags={"batch": 8}, kind="baseline", baseline_s=1.5),
]
EXAMPLES: list[msgspec.Struct] = [
    SqlResult(["a", "b"], [[1, "x"], [None, 2.5]], True),
    ENTRY,
    PlanSubmitted(**msgspec.structs.asdict(ENTRY), queued_behind=["e0"]),
    UnitInfo(model="tiny", configuration="torch/cpu", repetition=2),
    PROGRESS.grid[0],
    RESULT,
    SERVING,
    PROGRESS,
    ControlReply(progress=PROGRESS),
    PROBE,
    DETAIL,
    CHANNEL,
    WRITER,
    Snapshot(t_ns=7, session_id="s1", values=[(1, 7, 2.5)], probes=[PROBE], progress=PROGRESS),
    Status(**STATUS_FIELDS),
    DaemonStatus(pid=42, started_ns=1, db_path="/d.duckdb", socket_path="/s", **STATUS_FIELDS),
    DaemonEvent(t_ns=1, level="info", probe=None, message="started"),
    EventList(events=[DaemonEvent(t_ns=1, level="warning", probe="rapl", message="gap")]),
    ExperimentRow(experiment_id="e1", plan_name="p", status="done", created_ns=1,
                  finished_ns=2, units_total=4, units_done=4),
    ExperimentList(experiments=[ExperimentRow(experiment_id="e1")]),
    ExperimentSummary(experiment_id="e1", results=[RESULT]),
    OPENED,
    CLOSED,
    WindowListing(session_id="s1", open=[OPENED], recent=[CLOSED], auto_baseline_window_id=1),
]  # fmt: skip


def server_bytes(message: msgspec.Struct) -> bytes:
    """What a handler sends for ``message``: the server's response, built as it builds one."""
    body = web.json_response(message, dumps=dumps).body
    assert isinstance(body, bytes)
    return body


def test_every_message_is_in_the_examples() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(messages, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__module__ == messages.__name__
    }
    assert defined == {type(example) for example in [*EXAMPLES, *REQUESTS]}


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_a_message_comes_back_as_it_was_sent(message: msgspec.Struct) -> None:
    data = json.loads(server_bytes(message))
    # every field goes out under its own name
    assert list(data) == list(type(message).__struct_fields__)
    assert answer(data, type(message)) == message


async def server_reads(kind: type[msgspec.Struct], body: bytes) -> Any:
    """What a server handler reads of ``body`` as ``kind``, sent over real HTTP: the
    message, or the error it answers (a dict, as the client receives it)."""

    async def handler(request: web.Request) -> web.Response:
        try:
            message = await request_as(request, kind, f"{request.path} takes a {kind.__name__}.")
        except ApiError as error:
            return error_response(400, error)
        return web.Response(body=msgspec.msgpack.encode(message))

    app = web.Application()
    app.router.add_post("/x", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/x", data=body, headers={"Content-Type": "application/json"}
        )
        if response.status != 200:
            return await response.json()
        return msgspec.msgpack.decode(await response.read(), type=kind)


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
def test_a_request_reaches_the_server_as_it_was_sent(message: msgspec.Struct) -> None:
    assert anyio.run(server_reads, type(message), client_json(message).encode()) == message


def test_a_request_that_does_not_fit_says_how_to_ask() -> None:
    # as lax about scalars as the endpoint was when it read dicts
    lax = anyio.run(server_reads, SqlRequest, b'{"sql": "SELECT 1", "limit": "10"}')
    assert lax == SqlRequest(sql="SELECT 1", limit=10)
    refused = anyio.run(server_reads, SqlRequest, b'{"query": "SELECT 1"}')
    assert refused["error"].startswith("/x takes a SqlRequest. (Object missing required field")
    assert refused["kind"] == "ApiError"


def test_the_producers_keep_the_names_clients_read() -> None:
    """The rows typed from dicts keep the dicts' keys, in the same order."""
    health = ProbeHealth(probe="rapl", target_hz=50.0)
    assert list(json.loads(server_bytes(health.summary()))) == [
        "probe", "state", "reason", "target_hz", "achieved_hz", "errors", "missed_ticks",
        "last_error",
    ]  # fmt: skip
    assert list(json.loads(server_bytes(health.detail())))[8:] == [
        "reads", "samples", "jitter_p50_us", "jitter_p99_us", "last_t_ns", "last_values",
    ]  # fmt: skip
    assert list(FlushStats().as_dict()) == list(WriterStats.__struct_fields__)
    # the results rows: the summary query's columns, by name and in order
    aliases = re.findall(r"AS (\w+)", _SUMMARY_SQL)
    assert ["configuration", *aliases] == list(ResultRow.__struct_fields__)


def test_a_value_inside_a_message_is_written_as_outside_one() -> None:
    """A query's dates and bytes keep the encoder's rules inside a typed message."""
    import datetime

    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    data = json.loads(server_bytes(SqlResult(["t", "b"], [[when, b"\x01\x02"]])))
    assert data["rows"] == [[str(when), "0102"]]


def test_an_answer_that_does_not_fit_is_an_api_error() -> None:
    with pytest.raises(ApiError, match="ControlReply"):
        answer({"ok": True, "progress": {"status": 3}}, ControlReply)
