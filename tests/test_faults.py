"""Fault injection on the real reading path: agents, ingest workers, Mosquitto and PostgreSQL as
real processes. Every test ends with the same check: the readings the agents accepted are in
PostgreSQL exactly once (0 lost, 0 doubled)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from central.local_services import PrivatePostgres, SecureMosquitto, free_port
from central.netproxy import TcpProxy
from central.pki import Pki
from edge_agent.sources.spool import SLICE_RECORDS
from tests.support.postgres import migrated_database, private_postgres
from tests.support.processes import Proc
from tests.support.rig import Rig

pytestmark = pytest.mark.slow


def test_agent_sigkill_at_every_stage(rig: Rig) -> None:
    rig.start_ingest()
    # killed right after freezing a batch, right after publishing one, then at random moments
    failpoints = ["sync.after_form:2", "sync.after_publish:3", None, None]
    file_no = 0
    for fp in failpoints:
        for _ in range(4):
            rig.feed("gw-a", file_no)
            file_no += 1
        agent = rig.start_agent("gw-a", failpoint=fp)
        if fp:
            assert agent.wait(30) == -9, "the failpoint did not fire"
        else:
            rig.wait_until(
                lambda: (
                    rig.stored_count() > 0 and rig.pending("gw-a") > 0 or rig.pending("gw-a") == 0
                ),
                30,
                "progress",
            )
            time.sleep(0.3)
            agent.kill()
    rig.start_agent("gw-a")
    rig.wait_delivered()
    rig.assert_exactly_once()
    # The batch published right before the second kill (killed before its send was recorded)
    # is either sent again by the next process or acknowledged to it first through its
    # persistent session: a race, both ways correct (exactly once, above). So every batch but
    # that one has a recorded send.
    counters = rig.counters("gw-a")
    assert counters["batches_sent"] >= counters["batches_formed"] - 1, counters


def test_agent_sigkill_in_the_middle_of_a_spool_file(rig: Rig) -> None:
    rig.start_ingest()
    rig.feed("gw-a", 0, meters=250, intervals=20)  # 5,000 records: several slices
    assert 5000 > 2 * SLICE_RECORDS
    agent = rig.start_agent("gw-a", failpoint="spool.after_slice:2")
    assert agent.wait(30) == -9, "the failpoint did not fire"
    # two slices committed, the file still in the spool
    assert len(rig.accepted()) == 2 * SLICE_RECORDS
    rig.start_agent("gw-a")
    rig.wait_delivered()
    rig.assert_exactly_once()
    counters = rig.counters("gw-a")
    assert counters.get("readings_duplicate", 0) == 0, counters  # resumed, not taken again


def wait_salvaged_and_acknowledged(rig: Rig) -> None:
    rig.wait_until(
        lambda: rig.counters("gw-a").get("buffer_recoveries") == 1 and rig.pending("gw-a") == 0,
        60,
        "the salvaged readings acknowledged",
    )


def all_accepted(rig: Rig) -> bool:
    """Every fed reading in the agents' buffers (False while a buffer is being made)."""
    try:
        return rig.accepted() >= rig.fed
    except sqlite3.Error:
        return False


def test_a_damaged_buffer_is_salvaged_and_what_central_lacks_still_arrives_once(
    rig: Rig,
) -> None:
    """A worn card returns noise for two pages of the buffer, one of readings central has, one
    of readings it lacks: the agent's next start sets the file aside and salvages it; every
    reading central lacked arrives once, but for that one page, which is counted; none it had
    is sent again."""
    from tests.test_buffer_salvage import damage_page, leaf_pages

    rig.start_ingest()
    for n in range(4):
        rig.feed("gw-a", n)
    agent = rig.start_agent("gw-a")
    rig.wait_delivered()
    delivered = set(rig.stored())
    agent.stop()
    for n in range(4, 8):
        rig.feed("gw-a", n)
    # the link down: what comes next waits in the buffer alone (not queued at the broker)
    agent = rig.start_agent("gw-a", env={"EIOT_BROKER_PORT": str(free_port())})
    rig.wait_until(lambda: all_accepted(rig), 30, "the new files accepted")
    agent.stop()
    with contextlib.closing(sqlite3.connect(rig.db("gw-a"))) as conn:
        waiting = {
            (m, t)
            for m, t in conn.execute("select meter_id, ts from readings where acked_at is null")
        }
    assert waiting == rig.fed - delivered and len(waiting) == 2000
    pages = leaf_pages(rig.db("gw-a"), "readings")
    damage_page(rig.db("gw-a"), pages[1])
    damage_page(rig.db("gw-a"), pages[-4], seed=8)

    rig.start_agent("gw-a")
    wait_salvaged_and_acknowledged(rig)
    stored = rig.stored()
    assert len(stored) == len(set(stored)), "a reading is stored twice"
    lost = rig.fed - set(stored)
    assert lost <= waiting and 0 < len(lost) <= 100, len(lost)
    counters = rig.counters("gw-a")
    assert counters["readings_salvaged"] == len(waiting) - len(lost)
    # only the salvaged readings went out again (the counters carried over from the old file)
    assert counters["readings_acked"] == len(delivered) + len(waiting) - len(lost)
    with contextlib.closing(sqlite3.connect(rig.db("gw-a"))) as conn:
        (record,) = conn.execute("select value from meta where key = 'buffer_recovery'").fetchone()
    assert json.loads(record)["unreadable"]["readings"] > len(lost), "the acked page is counted"
    assert (rig.db("gw-a").parent / "gw-a.db.corrupt-1").exists()


def test_a_value_the_card_flipped_stops_the_agent_once_and_the_restart_salvages(
    rig: Rig,
) -> None:
    """A flipped bit in a meter id of a waiting reading: the start's quick_check passes, the
    agent fails when it reads that row into a batch, marks its buffer suspect and exits; the
    next start (systemd's restart) salvages the buffer, and every other reading arrives once."""
    from tests.test_buffer_salvage import flip_text_byte, leaf_pages

    for n in range(4):
        rig.feed("gw-a", n)
    agent = rig.start_agent("gw-a", env={"EIOT_BROKER_PORT": str(free_port())})  # link down
    rig.wait_until(lambda: all_accepted(rig), 30, "the files accepted")
    agent.stop()
    db = rig.db("gw-a")
    flip_text_byte(db, leaf_pages(db, "readings")[2], b"gw-a-m")

    rig.start_ingest()
    failed = rig.start_agent("gw-a")
    assert failed.wait(60) != 0, "the agent went on over a row it cannot read"
    assert "Could not decode" in failed.output()
    assert (db.parent / "gw-a.db.suspect").exists()
    rig.start_agent("gw-a")
    wait_salvaged_and_acknowledged(rig)
    stored = rig.stored()
    assert len(stored) == len(set(stored)) == len(rig.fed) - 1
    assert set(stored) <= rig.fed


def test_broker_killed_and_restarted(rig: Rig, secure_broker: SecureMosquitto) -> None:
    private_broker = secure_broker
    rig.start_ingest()
    rig.start_agent("gw-a")
    for n in range(6):
        rig.feed("gw-a", n)
    rig.wait_until(lambda: rig.stored_count() >= 500, 30, "first batches stored")
    private_broker.kill()
    for n in range(6, 12):  # the agent keeps accepting while the broker is gone
        rig.feed("gw-a", n)
    rig.wait_until(lambda: rig.accepted() >= rig.fed, 30, "readings accepted during the outage")
    time.sleep(3)
    private_broker.start()
    rig.wait_delivered()
    rig.assert_exactly_once()


def test_ingest_reconnects_within_seconds_of_a_broker_restart(
    rig: Rig, secure_broker: SecureMosquitto
) -> None:
    """Down 20 s (an uncapped backoff would be waiting up to 16 s by then), the broker comes
    back: the ingest is connected again within its backoff cap (5 s) and stores new batches."""
    ingest = rig.start_ingest()
    rig.wait_ingest_ready(ingest)
    rig.start_agent("gw-a")
    rig.feed("gw-a", 0)
    rig.wait_delivered(30)
    secure_broker.kill()
    time.sleep(20)
    seen = len(secure_broker.log_file.read_bytes())
    secure_broker.start()
    back = time.monotonic()

    def ingest_back() -> bool:  # the broker's log since the restart
        return b" as svc-ingest-1 " in secure_broker.log_file.read_bytes()[seen:]

    rig.wait_until(ingest_back, 15, "the ingest connected again")
    assert time.monotonic() - back < 7.5
    rig.feed("gw-a", 1)
    rig.wait_delivered(30)
    rig.assert_exactly_once()


def test_ingest_killed_between_commit_and_ack(rig: Rig) -> None:
    ingest = rig.start_ingest(failpoint="ingest.after_commit:3")
    rig.start_agent("gw-a")
    for n in range(8):
        rig.feed("gw-a", n)
    assert ingest.wait(30) == -9, "the failpoint did not fire"
    committed = rig.stored_count()
    assert committed >= 3 * 500 - 500  # three batches were committed, the third never acked
    again = rig.start_ingest()
    rig.wait_delivered()
    rig.assert_exactly_once()
    # the batch committed without ack came back (redelivered by the broker to the resumed
    # session, or resent by the agent) and was answered from the ledger
    rig.wait_until(lambda: "delivered again" in again.output(), 10, "a replay answered")


def test_postgres_unreachable_for_a_while(rig: Rig, proxy_factory: type[TcpProxy]) -> None:
    proxy = proxy_factory(5432)
    rig.ingest_pg_dsn = rig.pg_dsn.replace(":5432/", f":{proxy.port}/")
    rig.start_ingest()
    rig.start_agent("gw-a")
    rig.feed("gw-a", 0)
    rig.wait_until(lambda: rig.stored_count() >= 500, 30, "first file stored")
    proxy.cut()
    for n in range(1, 8):
        rig.feed("gw-a", n)
    time.sleep(6)
    assert rig.stored_count() == 500  # nothing got through while the database was away
    proxy.restore()
    rig.wait_delivered()
    rig.assert_exactly_once()


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL of the test's own, that it may crash; stopped and removed afterwards."""
    with private_postgres(tmp_path) as server:
        yield server


def test_postgres_crashed_and_restarted_during_ingest(
    tmp_path: Path,
    topic_root: str,
    procs: list[Proc],
    private_pg: PrivatePostgres,
    secure_broker: SecureMosquitto,
    pki: Pki,
) -> None:
    rig = Rig(
        tmp_path, migrated_database(private_pg), secure_broker.port, topic_root, procs, pki=pki
    )
    ingest = rig.start_ingest()
    rig.start_agent("gw-a")
    backlog = 40  # files (one batch each): still being stored when the server crashes
    for n in range(backlog):
        rig.feed("gw-a", n)
    rig.wait_until(lambda: rig.stored_count() >= 2 * 500, 30, "first batches stored")
    fed_before = len(rig.fed)
    crashed_at = datetime.now(UTC)
    private_pg.stop("immediate")  # a crash: backends killed, no checkpoint
    # the agent keeps accepting while the database is away; the outage outlasts the agent's ack
    # timeout (4 s at most), so it also resends batches the ingest could not store
    outage_ends = time.monotonic() + 6
    n = backlog
    while time.monotonic() < outage_ends:
        rig.feed("gw-a", n)
        n += 1
        time.sleep(0.5)
    rig.wait_until(lambda: rig.accepted() >= rig.fed, 30, "readings accepted during the outage")
    restarted_at = datetime.now(UTC)
    private_pg.start()  # same port, same data: recovers from the WAL
    rig.wait_delivered()
    rig.assert_exactly_once()

    stored = _ledger(rig.pg_dsn)
    before = [inserted for at, inserted in stored if at < crashed_at]
    after = [inserted for at, inserted in stored if at > restarted_at]
    assert len(before) >= 2 and sum(before) < fed_before, "the crash did not hit a busy ingest"
    assert sum(after) >= len(rig.fed) - fed_before, "the outage's readings not stored after it"
    assert "not properly shut down" in private_pg.log_file.read_text(), "no crash recovery"
    assert "database unavailable" in ingest.output(), "the ingest never met the outage"
    assert rig.stop_ingests()["ingest-1"]["db_retries"] >= 1


def _ledger(dsn: str) -> list[tuple[datetime, int]]:
    """Each stored batch: when its transaction began, how many readings it inserted."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select stored_at, inserted from raw.ingest_batches where status = 'stored'"
        ).fetchall()


def test_flapping_network_between_agent_and_broker(rig: Rig, proxy_factory: type[TcpProxy]) -> None:
    proxy = proxy_factory(rig.broker_port)
    rig.agent_broker_port = proxy.port
    rig.start_ingest()
    rig.start_agent("gw-a")
    deadline = time.monotonic() + 12
    n = 0
    while time.monotonic() < deadline:
        rig.feed("gw-a", n)
        n += 1
        time.sleep(0.4)
        proxy.drop_connections()
        if n % 5 == 0:  # now and then a longer cut
            proxy.cut()
            time.sleep(1.0)
            proxy.restore()
    assert proxy.connections >= 10
    rig.wait_delivered(90)
    rig.assert_exactly_once()


def test_two_gateways_two_workers_share_the_load(rig: Rig) -> None:
    workers = [rig.start_ingest("1"), rig.start_ingest("2")]
    for worker in workers:  # both in the share group before the first batch is published
        rig.wait_ingest_ready(worker)
    files = 10  # per gateway, one batch each: round-robin gives each worker about 10
    for gw in ("gw-a", "gw-b"):
        rig.start_agent(gw)
        for n in range(files):
            rig.feed(gw, n)
    rig.wait_delivered()
    rig.assert_exactly_once()
    counted = rig.stop_ingests()
    assert counted.keys() == {"ingest-1", "ingest-2"}
    stored = {name: c.get("batches_stored", 0) for name, c in counted.items()}
    seen = {name: stored[name] + c.get("batches_replayed", 0) for name, c in counted.items()}
    with psycopg.connect(rig.pg_dsn) as conn:
        row = conn.execute("select count(*) from raw.ingest_batches").fetchone()
    batches = row[0] if row else 0
    assert sum(stored.values()) == batches >= 2 * files, f"{stored}, {batches} in the ledger"
    assert min(stored.values()) >= files // 2, f"one worker did (nearly) all the work: {stored}"
    # shared, not copied: two groups would each get every batch (and race to store it)
    assert max(seen.values()) < batches, f"a worker got every batch: {seen} of {batches}"
