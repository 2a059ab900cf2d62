"""Store benchmark: sustained ingest of 10 million samples, then energy over them.

Prints JSON: rows/s through the same path the writer uses (Store.write, Arrow batches,
one transaction each), and the time to compute per-channel energy over all 10 million
samples with greenmon/energy.py.  Aims: >= 1 million rows/s; energy < 1 s.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from _common import aim, machine  # type: ignore[import-not-found]

from greenmon.energy import Window, window_energy
from greenmon.probes.base import Channel
from greenmon.store import SampleBatch, Store

TOTAL_ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
CHANNELS = 4
BATCH_ROWS = 100_000
PERIOD_NS = 1_000_000  # 1 kHz per channel


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.duckdb")
        session = store.start_session({"host": "bench"}, 0, 0)
        channel_ids = store.register_channels(
            session,
            "rapl",
            [
                Channel(
                    f"package-{i}.energy_uj",
                    "uJ",
                    "counter",
                    domain="cpu",
                    metadata={"counter_range": 262_143_328_851},
                )
                for i in range(CHANNELS)
            ],
            PERIOD_NS,
        )
        per_channel = TOTAL_ROWS // CHANNELS
        # Build batches outside the timed region: we time the store, not Python lists.
        batches = []
        for start in range(0, per_channel, BATCH_ROWS // CHANNELS):
            batch = SampleBatch()
            for k in range(start, min(per_channel, start + BATCH_ROWS // CHANNELS)):
                t_ns = k * PERIOD_NS
                for index, channel_id in enumerate(channel_ids):
                    batch.channel_ids.append(channel_id)
                    batch.t_ns.append(t_ns)
                    batch.values.append(float((k * (1000 + index)) % 262_143_328_851))
            batches.append(batch)
        started = time.perf_counter()
        for batch in batches:
            store.write(batch, [], session)
        ingest_s = time.perf_counter() - started
        end_ns = (per_channel - 1) * PERIOD_NS
        windows = [Window(i, cid, 0, end_ns) for i, cid in enumerate(channel_ids)]
        started = time.perf_counter()
        energy = window_energy(store.con, windows)
        energy_s = time.perf_counter() - started
        # 100 phase-like windows per channel, as the results views ask
        step = end_ns // 100
        many = [
            Window(i * 1000 + j, cid, j * step, (j + 1) * step)
            for i, cid in enumerate(channel_ids)
            for j in range(100)
        ]
        started = time.perf_counter()
        window_energy(store.con, many)
        windows_s = time.perf_counter() - started
        store.close()
    expected_j = [(per_channel - 1) * (1000 + i) * 1e-6 for i in range(CHANNELS)]
    got_j = [energy[(i, cid)].energy_j for i, cid in enumerate(channel_ids)]
    print(
        json.dumps(
            {
                "benchmark": "store",
                "machine": machine(),
                "rows": per_channel * CHANNELS,
                "ingest_rows_per_s": round(per_channel * CHANNELS / ingest_s),
                "ingest_s": round(ingest_s, 3),
                "energy_all_rows_s": round(energy_s, 3),
                "energy_400_windows_s": round(windows_s, 3),
                "aims": [
                    aim("ingest", per_channel * CHANNELS / ingest_s, ">=", 1e6, "rows/s"),
                    aim("energy over every sample", energy_s, "<", 1.0, "s"),
                ],
                "energy_correct": all(
                    abs(a - b) < 1e-6 * a
                    for a, b in zip(expected_j, got_j, strict=True)
                    if b is not None
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
