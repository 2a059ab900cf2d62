"""The one /proc/stat reader, on a fake proc tree: psutil's arithmetic, steal apart, the
cores counted once, and the kept descriptor seeing the file's new contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.probes.procstat import ProcStat, busy_total, steal_ticks


def _write(root: Path, first: str, cores: int = 2) -> None:
    lines = [f"cpu  {first}"] + [f"cpu{i} {first}" for i in range(cores)]
    (root / "stat").write_text("\n".join([*lines, "intr 1 2 3", "ctxt 99", ""]))


def test_busy_counts_iowait_as_idle_and_guest_once() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    fields = b"cpu 100 10 20 500 30 1 2 7 50 5".split()
    assert busy_total(fields) == (100 + 10 + 20 + 1 + 2 + 7, 670)
    assert steal_ticks(fields) == 7
    assert steal_ticks(b"cpu 1 2 3 4".split()) == 0  # an old kernel without steal


def test_kept_descriptor_reads_new_ticks(tmp_path: Path) -> None:
    _write(tmp_path, "100 0 0 900 0 0 0 0 0 0", cores=3)
    stat = ProcStat(tmp_path)
    assert stat.cores == 3
    assert stat.machine_ticks() == (100, 1000, 0)
    _write(tmp_path, "150 0 0 1000 0 0 0 50 0 0", cores=3)
    assert stat.machine_ticks() == (200, 1200, 50)
    lines = stat.lines(stat.cores + 1)
    assert [line.split()[0] for line in lines[:4]] == [b"cpu", b"cpu0", b"cpu1", b"cpu2"]
    stat.close()
    stat.close()  # twice is harmless


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        ProcStat(tmp_path)
