"""``warehouse_refresh``'s hold on the warehouse (``central/warehouse/lease.py``) from inside its
tasks: the run is the holder, the generation is the XCom of the task that acquired the lease.

:func:`acquire` is the hold task's poke, :func:`release` its teardown. Every step that touches
the warehouse runs inside :func:`held`:

* the lease is renewed as the step starts, every quarter of its TTL while it runs (a live run's
  lease does not expire, however long dbt takes), and once more as it ends; a step whose lease
  was taken meanwhile fails at its start or its end, and never reports success;
* each step records the generation it ran under (XCom ``lease_generation``) and a step checks
  that the one before it (``after``) ran under its own: clearing only ``publish`` (or the gate,
  or the build) makes the hold take a new generation, and publishing the build database then
  could publish what another run left there, so such a step fails and asks to clear the run
  from ``load``.

A lease lost *while* a step runs (only possible when it was freed by hand or PostgreSQL was
unreachable for a whole TTL) is noticed at the next heartbeat: the step's ``on_lost`` runs then
(the dbt build stops its dbt process: another run may be building into the same database), and
the step fails as it ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

from central.orchestration import steps
from central.warehouse import lease
from central.warehouse.settings import WarehouseSettings

log = logging.getLogger(__name__)

#: The task that acquires the lease; its XCom is the generation it got.
HOLD_TASK: Final = "hold_warehouse"
#: XCom key: the generation a warehouse step ran under.
RAN_UNDER: Final = "lease_generation"


def holder(context: Any) -> str:
    """This run as a lease holder: ``<dag_id>/<run_id>``."""
    return f"{context['dag'].dag_id}/{context['run_id']}"


def acquire(context: Any) -> int | None:
    """Take the warehouse for this run: the lease's generation, or None while another run
    holds it (said in the task's log)."""
    s = steps.settings()
    got = lease.acquire(s.pg_dsn, holder(context), s.lease_ttl_s)
    if got is None:
        held_now = lease.current(s.pg_dsn)
        log.info("the warehouse is held by %s: waiting", held_now.holder if held_now else "?")
    return got


def release(context: Any) -> bool:
    """Free the warehouse if this run still holds it; whether it did."""
    return lease.release(steps.settings().pg_dsn, holder(context), generation(context))


def generation(context: Any) -> int:
    """The lease's generation this run acquired."""
    value = context["ti"].xcom_pull(task_ids=HOLD_TASK)
    if value is None:
        raise lease.LeaseLost(f"{holder(context)}: {HOLD_TASK} recorded no lease")
    return int(value)


@contextlib.contextmanager
def held(
    context: Any,
    after: str | None = None,
    every_s: float | None = None,
    on_lost: Callable[[], None] | None = None,
) -> Iterator[WarehouseSettings]:
    """Run a step under this run's lease (module doc): yields the warehouse settings once the
    lease is renewed and the step ``after`` is known to have run under the same generation;
    renews it every ``every_s`` (default a quarter of ``lease_ttl_s``) while the step runs,
    calling ``on_lost`` (from the heartbeat's thread) if it finds the lease taken; checks it
    again and records the generation when the step ends without an error."""
    s = steps.settings()
    who, gen = holder(context), generation(context)
    lease.keep(s.pg_dsn, who, gen, s.lease_ttl_s)
    if after is not None:
        before = context["ti"].xcom_pull(task_ids=after, key=RAN_UNDER)
        if before != gen:
            raise lease.LeaseLost(
                f"{after} ran under lease generation {before}, this step under {gen}: the "
                "warehouse may hold another run's data since; clear this run from load"
            )
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(every_s or s.lease_ttl_s / 4):
            try:
                lease.keep(s.pg_dsn, who, gen, s.lease_ttl_s)
            except lease.LeaseLost as exc:
                log.error("%s", exc)
                if on_lost is not None:
                    on_lost()
                return
            except Exception as exc:  # PostgreSQL away for a moment: the next beat retries
                log.warning("could not renew the warehouse lease: %s", exc)

    beat = threading.Thread(target=heartbeat, name="warehouse-lease", daemon=True)
    beat.start()
    try:
        yield s
    finally:
        stop.set()
        beat.join(timeout=60)  # a renewal under way ends within lease's statement timeout
    lease.keep(s.pg_dsn, who, gen, s.lease_ttl_s)
    context["ti"].xcom_push(key=RAN_UNDER, value=gen)
