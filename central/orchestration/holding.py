"""``warehouse_refresh``'s hold on the warehouse (``central/warehouse/lease.py``) from inside its
tasks: the run is the holder, the generation is the XCom of the task that acquired the lease.

:func:`acquire` is the hold task's poke, :func:`release` its teardown. Every step that touches
the warehouse runs inside :func:`held`: the lease is renewed as the step starts, every quarter
of its TTL while it runs (so a live run's lease never expires, however long dbt takes), and once
more as it ends. A step whose lease was taken meanwhile fails with
:class:`~central.warehouse.lease.LeaseLost` at its start or end, so it never reports success
and the run never publishes over another run's build.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Final

from central.orchestration import steps
from central.warehouse import lease
from central.warehouse.settings import WarehouseSettings

log = logging.getLogger(__name__)

#: The task that acquires the lease; its XCom is the generation it got.
HOLD_TASK: Final = "hold_warehouse"


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
def held(context: Any, every_s: float | None = None) -> Iterator[WarehouseSettings]:
    """Run a step under this run's lease (module doc): yields the warehouse settings once the
    lease is renewed; renews it every ``every_s`` (default a quarter of ``lease_ttl_s``) while
    the step runs; checks it again when the step ends without an error."""
    s = steps.settings()
    who, gen = holder(context), generation(context)
    lease.keep(s.pg_dsn, who, gen, s.lease_ttl_s)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(every_s or s.lease_ttl_s / 4):
            try:
                lease.keep(s.pg_dsn, who, gen, s.lease_ttl_s)
            except lease.LeaseLost as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # PostgreSQL away for a moment: the next beat retries
                log.warning("could not renew the warehouse lease: %s", exc)

    beat = threading.Thread(target=heartbeat, name="warehouse-lease", daemon=True)
    beat.start()
    try:
        yield s
    finally:
        stop.set()
        beat.join()
    lease.keep(s.pg_dsn, who, gen, s.lease_ttl_s)
