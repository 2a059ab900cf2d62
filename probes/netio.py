"""NETIO probe: a NETIO PowerBOX / PowerPDU wattmeter read over its JSON API (M2M API).

``GET http://HOST/netio.json`` (HTTP basic auth) returns ``Agent`` (model, firmware,
``JSONVer``), ``GlobalMeasure`` (mains voltage and frequency, totals over all outputs) and
``Outputs[]`` (per socket: ``ID``, ``Load`` in W, ``Current`` in mA, ``PowerFactor``,
``Energy`` in Wh; JSON 2.4 firmware adds ``Phase`` in degrees and the non-resettable
``EnergyNR`` / ``ReverseEnergy`` counters).

Channels, for each configured output ``N`` (option ``outputs``, default ``[1]``):
- ``outletN.load_w`` (W, gauge, domain ``wall``): the power of the socket the measured
  machine is plugged into.  This is the one channel that carries ``wall``: the device's
  energy counter steps in whole Wh (3600 J), too coarse for a phase of a few seconds, so
  wall energy is the trapezoid integral of this gauge.  Configure every socket the
  machine draws from (two PSUs: two outputs), and nothing else.
- ``outletN.energy_wh`` (Wh, counter, no domain; metadata ``resolution_j: 3600`` and
  ``source_field``, ``EnergyNR`` where the firmware has it since the user cannot reset it):
  kept to cross-check long runs, never summed with the load.
- ``outletN.current_ma``, ``outletN.power_factor`` and, on JSON 2.4, ``outletN.phase_deg``.
- From ``GlobalMeasure``: ``mains.voltage_v``, ``mains.frequency_hz``, ``total.load_w``,
  ``total.current_ma``, ``total.power_factor``, ``total.energy_wh``: all without a domain,
  since the total includes whatever else is plugged into the device.

Timing: one keep-alive ``aiohttp.ClientSession``, created in the first ``read()`` on the
running loop, closed by ``aclose()`` (the sampler awaits it when its loop ends) or, as a
fallback, by ``close()``.  Every sample is stamped at the midpoint of request and
response and returned as ``Stamped``.  The device recomputes its values about once a
second whatever the polling rate, so consecutive answers repeat; the probe detects the
real *refresh period* as the median interval between answers whose values changed and
exposes it as ``refresh_period_s`` (None until three changes have been seen).

``open()`` is synchronous (the Probe contract), so it makes one blocking request with the
standard library to check the address, the credentials, the JSON API and the output IDs,
and to learn the field set; a wrong password is then an unavailable probe with the reason
rather than a stream of failed reads.

Credentials: ``user`` from the options or ``GREENMON_NETIO_USER``; the password only from
the environment variable named by ``password_env`` (default ``GREENMON_NETIO_PASSWORD``) or
the file named by ``password_file``.  Options are stored with the session, so they hold
only where the password is, never the password; no message the probe raises contains it.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from greenmon.clock import now_ns
from greenmon.probes.base import Channel, ProbeUnavailable, Stamped
from greenmon.probes.options import ProbeOptions

USER_ENV = "GREENMON_NETIO_USER"
PASSWORD_ENV = "GREENMON_NETIO_PASSWORD"
WH_J = 3600.0
REFRESH_WINDOW = 32

MESSAGE_401 = (
    "wrong user or password: the NETIO device refused them (HTTP 401). Set [probes.netio] "
    "user (or GREENMON_NETIO_USER) and the password in the environment variable named by "
    "password_env, as configured under M2M API > JSON API on the device."
)
MESSAGE_403 = "JSON API disabled: enable M2M API > JSON API with READ on the device (HTTP 403)."


class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    # A wattmeter needs an address: off until one is configured.
    enabled: bool = False
    # "192.168.1.50", "netio.lab:8080" or a full "http://..." base URL.
    host: str | None = None
    outputs: list[int] = msgspec.field(default_factory=lambda: [1])
    user: str | None = None
    # Where the password is: the name of an environment variable, or a file.
    password_env: str = PASSWORD_ENV
    password_file: str | None = None
    timeout_s: float = 1.0


class NetioError(Exception):
    """A reading the device answered but greenmon cannot use (an HTTP error, bad JSON)."""


def base_url(host: str) -> str:
    return host.rstrip("/") if "://" in host else f"http://{host.rstrip('/')}"


@dataclass(frozen=True)
class _Field:
    """Where one channel's value is in the JSON: ("output", id, key) or ("global", key)."""

    section: str
    key: str
    output_id: int | None = None


def _output(body: Mapping[str, Any], output_id: int) -> Mapping[str, Any]:
    outputs = body.get("Outputs")
    if not isinstance(outputs, list):
        raise NetioError("the answer has no Outputs list")
    for entry in outputs:
        if isinstance(entry, dict) and entry.get("ID") == output_id:
            return entry
    ids = [e.get("ID") for e in outputs if isinstance(e, dict)]
    raise NetioError(f"output {output_id} is not in the answer (the device has outputs {ids})")


def parse_body(raw: bytes) -> Mapping[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NetioError(f"the answer is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise NetioError("the answer is not a JSON object")
    return body


def plan_channels(
    body: Mapping[str, Any], outputs: Sequence[int]
) -> tuple[list[Channel], list[_Field]]:
    """The channels a device's answer supports, and where each one's value is."""
    agent = body.get("Agent") if isinstance(body.get("Agent"), dict) else {}
    assert isinstance(agent, dict)
    device = {
        "model": agent.get("Model"),
        "json_version": agent.get("JSONVer"),
        "firmware": agent.get("Version"),
        "serial": agent.get("SerialNumber"),
    }
    channels: list[Channel] = []
    fields: list[_Field] = []
    for output_id in outputs:
        entry = _output(body, output_id)
        p = f"outlet{output_id}"
        meta = {**device, "output_id": output_id, "output_name": entry.get("Name")}
        if "Load" in entry:
            channels.append(Channel(f"{p}.load_w", "W", "gauge", "wall", meta))
            fields.append(_Field("output", "Load", output_id))
        energy_key = "EnergyNR" if "EnergyNR" in entry else "Energy" if "Energy" in entry else None
        if energy_key:
            energy_meta = {**meta, "source_field": energy_key, "resolution_j": WH_J}
            energy_meta["measures"] = "wall"
            channels.append(Channel(f"{p}.energy_wh", "Wh", "counter", None, energy_meta))
            fields.append(_Field("output", energy_key, output_id))
        for key, suffix, unit in (
            ("Current", "current_ma", "mA"),
            ("PowerFactor", "power_factor", "1"),
            ("Phase", "phase_deg", "deg"),
        ):
            if key in entry:
                channels.append(Channel(f"{p}.{suffix}", unit, "gauge", None, meta))
                fields.append(_Field("output", key, output_id))
    measure = body.get("GlobalMeasure")
    if isinstance(measure, dict):
        total_energy = "TotalEnergyNR" if "TotalEnergyNR" in measure else "TotalEnergy"
        for key, name, unit, kind in (
            ("Voltage", "mains.voltage_v", "V", "gauge"),
            ("Frequency", "mains.frequency_hz", "Hz", "gauge"),
            ("TotalLoad", "total.load_w", "W", "gauge"),
            ("TotalCurrent", "total.current_ma", "mA", "gauge"),
            ("OverallPowerFactor", "total.power_factor", "1", "gauge"),
            (total_energy, "total.energy_wh", "Wh", "counter"),
        ):
            if key in measure:
                meta = {**device, "source_field": key}
                channels.append(Channel(name, unit, kind, None, meta))  # type: ignore[arg-type]
                fields.append(_Field("global", key))
    return channels, fields


def extract(body: Mapping[str, Any], fields: Sequence[_Field]) -> list[float | None]:
    measure = body.get("GlobalMeasure")
    outputs: dict[int, Mapping[str, Any]] = {}
    values: list[float | None] = []
    for field in fields:
        if field.section == "output":
            assert field.output_id is not None
            if field.output_id not in outputs:
                outputs[field.output_id] = _output(body, field.output_id)
            source: Any = outputs[field.output_id]
        else:
            if not isinstance(measure, dict):
                raise NetioError("the answer has no GlobalMeasure")
            source = measure
        raw = source.get(field.key)
        try:
            values.append(None if raw is None else float(raw))
        except (TypeError, ValueError):
            raise NetioError(f"{field.key} is not a number: {raw!r}") from None
    return values


class RefreshDetector:
    """The device's refresh period: the median interval between answers that changed."""

    def __init__(self, window: int = REFRESH_WINDOW) -> None:
        self.intervals_ns: deque[int] = deque(maxlen=window)
        self._last_values: tuple[float | None, ...] | None = None
        self._last_change_ns: int | None = None

    def offer(self, t_ns: int, values: Sequence[float | None]) -> None:
        key = tuple(values)
        if key == self._last_values:
            return
        if self._last_values is not None:
            if self._last_change_ns is not None:
                self.intervals_ns.append(t_ns - self._last_change_ns)
            self._last_change_ns = t_ns
        self._last_values = key

    @property
    def period_s(self) -> float | None:
        if len(self.intervals_ns) < 2:
            return None
        return statistics.median(self.intervals_ns) / 1e9


class NetioProbe:
    name: ClassVar[str] = "netio"
    # The device refreshes its readings once a second (detected and recorded as the
    # source's refresh period): polling faster reads the same values again.
    default_rate_hz: ClassVar[float] = 1.0

    def __init__(
        self,
        options: Options | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.options = options or Options()
        self._environ = environ if environ is not None else os.environ
        self._clock = clock
        self._fields: list[_Field] = []
        self._url = ""
        self._user = ""
        self._password = ""
        self._session: Any = None  # aiohttp.ClientSession, made on the sampler's loop
        self._refresh = RefreshDetector()

    @property
    def refresh_period_s(self) -> float | None:
        """The device's real refresh period, detected from value changes (None: not yet)."""
        return self._refresh.period_s

    # -- credentials ---------------------------------------------------------------------
    def _credentials(self) -> tuple[str, str]:
        user = self.options.user or self._environ.get(USER_ENV, "")
        if self.options.password_file:
            try:
                password = Path(self.options.password_file).read_text().strip()
            except OSError as error:
                raise ProbeUnavailable(
                    f"cannot read [probes.netio] password_file {self.options.password_file}: "
                    f"{error.strerror}"
                ) from None
        else:
            password = self._environ.get(self.options.password_env, "")
        return user, password

    def _auth_header(self) -> dict[str, str]:
        if not self._user and not self._password:
            return {}
        token = base64.b64encode(f"{self._user}:{self._password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    # -- open ----------------------------------------------------------------------------
    def open(self) -> Sequence[Channel]:
        if not self.options.host:
            raise ProbeUnavailable(
                "no wattmeter address: set [probes.netio] host (and enabled = true), "
                "with the user in GREENMON_NETIO_USER and the password in "
                "GREENMON_NETIO_PASSWORD."
            )
        self._url = base_url(self.options.host) + "/netio.json"
        self._user, self._password = self._credentials()
        request = urllib.request.Request(self._url, headers=self._auth_header())
        try:
            with urllib.request.urlopen(request, timeout=self.options.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 401:
                raise ProbeUnavailable(MESSAGE_401) from None
            if error.code == 403:
                raise ProbeUnavailable(MESSAGE_403) from None
            raise ProbeUnavailable(
                f"the NETIO device at {self._url} answered HTTP {error.code}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ProbeUnavailable(
                f"cannot reach the NETIO device at {self._url}: {reason}. Check [probes.netio] "
                "host and that this machine can reach the device."
            ) from None
        try:
            channels, self._fields = plan_channels(parse_body(raw), self.options.outputs)
        except NetioError as error:
            raise ProbeUnavailable(f"the NETIO device at {self._url}: {error}") from None
        return channels

    # -- read ----------------------------------------------------------------------------
    def _ensure_session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.options.timeout_s),
                headers=self._auth_header(),
                connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=30.0),
            )
        return self._session

    async def read(self) -> Stamped:
        import aiohttp

        session = self._ensure_session()
        t_before_ns = self._clock()
        try:
            async with session.get(self._url) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError:
            raise TimeoutError(
                f"the NETIO device did not answer within {self.options.timeout_s} s"
            ) from None
        except aiohttp.ClientError as error:
            # str() of aiohttp errors names the URL, which holds no credentials
            raise NetioError(f"request failed: {type(error).__name__}: {error}") from None
        t_after_ns = self._clock()
        if status == 401:
            raise NetioError(MESSAGE_401)
        if status == 403:
            raise NetioError(MESSAGE_403)
        if status != 200:
            raise NetioError(f"the NETIO device answered HTTP {status}")
        values = extract(parse_body(raw), self._fields)
        t_ns = (t_before_ns + t_after_ns) // 2
        self._refresh.offer(t_ns, values)
        return Stamped([(t_ns, values)])

    async def aclose(self) -> None:
        """Close the HTTP session on the loop that made it."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def close(self) -> None:
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        # Fallback when aclose() was not awaited: close the sockets now; the session then
        # counts as closed and owes nothing to its loop.
        connector = session.connector
        if connector is not None:
            connector._close()
        session._connector = None


def create(options: Options) -> NetioProbe:
    return NetioProbe(options)
