"""Comments, docstrings and docs say why, not which ticket: a maintainer reading the
repository cannot follow a tracker's issue numbers, so none may be cited."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"\b[Ii]ssues? #?\d+\b|\b[Dd]efect \d+\b")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".sql", ".cfg", ".txt", ".ini"}


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=False
    )
    names = listed.stdout.split() if listed.returncode == 0 else []
    if not names:  # an sdist or a copy without .git: walk the tree instead
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return [
        ROOT / n
        for n in names
        if (Path(n).suffix in TEXT_SUFFIXES or n.startswith((".ci/", "scripts/", "bench/")))
        and ".venv" not in Path(n).parts
        and (ROOT / n).is_file()
    ]


def test_no_file_cites_a_tracker_issue_number() -> None:
    offenders = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if CITATION.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "issue numbers cited:\n" + "\n".join(offenders)


def test_the_check_finds_a_citation() -> None:
    # built at run time, so this file does not cite one itself
    assert CITATION.search("# the rate (" + "issue" + " 17) was halved")
    assert not CITATION.search("# the rate was halved; see README")
