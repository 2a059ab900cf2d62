"""greenmon/hardware/ owns the hardware part of a plan and imports nothing from plan.py
(plan.py and the old settings.py imported each other)."""

from __future__ import annotations

import ast
from pathlib import Path

import greenmon.hardware

PACKAGE = Path(greenmon.hardware.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level, in functions or under TYPE_CHECKING."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_hardware_package_imports_nothing_from_the_plan() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert {f.name for f in files} >= {"spec.py", "cpufreq.py", "nvml.py", "checks.py"}
    for path in files:
        assert "greenmon.plan" not in imported_modules(path), path


def test_the_plan_reads_its_hardware_part_through_the_spec() -> None:
    from greenmon.plan import parse_plan

    plan = parse_plan(
        'models = ["tiny"]\nconfigurations = ["torch/cpu"]\n'
        '[factors]\nbatch_size = [1, 2]\ncpu_governor = ["performance", "powersave"]\n'
        '[hardware]\ncpufreq_root = "/tmp/cpu"\n'
    )
    spec = plan.hardware_spec
    assert spec.levels == {"cpu_governor": ["performance", "powersave"]}
    assert spec.hardware.cpufreq_root == "/tmp/cpu"
    assert (
        parse_plan('models = ["tiny"]\nconfigurations = ["torch/cpu"]\n').hardware_spec.levels == {}
    )
