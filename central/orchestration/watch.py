"""``gateway_watch``: gateways in trouble become operational alerts on MQTT and rows in the
warehouse, from what PostgreSQL raw holds (no Airflow here; the DAG calls :func:`watch`).

Conditions, per gateway, judged on ``raw.gateway_status`` (read through the exporter's own
reading of a status, :func:`edge_agent.health.view_of`) and ``raw.quarantine``:

* ``silent``: nothing received from it for ``watch_silent_s`` (its last status says online or
  offline: an offline one went away cleanly or by its last will);
* ``backlog_growing``: its pending readings rose by at least ``watch_backlog_growth`` over the
  last ``watch_backlog_window_s`` and were never 0 in between (central is not draining it);
* ``scoring_nothing``: online, readings accepted over that window, and no model in use;
* ``quarantine_spike``: at least ``watch_quarantine_min_rows`` rows of it quarantined in the
  last ``watch_quarantine_window_s``, and more than ``watch_quarantine_factor`` times its own
  hourly rate over the day before (a gateway always a little noisy does not page anyone).

Each condition that appears is an ``ops_alert.v1`` with ``state = "open"``; when it clears, the
same ``alert_id`` with ``state = "resolved"``. They are published (QoS 1, not retained) on
``{root}/ops/alerts`` as ``svc-ops`` and then recorded in the warehouse table
``ops.gateway_alerts``, which is also the memory of what is open: a condition still open is not
sent again. Published first, recorded after: a crash in between sends the same alert (same id)
again on the next run, never loses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import psycopg
from clickhouse_connect.driver.client import Client
from pydantic import BaseModel, ConfigDict, Field

from central.warehouse.client import connect, served
from central.warehouse.settings import DEFAULT_WAREHOUSE_PATH
from edge_agent import topics
from edge_agent.health import GATEWAY_COUNTERS, view_of
from edge_agent.settings_base import TomlEnvSettings, build

log = logging.getLogger(__name__)

Kind = Literal["silent", "backlog_growing", "scoring_nothing", "quarantine_spike"]
SEVERITY: dict[str, Literal["warning", "critical"]] = {
    "silent": "critical",
    "backlog_growing": "warning",
    "scoring_nothing": "warning",
    "quarantine_spike": "warning",
}
TABLE = "ops.gateway_alerts"
_ACCEPTED = list(GATEWAY_COUNTERS).index("readings_accepted")


class WatchSettings(TomlEnvSettings):
    """``EIOT_*`` (or the TOML file): where to read and write, and the thresholds."""

    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/eiot"
    clickhouse_dsn: str = f"chdb://{DEFAULT_WAREHOUSE_PATH}"
    topic_root: str = topics.DEFAULT_ROOT
    watch_silent_s: float = Field(default=900.0, gt=0)
    watch_backlog_window_s: float = Field(default=1800.0, gt=0)
    watch_backlog_growth: int = Field(default=500, ge=1)
    watch_quarantine_window_s: float = Field(default=3600.0, gt=0)
    watch_quarantine_min_rows: int = Field(default=50, ge=1)
    watch_quarantine_factor: float = Field(default=5.0, ge=1)
    # At most this many gateways are looked at per run (by id): a run's memory stays bounded.
    watch_max_gateways: int = Field(default=50_000, ge=1)


def load_watch_settings(**overrides: Any) -> WatchSettings:
    return build(WatchSettings, None, **overrides)


class OpsAlert(BaseModel):
    """``ops_alert.v1``: an operational alert about one gateway, opened or resolved."""

    model_config = ConfigDict(extra="forbid")
    schema_: Literal["ops_alert.v1"] = Field(default="ops_alert.v1", alias="schema")
    alert_id: str
    gateway_id: str
    kind: Kind
    severity: Literal["warning", "critical"]
    state: Literal["open", "resolved"]
    opened_at: datetime
    at: datetime
    detail: str = Field(max_length=500)

    def payload(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


@dataclass(frozen=True)
class Condition:
    gateway_id: str
    kind: Kind
    detail: str


def _alert_id(gateway_id: str, kind: str, opened_at: datetime) -> str:
    key = f"{gateway_id}|{kind}|{opened_at.isoformat()}".encode()
    return "ops-" + hashlib.sha256(key).hexdigest()[:20]


def conditions(conn: psycopg.Connection, now: datetime, s: WatchSettings) -> list[Condition]:
    """What is wrong now, per gateway (see the module doc)."""
    found: list[Condition] = []
    window = now - timedelta(seconds=s.watch_backlog_window_s)
    rows = conn.execute(
        "select gateway_id, received_at, status from raw.gateway_status"
        " where received_at >= %s and received_at <= %s order by gateway_id, received_at",
        (window, now),
    ).fetchall()
    recent: dict[str, list[tuple[datetime, dict[str, Any]]]] = {}
    for gateway_id, received_at, status in rows:
        if isinstance(status, dict):
            recent.setdefault(gateway_id, []).append((received_at, status))
    latest = conn.execute(
        "select distinct on (gateway_id) gateway_id, received_at, state from raw.gateway_status"
        " where received_at <= %s order by gateway_id, received_at desc limit %s",
        (now, s.watch_max_gateways),
    ).fetchall()
    for gateway_id, received_at, state in latest:
        quiet = (now - received_at).total_seconds()
        if quiet > s.watch_silent_s:
            found.append(
                Condition(gateway_id, "silent", f"nothing for {quiet / 60:.0f} min (last: {state})")
            )
            continue
        found += _status_conditions(gateway_id, [st for _, st in recent.get(gateway_id, [])], s)
    found += _quarantine_spikes(conn, now, s)
    return found


def _status_conditions(
    gateway_id: str, statuses: Sequence[dict[str, Any]], s: WatchSettings
) -> list[Condition]:
    views = [view_of(st, 0.0) for st in statuses]
    if not views:
        return []
    out: list[Condition] = []
    pending = [v.pending_readings for v in views if v.pending_readings is not None]
    if (
        len(pending) >= 2
        and min(pending) > 0
        and pending[-1] - pending[0] >= s.watch_backlog_growth
    ):
        out.append(
            Condition(
                gateway_id,
                "backlog_growing",
                f"pending readings {pending[0]:.0f} → {pending[-1]:.0f} "
                f"in {s.watch_backlog_window_s / 60:.0f} min",
            )
        )
    last = views[-1]
    accepted = [a for v in views if (a := v.counters[_ACCEPTED]) is not None]
    if last.online and not last.scoring and len(accepted) >= 2 and accepted[-1] > accepted[0]:
        out.append(
            Condition(
                gateway_id,
                "scoring_nothing",
                f"{accepted[-1] - accepted[0]:.0f} readings accepted, no model in use",
            )
        )
    return out


def _quarantine_spikes(
    conn: psycopg.Connection, now: datetime, s: WatchSettings
) -> list[Condition]:
    window = timedelta(seconds=s.watch_quarantine_window_s)
    rows = conn.execute(
        "select gateway_id, count(*) filter (where stored_at > %(recent)s),"
        " count(*) filter (where stored_at <= %(recent)s)"
        " from raw.quarantine where gateway_id is not null"
        " and stored_at > %(base)s and stored_at <= %(now)s group by gateway_id",
        {"recent": now - window, "base": now - window - timedelta(days=1), "now": now},
    ).fetchall()
    out = []
    per_window_days = window / timedelta(days=1)
    for gateway_id, recent, before in rows:
        baseline = before * per_window_days  # the day before, scaled to one window
        if recent >= s.watch_quarantine_min_rows and recent > s.watch_quarantine_factor * baseline:
            out.append(
                Condition(
                    gateway_id,
                    "quarantine_spike",
                    f"{recent} rows quarantined in {window.total_seconds() / 60:.0f} min "
                    f"(usual: {baseline:.1f})",
                )
            )
    return out


# -- state in the warehouse -----------------------------------------------------------------

DDL = f"""
create table if not exists {TABLE} (
    alert_id    String,
    gateway_id  String,
    kind        LowCardinality(String),
    severity    LowCardinality(String),
    state       LowCardinality(String),
    opened_at   DateTime64(3, 'UTC'),
    at          DateTime64(3, 'UTC'),
    detail      String
) engine = MergeTree order by (gateway_id, kind, at)
"""


def ensure_table(client: Client) -> None:
    client.command("create database if not exists ops")
    client.command(DDL)


def open_alerts(client: Client) -> dict[tuple[str, str], tuple[str, datetime]]:
    """(gateway, kind) → (alert id, opened at) of every alert whose last event is ``open``."""
    rows = client.query(
        f"select gateway_id, kind, argMax(alert_id, at), argMax(opened_at, at) from {TABLE}"
        " group by gateway_id, kind having argMax(state, at) = 'open'"
    ).result_rows
    return {(str(g), str(k)): (str(a), o.replace(tzinfo=UTC)) for g, k, a, o in rows}


def changes(
    found: Iterable[Condition],
    already: dict[tuple[str, str], tuple[str, datetime]],
    now: datetime,
) -> list[OpsAlert]:
    """New conditions open an alert; open alerts whose condition is gone are resolved."""
    out: list[OpsAlert] = []
    current = {(c.gateway_id, c.kind): c for c in found}
    for (gateway_id, kind), c in sorted(current.items()):
        if (gateway_id, kind) in already:
            continue
        out.append(
            OpsAlert(
                alert_id=_alert_id(gateway_id, kind, now),
                gateway_id=gateway_id,
                kind=c.kind,
                severity=SEVERITY[kind],
                state="open",
                opened_at=now,
                at=now,
                detail=c.detail[:500],
            )
        )
    for (gateway_id, gone), (alert_id, opened_at) in sorted(already.items()):
        if (gateway_id, gone) not in current and gone in SEVERITY:
            out.append(
                OpsAlert(
                    alert_id=alert_id,
                    gateway_id=gateway_id,
                    kind=cast(Kind, gone),
                    severity=SEVERITY[gone],
                    state="resolved",
                    opened_at=opened_at,
                    at=now,
                    detail="cleared",
                )
            )
    return out


def record(client: Client, alerts: Sequence[OpsAlert]) -> None:
    if alerts:
        client.insert(
            TABLE,
            [
                [a.alert_id, a.gateway_id, a.kind, a.severity, a.state, a.opened_at, a.at, a.detail]
                for a in alerts
            ],
            column_names=[
                "alert_id",
                "gateway_id",
                "kind",
                "severity",
                "state",
                "opened_at",
                "at",
                "detail",
            ],
        )


def watch(s: WatchSettings, publish: Any, now: datetime | None = None) -> dict[str, Any]:
    """One pass: find, diff with what is open, publish (``publish(topic, payloads)``: raises
    when the broker did not take them), record. A summary for the task's log."""
    now = now or datetime.now(UTC)
    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("set timezone = 'UTC'")
        found = conditions(conn, now, s)
    with served(s.clickhouse_dsn) as url:
        client = connect(url)
        try:
            ensure_table(client)
            alerts = changes(found, open_alerts(client), now)
            if alerts:
                publish(topics.ops_alerts(s.topic_root), [a.payload() for a in alerts])
            record(client, alerts)
        finally:
            client.close()
    summary = {
        "conditions": len(found),
        "opened": [f"{a.gateway_id} {a.kind}" for a in alerts if a.state == "open"],
        "resolved": [f"{a.gateway_id} {a.kind}" for a in alerts if a.state == "resolved"],
    }
    log.info("gateway watch: %s", json.dumps(summary))
    return summary
