"""A fake cpufreq sysfs tree under a directory: ``online``, ``cpuN/online``, ``cpuN/cpufreq``.

The files are plain files, so a write is read back unchanged (a real kernel would round a
frequency to a listed one); ``offline`` CPUs are listed out of ``online`` and have
``cpuN/online`` = 0, as the kernel shows them.
"""

from __future__ import annotations

from pathlib import Path

GOVERNORS = ("performance", "powersave", "schedutil")
MIN_KHZ = 800_000
MAX_KHZ = 3_600_000


class FakeCpufreqTree:
    def __init__(
        self,
        root: Path,
        cpus: int = 2,
        *,
        offline: tuple[int, ...] = (),
        listed_khz: tuple[int, ...] = (),
        governor: str = "powersave",
    ) -> None:
        self.root = root
        self.cpus = cpus
        online = [n for n in range(cpus) if n not in offline]
        root.mkdir(parents=True, exist_ok=True)
        (root / "online").write_text(",".join(map(str, online)) + "\n")
        for n in range(cpus):
            cpu = root / f"cpu{n}"
            freq = cpu / "cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            if n:
                (cpu / "online").write_text("0\n" if n in offline else "1\n")
            files = {
                "scaling_governor": governor,
                "scaling_available_governors": " ".join(GOVERNORS),
                "scaling_max_freq": str(MAX_KHZ),
                "scaling_min_freq": str(MIN_KHZ),
                "cpuinfo_max_freq": str(MAX_KHZ),
                "cpuinfo_min_freq": str(MIN_KHZ),
                "scaling_cur_freq": str(MAX_KHZ // 2),
            }
            if listed_khz:
                files["scaling_available_frequencies"] = " ".join(map(str, listed_khz))
            for name, value in files.items():
                (freq / name).write_text(value + "\n")

    def read(self, cpu: int, name: str) -> str:
        return (self.root / f"cpu{cpu}" / "cpufreq" / name).read_text().strip()

    def values(self, name: str) -> list[str]:
        return [self.read(n, name) for n in range(self.cpus)]
