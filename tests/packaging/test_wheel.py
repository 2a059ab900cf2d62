"""The wheel built from the repository holds every module and data file greenmon has.

An editable install finds modules in the source tree whatever pyproject.toml declares; a
wheel holds only what setuptools was told to package (it once lacked greenmon.commands, so
an installed `greenmon` could not run a single command).  The wheel is built here from a
copy of the tracked files, as a clean clone has them, and its file list compared with the
tree's.  `.ci/wheel-journey` goes further: it installs the wheel and runs greenmon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Top-level folder of the source tree -> where its files go in the wheel.
PACKAGE_ROOTS = {
    "greenmon": "greenmon",
    "engines": "greenmon/engines",
    "probes": "greenmon/probes",
    "tui": "greenmon/tui",
}


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [path for path in listing.split("\0") if path and (REPO / path).exists()]


def copy_tree(files: list[str], dest: Path) -> None:
    for name in files:
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():  # greenmon/engines -> ../engines, as git stores it
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)


def expected_in_wheel(files: list[str]) -> set[str]:
    expected = set()
    for name in files:
        top, _, rest = name.partition("/")
        if top in PACKAGE_ROOTS and rest and not (REPO / name).is_symlink():
            expected.add(f"{PACKAGE_ROOTS[top]}/{rest}")
    return expected


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    files = tracked_files()
    source = tmp_path / "src"
    copy_tree(files, source)
    # No build isolation: offline, with the setuptools the dev extra pins.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("greenmon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )

    expected = expected_in_wheel(files)
    # What the test relies on is really there: modules of every kind and the data files.
    for sample in (
        "greenmon/commands/run.py",
        "greenmon/analysis/report.py",
        "greenmon/engines/openvino_engine.py",
        "greenmon/probes/rapl.py",
        "greenmon/tui/app.py",
        "greenmon/data/gaissa_RandomHumanEval.jsonl",
        "greenmon/py.typed",
    ):
        assert sample in expected, sample
    assert sorted(expected - names) == []
    # Nothing from outside the package, and each source file once (no stray `engines/`).
    assert {name.split("/")[0] for name in names} == {"greenmon", wheel.name.split("-py3")[0]
                                                     + ".dist-info"}  # fmt: skip
    assert "greenmon = greenmon.cli:main" in entry_points
    # Test helpers live in tests/support, outside the package: no test-data
    # generator is installed with greenmon.
    assert not [n for n in names if "synthetic" in n.rsplit("/", 1)[-1]]
