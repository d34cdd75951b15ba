"""A batch id names one content forever: central never acknowledges a known id with other
content as stored, an agent applies an ack only to the bytes it sent, and an agent whose buffer
went back in time (a stale copy) sends those readings again under a new incarnation."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from central import store
from central.local_services import SecureMosquitto
from central.pki import Pki
from edge_agent import wire
from edge_agent.buffer import Buffer
from tests.support.builders import row
from tests.support.rig import Rig
from tests.support.secure import connect
from tests.test_store import env, rd


def test_central_never_acks_a_known_batch_id_with_other_content_as_stored(
    pg_dsn: str, pg: psycopg.Connection
) -> None:
    genuine = wire.encode(
        env("x-00000001", [rd("m1", k) for k in range(5)]).model_dump(mode="json", by_alias=True)
    )
    other = wire.encode(
        env("x-00000001", [rd("m1", k, kwh=0.0) for k in range(5, 9)]).model_dump(
            mode="json", by_alias=True
        )
    )
    with psycopg.connect(pg_dsn) as conn:

        def send(payload: bytes) -> store.Outcome:
            e = wire.BatchEnvelope.model_validate(wire.decode(payload))
            return store.store_batch(conn, store.prepare(e, "t", payload))

        first = send(genuine)
        replay = send(genuine)
        conflict = send(other)
        again = send(other)  # resent: the same answer, quarantined once
    assert first.ack and first.ack.status == "stored" and first.ack.inserted == 5
    assert first.ack.batch_sha256 == hashlib.sha256(genuine).hexdigest()
    assert replay.replay and replay.ack == first.ack
    assert conflict.conflict and conflict.ack and conflict.ack.status == "rejected"
    assert (conflict.ack.reason or "").startswith("batch_conflict")
    assert conflict.ack.batch_sha256 == hashlib.sha256(other).hexdigest()
    assert again.ack == conflict.ack
    assert pg.execute("select count(*) from raw.readings").fetchone() == (5,)
    rows = pg.execute("select reason, payload_sha256 from raw.quarantine").fetchall()
    assert len(rows) == 1 and rows[0][0].startswith("batch_conflict")
    assert rows[0][1] == hashlib.sha256(other).hexdigest()


def test_an_ack_is_applied_only_to_the_bytes_it_names(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    buf.readings.accept([row("m", k) for k in range(4)], now=1.0)
    batch = buf.batches.form("gw", 10, now=2.0, compress=True)
    assert batch is not None
    forged = wire.Ack(batch_id=batch.batch_id, status="stored", batch_sha256="0" * 64)
    assert not buf.batches.apply_ack(forged, now=3.0)
    assert buf.readings.pending == 4 and len(buf.batches.open()) == 1
    assert buf.counters.all()["acks_digest_mismatch"] == 1
    right = hashlib.sha256(batch.payload).hexdigest()
    assert buf.batches.apply_ack(
        wire.Ack(batch_id=batch.batch_id, status="stored", batch_sha256=right), now=3.0
    )
    assert buf.readings.pending == 0


def test_a_batch_conflict_sends_the_readings_again_under_a_new_incarnation(
    tmp_path: Path,
) -> None:
    buf = Buffer(tmp_path / "b.db")
    rec = wire.QuarantineRecord.of("junk", "malformed_json", wire.datetime.now(wire.UTC), "s")
    buf.readings.accept([row("m", k) for k in range(6)], [rec], now=1.0)
    old = buf.db.incarnation
    first = buf.batches.form("gw", 10, now=2.0, compress=True)
    assert first is not None and first.batch_id.startswith(old)
    conflict = wire.Ack(
        batch_id=first.batch_id,
        status="rejected",
        reason="batch_conflict: stored with other content",
        batch_sha256=hashlib.sha256(first.payload).hexdigest(),
    )
    assert buf.batches.apply_ack(conflict, now=3.0)
    assert buf.db.incarnation != old and buf.meta.get("incarnation") == buf.db.incarnation
    assert buf.readings.pending == 6 and buf.batches.open() == []  # nothing acknowledged
    second = buf.batches.form("gw", 10, now=4.0, compress=True)
    assert second is not None and second.batch_id.startswith(buf.db.incarnation)
    body = wire.BatchEnvelope.model_validate(wire.decode(second.payload))
    assert body.size == 6 and len(body.quarantined) == 1  # the same readings and record
    counters = buf.counters.all()
    assert counters["batches_id_conflict"] == 1 and counters["readings_requeued"] == 6
    buf.close()
    again = Buffer(tmp_path / "b.db")  # the new incarnation survives a restart
    assert again.db.incarnation == buf.db.incarnation


@pytest.mark.slow
def test_a_stale_copy_of_the_buffer_loses_nothing(tmp_path: Path, pg_dsn: str, rig: Rig) -> None:
    """The agent's card is copied (a backup), the agent goes on and delivers more, is killed
    (its last commits only in the -wal file); then it starts from the stale copy (a restored
    card, or a -wal file lost in a power cut) and takes new readings: the batch ids it forms
    again are ones central knows with other content. Every reading fed reaches PostgreSQL
    exactly once."""
    db = tmp_path / "gw-a.db"
    rig.start_ingest()
    agent = rig.start_agent("gw-a")
    for n in range(3):
        rig.feed("gw-a", n)
    rig.wait_delivered()
    agent.stop()
    stale = tmp_path / "stale.db"
    with sqlite3.connect(db) as src, sqlite3.connect(stale) as dst:
        src.backup(dst)  # a consistent copy of the card as it is now
    rig.start_agent("gw-a")
    for n in range(3, 6):
        rig.feed("gw-a", n)
    rig.wait_until(lambda: rig.stored_count() == len(rig.fed), 60, "the second part stored")
    rig.agents["gw-a"].kill()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(stale, db)
    for n in range(6, 9):
        rig.feed("gw-a", n)
    rig.start_agent("gw-a")

    def stored() -> list[tuple[str, int]]:
        return rig.stored()

    rig.wait_until(lambda: set(stored()) >= rig.fed, 90, "every reading stored")
    time.sleep(1)
    got = stored()
    assert len(got) == len(set(got)) == len(rig.fed)  # nothing doubled, nothing foreign
    counters = rig.counters("gw-a")
    assert counters.get("batches_id_conflict", 0) >= 1, counters
    with psycopg.connect(pg_dsn) as conn:
        reasons = [r for (r,) in conn.execute("select reason from raw.quarantine")]
    assert reasons and all(r.startswith("batch_conflict") for r in reasons), reasons


@pytest.mark.slow
def test_a_message_that_kills_the_worker_twice_is_set_aside(
    pg_dsn: str, topic_root: str, secure_broker: SecureMosquitto, pki: Pki, rig: Rig
) -> None:
    gw = connect(pki, "gw-a", secure_broker.port)
    gw.subscribe(f"{topic_root}/gw/gw-a/ack")
    poison = wire.encode(
        env("p0ison-00000001", [rd("m1", k) for k in range(3)], gw="gw-a").model_dump(
            mode="json", by_alias=True
        )
    )
    good = wire.encode(
        env("g00d-00000001", [rd("m2", k) for k in range(3)], gw="gw-a").model_dump(
            mode="json", by_alias=True
        )
    )
    try:
        for death in (1, 2):  # the worker dies while decoding it, twice
            worker = rig.start_ingest(failpoint="ingest.decoding:1")
            if death == 1:  # the second start gets it again from its session, maybe before SUBACK
                rig.wait_ingest_ready(worker)
                gw.publish(f"{topic_root}/gw/gw-a/readings", poison)
            rig.wait_until(lambda w=worker: not w.alive(), 30, "the worker's death")
            assert worker.wait(1) == -9, rig.logs()
        worker = rig.start_ingest()  # the third start sets it aside, without decoding it
        gw.publish(f"{topic_root}/gw/gw-a/readings", good)
        rig.wait_until(lambda: rig.stored_count() == 3, 30, "the good batch stored")
        gw.wait(lambda: len(gw.messages) >= 2, what="both acks")
    finally:
        gw.close()
    acks = {
        a.batch_id: a
        for a in (wire.Ack.model_validate(wire.decode(m.payload)) for m in gw.messages)
    }
    assert acks["g00d-00000001"].status == "stored"
    assert acks["p0ison-00000001"].status == "rejected"
    assert (acks["p0ison-00000001"].reason or "").startswith("poison_message")
    with psycopg.connect(pg_dsn) as conn:
        (reason,) = conn.execute("select reason from raw.quarantine").fetchone()  # type: ignore[misc]
        stored = {m for (m,) in conn.execute("select distinct meter_id from raw.readings")}
    assert reason.startswith("poison_message: the ingest worker died 2 times") and stored == {"m2"}
