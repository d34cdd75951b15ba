"""A gateway's health as numbers: one definition for central's exporter and the agent's own.

Gateways sit behind NAT on metered links and cannot be scraped: their health travels in
``status.v1`` messages that central's ingest stores in ``raw.gateway_status``, and central's
exporter (``central.metrics``) keeps the current one of each gateway as a :class:`GatewayView`,
a few numbers, not the message. The agent's optional local ``/metrics``
(``edge_agent.local_metrics``), for an engineer on site, shows its own status the same way, under
the same metric names. Standard library only: this module runs on the gateway.
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
    "buffer_recoveries": (
        "buffer_recoveries",
        "Times the agent found its buffer damaged and salvaged it into a new file.",
    ),
    "readings_salvaged": (
        "readings_salvaged",
        "Unacknowledged readings carried from a damaged buffer into the new one.",
    ),
}


@dataclass(slots=True)
class GatewayView:
    """What a status says of one gateway, as numbers."""

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
    """The view of a ``status.v1`` as JSON (central's are validated by the ingest; read
    defensively all the same: a field absent or odd gives no sample, never an error)."""
    buffer = status.get("buffer")
    buf: Mapping[str, Any] = buffer if isinstance(buffer, Mapping) else {}
    counters = status.get("counters")
    cnt: Mapping[str, Any] = counters if isinstance(counters, Mapping) else {}
    models: list[tuple[str, str]] = []
    raw_models = status.get("models")
    if not isinstance(raw_models, list):
        model = status.get("model")
        raw_models = [model] if isinstance(model, Mapping) else []
    # a gateway holds a global model and, per customer class of its meters, up to two more
    for m in raw_models[:16]:
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


# (name, help, attribute of GatewayView): one gauge per gateway each. received_at is central's:
# the agent's own /metrics leaves that one out.
GATEWAY_GAUGES: list[tuple[str, str, str]] = [
    (
        "eiot_gateway_last_seen_timestamp_seconds",
        "When central stored the gateway's current status (central's clock).",
        "received_at",
    ),
    (
        "eiot_gateway_status_sent_timestamp_seconds",
        "sent_at of the current status (the gateway's clock).",
        "sent_at",
    ),
    (
        "eiot_gateway_up",
        "1 if the current status says online, 0 if offline (last will or a clean stop).",
        "online",
    ),
    (
        "eiot_gateway_pending_readings",
        "Readings in the gateway's buffer not yet acknowledged by central (backlog).",
        "pending_readings",
    ),
    (
        "eiot_gateway_inflight_batches",
        "Batches sent and waiting for central's ack.",
        "inflight_batches",
    ),
    (
        "eiot_gateway_oldest_pending_timestamp_seconds",
        "Reading time of the oldest reading not acknowledged (time() minus this is its age).",
        "oldest_pending_ts",
    ),
    (
        "eiot_gateway_intake_paused",
        "1 while the gateway refuses new readings (buffer budget or disk full).",
        "intake_paused",
    ),
    ("eiot_gateway_buffer_data_bytes", "Bytes of data in the gateway's buffer.", "data_bytes"),
    (
        "eiot_gateway_buffer_budget_bytes",
        "The buffer's byte budget (buffer_max_mb).",
        "budget_bytes",
    ),
    (
        "eiot_gateway_disk_free_bytes",
        "Free bytes on the gateway's buffer file system.",
        "disk_free_bytes",
    ),
    (
        "eiot_gateway_last_ack_timestamp_seconds",
        "When the gateway last received an ack (its clock).",
        "last_ack_at",
    ),
    (
        "eiot_gateway_clock_suspect",
        "1 if the gateway's wall clock stepped lately or is behind the latest time it saw.",
        "clock_suspect",
    ),
    (
        "eiot_gateway_scoring",
        "1 if the gateway has a model in use, 0 if it scores nothing.",
        "scoring",
    ),
]

# The models in use: an info metric, labelled by model name and version.
MODEL_INFO = ("eiot_gateway_model", "A model in use on the gateway (name and version).")


def counter_metric(key: str) -> tuple[str, str]:
    """Name (without ``_total``) and help of the metric of the agent's counter ``key``."""
    name, doc = GATEWAY_COUNTERS[key]
    return f"eiot_gateway_{name}", doc + " (the agent's own count)"
