"""A fake ``energibridge`` executable that writes EnergiBridge's CSV format.

``write_fake_energibridge`` writes a Python script to a directory, made executable, that
takes EnergiBridge's command line (``-o FILE -i MS [-m S] [-g] -- COMMAND...``) and writes
the header and rows the test gives (for example the real AMD file), field by field with
unbuffered writes as the real binary does, then either generates rows every interval or
waits, until SIGINT.  It can die mid-line on chosen runs, or fail before its header with a
given stderr (as EnergiBridge does when it cannot open /dev/cpu/N/msr).  Each start is
counted and its argv recorded, so tests can check restarts and the command line.
"""

from __future__ import annotations

import csv
import json
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
AMD_SAMPLE = DATA / "energibridge_amd_sample.csv"

INTEL_COLUMNS = [
    "Delta",
    "Time",
    "CPU_FREQUENCY_0",
    "CPU_FREQUENCY_1",
    "CPU_USAGE_0",
    "CPU_USAGE_1",
    "DRAM_ENERGY (J)",
    "PACKAGE_ENERGY (J)",
    "PP0_ENERGY (J)",
    "PP1_ENERGY (J)",
    "TOTAL_MEMORY",
    "TOTAL_SWAP",
    "USED_MEMORY",
    "USED_SWAP",
]
INTEL_GPU_COLUMNS = sorted([*INTEL_COLUMNS[2:], "GPU0_POWER (mWatts)"])

SCRIPT = r"""#!{python}
import json, os, signal, sys, time

CONFIG = json.load(open({config!r}))
args = sys.argv[1:]
runs = 1
if os.path.exists(CONFIG["runs_path"]):
    runs = int(open(CONFIG["runs_path"]).read()) + 1
open(CONFIG["runs_path"], "w").write(str(runs))
with open(CONFIG["argv_path"], "a") as log:
    log.write(json.dumps(args) + "\n")
if CONFIG["fail_stderr"]:
    sys.stderr.write(CONFIG["fail_stderr"] + "\n")
    sys.exit(101)
out = args[args.index("-o") + 1]
interval_s = int(args[args.index("-i") + 1]) / 1000.0
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

def write_row(fields):
    for index, field in enumerate(fields):
        os.write(fd, (("," if index else "") + str(field)).encode())
    os.write(fd, b"\n")

header = CONFIG["header"]
time.sleep(0.02)
write_row(header)
for row in CONFIG["rows"]:
    write_row(row)
if runs in CONFIG["die_on_runs"]:
    os.write(fd, b"199,1716417700")  # a torn row: the binary died inside print_results
    sys.stderr.write("thread 'main' panicked at src/main.rs: Failed to write results\n")
    os._exit(3)
step = 0
while not stop:
    time.sleep(interval_s if CONFIG["generate"] else 0.02)
    if not CONFIG["generate"] or stop:
        continue
    step += 1
    row = []
    for column in header:
        if column == "Delta":
            row.append(int(interval_s * 1000))
        elif column == "Time":
            row.append(int(time.time() * 1000))
        elif column.endswith("_ENERGY (J)"):
            row.append(1000.0 + step * CONFIG["energy_step_j"])
        else:
            row.append(CONFIG["gauge_value"])
    write_row(row)
sys.exit(0)
"""


@dataclass(frozen=True)
class FakeEnergiBridge:
    path: Path
    runs_path: Path
    argv_path: Path

    @property
    def runs(self) -> int:
        return int(self.runs_path.read_text()) if self.runs_path.exists() else 0

    def argvs(self) -> list[list[str]]:
        if not self.argv_path.exists():
            return []
        return [json.loads(line) for line in self.argv_path.read_text().splitlines()]


def read_sample(path: Path = AMD_SAMPLE) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def write_fake_energibridge(
    directory: Path,
    *,
    header: Sequence[str] = INTEL_COLUMNS,
    rows: Sequence[Sequence[str]] = (),
    generate: bool = True,
    energy_step_j: float = 2.5,
    gauge_value: float = 1.0,
    die_on_runs: Sequence[int] = (),
    fail_stderr: str | None = None,
) -> FakeEnergiBridge:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "fake-energibridge.json"
    fake = FakeEnergiBridge(
        path=directory / "energibridge",
        runs_path=directory / "fake-energibridge.runs",
        argv_path=directory / "fake-energibridge.argv",
    )
    config.write_text(
        json.dumps(
            {
                "header": list(header),
                "rows": [list(r) for r in rows],
                "generate": generate,
                "energy_step_j": energy_step_j,
                "gauge_value": gauge_value,
                "die_on_runs": list(die_on_runs),
                "fail_stderr": fail_stderr,
                "runs_path": str(fake.runs_path),
                "argv_path": str(fake.argv_path),
            }
        )
    )
    fake.path.write_text(SCRIPT.format(python=sys.executable, config=str(config)))
    fake.path.chmod(fake.path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return fake
