"""A local HTTP server that speaks the NETIO JSON API (``GET /netio.json``, basic auth).

It replays scripted readings of output 1 (by default the real PowerBOX readings in
tests/data/netio_output1_sample.csv, one row per request), in the JSON 2.1 or 2.4 field
set, and can be told to answer 401/403/500, malformed JSON, or to stall past the
client's timeout.  It runs on its own event loop in a thread (``ServerThread``), so the
probe's blocking ``open()`` can talk to it, or as a separate process
(``python -m tests.fakes.netio --port 0`` prints the port) for bench/probes.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

SAMPLE_CSV = Path(__file__).resolve().parents[1] / "data" / "netio_output1_sample.csv"
V21_OUTPUT_KEYS = ("ID", "Name", "State", "Action", "Delay", "Current", "PowerFactor", "Load")
V24_EXTRA_OUTPUT_KEYS = ("Phase", "ReverseEnergy", "EnergyNR", "ReverseEnergyNR")


def load_sample_rows(path: Path = SAMPLE_CSV) -> list[dict[str, Any]]:
    """Output-1 readings as the device reported them, one per poll (~0.57 s apart)."""
    rows: list[dict[str, Any]] = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            rows.append(
                {
                    "true_timestamp": record["True timestamp"],
                    "Current": int(record["Current"]),
                    "PowerFactor": float(record["PowerFactor"]),
                    "Phase": float(record["Phase"]),
                    "Energy": int(record["Energy"]),
                    "ReverseEnergy": int(record["ReverseEnergy"]),
                    "EnergyNR": int(record["EnergyNR"]),
                    "ReverseEnergyNR": int(record["ReverseEnergyNR"]),
                    "Load": int(record["Load"]),
                }
            )
    return rows


@dataclass
class NetioState:
    rows: list[dict[str, Any]] = field(default_factory=load_sample_rows)
    user: str | None = "netio"
    password: str | None = "s3cret-pw"
    json_version: str = "2.4"
    # ok | unauthorized (401 whatever the credentials) | forbidden | error500 | malformed
    # | stall
    mode: str = "ok"
    stall_s: float = 2.0
    # cycle through rows (bench) or stay on the last one (tests)
    cycle: bool = False
    num_outputs: int = 4
    requests: int = 0

    def current_row(self) -> dict[str, Any]:
        index = self.requests - 1
        if self.cycle:
            return self.rows[index % len(self.rows)]
        return self.rows[min(index, len(self.rows) - 1)]


def netio_body(state: NetioState) -> dict[str, Any]:
    row = state.current_row()
    v24 = state.json_version == "2.4"
    outputs: list[dict[str, Any]] = []
    for output_id in range(1, state.num_outputs + 1):
        values: dict[str, Any] = (
            dict(row)
            if output_id == 1
            else {"Current": 0, "PowerFactor": 0.0, "Phase": 0.0, "Energy": 17, "Load": 0}
        )
        entry: dict[str, Any] = {
            "ID": output_id,
            "Name": f"Power output {output_id}",
            "State": 1,
            "Action": 6,
            "Delay": 5000,
            "Current": values["Current"],
            "PowerFactor": values["PowerFactor"],
            "Load": values["Load"],
            "Energy": values["Energy"],
        }
        if v24:
            entry["Phase"] = values["Phase"]
            entry["ReverseEnergy"] = values.get("ReverseEnergy", 0)
            entry["EnergyNR"] = values.get("EnergyNR", values["Energy"])
            entry["ReverseEnergyNR"] = values.get("ReverseEnergyNR", 0)
        outputs.append(entry)
    total_load = sum(o["Load"] for o in outputs)
    measure: dict[str, Any] = {
        "Voltage": 230.4,
        "Frequency": 50.0,
        "TotalCurrent": sum(o["Current"] for o in outputs),
        "OverallPowerFactor": row["PowerFactor"],
        "TotalLoad": total_load,
        "TotalEnergy": sum(o["Energy"] for o in outputs),
        "EnergyStart": "2024-01-01T00:00:00+00:00",
    }
    if v24:
        measure["OverallPhase"] = row["Phase"]
        measure["TotalEnergyNR"] = measure["TotalEnergy"]
        measure["TotalReverseEnergy"] = 0
        measure["TotalReverseEnergyNR"] = 0
    return {
        "Agent": {
            "Model": "PowerBOX 4KF",
            "Version": "3.4.0",
            "JSONVer": state.json_version,
            "DeviceName": "greenmon-test",
            "VendorID": 0,
            "OemID": 0,
            "SerialNumber": "24:A4:2C:00:00:01",
            "Uptime": 1000,
            "Time": "2024-05-29T19:00:19+01:00",
            "Enable": 1,
            "NumOutputs": state.num_outputs,
        },
        "GlobalMeasure": measure,
        "Outputs": outputs,
    }


def make_app(state: NetioState) -> web.Application:
    expected = None
    if state.user is not None or state.password is not None:
        token = base64.b64encode(f"{state.user or ''}:{state.password or ''}".encode()).decode()
        expected = f"Basic {token}"

    async def netio_json(request: web.Request) -> web.StreamResponse:
        state.requests += 1
        if expected is not None and request.headers.get("Authorization") != expected:
            return web.Response(status=401, text="Unauthorized")
        if state.mode == "unauthorized":  # the device's password changed mid-run
            return web.Response(status=401, text="Unauthorized")
        if state.mode == "forbidden":
            return web.Response(status=403, text="Forbidden")
        if state.mode == "error500":
            return web.Response(status=500, text="Internal Server Error")
        if state.mode == "malformed":
            return web.Response(
                text='{"Agent": {"Model": "PowerBOX', content_type="application/json"
            )
        if state.mode == "stall":
            await asyncio.sleep(state.stall_s)
        return web.json_response(netio_body(state))

    app = web.Application()
    app.router.add_get("/netio.json", netio_json)
    return app


class ServerThread:
    """The fake device on 127.0.0.1, on its own loop in a daemon thread."""

    def __init__(self, state: NetioState) -> None:
        self.state = state
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-netio", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._stop())
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.state), shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _serve_forever(state: NetioState, port: int) -> None:
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    print(server.sockets[0].getsockname()[1], flush=True)  # type: ignore[attr-defined]
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake NETIO JSON API server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="netio")
    parser.add_argument("--password", default="s3cret-pw")
    args = parser.parse_args()
    state = NetioState(user=args.user, password=args.password, cycle=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(state, args.port))


if __name__ == "__main__":
    main()
