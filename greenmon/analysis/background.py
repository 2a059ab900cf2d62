"""The findings that say which units ran beside other load (``background_load``)
and which ran while a virtual machine's host took their CPUs (``cpu_steal``).

The flags themselves are rules of the results views (greenmon/views.py): processes outside
greenmon's own process tree used more CPU than the plan's threshold during a unit's
cooldown before the measure or its measure, or another process used its GPU; or the
hypervisor's steal during the measure was above that threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenmon.analysis.data import BackgroundLoadError, CpuStealError

if TYPE_CHECKING:
    import pandas as pd

FLAG = "background_load"
STEAL_FLAG = "cpu_steal"


def _by_configuration(flagged: pd.DataFrame) -> str:
    counts = flagged["configuration"].astype(str).value_counts().sort_index()
    return ", ".join(f"{c} {n}" for c, n in counts.items())


def background_note(done: pd.DataFrame) -> BackgroundLoadError | None:
    """ "3 of 12 units ran beside other load ..." for the finished units, or None."""
    flagged = done[[FLAG in flags for flags in done["flags"]]]
    if flagged.empty:
        return None
    import pandas as pd

    by_configuration = _by_configuration(flagged)
    cpu = pd.concat(
        [
            pd.to_numeric(flagged[c], errors="coerce")
            for c in ("background_cpu_percent", "baseline_background_cpu_percent")
        ]
    ).dropna()
    threshold = pd.to_numeric(flagged["background_cpu_percent_max"], errors="coerce").dropna()
    figures = (
        f"; other processes used up to {cpu.max():.0f}% of a core"
        + (f" (threshold {threshold.iloc[0]:g}%)" if len(threshold) else "")
        if len(cpu)
        else ""
    )
    gpu = pd.to_numeric(flagged["background_gpu_processes"], errors="coerce").fillna(0)
    if (gpu > 0).any():
        figures += f"; {int((gpu > 0).sum())} shared a GPU with another process"
    return BackgroundLoadError(
        f"{len(flagged)} of {len(done)} units ran beside other load{figures}. "
        f"By configuration: {by_configuration}. Their energy and time include that load's "
        "interference, so differences that rest on them are doubtful: rerun them on a quiet "
        "machine, or set [cooldown] wait_for_quiet_s so each unit waits for quiet."
    )


def steal_note(done: pd.DataFrame) -> CpuStealError | None:
    """ "4 of 12 units ran while the hypervisor took ..." for the finished units, or None."""
    if "steal_cpu_percent" not in done:
        return None
    flagged = done[[STEAL_FLAG in flags for flags in done["flags"]]]
    if flagged.empty:
        return None
    import pandas as pd

    steal = pd.to_numeric(flagged["steal_cpu_percent"], errors="coerce").dropna()
    figures = f" up to {steal.max():.0f}% of a core" if len(steal) else ""
    return CpuStealError(
        f"{len(flagged)} of {len(done)} units ran while the virtual machine's host took"
        f"{figures} from them (steal time). By configuration: {_by_configuration(flagged)}. "
        "No process here used that time, but the measure waited for it: durations, and CPU "
        "energy estimated from utilisation, are inflated by an amount that varies from unit "
        "to unit. Rerun them on a machine with dedicated CPUs or a less loaded host."
    )
