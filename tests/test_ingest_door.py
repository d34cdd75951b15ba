"""What central lets through its door (central/ingest.py, central/store.py): hostile times,
overflowing columns, quarantine that cannot fill the disk, meters of another gateway. Every
refusal is a quarantine row that names the gateway, and every batch gets an ack, so nothing is
resent forever and nothing bad is stored."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from central import store
from central.ingest import IngestWorker, _database_cannot_take
from central.settings import CentralSettings
from edge_agent import wire
from edge_agent.alerts import alert_id
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


def alert(gateway: str, meter: str, kind: str = "tamper", aid: str | None = None) -> bytes:
    ts = "2026-03-01T00:30:00Z"
    return json.dumps(
        {
            "schema": "alert.v1",
            "alert_id": aid or alert_id(kind, meter, 1772325000),
            "gateway_id": gateway,
            "meter_id": meter,
            "ts": ts,
            "kind": kind,
        }
    ).encode()


def test_no_gateway_can_pre_empt_or_fake_another_gateways_alerts(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    pg.execute("insert into raw.meters (meter_id, gateway_id) values ('m-b', 'gw2')")
    w = worker(pg_dsn)
    day = int(time.time()) // 86400 * 86400  # scoring_off ids go by central's UTC day
    with psycopg.connect(pg_dsn) as conn:
        # gw1 sends first, under gw2's (predictable) ids: its alerts about gw2's meter are
        # refused; about a meter nobody registered they are gw1's own, beside gw2's
        w.handle(conn, "eiot/v1/gw/gw1/alerts", alert("gw1", "m-b"))
        w.handle(conn, "eiot/v1/gw/gw1/alerts", alert("gw1", "m-free"))
        # a kind only central raises, and gw2's scoring_off id taken first under another kind
        w.handle(conn, "eiot/v1/gw/gw1/alerts", alert("gw1", "gw1", kind="scoring_off"))
        stolen = alert_id("scoring_off", "gw2", day)
        w.handle(conn, "eiot/v1/gw/gw1/alerts", alert("gw1", "m-free", aid=stolen))
        # then gw2's real alerts, and a status saying it scores nothing
        w.handle(conn, "eiot/v1/gw/gw2/alerts", alert("gw2", "m-b"))
        w.handle(conn, "eiot/v1/gw/gw2/alerts", alert("gw2", "m-free"))
        status = {"schema": "status.v1", "gateway_id": "gw2", "state": "online"}
        status["sent_at"] = "2026-03-01T08:00:00Z"
        w.handle(conn, "eiot/v1/gw/gw2/status", json.dumps(status).encode())
    stored = set(pg.execute("select gateway_id, meter_id, kind from raw.alerts").fetchall())
    assert stored == {
        ("gw1", "m-free", "tamper"),
        ("gw2", "m-b", "tamper"),
        ("gw2", "m-free", "tamper"),
        ("gw2", "gw2", "scoring_off"),
    }
    reasons = sorted(r for (r,) in pg.execute("select reason from raw.quarantine"))
    assert [r.split(":")[0] for r in reasons] == ["meter_of_other_gateway", "reserved_kind"]
    # the stolen id: stored as gw1's, it did not stop gw2's scoring_off
    assert pg.execute(
        "select count(*) from raw.alerts where alert_id = %s", (stolen,)
    ).fetchone() == (2,)


def test_an_alert_that_trips_a_bug_or_cannot_be_decoded_is_still_answered(
    pg_dsn: str, pg: psycopg.Connection, monkeypatch: Any
) -> None:
    """Unanswered, the agent would resend the alert for ever: a bug while decoding it, a poison
    verdict or a body that is not JSON still gets a rejecting alert_ack that names it."""
    w = worker(pg_dsn)
    topic = "eiot/v1/gw/gw1/alerts"
    tripping = alert("gw1", "m-1")
    aid = json.loads(tripping)["alert_id"]
    broken = tripping[:-30]  # cut short: not JSON any more, its id still in the first bytes

    def bug(topic: str, payload: bytes) -> Any:
        raise KeyError("a bug")

    with monkeypatch.context() as m:
        m.setattr(w, "prepare", bug)
        work = w._prepare_guarded(topic, tripping)
    with psycopg.connect(pg_dsn) as conn:
        answers = [w.store_work(conn, work), w.handle(conn, topic, broken)]
    for ack_topic, outcome in answers:
        assert ack_topic == "eiot/v1/gw/gw1/ack"
        assert isinstance(outcome, store.AlertOutcome), outcome
        assert (outcome.ack.alert_id, outcome.ack.status) == (aid, "rejected")
    reasons = [o.ack.reason for _, o in answers]  # type: ignore[union-attr]
    assert reasons[0] == "internal_error" and reasons[1] != "internal_error", reasons
    assert pg.execute("select count(*) from raw.quarantine").fetchone() == (2,)
    assert pg.execute("select count(*) from raw.alerts").fetchone() == (0,)


def test_a_rejected_batch_keeps_its_bytes_or_waits_for_the_budget(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    """A rejected ack lets the agent drop the batch: its bytes must be kept whole, whatever
    their size. Over the gateway's budget it is not answered now: the agent sends it again
    later, and then it is."""
    now = [0.0]
    w = worker(
        pg_dsn, quarantine_payload_max_bytes=1000, quarantine_budget_bytes_per_hour=3_000_000
    )
    w.budget.clock = lambda: now[0]
    big = {"schema": "readings.v9", "gateway_id": "gw1", "batch_seq": 1, "pad": "x" * 2_000_000}
    first = json.dumps({**big, "batch_id": "r-1"}).encode()
    second = json.dumps({**big, "batch_id": "r-2"}).encode()
    with psycopg.connect(pg_dsn) as conn:
        _, one = w.handle(conn, TOPIC, first)
        _, two = w.handle(conn, TOPIC, second)  # over the 3 MB budget
        assert ack_of(one).status == "rejected"
        assert two is not None and two.ack is None  # not answered: the agent keeps it
        assert pg.execute(
            "select count(*) from raw.ingest_batches where batch_id = 'r-2'"
        ).fetchone() == (0,)
        now[0] += 3600  # an hour later the agent resends it
        _, again = w.handle(conn, TOPIC, second)
    assert ack_of(again).status == "rejected"
    kept = pg.execute(
        "select batch_id, payload from raw.quarantine order by quarantine_id"
    ).fetchall()
    assert [(b, bytes(p)) for b, p in kept] == [("r-1", first), ("r-2", second)]
    assert w.counters["rejections_deferred"] == 1


def test_a_database_that_cannot_store_is_an_outage_not_a_rejection(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    """A column missing after a deploy (or a grant, or a read-only server): the batch is not
    rejected (the agent would drop good readings), the error goes up and is retried."""
    pg.execute("alter table raw.readings rename column kwh to kwh_renamed")
    good = batch("g-1", [{"meter_id": "m1", "ts": "2026-03-01T00:30:00Z", "kwh": 0.5}])
    with psycopg.connect(pg_dsn) as conn:
        try:
            worker(pg_dsn).handle(conn, TOPIC, good)
        except psycopg.Error as exc:
            assert _database_cannot_take(exc)
        else:
            raise AssertionError("the batch was answered although nothing could be stored")
    assert pg.execute("select count(*) from raw.ingest_batches").fetchone() == (0,)
    assert pg.execute("select count(*) from raw.quarantine").fetchone() == (0,)
    pg.execute("alter table raw.readings rename column kwh_renamed to kwh")
    with psycopg.connect(pg_dsn) as conn:
        _, outcome = worker(pg_dsn).handle(conn, TOPIC, good)
    assert ack_of(outcome).inserted == 1


def test_a_batch_stored_before_digests_were_kept_is_never_a_replay(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    w = worker(pg_dsn)
    old = batch("n-1", [{"meter_id": "m1", "ts": "2026-03-01T00:30:00Z", "kwh": 0.5}])
    with psycopg.connect(pg_dsn) as conn:
        w.handle(conn, TOPIC, old)
    pg.execute("update raw.ingest_batches set payload_sha256 = null")  # as before 0007
    other = batch("n-1", [{"meter_id": "m2", "ts": "2026-03-01T00:30:00Z", "kwh": 0.7}])
    with psycopg.connect(pg_dsn) as conn:
        _, outcome = w.handle(conn, TOPIC, other)
    ack = ack_of(outcome)
    assert ack.status == "rejected" and ack.reason and ack.reason.startswith("batch_conflict")
