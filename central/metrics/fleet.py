"""The fleet as central last heard it: one small record per gateway, from its status.v1.

Gateways sit behind NAT on metered links and cannot be scraped: their health travels in
``status.v1`` messages that the ingest stores in ``raw.gateway_status``. The exporter keeps the
current one of each gateway (the one central received last) as a few numbers, not the message,
so memory grows with the fleet, bounded by ``metrics_max_gateways``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Buffer counters of the agent (edge_agent/buffer) exposed per gateway, and the metric each
# becomes (eiot_gateway_<name>_total). A fixed list: a gateway cannot make labels or series up.
GATEWAY_COUNTERS: Mapping[str, tuple[str, str]] = {
    "readings_accepted": ("readings_accepted", "Readings the agent committed to its buffer."),
    "quarantined": ("readings_quarantined", "Records the agent quarantined (invalid, conflict)."),
    "readings_acked": ("readings_acked", "Readings central acknowledged as stored."),
    "readings_rejected": ("readings_rejected", "Readings in batches central rejected."),
    "readings_scored": ("readings_scored", "Readings the agent scored with a model."),
    "readings_refused_full": ("readings_refused", "Readings refused while intake was paused."),
    "readings_evicted": ("readings_evicted", "Readings dropped by the evict_oldest cap policy."),
    "batches_sent": ("batches_sent", "Batches published, resends included."),
    "batches_resent": ("batches_resent", "Batches published again (no ack in time, restart)."),
    "batches_acked": ("batches_acked", "Batches central acknowledged."),
    "alerts_published": ("alerts_published", "Alert messages published."),
    "wire_bytes_sent": ("wire_sent_bytes", "Bytes of readings batches published."),
}


@dataclass(slots=True)
class GatewayView:
    """What the exporter shows of one gateway."""

    received_at: float  # central's clock: when the current status was stored
    sent_at: float  # the gateway's clock
    online: bool
    pending_readings: float | None
    inflight_batches: float | None
    oldest_pending_ts: float | None
    intake_paused: bool | None
    data_bytes: float | None
    budget_bytes: float | None
    disk_free_bytes: float | None
    last_ack_at: float | None
    clock_suspect: bool | None
    scoring: bool
    models: tuple[tuple[str, str], ...]  # (name, version) of each model in use
    counters: tuple[float | None, ...]  # in GATEWAY_COUNTERS order


def _ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def view_of(status: Mapping[str, Any], received_at: float) -> GatewayView:
    """The view of a stored ``status.v1`` (already validated by the ingest; read defensively
    all the same: a field absent or odd gives no sample, never an error)."""
    buffer = status.get("buffer")
    buf: Mapping[str, Any] = buffer if isinstance(buffer, Mapping) else {}
    counters = status.get("counters")
    cnt: Mapping[str, Any] = counters if isinstance(counters, Mapping) else {}
    models: list[tuple[str, str]] = []
    raw_models = status.get("models")
    if not isinstance(raw_models, list):
        model = status.get("model")
        raw_models = [model] if isinstance(model, Mapping) else []
    for m in raw_models[:16]:  # a gateway holds a global model and one per customer class
        if isinstance(m, Mapping):
            models.append((str(m.get("name", ""))[:64], str(m.get("version", ""))[:64]))
    online = status.get("state") == "online"
    intake = buf.get("intake")
    full = buf.get("full")
    paused = (intake not in (None, "open")) or full is True if buf else None
    return GatewayView(
        received_at=received_at,
        sent_at=_ts(status.get("sent_at")) or 0.0,
        online=online,
        pending_readings=_num(buf.get("pending_readings")),
        inflight_batches=_num(buf.get("inflight_batches")),
        oldest_pending_ts=_ts(buf.get("oldest_pending_ts")),
        intake_paused=paused,
        data_bytes=_num(buf.get("data_bytes")),
        budget_bytes=_num(buf.get("budget_bytes")),
        disk_free_bytes=_num(buf.get("disk_free_bytes")),
        last_ack_at=_ts(status.get("last_ack_at")),
        clock_suspect=status.get("clock_suspect") if "clock_suspect" in status else None,
        scoring=bool(models),
        models=tuple(models),
        # the agent stores no zero counters: in a full status an absent one is 0
        counters=tuple(
            _num(cnt.get(name)) if name in cnt or not buf else 0.0 for name in GATEWAY_COUNTERS
        ),
    )
