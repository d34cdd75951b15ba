"""One writer of the warehouse at a time: a lease in PostgreSQL (``ops.leases``,
``central/sql/0020_warehouse_lease.sql``).

A run of ``warehouse_refresh`` acquires the lease before it loads and releases it after it
published (or failed): two runs at once would build into the one build database and publish a
mix of both. Airflow's ``max_active_runs`` does not prevent that, as a backfill's runs are counted
apart from the DAG's.

* :func:`acquire` takes the lease when it is free, released or expired, or already this
  holder's, and returns the new generation (every acquisition is one, so an earlier attempt of
  the same run, still running somewhere, is told apart); a lease held by another holder returns
  None (the caller waits).
* :func:`keep` renews the lease for ``ttl_s`` more and raises :class:`LeaseLost` when it is no
  longer this holder's at this generation (it expired and another run took it, even if that run
  since released it): the step that finds it so fails.
* :func:`release` frees it (only the holder's own generation).

The expiry frees a lease whose holder died (its worker killed, the scheduler gone); a live holder
renews it while it works (``central/orchestration/holding.py``), and a hung one is stopped by its
task's timeout.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel

WAREHOUSE: Final = "warehouse"


class LeaseLost(RuntimeError):
    """The holder no longer holds the lease it acquired: it must stop without publishing."""


class Lease(BaseModel):
    """A lease as it stands in ``ops.leases``."""

    name: str
    generation: int
    holder: str | None
    acquired_at: datetime
    expires_at: datetime


def _connect(dsn: str) -> psycopg.Connection:
    # Short statements: bounded, so a half-open connection cannot hold a step at its end.
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=10,
        options="-c statement_timeout=30000",
        keepalives=1,
        keepalives_idle=30,
    )


def acquire(dsn: str, holder: str, ttl_s: float, name: str = WAREHOUSE) -> int | None:
    """Take the lease ``name`` for ``holder`` for ``ttl_s`` seconds: its new generation, or None
    when another holder has it and it has not expired. The same holder may take it again (a
    cleared run whose earlier attempt died holding it), under a new generation."""
    if not holder:
        raise ValueError("a lease needs a holder")
    with _connect(dsn) as conn:
        row = conn.execute(
            """
            insert into ops.leases as l (name, generation, holder, acquired_at, expires_at)
            values (%(name)s, 1, %(holder)s, now(), now() + make_interval(secs => %(ttl)s))
            on conflict (name) do update set
                generation = l.generation + 1,
                acquired_at = now(),
                holder = excluded.holder,
                expires_at = excluded.expires_at
            where l.holder is null or l.holder = excluded.holder or l.expires_at <= now()
            returning generation
            """,
            {"name": name, "holder": holder, "ttl": ttl_s},
        ).fetchone()
    return None if row is None else int(row[0])


def keep(dsn: str, holder: str, generation: int, ttl_s: float, name: str = WAREHOUSE) -> None:
    """Renew the lease for ``ttl_s`` more seconds; :class:`LeaseLost` when ``holder`` no longer
    holds it at ``generation``. An expired lease nobody took is still the holder's: nobody else
    wrote meanwhile."""
    with _connect(dsn) as conn:
        renewed = conn.execute(
            "update ops.leases set expires_at = now() + make_interval(secs => %s) "
            "where name = %s and holder = %s and generation = %s returning name",
            (ttl_s, name, holder, generation),
        ).fetchone()
    if renewed is None:
        now = current(dsn, name)
        raise LeaseLost(
            f"{holder} does not hold the {name} lease at generation {generation}; it is now "
            + (
                f"held by {now.holder} (generation {now.generation}) until {now.expires_at}"
                if now and now.holder
                else f"free (generation {now.generation if now else 0})"
            )
            + ": this run stops, the other run's data stand"
        )


def release(dsn: str, holder: str, generation: int, name: str = WAREHOUSE) -> bool:
    """Free the lease if ``holder`` holds it at ``generation``; whether it did."""
    with _connect(dsn) as conn:
        freed = conn.execute(
            "update ops.leases set holder = null, acquired_at = now(), expires_at = now() "
            "where name = %s and holder = %s and generation = %s returning name",
            (name, holder, generation),
        ).fetchone()
    return freed is not None


def current(dsn: str, name: str = WAREHOUSE) -> Lease | None:
    """The lease ``name`` as it stands, or None if it was never taken."""
    with _connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "select name, generation, holder, acquired_at, expires_at from ops.leases "
            "where name = %s",
            (name,),
        ).fetchone()
    return None if row is None else Lease(**row)
