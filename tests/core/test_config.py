"""Config files: typed, unknown keys and wrong types named with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.config import find_key_line, load_config, parse_config
from greenmon.errors import ConfigError
from greenmon.probes.rapl import Options as RaplOptions


def test_defaults_configure_every_known_probe() -> None:
    config = parse_config("")
    assert {"host", "rapl"} <= set(config.probes)
    assert config.daemon.flush_interval_s == 2.0


def test_probe_options_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[probes.rapl]\nrate_hz = 100\nsysfs_root = "/tmp/x"\n[probes.host]\nenabled = false\n'
    )
    config = load_config(path)
    rapl = config.probes["rapl"]
    assert isinstance(rapl, RaplOptions) and rapl.rate_hz == 100 and rapl.sysfs_root == "/tmp/x"
    assert "host" not in config.enabled_probes()


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[daemon]\nflush_interval_s = 1\n\n[probes.rapl]\nrate_hz = 5\nsysfs_rot = "/x"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "probes.rapl.sysfs_rot" in message and str(path) in message and "line 6" in message
    assert "sysfs_root" in message  # the allowed keys are listed


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[probes.host]\nrate_hz = "fast"\n')
    with pytest.raises(ConfigError, match=r"probes\.host\.rate_hz.*line 2"):
        load_config(path)


def test_unknown_probe_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown probe 'ups'"):
        parse_config("[probes.ups]\nrate_hz = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[probes.host\n")


def test_find_key_line() -> None:
    text = "[a]\nx = 1\n[b.c]\n y = 2\n"
    assert find_key_line(text, "b.c.y") == 4
    assert find_key_line(text, "a.x") == 2
    assert find_key_line(text, "a.z") is None


def test_duckdb_bounds_have_defaults_and_are_read(tmp_path: Path) -> None:
    defaults = parse_config("").daemon
    assert (defaults.duckdb_memory_limit, defaults.duckdb_threads) == ("128MB", 2)
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nduckdb_memory_limit = "1GiB"\nduckdb_threads = 4\n')
    daemon = load_config(path).daemon
    assert (daemon.duckdb_memory_limit, daemon.duckdb_threads) == ("1GiB", 4)


@pytest.mark.parametrize(
    ("line", "key", "says"),
    [
        ('duckdb_threads = "two"', "daemon.duckdb_threads", "Expected `int`"),
        ("duckdb_threads = 0", "daemon.duckdb_threads", "1 or more"),
        ("duckdb_memory_limit = 512", "daemon.duckdb_memory_limit", "Expected `str`"),
        ('duckdb_memory_limit = "lots"', "daemon.duckdb_memory_limit", "is not a size"),
        ('duckdb_memory_limit = "512"', "daemon.duckdb_memory_limit", "is not a size"),
        ('duckdb_memory_limit = "80%"', "daemon.duckdb_memory_limit", "is not a size"),
        ('duckdb_memory_limit = "32MB"', "daemon.duckdb_memory_limit", "below 64MB"),
        ('duckdb_memory = "1GB"', "daemon.duckdb_memory", "duckdb_memory_limit"),
    ],
)
def test_duckdb_bounds_are_checked(tmp_path: Path, line: str, key: str, says: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[daemon]\nflush_interval_s = 0.5\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"'{key}'" in message and f"{path}, line 3" in message and says in message


PLAN_WITH_PROBES = """
models = ["tiny"]
configurations = ["fake/cpu"]
custom_engines = { fake = "tests.fakes.engine:FakeEngine" }

[cooldown]
before_s = 1

[probes.host]
enabled = false

[probes.rapl]
sysfs_root = "/tmp/x"
rate_hz = "fast"
"""


def test_errors_in_a_plans_probe_tables_give_the_plans_line_numbers(tmp_path: Path) -> None:
    """The line was that of a TOML rewritten from the tables."""
    from greenmon.commands.run import probes_config
    from greenmon.plan import parse_plan

    path = tmp_path / "plan.toml"
    lines = PLAN_WITH_PROBES.splitlines()
    with pytest.raises(ConfigError) as wrong_type:
        probes_config(parse_plan(PLAN_WITH_PROBES, path))
    rate_line = lines.index('rate_hz = "fast"') + 1
    assert f"'probes.rapl.rate_hz' in {path}, line {rate_line}:" in str(wrong_type.value)
    unknown = PLAN_WITH_PROBES.replace("[probes.host]\nenabled", "[probes.host]\nenabld")
    with pytest.raises(ConfigError) as unknown_key:
        probes_config(parse_plan(unknown, path))
    assert str(unknown_key.value).startswith(
        f"Unknown key 'probes.host.enabld' in {path}, line {lines.index('[probes.host]') + 2}."
    )
    good = parse_plan(PLAN_WITH_PROBES.replace('"fast"', "50"), path)
    assert probes_config(good).probes["rapl"].rate_hz == 50
