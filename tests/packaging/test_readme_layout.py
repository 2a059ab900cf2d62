"""README's Layout is the map of the house: every module directly under ``greenmon/`` and
every package in it is named there, so a newcomer following the map finds every room (a new
module fails this test until the map says where it belongs)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def layout_section() -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def rooms() -> list[str]:
    """Each module as README names it (``cli.py``) and each package (``store/``)."""
    found: list[str] = []
    for path in sorted((REPO / "greenmon").iterdir()):
        if path.name.startswith("__") or path.name == "py.typed":
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            found.append(f"{path.name}/")
        elif path.suffix == ".py":
            found.append(path.name)
    return found


def test_every_module_and_package_of_greenmon_is_on_the_map() -> None:
    section = layout_section()
    named = set(re.findall(r"`([^`]+)`", section))
    missing = [room for room in rooms() if room not in named]
    assert len(rooms()) > 30  # the walk found the house, not an empty folder
    assert not missing, f"README.md's Layout does not name: {missing}"
