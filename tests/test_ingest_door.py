"""What central lets through its door (central/ingest.py, central/store.py): hostile times,
overflowing columns, quarantine that cannot fill the disk, meters of another gateway. Every
refusal is a quarantine row that names the gateway, and every batch gets an ack, so nothing is
resent forever and nothing bad is stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from central.ingest import IngestWorker
from central.settings import CentralSettings
from edge_agent import wire
from tests.support.processes import BROKER_PORT

TOPIC = "eiot/v1/gw/gw1/readings"


def worker(dsn: str, **kw: Any) -> IngestWorker:
    return IngestWorker(CentralSettings(pg_dsn=dsn, broker_port=BROKER_PORT, **kw))


def batch(batch_id: str, readings: list[dict[str, Any]], gateway: str = "gw1") -> bytes:
    return json.dumps(
        {
            "schema": "readings.v1",
            "gateway_id": gateway,
            "batch_id": batch_id,
            "batch_seq": 1,
            "sent_at": "2026-03-02T00:00:00Z",
            "readings": readings,
        }
    ).encode()


def ack_of(outcome: Any) -> wire.Ack:
    assert outcome is not None and outcome.ack is not None
    ack: wire.Ack = outcome.ack
    return ack


def test_hostile_times_are_quarantined_with_their_gateway_and_acked(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    hostile = {
        "2099-01-01T00:00:00Z": "ts_in_future",
        wire.iso_z(tomorrow): "ts_in_future",
        "1970-01-01T00:30:00Z": "ts_too_old",
        "1938-01-01T00:00:00Z": "ts_too_old",
        "2603-01-01T00:00:00Z": "ts_in_future",
        "2026-03-01T00:30:00.500Z": "whole seconds",
        "2026-03-01T00:31:00Z": "grid",
        "2026-03-01T00:30:00": "timezone",  # no offset: which zone is anybody's guess
    }
    epochs = [1772325000, 1772325000000, 20_000_000_000]  # seconds? milliseconds? never guessed
    readings = [{"meter_id": "good", "ts": "2026-03-01T00:30:00Z", "kwh": 0.5}]
    readings += [{"meter_id": f"m{i}", "ts": ts, "kwh": 0.5} for i, ts in enumerate(hostile)]
    readings += [{"meter_id": f"e{i}", "ts": ts, "kwh": 0.5} for i, ts in enumerate(epochs)]
    with psycopg.connect(pg_dsn) as conn:
        topic, outcome = worker(pg_dsn).handle(conn, TOPIC, batch("t-1", readings))
    ack = ack_of(outcome)
    assert topic == "eiot/v1/gw/gw1/ack"
    assert (ack.status, ack.inserted, ack.quarantined) == ("stored", 1, len(readings) - 1)
    assert pg.execute("select meter_id from raw.readings").fetchall() == [("good",)]
    rows = pg.execute("select raw, reason, gateway_id, batch_id from raw.quarantine").fetchall()
    assert len(rows) == len(readings) - 1
    assert all(gw == "gw1" and b == "t-1" for _, _, gw, b in rows)
    for i, (ts, why) in enumerate(hostile.items()):
        (reason,) = [r for raw, r, _, _ in rows if f'"m{i}"' in raw]
        assert why in reason, (ts, reason)
    for i in range(len(epochs)):
        (reason,) = [r for raw, r, _, _ in rows if f'"e{i}"' in raw]
        assert reason.startswith("invalid"), reason


def test_a_v2_column_that_overflows_is_rejected_with_an_ack(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    base = {
        "schema": "readings.v2",
        "gateway_id": "gw1",
        "batch_seq": 1,
        "sent_at": "2026-03-02T00:00:00Z",
        "n": 2,
    }
    cases = {
        "d-1": {"meter_id": "m", "ts_delta": [1772325000, 2**63], "kwh": [0.5, 0.5]},
        "d-2": {"meter_id": "m", "ts_delta": [1772325000, -(2**70)], "kwh": [0.5, 0.5]},
        "d-3": {
            "meter_id": "m",
            "ts_delta": [1772325000, 1800],
            "kwh": [0.5, 0.5],
            "register_kwh_mdelta": [2**62, 2**62],
        },
    }
    w = worker(pg_dsn)
    for batch_id, columns in cases.items():
        payload = json.dumps({**base, "batch_id": batch_id, "columns": columns}).encode()
        with psycopg.connect(pg_dsn) as conn:
            topic, outcome = w.handle(conn, TOPIC, payload)
        ack = ack_of(outcome)
        assert topic and ack.status == "rejected" and ack.batch_id == batch_id
        assert ack.reason and ack.reason.startswith("invalid_envelope"), ack.reason
    assert w.counters["internal_errors"] == 0
    rows = pg.execute("select gateway_id, batch_id, reason from raw.quarantine").fetchall()
    assert sorted((gw, b) for gw, b, _ in rows) == [("gw1", b) for b in sorted(cases)]
    assert pg.execute("select count(*) from raw.readings").fetchone() == (0,)


def test_quarantine_keeps_an_excerpt_of_a_big_message_and_a_budget_per_gateway(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    w = worker(pg_dsn, quarantine_payload_max_bytes=4096, quarantine_budget_bytes_per_hour=60_000)
    small = b"{oops"
    with psycopg.connect(pg_dsn) as conn:
        w.handle(conn, TOPIC, small)
        # 8 big unreadable messages from gw1: excerpts until its budget is spent, then only
        # the reason, size and digest
        for i in range(8):
            w.handle(conn, TOPIC, b"{" + bytes([48 + i]) * 1_000_000)
        # another gateway's budget is its own
        w.handle(conn, "eiot/v1/gw/gw2/readings", b"{" + b"z" * 1_000_000)
    rows = pg.execute(
        "select gateway_id, length(raw), payload is not null, payload_size, payload_sha256"
        " from raw.quarantine order by quarantine_id"
    ).fetchall()
    assert len(rows) == 10  # every message has its row, with its reason
    assert rows[0][2] and rows[0][3] == len(small)  # small: its exact bytes are kept
    big = rows[1:9]
    assert all(not kept and size == 1_000_001 and len(sha) == 64 for _, _, kept, size, sha in big)
    excerpts = [n for _, n, _, _, _ in big]
    assert excerpts[0] == wire.MAX_RAW_CHARS and excerpts[-1] == 0  # the budget ran out
    assert sum(excerpts) <= 60_000
    assert w.counters["quarantine_over_budget"] >= 1
    assert rows[9][0] == "gw2" and rows[9][1] == wire.MAX_RAW_CHARS
    total = pg.execute("select sum(pg_column_size(q)) from raw.quarantine q").fetchone()
    assert total is not None and total[0] < 200_000  # 9 MB received, a few kB kept


def test_readings_of_a_meter_registered_to_another_gateway_are_quarantined(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    pg.execute("insert into raw.meters (meter_id, gateway_id) values ('mine', 'gw1')")
    pg.execute("insert into raw.meters (meter_id, gateway_id) values ('theirs', 'gw2')")
    readings = [
        {"meter_id": m, "ts": "2026-03-01T00:30:00Z", "kwh": 0.5}
        for m in ("mine", "theirs", "unregistered")
    ]
    with psycopg.connect(pg_dsn) as conn:
        _, outcome = worker(pg_dsn).handle(conn, TOPIC, batch("o-1", readings))
    ack = ack_of(outcome)
    assert (ack.inserted, ack.quarantined) == (2, 1)
    stored = {m for (m,) in pg.execute("select meter_id from raw.readings")}
    assert stored == {"mine", "unregistered"}
    (reason,) = pg.execute("select reason from raw.quarantine").fetchone() or ("",)
    assert reason.startswith("meter_of_other_gateway") and "gw2" in reason
