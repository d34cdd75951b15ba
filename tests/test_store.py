"""The central batch store against the real PostgreSQL: replays, duplicates, conflicts."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import psycopg

from central import store
from edge_agent import wire


def env(
    batch_id: str, readings: list[dict[str, Any]], gw: str = "gw1", **kw: Any
) -> wire.BatchEnvelope:
    return wire.BatchEnvelope.model_validate(
        {
            "schema": "readings.v1",
            "gateway_id": gw,
            "batch_id": batch_id,
            "batch_seq": 1,
            "sent_at": "2026-03-02T00:00:00Z",
            "readings": readings,
            **kw,
        }
    )


def rd(meter: str, k: int, kwh: float = 0.5, **kw: Any) -> dict[str, Any]:
    ts = datetime.fromtimestamp(1_772_323_200 + 1800 * (k + 1), UTC)
    return {"meter_id": meter, "ts": wire.iso_z(ts), "kwh": kwh, **kw}


def count(pg: psycopg.Connection, sql: str) -> int:
    return int(pg.execute(sql).fetchone()[0])  # type: ignore[index]


def test_store_then_replay_gets_same_ack(pg_dsn: str, pg: psycopg.Connection) -> None:
    readings = [rd("m1", k, flags=["cover_open"]) for k in range(10)]
    with psycopg.connect(pg_dsn) as conn:
        first = store.store_batch(conn, env("b-1", readings), "t")
        again = store.store_batch(conn, env("b-1", readings), "t")
    assert first.ack and first.ack.inserted == 10 and not first.replay
    assert again.replay and again.ack == first.ack
    assert count(pg, "select count(*) from raw.readings") == 10
    assert pg.execute("select flags from raw.readings limit 1").fetchone()[0] == ["cover_open"]


def test_overlapping_batches_out_of_order(pg_dsn: str, pg: psycopg.Connection) -> None:
    a = [rd("m1", k) for k in range(20)]
    b = [rd("m1", k) for k in range(10, 30)]
    with psycopg.connect(pg_dsn) as conn:
        ack_b = store.store_batch(conn, env("b-2", b), "t").ack
        ack_a = store.store_batch(conn, env("b-1", a), "t").ack
    assert ack_b and ack_b.inserted == 20
    assert ack_a and (ack_a.inserted, ack_a.duplicates, ack_a.conflicts) == (10, 10, 0)
    assert count(pg, "select count(*) from raw.readings") == 30


def test_conflict_keeps_first_and_quarantines_newcomer(pg_dsn: str, pg: psycopg.Connection) -> None:
    with psycopg.connect(pg_dsn) as conn:
        store.store_batch(conn, env("b-1", [rd("m1", 0, 0.5)]), "t")
        ack = store.store_batch(conn, env("b-2", [rd("m1", 0, 0.9), rd("m1", 1)]), "t").ack
    assert ack and (ack.inserted, ack.conflicts, ack.quarantined) == (1, 1, 1)
    assert pg.execute(
        "select kwh from raw.readings where meter_id='m1' order by ts"
    ).fetchall() == [(0.5,), (0.5,)]
    reason, raw = pg.execute("select reason, raw from raw.quarantine").fetchone()  # type: ignore[misc]
    assert reason.startswith("conflict") and '"kwh":0.9' in raw


def test_score_difference_is_not_a_conflict(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        store.store_batch(conn, env("b-1", [rd("m1", 0, score=0.1, model_version="v1")]), "t")
        ack = store.store_batch(
            conn, env("b-2", [rd("m1", 0, score=0.7, model_version="v2")]), "t"
        ).ack
    assert ack and ack.duplicates == 1 and ack.conflicts == 0


def test_invalid_readings_quarantined_rest_stored(pg_dsn: str, pg: psycopg.Connection) -> None:
    readings = [rd("m1", 0), {"meter_id": "m1", "kwh": -1}, "junk", rd("m1", 1, voltage_v=999)]
    quarantined = [
        {
            "raw": "x",
            "reason": "malformed_json",
            "received_at": "2026-03-01T00:00:00Z",
            "source": "spool:a",
        },
        {"nonsense": 1},
    ]
    with psycopg.connect(pg_dsn) as conn:
        ack = store.store_batch(conn, env("b-1", readings, quarantined=quarantined), "t").ack
    assert ack and ack.inserted == 1 and ack.quarantined == 5
    reasons = sorted(r for (r,) in pg.execute("select reason from raw.quarantine"))
    assert sum(r.startswith("invalid:") for r in reasons) == 3
    assert "malformed_json" in reasons
    assert any(r.startswith("invalid_quarantine_record") for r in reasons)


def test_two_workers_same_batch_store_once(pg_dsn: str, pg: psycopg.Connection) -> None:
    readings = [rd(f"m{i}", k) for i in range(50) for k in range(40)]
    results: list[store.Outcome] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        with psycopg.connect(pg_dsn) as conn:
            barrier.wait()
            results.append(store.store_batch(conn, env("b-1", readings), "t"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.replay for r in results) == 1
    assert len({r.ack for r in results}) == 1
    assert count(pg, "select count(*) from raw.readings") == 2000
    assert count(pg, "select count(*) from raw.ingest_batches") == 1


def test_reject_is_stored_once_with_same_ack(pg_dsn: str, pg: psycopg.Connection) -> None:
    bad = store.BadMessage("gateway_mismatch: topic a, payload b", "b-9")
    with psycopg.connect(pg_dsn) as conn:
        first = store.reject(conn, b"{payload}", bad, "eiot/v1/gw/a/readings", "a")
        second = store.reject(conn, b"{payload}", bad, "eiot/v1/gw/a/readings", "a")
    assert first.ack and first.ack.status == "rejected" and first.ack == second.ack
    assert count(pg, "select count(*) from raw.quarantine") == 1
