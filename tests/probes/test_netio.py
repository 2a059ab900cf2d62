"""NETIO probe against a local server speaking the device's JSON API."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from greenmon.config import Config, DaemonOptions, parse_config
from greenmon.daemon import Daemon
from greenmon.probes.base import ProbeUnavailable, Stamped
from greenmon.probes.netio import NetioError, NetioProbe, Options
from greenmon.store import Store
from tests.fakes.netio import NetioState, ServerThread, load_sample_rows

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-pw"
ENV = {"GREENMON_NETIO_USER": "netio", "GREENMON_NETIO_PASSWORD": PASSWORD}


@pytest.fixture
def device() -> Iterator[ServerThread]:
    with ServerThread(NetioState()) as server:
        yield server


def _probe(server: ServerThread, **options: object) -> NetioProbe:
    return NetioProbe(Options(enabled=True, host=server.host, **options), environ=ENV)  # type: ignore[arg-type]


async def test_json_24_channels_values_and_midpoint_stamp(device: ServerThread) -> None:
    ticks = iter([1_000, 3_000])
    probe = NetioProbe(
        Options(enabled=True, host=device.host), environ=ENV, clock=lambda: next(ticks)
    )
    channels = probe.open()
    names = [c.name for c in channels]
    assert names == [
        "outlet1.load_w",
        "outlet1.energy_wh",
        "outlet1.current_ma",
        "outlet1.power_factor",
        "outlet1.phase_deg",
        "mains.voltage_v",
        "mains.frequency_hz",
        "total.load_w",
        "total.current_ma",
        "total.power_factor",
        "total.energy_wh",
    ]
    by_name = {c.name: c for c in channels}
    # exactly one channel carries the wall domain: the configured outlet's load
    assert [c.name for c in channels if c.domain == "wall"] == ["outlet1.load_w"]
    energy = by_name["outlet1.energy_wh"]
    assert (energy.kind, energy.unit, energy.domain) == ("counter", "Wh", None)
    assert energy.metadata["source_field"] == "EnergyNR"
    assert energy.metadata["resolution_j"] == 3600.0
    assert by_name["outlet1.load_w"].metadata["json_version"] == "2.4"
    device.state.requests = 0
    result = await probe.read()
    assert isinstance(result, Stamped)
    [(t_ns, values)] = result.rows
    assert t_ns == 2_000  # midpoint of request and response
    row = dict(zip(names, values, strict=True))
    first = load_sample_rows()[0]
    assert row["outlet1.load_w"] == first["Load"] == 93
    assert row["outlet1.current_ma"] == 550 and row["outlet1.power_factor"] == 0.7
    assert row["outlet1.energy_wh"] == 94268
    assert row["total.load_w"] == 93 and row["mains.voltage_v"] == 230.4
    await probe.aclose()
    probe.close()


async def test_json_21_field_set(device: ServerThread) -> None:
    device.state.json_version = "2.1"
    probe = _probe(device, outputs=[1, 3])
    channels = {c.name: c for c in probe.open()}
    assert "outlet1.phase_deg" not in channels
    assert channels["outlet3.energy_wh"].metadata["source_field"] == "Energy"
    assert channels["total.energy_wh"].metadata["source_field"] == "TotalEnergy"
    assert [n for n, c in channels.items() if c.domain == "wall"] == [
        "outlet1.load_w",
        "outlet3.load_w",
    ]
    result = await probe.read()
    assert len(result.rows[0][1]) == len(channels)
    await probe.aclose()


async def test_wrong_password_is_unavailable_and_never_echoed(device: ServerThread) -> None:
    wrong = {"GREENMON_NETIO_USER": "netio", "GREENMON_NETIO_PASSWORD": "not-the-pw"}
    probe = NetioProbe(Options(enabled=True, host=device.host), environ=wrong)
    with pytest.raises(ProbeUnavailable, match="wrong user or password") as caught:
        probe.open()
    assert "not-the-pw" not in str(caught.value)
    # a password changed on the device while running: each read fails, readably
    probe = _probe(device)
    probe.open()
    with ServerThread(NetioState(password="rotated")) as other:
        probe._url = f"http://{other.host}/netio.json"
        with pytest.raises(NetioError, match="wrong user or password") as failed:
            await probe.read()
    assert PASSWORD not in str(failed.value)
    await probe.aclose()


async def test_json_api_disabled_says_where_to_enable_it(device: ServerThread) -> None:
    device.state.mode = "forbidden"
    with pytest.raises(ProbeUnavailable, match=r"enable M2M API > JSON API with READ"):
        _probe(device).open()


async def test_server_error_malformed_body_and_missing_output_fail_the_read(
    device: ServerThread,
) -> None:
    probe = _probe(device)
    probe.open()
    device.state.mode = "error500"
    with pytest.raises(NetioError, match="HTTP 500"):
        await probe.read()
    device.state.mode = "malformed"
    with pytest.raises(NetioError, match="not JSON"):
        await probe.read()
    device.state.mode = "ok"
    assert len((await probe.read()).rows) == 1  # the next good answer is a sample again
    device.state.num_outputs = 0
    with pytest.raises(NetioError, match="output 1 is not in the answer"):
        await probe.read()
    await probe.aclose()


async def test_missing_output_at_open_is_unavailable(device: ServerThread) -> None:
    with pytest.raises(ProbeUnavailable, match=r"output 7 is not in the answer.*\[1, 2, 3, 4\]"):
        _probe(device, outputs=[7]).open()


async def test_stall_past_the_timeout_is_a_timeout(device: ServerThread) -> None:
    probe = _probe(device, timeout_s=0.2)
    probe.open()
    device.state.mode = "stall"
    with pytest.raises(TimeoutError, match=r"did not answer within 0\.2 s"):
        await probe.read()
    await probe.aclose()


async def test_no_host_is_unavailable_with_the_setting() -> None:
    with pytest.raises(ProbeUnavailable, match=r"set \[probes.netio\] host"):
        NetioProbe(Options(), environ={}).open()


async def test_unreachable_host_is_unavailable() -> None:
    with pytest.raises(ProbeUnavailable, match="cannot reach"):
        NetioProbe(Options(host="127.0.0.1:9", timeout_s=0.5), environ={}).open()


async def test_refresh_period_detected_from_the_real_readings(device: ServerThread) -> None:
    """Replays the study's readings with the poll times they were taken at."""
    stamps = [
        int(datetime.fromisoformat(r["true_timestamp"]).timestamp() * 1e9)
        for r in load_sample_rows()
    ]
    # each read asks the clock twice (request, response): give both the poll's time
    clock = iter(itertools.chain.from_iterable((t, t) for t in stamps))
    probe = NetioProbe(
        Options(enabled=True, host=device.host), environ=ENV, clock=lambda: next(clock)
    )
    probe.open()
    device.state.requests = 0
    assert probe.refresh_period_s is None
    for _ in stamps:
        await probe.read()
    await probe.aclose()
    # the device recomputes about once a second; polled every ~0.57 s, changes are seen
    # every second poll
    assert probe.refresh_period_s is not None
    assert 1.0 < probe.refresh_period_s < 1.3


async def test_password_is_never_in_the_stored_options(tmp_path: Path) -> None:
    with pytest.raises(msgspec.ValidationError, match="password"):
        msgspec.convert({"host": "x", "password": PASSWORD}, Options)
    config = parse_config('[probes.netio]\nenabled = true\nhost = "10.0.0.2"\nuser = "u"\n')
    assert PASSWORD not in str(config.as_dict())
    stored = config.as_dict()["probes"]["netio"]
    assert stored["password_env"] == "GREENMON_NETIO_PASSWORD"
    secret = tmp_path / "netio.pw"
    secret.write_text(PASSWORD + "\n")
    probe = NetioProbe(Options(host="h", password_file=str(secret)), environ={})
    assert probe._credentials() == ("", PASSWORD)
    assert PASSWORD not in str(msgspec.to_builtins(probe.options))


async def test_sync_close_releases_the_session_without_aclose(device: ServerThread) -> None:
    probe = _probe(device)
    probe.open()
    await probe.read()
    session = probe._session
    assert session is not None and not session.closed
    probe.close()
    assert session.closed
    probe.close()


async def test_runs_in_the_daemon_and_its_session_is_closed(
    device: ServerThread, tmp_path: Path
) -> None:
    probe = _probe(device)
    config = Config(daemon=DaemonOptions(), probes={"netio": Options(rate_hz=20.0)})
    store = Store.open(tmp_path / "db.duckdb")
    # an async read() is outside the Probe protocol's sync signature; the sampler awaits it
    daemon = Daemon(store, config, probes={"netio": probe}, handle_signals=False)  # type: ignore[dict-item]
    summary = await daemon.run(0.6)
    _, rows = store.query(
        "SELECT c.name, count(*) FROM samples s JOIN channels c USING (channel_id) "
        "WHERE c.name = 'outlet1.load_w' GROUP BY 1"
    )
    _, config_rows = store.query("SELECT config FROM sessions")
    _, events = store.query("SELECT message FROM events")
    store.close()
    [health] = summary.probes
    assert health.state == "stopped" and health.errors == 0
    assert rows and rows[0][1] >= 5
    assert probe._session is None  # the sampler awaited aclose() on its loop
    assert PASSWORD not in str(config_rows) + str(events)
    assert any("refresh period, detected from value changes" in m for (m,) in events)
