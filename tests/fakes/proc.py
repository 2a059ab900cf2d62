"""A fake /proc tree (stat, meminfo, cpuinfo, one process's stat and statm, its children)
under a directory, in the kernel's formats, for the host probe (probes/host.py) and the
process tree (probes/proctree.py)."""

from __future__ import annotations

from pathlib import Path

# user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
CpuTimes = tuple[int, int, int, int, int, int, int, int, int, int]


class FakeProc:
    def __init__(self, root: Path, pid: int = 4242, cores: int = 2) -> None:
        self.root, self.pid, self.cores = root, pid, cores
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        self.set_cpu([(0,) * 10] * (cores + 1))  # type: ignore[list-item]
        self.set_memory(total_kb=8_000_000, available_kb=6_000_000, swap_total_kb=0)
        self.set_process(utime=0, stime=0, rss_pages=1000)
        (root / "cpuinfo").write_text(
            "".join(
                f"processor\t: {i}\ncpu MHz\t\t: {2000 + 100 * i}.000\n\n" for i in range(cores)
            )
        )

    def set_cpu(self, lines: list[CpuTimes]) -> None:
        """``lines[0]`` is the aggregate ``cpu`` line, then ``cpu0`` ... in order."""
        names = ["cpu "] + [f"cpu{i}" for i in range(self.cores)]
        text = "".join(f"{n} {' '.join(map(str, t))}\n" for n, t in zip(names, lines, strict=True))
        # the real file goes on with a very long intr line and more: the probe reads only
        # the cpu lines at the top
        text += "intr " + " ".join(["0"] * 2000) + "\nctxt 123\nbtime 1700000000\n"
        (self.root / "stat").write_text(text)

    def set_memory(
        self, *, total_kb: int, available_kb: int, swap_total_kb: int, swap_free_kb: int = 0
    ) -> None:
        (self.root / "meminfo").write_text(
            f"MemTotal:       {total_kb} kB\nMemFree:        1000 kB\n"
            f"MemAvailable:   {available_kb} kB\nBuffers:        0 kB\n"
            f"SwapTotal:      {swap_total_kb} kB\nSwapFree:       {swap_free_kb} kB\n"
        )

    def set_process(
        self, *, utime: int, stime: int, rss_pages: int, pid: int | None = None, ppid: int = 1,
        children: tuple[int, ...] = (),
    ) -> None:
        """The watched process (or another ``pid``), its CPU ticks and its children."""
        pid = self.pid if pid is None else pid
        task = self.root / str(pid) / "task" / str(pid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "children").write_text("".join(f"{c} " for c in children))
        rest = ["S", str(ppid), "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
        (self.root / str(pid) / "stat").write_text(
            f"{pid} (python (worker)) {' '.join(rest)} 0 0 20 0 4 0 100\n"
        )
        (self.root / str(pid) / "statm").write_text(f"5000 {rss_pages} 300 1 0 900 0\n")
