"""Energy balance at the gateway: what a transformer supplied against what its customers billed.

A concentrator often reads the distribution transformer's meter and every customer meter under
it. Per window (default one UTC day) and transformer::

    gap = supplied - sum(billed) - expected_loss_share * supplied

``supplied`` is the transformer meter's energy, ``billed`` the customers' energy, the expected
technical loss a share of what was supplied (copper and iron losses, a few % on a distribution
transformer and its LV network). An ``energy_balance`` alert names the transformer when
``gap > max(min_gap_kwh, gap_share * supplied)``: energy leaves the transformer and nobody pays for
it — an illegal hook-up or tampered meters downstream.

A window is judged once, when the transformer meter has reported at least ``grace_s`` past its
end. A window with missing data is not judged (counted as ``energy_balance_incomplete``): the
transformer meter must cover the whole window and the customers at least
``min_completeness`` of it, otherwise missing readings would look like theft.

The mapping meter → transformer comes from a registry (the simulator's ``registry.json`` format:
meter dicts with ``meter_id``, ``meter_role`` ``customer|transformer`` and ``transformer_id``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.alerts import make_alert
from edge_agent.buffer import AlertRecord, AlertStore, Meta, ReadingStore
from edge_agent.fields import METER_ID, TS, Row
from edge_agent.registry import load_meters

log = logging.getLogger(__name__)

_META_PREFIX = "energy_balance:"
MAX_WINDOWS_PER_CHECK = 62


@dataclass(frozen=True)
class GridMap:
    """Which meter measures which transformer, and which customers hang under it."""

    transformer_meter: dict[str, str]  # transformer_id -> its meter_id
    customers: dict[str, tuple[str, ...]]  # transformer_id -> customer meter_ids

    @property
    def transformer_meters(self) -> frozenset[str]:
        return frozenset(self.transformer_meter.values())

    def transformer_of_meter(self) -> dict[str, str]:
        return {m: tx for tx, m in self.transformer_meter.items()}

    def __bool__(self) -> bool:
        return bool(self.transformer_meter)

    @classmethod
    def from_meters(cls, meters: Iterable[Mapping[str, Any]]) -> GridMap:
        tx_meter: dict[str, str] = {}
        customers: dict[str, list[str]] = defaultdict(list)
        for m in meters:
            meter_id, tx = m.get("meter_id"), m.get("transformer_id")
            if not isinstance(meter_id, str) or not isinstance(tx, str) or not tx:
                continue
            role = m.get("meter_role", "customer")
            if role == "transformer":
                tx_meter[tx] = meter_id
            elif role == "customer":
                customers[tx].append(meter_id)
        return cls(tx_meter, {tx: tuple(sorted(c)) for tx, c in customers.items()})

    @classmethod
    def load(cls, path: Path | str) -> GridMap:
        """From a registry JSON file (:mod:`edge_agent.registry`)."""
        return cls.from_meters(load_meters(path))


@dataclass(frozen=True)
class BalancePolicy:
    window_s: int = 86400
    expected_loss_share: float = 0.06
    gap_share: float = 0.04
    min_gap_kwh: float = 1.0
    min_completeness: float = 0.99
    grace_s: int = 3600


class EnergyBalance:
    """Judges each complete window of each transformer once; the progress marker is committed
    with the window's alert, so a restart neither skips nor repeats a window."""

    def __init__(
        self,
        readings: ReadingStore,
        alerts: AlertStore,
        meta: Meta,
        grid: GridMap,
        gateway_id: str,
        policy: BalancePolicy | None = None,
    ) -> None:
        self.readings = readings
        self.alerts = alerts
        self.grid = grid
        self.gateway_id = gateway_id
        self.policy = policy or BalancePolicy()
        self._tx_of_meter = grid.transformer_of_meter()
        self.done: dict[str, int] = {}  # transformer meter -> end of the last judged window
        self.frontier: dict[str, int] = {}  # transformer meter -> newest reading seen
        for meter in grid.transformer_meters:
            value = meta.get(_META_PREFIX + meter)
            if value is not None:
                self.done[meter] = int(value)
        if self.done:
            known = readings.latest_ts(self.done, min(self.done.values()))
            self.frontier.update({m: t for m, t in known.items() if m in self.done})

    def _window_end(self, ts: int) -> int:
        w = self.policy.window_s
        return -(-ts // w) * w  # the window (end - w, end] holding a reading that ends at ts

    def observe(self, rows: Sequence[Row]) -> None:
        """Note the newest reading of each transformer meter among stored ``rows``."""
        tx_meters = self._tx_of_meter
        newest: dict[str, int] = {}
        for r in rows:
            if r[METER_ID] in tx_meters and r[TS] > newest.get(r[METER_ID], -1):
                newest[r[METER_ID]] = int(r[TS])
        first: dict[str, object] = {}
        for meter, ts in newest.items():
            if ts > self.frontier.get(meter, -1):
                self.frontier[meter] = ts
            if meter not in self.done:
                # The first window judged is the one holding this meter's first reading.
                self.done[meter] = self._window_end(ts) - self.policy.window_s
                first[_META_PREFIX + meter] = self.done[meter]
        if first:
            self.alerts.add([], 0.0, meta=first)

    def check(self, now: float) -> tuple[str, ...]:
        """Judge every window that became complete; returns the ids of new alerts."""
        p = self.policy
        due: dict[int, list[str]] = defaultdict(list)
        for meter, newest in self.frontier.items():
            end = self.done[meter] + p.window_s
            for _ in range(MAX_WINDOWS_PER_CHECK):
                if end + p.grace_s > newest:
                    break
                due[end].append(meter)
                end += p.window_s
        stored: list[str] = []
        for end in sorted(due):
            stored.extend(self._judge(end, due[end], now))
        return tuple(stored)

    def _judge(self, end: int, tx_meters: list[str], now: float) -> tuple[str, ...]:
        p = self.policy
        wanted: list[str] = []
        for meter in tx_meters:
            wanted.append(meter)
            wanted.extend(self.grid.customers.get(self._tx_of_meter[meter], ()))
        sums = self.readings.window_sums(wanted, end - p.window_s, end)
        alerts: list[AlertRecord] = []
        counters: dict[str, int] = defaultdict(int)
        for meter in tx_meters:
            tx = self._tx_of_meter[meter]
            record = self._balance(tx, meter, end, sums, counters)
            if record is not None:
                alerts.append(record)
        meta: dict[str, object] = {_META_PREFIX + m: end for m in tx_meters}
        stored = self.alerts.add(alerts, now, meta=meta, counters=dict(counters))
        for m in tx_meters:
            self.done[m] = end
        return stored

    def _balance(
        self,
        tx: str,
        meter: str,
        end: int,
        sums: Mapping[str, tuple[float, int]],
        counters: dict[str, int],
    ) -> AlertRecord | None:
        p = self.policy
        supplied, tx_cover = sums.get(meter, (0.0, 0))
        if tx_cover == 0:
            return None  # no data at all in this window (a gap in the transformer's history)
        customers = self.grid.customers.get(tx, ())
        if not customers:
            counters["energy_balance_no_customers"] += 1
            return None
        billed = 0.0
        cover = 0
        for c in customers:
            kwh, seconds = sums.get(c, (0.0, 0))
            billed += kwh
            cover += seconds
        completeness = cover / (len(customers) * p.window_s)
        if tx_cover < p.window_s or completeness < p.min_completeness:
            counters["energy_balance_incomplete"] += 1
            return None
        counters["energy_balance_windows"] += 1
        expected = p.expected_loss_share * supplied
        gap = supplied - billed - expected
        limit = max(p.min_gap_kwh, p.gap_share * supplied)
        if gap <= limit:
            return None
        share = gap / supplied if supplied > 0 else 1.0
        loss = (supplied - billed) / supplied if supplied > 0 else 1.0
        detail = (
            f"transformer {tx} (meter {meter}): supplied {supplied:.1f} kWh, billed "
            f"{billed:.1f} kWh by {len(customers)} customers, expected technical loss "
            f"{expected:.1f} kWh; {gap:.1f} kWh unaccounted ({share:.1%} of supplied, total loss "
            f"{loss:.1%}) in the {p.window_s}s window ending at the alert's ts"
        )
        return make_alert(
            gateway_id=self.gateway_id,
            kind="energy_balance",
            meter_id=meter,
            ts=end,
            basis=f"window={p.window_s}",
            score=round(share, 6),
            threshold=p.gap_share,
            features={
                "supplied_kwh": round(supplied, 3),
                "billed_kwh": round(billed, 3),
                "expected_loss_kwh": round(expected, 3),
                "gap_kwh": round(gap, 3),
                "loss_share": round(loss, 6),
                "completeness": round(completeness, 6),
                "customers": float(len(customers)),
            },
            detail=detail,
        )
