"""A chunk of readings: column arrays, time-major (every meter for interval 1, then 2, ...)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .labels import FLAG_NAMES, LABEL_ARRAY

# Per-interval arrays of a day block, shape (intervals, meters); see Chunk for their meaning.
BLOCK_FIELDS: tuple[str, ...] = (
    "kwh",
    "register_kwh",
    "voltage_v",
    "temperature_c",
    "humidity_pct",
    "wind_ms",
    "supply_on",
    "flags",
    "label_code",
    "true_kwh",
    "loss_kwh",
    "unmetered_kwh",
)


@dataclass
class DayBlock:
    """One UTC day of one or more gateways: (intervals, meters) arrays plus the axes."""

    meter_ids: np.ndarray  # object (meters,)
    ends: np.ndarray  # int64 (intervals,)
    arrays: dict[str, np.ndarray]

    @property
    def n_intervals(self) -> int:
        return len(self.ends)

    @staticmethod
    def concat(blocks: list[DayBlock]) -> DayBlock:
        if len(blocks) == 1:
            return blocks[0]
        return DayBlock(
            meter_ids=np.concatenate([b.meter_ids for b in blocks]),
            ends=blocks[0].ends,
            arrays={f: np.concatenate([b.arrays[f] for b in blocks], axis=1) for f in BLOCK_FIELDS},
        )


@dataclass
class Chunk:
    """Readings of some meters over consecutive intervals; every array has one row per reading.

    ``kwh`` and ``register_kwh`` are what the meter reports (after any theft); ``true_kwh`` is
    the energy really consumed (for a transformer meter: what it supplied). ``label`` is "" for a
    normal reading, else the attack or fault in effect (labels.LABEL_NAMES). ``flags`` is a
    bitmask over labels.FLAG_NAMES. ``loss_kwh`` / ``unmetered_kwh`` are a transformer's
    technical loss and illegally hooked-up load (0 on customer rows).
    """

    meter_id: np.ndarray
    ts: np.ndarray  # int64 epoch seconds UTC, end of the interval
    interval_s: int
    kwh: np.ndarray
    register_kwh: np.ndarray
    voltage_v: np.ndarray  # NaN when not reported (no supply, or a meter without it)
    temperature_c: np.ndarray
    humidity_pct: np.ndarray
    wind_ms: np.ndarray
    supply_on: np.ndarray
    flags: np.ndarray  # uint16
    label: np.ndarray  # object (str)
    label_code: np.ndarray  # uint8 index into labels.LABEL_NAMES
    true_kwh: np.ndarray
    loss_kwh: np.ndarray
    unmetered_kwh: np.ndarray

    def __len__(self) -> int:
        return len(self.meter_id)

    @classmethod
    def from_pieces(cls, pieces: list[tuple[DayBlock, int, int]], interval_s: int) -> Chunk:
        """Rows [lo, hi) of each day block, in order (all blocks hold the same meters)."""
        ids = pieces[0][0].meter_ids
        n_t = sum(hi - lo for _, lo, hi in pieces)
        cols: dict[str, np.ndarray] = {}
        for name in BLOCK_FIELDS:
            parts = [b.arrays[name][lo:hi] for b, lo, hi in pieces]
            cols[name] = (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(-1)
        ends = np.concatenate([b.ends[lo:hi] for b, lo, hi in pieces])
        return cls(
            meter_id=np.tile(ids, n_t),
            ts=np.repeat(ends, len(ids)),
            interval_s=interval_s,
            label=LABEL_ARRAY[cols["label_code"]],
            **cols,
        )

    def select(self, mask: np.ndarray) -> Chunk:
        """The rows where ``mask`` (bool or index array) selects."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Chunk(**{k: v if k == "interval_s" else v[mask] for k, v in values.items()})

    def flag_list(self, i: int) -> list[str]:
        bits = int(self.flags[i])
        return [name for b, name in enumerate(FLAG_NAMES) if bits >> b & 1]

    def to_readings(self, truth: bool = False) -> list[dict[str, Any]]:
        """Wire-shaped readings (``docs/contracts.md``): ISO 'Z' timestamps, supply "on"/"off",
        flag names; NaN fields left out. ``truth`` adds true_kwh and label."""
        out = []
        iso = {
            int(t): datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for t in np.unique(self.ts)
        }
        for i in range(len(self)):
            row: dict[str, Any] = {
                "meter_id": self.meter_id[i],
                "ts": iso[int(self.ts[i])],
                "interval_s": self.interval_s,
                "kwh": float(self.kwh[i]),
                "register_kwh": float(self.register_kwh[i]),
                "temperature_c": float(self.temperature_c[i]),
                "humidity_pct": float(self.humidity_pct[i]),
                "wind_ms": float(self.wind_ms[i]),
                "supply": "on" if self.supply_on[i] else "off",
                "flags": self.flag_list(i),
            }
            voltage = float(self.voltage_v[i])
            if voltage == voltage:
                row["voltage_v"] = voltage
            if truth:
                row["true_kwh"] = float(self.true_kwh[i])
                row["label"] = self.label[i]
            out.append(row)
        return out
