"""Live power per domain (the `greenmon run` progress line): only the channel the store's
energy_sources view chose for a domain counts, so a modelled CPU estimate is never added to
RAPL, and counters become power by their rate."""

from __future__ import annotations

import pytest

from greenmon.api.messages import ChannelRow
from greenmon.livepower import PowerMeter
from greenmon.store import Store

S = 1_000_000_000


def channel(channel_id: int, probe: str, name: str, unit: str, kind: str, domain: str | None,
            *, source: bool, estimated: bool = False) -> ChannelRow:  # fmt: skip
    return ChannelRow(channel_id=channel_id, probe=probe, name=name, unit=unit, kind=kind,
                      domain=domain, estimated=estimated, energy_source=source,
                      metadata={"counter_range": 1_000_000} if kind == "counter" else {})  # fmt: skip


def test_only_the_chosen_source_counts_and_counters_become_power() -> None:
    meter = PowerMeter(
        [
            channel(1, "rapl", "package-0.energy_uj", "uJ", "counter", "cpu", source=True),
            channel(2, "estimate", "cpu.power_w", "W", "gauge", "cpu", source=False,
                    estimated=True),
            channel(3, "netio", "output1.load_w", "W", "gauge", "wall", source=True),
        ]
    )
    meter.ingest([[1, 1 * S, 900_000.0], [2, 1 * S, 30.0], [3, 1 * S, 80.0]])
    # the package counter wrapped at 1e6 uJ: 900000 -> 100000 is 200000 uJ in 1 s = 0.2 W
    meter.ingest([[1, 2 * S, 100_000.0], [2, 2 * S, 30.0], [3, 2 * S, 82.0]])
    power = {p.domain: p for p in meter.by_domain()}
    assert power["cpu"].power_w == pytest.approx(0.2)
    assert not power["cpu"].estimated
    assert power["wall"].power_w == pytest.approx(82.0)
    assert power["cpu"].text() == "cpu 0.2 W"


def test_an_estimate_that_is_the_only_source_says_so() -> None:
    meter = PowerMeter(
        [channel(2, "estimate", "cpu.power_w", "W", "gauge", "cpu", source=True, estimated=True)]
    )
    meter.ingest([[2, S, 12.5]])
    assert [p.text() for p in meter.by_domain()] == ["cpu 12.5 W (estimated)"]


def test_the_daemon_marks_the_sources_the_view_chooses(tmp_path: object) -> None:
    """The rule lives in the store's energy_sources view: RAPL before the estimate."""
    from pathlib import Path

    from greenmon.probes.base import Channel

    with Store.open(Path(str(tmp_path)) / "s.duckdb") as store:
        session = store.start_session({}, 0, 0, {})
        rapl = store.register_channels(
            session, "rapl", [Channel("package-0.energy_uj", "uJ", "counter", domain="cpu")],
            20_000_000,
        )  # fmt: skip
        estimate = store.register_channels(
            session, "estimate",
            [Channel("cpu.power_w", "W", "gauge", domain="cpu", metadata={"estimated": True})],
            100_000_000,
        )  # fmt: skip
        rows = store.execute(
            "SELECT channel_id FROM energy_sources WHERE session_id = ?", [session]
        )
    assert [r[0] for r in rows] == rapl
    assert estimate[0] not in [r[0] for r in rows]
