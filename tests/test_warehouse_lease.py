"""The warehouse lease (central/warehouse/lease.py) on the real PostgreSQL, through a login of the
loader's role (what warehouse_refresh's tasks connect as): one holder at a time, renewals keep
the generation, a holder whose lease expired and was taken (even if since released) is told it
lost it, racing acquirers get one winner."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from central import roles
from central.orchestration import holding
from central.warehouse import lease
from tests.support.logins import logins


@pytest.fixture
def loader(pg_dsn: str) -> Iterator[str]:
    with logins(pg_dsn) as make:
        yield make(roles.LOADER)


def expire(pg: psycopg.Connection) -> None:
    pg.execute("update ops.leases set expires_at = now() - interval '1 second'")


def test_one_holder_at_a_time_and_release_by_the_holder_only(loader: str) -> None:
    assert lease.current(loader) is None
    assert lease.acquire(loader, "run-a", 600) == 1
    assert lease.acquire(loader, "run-b", 600) is None, "held by run-a"
    lease.keep(loader, "run-a", 1, 600)
    with pytest.raises(lease.LeaseLost, match="held by run-a"):
        lease.keep(loader, "run-b", 1, 600)
    # run-a cleared and started again while its first attempt still runs somewhere: the new
    # attempt takes the lease at once, under a new generation the old attempt does not hold
    assert lease.acquire(loader, "run-a", 600) == 2
    with pytest.raises(
        lease.LeaseLost, match="run-a does not hold the warehouse lease at generation 1"
    ):
        lease.keep(loader, "run-a", 1, 600)
    assert not lease.release(loader, "run-a", 1), "nor may it release the new attempt's"
    assert not lease.release(loader, "run-b", 2), "only the holder releases"
    assert lease.release(loader, "run-a", 2)
    now = lease.current(loader)
    assert now is not None and now.holder is None and now.generation == 2
    assert lease.acquire(loader, "run-b", 600) == 3
    with pytest.raises(lease.LeaseLost, match="held by run-b"):
        lease.keep(loader, "run-a", 2, 600)
    with pytest.raises(ValueError):
        lease.acquire(loader, "", 600)


def test_an_expired_lease_is_kept_until_taken_and_lost_for_good_once_taken(
    loader: str, pg: psycopg.Connection
) -> None:
    assert lease.acquire(loader, "run-a", 600) == 1
    expire(pg)
    lease.keep(loader, "run-a", 1, 600)  # nobody took it: nobody wrote meanwhile
    held = lease.current(loader)
    assert held is not None and held.holder == "run-a"
    assert lease.acquire(loader, "run-b", 600) is None, "renewed: held again"

    expire(pg)  # run-a stalls past its lease; run-b takes it, does its run, releases it
    assert lease.acquire(loader, "run-b", 600) == 2
    assert lease.release(loader, "run-b", 2)
    with pytest.raises(lease.LeaseLost, match="free"):
        lease.keep(loader, "run-a", 1, 600)  # run-b's build stands; run-a must not publish
    assert not lease.release(loader, "run-a", 1)
    assert lease.acquire(loader, "run-a", 600) == 3, "a new acquisition is a new generation"


def test_racing_acquirers_get_one_winner(loader: str) -> None:
    runs = [f"run-{i}" for i in range(8)]
    got: dict[str, int | None] = {}
    start = threading.Barrier(len(runs))

    def race(run: str) -> None:
        start.wait()
        got[run] = lease.acquire(loader, run, 600)

    threads = [threading.Thread(target=race, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r, g in got.items() if g is not None]
    assert len(got) == len(runs) and len(winners) == 1, got
    held = lease.current(loader)
    assert held is not None and held.holder == winners[0] and held.generation == 1


def test_the_ttl_frees_a_dead_holders_lease(loader: str) -> None:
    assert lease.acquire(loader, "run-a", 0.5) == 1  # run-a dies holding it
    assert lease.acquire(loader, "run-b", 600) is None
    time.sleep(1.0)
    assert lease.acquire(loader, "run-b", 600) == 2


def test_the_loader_cannot_delete_the_generation_nor_others_touch_the_lease(
    pg_dsn: str, loader: str
) -> None:
    lease.acquire(loader, "run-a", 600)
    with (
        psycopg.connect(loader, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("delete from ops.leases")
    with logins(pg_dsn) as make:
        for role in (roles.INGEST, roles.ML, roles.DASHBOARD):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                lease.acquire(make(role), "intruder", 600)
    with (
        psycopg.connect(loader, autocommit=True) as conn,
        pytest.raises(psycopg.errors.CheckViolation),
    ):
        conn.execute("insert into ops.leases values ('Warehouse; --', 1, 'x', now(), now())")


class _TaskInstance:
    """The XCom of one run's task instances, as ``ti.xcom_pull``/``xcom_push`` see it."""

    def __init__(self, generation: int | None, xcom: dict[tuple[str, str], Any] | None = None):
        self.xcom = {} if xcom is None else xcom
        self.xcom[(holding.HOLD_TASK, "return_value")] = generation
        self.task_id = ""

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcom.get((task_ids, key))

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[(self.task_id, key)] = value

    def step(self, task_id: str) -> _TaskInstance:
        self.task_id = task_id
        return self


def test_a_run_holds_renews_and_releases_the_lease_and_stops_when_another_run_took_it(
    loader: str, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What warehouse_refresh's tasks call (central/orchestration/holding.py), given the parts
    of the Airflow context they read: the run, and the generation its hold task acquired."""
    monkeypatch.setenv("EIOT_PG_DSN", loader)
    monkeypatch.setenv("EIOT_LEASE_TTL_S", "900")
    run = {"dag": SimpleNamespace(dag_id="warehouse_refresh"), "run_id": "backfill__2026-12-01"}
    generation = holding.acquire(run)
    assert generation == 1
    assert holding.acquire({**run, "run_id": "scheduled__2026-12-01"}) is None, "waits"
    step = {**run, "ti": _TaskInstance(generation)}

    def left() -> float:
        (seconds,) = pg.execute(  # type: ignore[misc]
            "select extract(epoch from expires_at - now()) from ops.leases"
        ).fetchone()
        return float(seconds)

    with holding.held(step) as s:
        assert s.pg_dsn == loader and 800 < left() <= 900, "renewed for lease_ttl_s"
    # A step that outlives the lease's TTL keeps it: the heartbeat renews it while it runs.
    with holding.held(step, every_s=0.1):
        expire(pg)
        time.sleep(0.5)
        assert left() > 800
        assert holding.acquire({**run, "run_id": "scheduled__2026-12-01"}) is None

    with (
        pytest.raises(lease.LeaseLost, match="recorded no lease"),
        holding.held({**run, "ti": _TaskInstance(None)}),
    ):
        pass
    # Another run takes the lease while a step runs (its worker froze, or someone freed the
    # lease by hand): the step is told at the next heartbeat (the dbt build stops dbt), and it
    # fails as it ends, it does not report success.
    told = threading.Event()
    with pytest.raises(lease.LeaseLost, match="held by warehouse_refresh/manual__"):  # noqa: PT012
        with holding.held(step, every_s=0.1, on_lost=told.set):
            expire(pg)
            assert not told.is_set()
            assert lease.acquire(loader, "warehouse_refresh/manual__2026-12-01", 60) == 2
            assert told.wait(5), "the step was not told it lost the lease"
    held = lease.current(loader)
    assert held is not None and held.holder == "warehouse_refresh/manual__2026-12-01"
    with pytest.raises(lease.LeaseLost), holding.held(step):
        pass  # the next step of that run does not start
    assert not holding.release(step), "not its lease now"
    manual = {**run, "run_id": "manual__2026-12-01", "ti": _TaskInstance(2)}
    assert holding.release(manual)
    held = lease.current(loader)
    assert held is not None and held.holder is None and held.generation == 2


def test_a_step_cleared_alone_does_not_publish_what_it_did_not_build(
    loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clearing only publish clears the hold too: it takes a new generation, and the build
    database may hold another run's data by then. Publish checks that the gate before it ran
    under its own generation, and asks to clear the run from load."""
    monkeypatch.setenv("EIOT_PG_DSN", loader)
    run = {"dag": SimpleNamespace(dag_id="warehouse_refresh"), "run_id": "scheduled__2026-12-02"}
    first = holding.acquire(run)
    ti = _TaskInstance(first)
    for step, after in (("load", None), ("dbt_build", "load"), ("quality_gate", "dbt_build")):
        with holding.held({**run, "ti": ti.step(step)}, after=after):
            pass
    assert ti.xcom_pull("quality_gate", holding.RAN_UNDER) == first

    # publish failed; someone clears publish alone: the hold runs again first
    assert holding.release({**run, "ti": ti})
    again = holding.acquire(run)
    assert again == first + 1
    ti.xcom[(holding.HOLD_TASK, "return_value")] = again
    with (
        pytest.raises(lease.LeaseLost, match="clear this run from load"),
        holding.held({**run, "ti": ti.step("publish")}, after="quality_gate"),
    ):
        pytest.fail("publish ran on a build of another generation")
    # cleared from load, every step runs again under the new generation: publish goes ahead
    for step, after in (
        ("load", None),
        ("dbt_build", "load"),
        ("quality_gate", "dbt_build"),
        ("publish", "quality_gate"),
    ):
        with holding.held({**run, "ti": ti.step(step)}, after=after):
            pass
    assert ti.xcom_pull("publish", holding.RAN_UNDER) == again
