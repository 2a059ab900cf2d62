"""AMD SMI probe: energy, power, utilisation and memory of AMD GPUs through ``amdsmi``.

Reads through AMD SMI's Python package ``amdsmi`` (ROCm >= 6.2; its version must match the
installed ROCm's libamd_smi.so), imported inside ``open()`` so the core never imports it.
The module is a constructor parameter (or option ``module``, ``package.module:factory``):
tests pass a fake module with the same functions and ``AmdSmiLibraryException``.

Channels, per GPU ``N`` (the position in ``amdsmi_get_processor_handles()``), each only
where the driver answers:
- ``gpuN.energy_uj``: ``amdsmi_get_energy_count``'s ``energy_accumulator`` times its
  ``counter_resolution`` (microjoules per count), kind ``counter``, domain ``gpu``.  The
  accumulator is 64-bit in amdsmi; ``counter_range`` (metadata, in uJ) is
  ``2**counter_bits`` counts, so a narrower firmware counter that wraps is added back.
- ``gpuN.power_mw``: ``amdsmi_get_power_info``'s ``current_socket_power`` (W), else
  ``average_socket_power`` where the first is "N/A"; metadata ``power_field`` says which.
  Domain ``gpu`` only where the counter is missing or failed its check (below), so the GPU
  is never counted twice.
- ``gpuN.util_gfx_percent`` / ``gpuN.util_memory_percent``: ``amdsmi_get_gpu_activity``'s
  ``gfx_activity`` / ``umc_activity`` (the memory controller).
- ``gpuN.memory_used_bytes``, ``gpuN.memory_total_bytes``, ``gpuN.memory_percent``
  (``amdsmi_get_gpu_vram_usage``, which reports MB).
- ``gpuN.background_processes`` and ``gpuN.own_vram_bytes``: from
  ``amdsmi_get_gpu_process_list``, the processes outside greenmon's own process tree
  (probes/proctree.py), and the VRAM the tree's processes hold.
- ``gpuN.power_cap_mw``: the power cap in force (``amdsmi_get_power_cap_info``, uW).
Every channel's metadata carries the GPU's ``uuid``, ``name`` and ``amdsmi_index``.

*Counter check* (at ``open()``, as Zeus does): early drivers reported the energy counter
wrong, so each GPU's counter is read twice ``counter_check_s`` apart and its energy is
compared with power times the time between.  Off by more than ``counter_check_factor``
either way, the counter is kept without a domain (recorded, never added into totals), the
power gauge answers for the GPU (integrated, with coverage), and a *finding* saying so is
put in both channels' metadata (``finding``) and in ``findings`` (the daemon records it
as a warning event; ``greenmon probes`` prints it).  With no power reading, or a power of
zero, the counter cannot be checked and is used (metadata ``counter_check``).

Errors are translated here: no amdsmi, no libamd_smi.so, no amdgpu driver, no access to
/dev/kfd -> ProbeUnavailable with the fix; AMDSMI_STATUS_NOT_SUPPORTED at ``open()`` ->
that channel is absent (and ``None`` if the driver stops answering mid-run); any other
error during ``read()`` is transient (a gap and a retry).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from greenmon.probes.base import Channel, ProbeUnavailable
from greenmon.probes.gpu_base import GpuProbe, Query, Unsupported
from greenmon.probes.options import ProbeOptions
from greenmon.sources import counter_delta

# amdsmi_wrapper's AMDSMI_STATUS_* values, used when a (fake) module does not define them.
_CODES = {
    "AMDSMI_STATUS_NOT_SUPPORTED": 2,
    "AMDSMI_STATUS_NO_PERM": 10,
    "AMDSMI_STATUS_INIT_ERROR": 18,
    "AMDSMI_STATUS_DRIVER_NOT_LOADED": 34,
    "AMDSMI_STATUS_NO_DRV": 51,
}
INSTALL_HINT = (
    "`pip install 'greenmon[amd]'` (or `pip install amdsmi` at the version of the "
    "installed ROCm, >= 6.2) to read AMD GPUs"
)

class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    # amdsmi indices (processor-handle order) or UUIDs; None reads every GPU.
    devices: list[int | str] | None = None
    # "amdsmi", or "package.module:factory" returning an object shaped like it (tests).
    module: str = "amdsmi"
    # Width of the energy accumulator: amdsmi returns it as 64 bits.
    counter_bits: int = 64
    # The start-up counter check: how long to count, and how far off is wrong (a factor
    # either way, loose because a power reading is an average of a moving quantity).
    counter_check_s: float = 0.5
    counter_check_factor: float = 3.0
    tree_pids: list[int] | None = None
    proc_root: str = "/proc"


def load_module(spec: str) -> Any:
    """The amdsmi module a spec names; ProbeUnavailable (with the fix) when it cannot load.

    ``import amdsmi`` prints to stdout and raises KeyError / OSError / AttributeError when
    libamd_smi.so is missing or does not match the package, not only ImportError."""
    module_name, _, factory = spec.partition(":")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(module_name)
    except ImportError:
        raise ProbeUnavailable(f"amdsmi is not installed: {INSTALL_HINT}.") from None
    except (KeyError, OSError, AttributeError) as error:
        raise ProbeUnavailable(
            "amdsmi is installed but cannot load libamd_smi.so "
            f"({type(error).__name__}: {error}): no ROCm here (no AMD GPU, or install ROCm "
            ">= 6.2 and set ROCM_PATH), or the amdsmi package's version does not match "
            "ROCm's (`pip install amdsmi==<ROCm version>`)."
        ) from None
    return getattr(module, factory)() if factory else module


def error_code(error: BaseException) -> int | None:
    getter = getattr(error, "get_error_code", None)
    if callable(getter):
        with contextlib.suppress(Exception):
            value = getter()
            return int(value) if value is not None else None
    value = getattr(error, "err_code", None)
    return int(value) if isinstance(value, int) else None


def _number(value: Any) -> float | None:
    """amdsmi reports a missing value as "N/A" (or the all-ones sentinel)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if value in (0xFFFF, 0xFFFFFFFF) else float(value)


class AmdsmiProbe(GpuProbe):
    name: ClassVar[str] = "amdsmi"
    default_rate_hz: ClassVar[float] = 10.0

    def __init__(
        self,
        options: Options | None = None,
        *,
        amdsmi: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options or Options()
        super().__init__(self.options.proc_root, self.options.tree_pids)
        self._amdsmi = amdsmi
        self._sleep = sleep
        self._clock = clock
        # Sentences a person should read about this probe's figures (a failed counter check).
        self.findings: list[str] = []

    # -- amdsmi access -------------------------------------------------------------------
    def _code(self, name: str) -> int:
        return int(getattr(self._amdsmi, name, _CODES[name]))

    def _is_amdsmi_error(self, error: BaseException) -> bool:
        base = getattr(self._amdsmi, "AmdSmiException", None)
        return isinstance(base, type) and isinstance(error, base)

    def _init(self) -> None:
        if self._amdsmi is None:
            self._amdsmi = load_module(self.options.module)
        try:
            self._amdsmi.amdsmi_init()
        except Exception as error:
            if not self._is_amdsmi_error(error):
                raise
            code = error_code(error)
            if code == self._code("AMDSMI_STATUS_NO_PERM"):
                raise ProbeUnavailable(
                    "amdsmi refused access: the user running greenmon may not open /dev/kfd "
                    "and /dev/dri/renderD*; add it to the `render` and `video` groups."
                ) from None
            if code in (
                self._code("AMDSMI_STATUS_DRIVER_NOT_LOADED"),
                self._code("AMDSMI_STATUS_NO_DRV"),
                self._code("AMDSMI_STATUS_INIT_ERROR"),
            ):
                raise ProbeUnavailable(
                    "the amdgpu driver is not loaded (`amd-smi` fails too): load it "
                    f"(`sudo modprobe amdgpu`) or install ROCm's driver ({error})."
                ) from None
            raise ProbeUnavailable(f"amdsmi could not start: {error}") from None
        self._initialised = True

    def _try(self, query: Query) -> tuple[float | None, ...]:
        """Run a query once at open(); NOT_SUPPORTED (or a missing function) -> Unsupported."""
        try:
            return query()
        except Unsupported:
            raise
        except AttributeError as error:
            raise Unsupported(str(error)) from None
        except Exception as error:
            if self._is_amdsmi_error(error) and error_code(error) == self._code(
                "AMDSMI_STATUS_NOT_SUPPORTED"
            ):
                raise Unsupported(str(error)) from None
            raise

    # -- open ----------------------------------------------------------------------------
    def _handles(self) -> list[tuple[int, Any]]:
        handles = list(self._amdsmi.amdsmi_get_processor_handles())
        if not handles:
            raise ProbeUnavailable("amdsmi reports no AMD GPU on this machine.")
        wanted = self.options.devices
        if wanted is None:
            return list(enumerate(handles))
        chosen: list[tuple[int, Any]] = []
        uuids = {}
        for index, handle in enumerate(handles):
            with contextlib.suppress(Exception):
                uuids[str(self._amdsmi.amdsmi_get_gpu_device_uuid(handle))] = index
        for device in wanted:
            index_ = device if isinstance(device, int) else uuids.get(device)
            if index_ is None or not 0 <= index_ < len(handles):
                raise ProbeUnavailable(
                    f"[probes.amdsmi] devices names GPU {device!r}, which amdsmi does not "
                    f"know. GPUs here: {', '.join(f'{i}: {u}' for u, i in uuids.items())}. "
                    "Use an amdsmi index or a UUID (`amd-smi list` shows both)."
                )
            chosen.append((index_, handles[index_]))
        return chosen

    def _gpu_queries(self, handle: Any) -> dict[str, Query]:
        amdsmi = self._amdsmi

        def energy() -> tuple[float | None, ...]:
            count = amdsmi.amdsmi_get_energy_count(handle)
            # amdsmi before 6.2.1 called the accumulator "power"
            raw = count.get("energy_accumulator", count.get("power"))
            return (float(raw) * float(count["counter_resolution"]),)

        def power(field_name: str) -> Query:
            def query() -> tuple[float | None, ...]:
                watts = _number(amdsmi.amdsmi_get_power_info(handle).get(field_name))
                if watts is None:
                    raise Unsupported(f"{field_name} is N/A")
                return (watts * 1000.0,)

            return query

        def activity() -> tuple[float | None, ...]:
            info = amdsmi.amdsmi_get_gpu_activity(handle)
            return (_number(info.get("gfx_activity")), _number(info.get("umc_activity")))

        def vram() -> tuple[float | None, ...]:
            info = amdsmi.amdsmi_get_gpu_vram_usage(handle)
            total = float(info["vram_total"]) * 2**20
            used = float(info["vram_used"]) * 2**20
            return (used, total, 100.0 * used / total if total else None)

        def processes() -> tuple[float | None, ...]:
            own = self._tree.pids()
            background: set[int] = set()
            own_vram = 0.0
            for process in amdsmi.amdsmi_get_gpu_process_list(handle):
                pid = int(process["pid"])
                if pid in own:
                    usage = process.get("memory_usage") or {}
                    own_vram += _number(usage.get("vram_mem")) or 0.0
                else:
                    background.add(pid)
            return (float(len(background)), own_vram)

        def power_cap() -> tuple[float | None, ...]:
            cap_uw = _number(amdsmi.amdsmi_get_power_cap_info(handle).get("power_cap"))
            return (None if cap_uw is None else cap_uw / 1000.0,)

        return {
            "energy": energy,
            "power_current": power("current_socket_power"),
            "power_average": power("average_socket_power"),
            "activity": activity,
            "vram": vram,
            "processes": processes,
            "power_cap": power_cap,
        }

    def _check_counter(
        self, index: int, energy: Query, power: Query | None, counter_range_uj: float
    ) -> str | None:
        """The finding when GPU ``index``'s counter disagrees with its power (None: it agrees,
        or it cannot be checked)."""
        if power is None or self.options.counter_check_s <= 0:
            return None
        power_before_w = (power()[0] or 0.0) / 1000.0
        start_s = self._clock()
        first = energy()[0]
        self._sleep(self.options.counter_check_s)
        second = energy()[0]
        elapsed_s = self._clock() - start_s
        power_w = (power_before_w + (power()[0] or 0.0) / 1000.0) / 2
        expected_j = power_w * elapsed_s
        if first is None or second is None or expected_j < 1e-3:
            return None
        delta_uj = counter_delta(first, second, counter_range_uj)
        counted_j = (delta_uj or 0.0) * 1e-6
        factor = self.options.counter_check_factor
        if 1 / factor <= counted_j / expected_j <= factor:
            return None
        return (
            f"AMD GPU {index}: its energy counter disagrees with its power readings at start-up "
            f"({counted_j:.3g} J counted against {expected_j:.3g} J from {power_w:.3g} W over "
            f"{elapsed_s:.3g} s, more than {factor:g}x apart): greenmon integrates its power "
            "instead (coverage is reported), and keeps the counter without a domain. Early "
            "amdgpu drivers reported the counter wrong; a newer ROCm may fix it."
        )

    def _gpu_channels(self, index: int, handle: Any) -> list[tuple[Query, list[Channel]]]:
        amdsmi = self._amdsmi
        info: dict[str, Any] = {"amdsmi_index": index}
        with contextlib.suppress(Exception):
            info["uuid"] = str(amdsmi.amdsmi_get_gpu_device_uuid(handle))
        with contextlib.suppress(Exception):
            info["name"] = str(amdsmi.amdsmi_get_gpu_asic_info(handle)["market_name"])
        p = f"gpu{index}"
        queries = self._gpu_queries(handle)

        power_query: Query | None = None
        power_field = ""
        for name, field_name in (("power_current", "current"), ("power_average", "average")):
            with contextlib.suppress(Unsupported):
                self._try(queries[name])
                power_query, power_field = queries[name], field_name
                break
        energy_query: Query | None = None
        resolution_uj = 1.0
        with contextlib.suppress(Unsupported):
            self._try(queries["energy"])
            energy_query = queries["energy"]
            resolution_uj = float(amdsmi.amdsmi_get_energy_count(handle)["counter_resolution"])
        counter_range_uj = 2.0**self.options.counter_bits * resolution_uj
        finding = None
        if energy_query is not None:
            finding = self._check_counter(index, energy_query, power_query, counter_range_uj)
        trusted = energy_query is not None and finding is None
        flagged = {"finding": finding} if finding else {}
        if finding:
            self.findings.append(finding)

        found: list[tuple[Query, list[Channel]]] = []
        if energy_query is not None:
            check = "disagrees" if finding else "agrees" if power_query else "unchecked"
            meta = {
                **info,
                "counter_range": counter_range_uj,
                "counter_resolution_uj": resolution_uj,
                "counter_check": check,
                **flagged,
            }
            found.append(
                (
                    energy_query,
                    [Channel(f"{p}.energy_uj", "uJ", "counter", "gpu" if trusted else None, meta)],
                )
            )
        if power_query is not None:
            meta = {**info, "power_field": power_field, "measures": "gpu", **flagged}
            found.append(
                (
                    power_query,
                    [Channel(f"{p}.power_mw", "mW", "gauge", None if trusted else "gpu", meta)],
                )
            )
        for name, specs in (
            ("activity", [("util_gfx_percent", "%"), ("util_memory_percent", "%")]),
            (
                "vram",
                [("memory_used_bytes", "B"), ("memory_total_bytes", "B"), ("memory_percent", "%")],
            ),
            ("processes", [("background_processes", "1"), ("own_vram_bytes", "B")]),
            ("power_cap", [("power_cap_mw", "mW")]),
        ):
            try:
                self._try(queries[name])
            except Unsupported:
                continue
            channels = [Channel(f"{p}.{c}", unit, "gauge", None, dict(info)) for c, unit in specs]
            found.append((queries[name], channels))
        return found

    def open(self) -> Sequence[Channel]:
        self._init()
        try:
            self.findings = []
            return self._queries.open(self._handles(), self._gpu_channels, "amdsmi")
        except BaseException:
            self.close()
            raise

    # -- read ----------------------------------------------------------------------------
    def _read_error(self, error: Exception) -> Exception | None:
        if not self._is_amdsmi_error(error):
            return error
        if error_code(error) == self._code("AMDSMI_STATUS_NOT_SUPPORTED"):
            return None
        return RuntimeError(f"amdsmi error {error_code(error)}: {error}")

    def _shut_down(self) -> None:
        self._amdsmi.amdsmi_shut_down()


def create(options: Options) -> AmdsmiProbe:
    return AmdsmiProbe(options)
