"""What the exporter knows, kept between polls and read by scrapes (under one lock)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field, replace

from edge_agent.health import GatewayView
from edge_agent.vocabulary import QUARANTINE_REASONS

# Batch delivery: the gateway froze the batch (sent_at, its clock) → central committed it.
DELIVERY_BUCKETS_S = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 86400.0)


@dataclass
class WarehouseTable:
    watermark: float
    loaded_at: float
    rows_loaded: float


@dataclass
class RunResult:
    """The last dbt invocation or quality run, from the file it left."""

    finished_at: float
    success: bool
    duration_s: float | None = None
    by_status: dict[str, int] = field(default_factory=dict)  # dbt: nodes per status
    failed_by_suite: dict[str, int] = field(default_factory=dict)  # quality


class Histogram:
    """Cumulative buckets of a fixed layout."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        value = max(value, 0.0)  # a gateway clock ahead of central's
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class ExporterState:
    def __init__(self, max_gateways: int, max_reasons: int) -> None:
        self.lock = threading.Lock()
        self.max_gateways = max_gateways
        self.max_reasons = max_reasons
        self.gateways: dict[str, GatewayView] = {}
        self.gateways_dropped = 0
        self.batches: Counter[str] = Counter()  # by status: stored / rejected
        self.readings: Counter[str] = Counter()  # by outcome
        self.quarantined: Counter[str] = Counter()  # by reason code
        self.alerts: Counter[str] = Counter()  # by kind
        self.delivery = Histogram(DELIVERY_BUCKETS_S)
        self.warehouse: dict[str, WarehouseTable] = {}
        self.dbt: RunResult | None = None
        self.quality: RunResult | None = None
        self.polls = 0
        self.poll_errors = 0
        self.last_poll_ok = 0.0
        self.last_poll_s = 0.0
        self.warehouse_errors = 0

    def see_status(self, gateway_id: str, view: GatewayView) -> None:
        """A stored status: current if central received it last. A status without buffer
        figures (the last will: ``offline`` only) keeps the figures heard before."""
        old = self.gateways.get(gateway_id)
        if old is not None and old.received_at > view.received_at:
            return
        if old is not None and view.pending_readings is None:
            view = replace(
                old,
                received_at=view.received_at,
                sent_at=view.sent_at,
                online=view.online,
                scoring=view.scoring if view.online else old.scoring,
                models=view.models if view.online else old.models,
            )
        if old is None and len(self.gateways) >= self.max_gateways:
            self.gateways_dropped += 1
            return
        self.gateways[gateway_id] = view

    def forget_before(self, cutoff: float) -> None:
        for gw in [g for g, v in self.gateways.items() if v.received_at < cutoff]:
            del self.gateways[gw]

    def reason_label(self, reason: str) -> str:
        """A bounded label for a quarantine reason: its kind (``conflict: …`` → ``conflict``,
        one of ``QUARANTINE_REASONS``), ``other`` for anything else (a kind of another version
        of the project) or past ``max_reasons`` kinds."""
        code = reason.split(":", 1)[0].strip()
        if code not in QUARANTINE_REASONS:
            return "other"
        if code not in self.quarantined and len(self.quarantined) >= self.max_reasons:
            return "other"
        return code
