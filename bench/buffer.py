"""Readings per second accepted into the durable agent buffer (validation + SQLite commit).

    python -m bench.buffer [--readings 1000000] [--chunk 2000] [--synchronous FULL]

Two intake paths are measured: the column path (simulated fleet, a head-end's bulk export) and
the per-reading path (one JSON object per reading, as from the MQTT and spool sources). On the
file the column path leaves (its readings unacknowledged), what every start of the agent adds
(``PRAGMA quick_check``, edge_agent/buffer/salvage.py) and what a recovery takes once a page of
it is damaged. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.results import report
from edge_agent.buffer import Buffer
from edge_agent.buffer.salvage import check, open_checked
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


def run(
    readings: int, chunk_size: int, synchronous: str, dicts: bool, figures: dict[str, float]
) -> float:
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
        if not dicts:
            start_check(Path(tmp) / "bench.db", figures)
    return done / elapsed


def start_check(path: Path, figures: dict[str, float]) -> None:
    """The start's check of a whole file, then a recovery of it with one page damaged."""
    figures["file_mb"] = round(path.stat().st_size / 2**20, 1)
    t0 = time.perf_counter()
    assert check(path) is None
    figures["start_check_s"] = round(time.perf_counter() - t0, 2)
    with sqlite3.connect(path) as conn:
        size = int(conn.execute("pragma page_size").fetchone()[0])
        pages = int(conn.execute("pragma page_count").fetchone()[0])
    with open(path, "r+b") as handle:  # noise over a page half-way into the file
        handle.seek(pages // 2 * size)
        handle.write(np.random.default_rng(2).bytes(size))
    t0 = time.perf_counter()
    recovery = open_checked(path)
    figures["recovery_s"] = round(time.perf_counter() - t0, 2)
    assert recovery is not None
    figures["recovery_readings_salvaged"] = recovery.readings_pending


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=1_000_000, help="readings to accept")
    parser.add_argument("--chunk", type=int, default=2000, help="readings per transaction")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = parser.parse_args()
    figures: dict[str, float] = {}
    columns = run(args.readings, args.chunk, args.synchronous, dicts=False, figures=figures)
    print(
        f"column path:      {columns:>12,.0f} readings/s ({args.synchronous}, {args.chunk}/commit)"
    )
    per_reading = run(args.readings // 5, args.chunk, args.synchronous, dicts=True, figures={})
    print(
        f"start check:      {figures['start_check_s']} s for a {figures['file_mb']} MB buffer; "
        f"recovery of it with a damaged page {figures['recovery_s']} s"
    )
    print(f"per-reading path: {per_reading:>12,.0f} readings/s")
    report(
        "bench.buffer",
        {
            "readings_per_s": round(columns),
            "per_reading_path_readings_per_s": round(per_reading),
            "synchronous": args.synchronous,
            "readings_per_commit": args.chunk,
            **figures,
        },
    )


if __name__ == "__main__":
    main()
