"""``warehouse_refresh``'s hold on the warehouse (``central/warehouse/lease.py``) from inside its
tasks: the run is the holder, the generation is the XCom of the task that acquired the lease.

:func:`acquire` is the hold task's poke, :func:`release` its teardown. Every step that touches
the warehouse calls :func:`keep` first: it renews the lease, or fails the step with
:class:`~central.warehouse.lease.LeaseLost` when another run took it.
"""

from __future__ import annotations

import logging
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
        held = lease.current(s.pg_dsn)
        log.info("the warehouse is held by %s: waiting", held.holder if held else "?")
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


def keep(context: Any) -> WarehouseSettings:
    """The warehouse settings, once this run's lease is renewed for ``lease_ttl_s`` more."""
    s = steps.settings()
    lease.keep(s.pg_dsn, holder(context), generation(context), s.lease_ttl_s)
    return s
