"""``greenmon probes`` lists every probe with its rate, and says why one cannot run here."""

from __future__ import annotations

from pathlib import Path

from greenmon.commands.probes import describe_probes


def test_every_probe_is_listed_with_its_rate_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "greenmon.toml"
    config.write_text(
        f'[probes.rapl]\nsysfs_root = "{tmp_path / "no-powercap"}"\n'
        f'[probes.energibridge]\npath = "{tmp_path / "no-energibridge"}"\n'
    )
    report = {entry["probe"]: entry for entry in describe_probes(str(config))}
    assert {name: entry["rate_hz"] for name, entry in report.items()} == {
        "host": 1.0,
        "rapl": 5.0,
        "nvml": 10.0,
        "amdsmi": 10.0,
        "netio": 1.0,
        "energibridge": 5.0,
        "estimate": 1.0,
    }
    assert "no RAPL zones" in report["rapl"]["reason"]
    assert "EnergiBridge/releases" in report["energibridge"]["reason"]
    assert not report["netio"]["enabled"] and "host" in report["netio"]["reason"]
    assert report["nvml"]["available"] or "NVIDIA" in report["nvml"]["reason"]
    assert report["amdsmi"]["available"] or "amd" in report["amdsmi"]["reason"].lower()
    estimate = report["estimate"]
    assert estimate["available"] and estimate["enabled"]
    [power] = [c for c in estimate["channels"] if c["name"] == "cpu.power_w"]
    assert power["estimated"] and power["fallback_for"] == "cpu" and power["domain"] == "cpu"
