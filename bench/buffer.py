"""Readings per second accepted into the durable agent buffer (validation + SQLite commit).

    python -m bench.buffer [--readings 1000000] [--chunk 2000] [--synchronous FULL]

Two intake paths are measured: the column path (simulated fleet, a head-end's bulk export) and
the per-reading path (one JSON object per reading, as from the MQTT and spool sources).
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.results import report
from edge_agent.buffer import Buffer
from edge_agent.sources import Intake
from edge_agent.sources.sim import columns_to_rows
from edge_agent.validate import Validator
from edge_agent.vocabulary import METER_FLAGS

T0 = 1_772_323_200


def chunk(meters: int, k0: int, intervals: int, rng: np.random.Generator) -> SimpleNamespace:
    n = meters * intervals
    ids = np.array([f"SN{i:07d}" for i in range(meters)], dtype=object)
    return SimpleNamespace(
        meter_id=np.tile(ids, intervals),
        ts=np.repeat(T0 + 1800 * (np.arange(k0, k0 + intervals) + 1), meters),
        interval_s=1800,
        kwh=np.round(rng.gamma(2.0, 0.1, n), 3),
        register_kwh=np.round(rng.uniform(100, 9000, n), 3),
        voltage_v=np.round(rng.normal(229, 3, n), 1),
        temperature_c=np.full(n, 27.5),
        humidity_pct=np.full(n, 61.0),
        wind_ms=np.full(n, 3.1),
        supply_on=np.ones(n, dtype=bool),
        flags=np.zeros(n, dtype=np.uint16),
        __len__=None,
    )


class _Chunk(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.kwh)


def run(readings: int, chunk_size: int, synchronous: str, dicts: bool) -> float:
    meters = 1000
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        buffer = Buffer(Path(tmp) / "bench.db", synchronous=synchronous, cap=10**9)
        validator = Validator(time.time)
        intake = Intake(buffer.readings, buffer.meta, validator)
        intervals = max(1, chunk_size // meters)
        done = 0
        k = 0
        elapsed = 0.0
        while done < readings:
            c = _Chunk(
                **{
                    k_: v
                    for k_, v in vars(chunk(meters, k, intervals, rng)).items()
                    if k_ != "__len__"
                }
            )
            if dicts:
                items = [
                    {"meter_id": m, "ts": t, "kwh": e, "register_kwh": r, "voltage_v": vv}
                    for m, t, e, r, vv in zip(
                        c.meter_id.tolist(),
                        c.ts.tolist(),
                        c.kwh.tolist(),
                        c.register_kwh.tolist(),
                        c.voltage_v.tolist(),
                        strict=True,
                    )
                ]
                for it in items:
                    it["ts"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(it["ts"]))
            t0 = time.perf_counter()
            if dicts:
                results = [validator.check(it, "", "bench") for it in items]
            else:
                results = columns_to_rows(c, validator, METER_FLAGS)
            intake.take(results)
            elapsed += time.perf_counter() - t0
            done += len(c)
            k += intervals
        assert buffer.readings.count() == done
        buffer.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=1_000_000, help="readings to accept")
    parser.add_argument("--chunk", type=int, default=2000, help="readings per transaction")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = parser.parse_args()
    columns = run(args.readings, args.chunk, args.synchronous, dicts=False)
    print(
        f"column path:      {columns:>12,.0f} readings/s ({args.synchronous}, {args.chunk}/commit)"
    )
    per_reading = run(args.readings // 5, args.chunk, args.synchronous, dicts=True)
    print(f"per-reading path: {per_reading:>12,.0f} readings/s")
    report(
        "bench.buffer",
        {
            "readings_per_s": round(columns),
            "per_reading_path_readings_per_s": round(per_reading),
            "synchronous": args.synchronous,
            "readings_per_commit": args.chunk,
        },
    )


if __name__ == "__main__":
    main()
