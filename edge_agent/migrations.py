"""Schema of the gateway buffer, versioned with ``PRAGMA user_version``.

Migration ``N`` is the plain SQL file ``edge_agent/sql/000N_*.sql``, applied once, in order,
inside one transaction with the version bump, so a power cut mid-migration leaves the previous
version intact. Plain SQL keeps the agent's first start light (no schema library to import) and
the buffer readable with any SQLite tool (``sqlite3``, ``sqlite-utils rows buffer.db readings``).
"""

from __future__ import annotations

import sqlite3
from importlib import resources


def _scripts() -> list[str]:
    files = sorted(
        (
            f
            for f in resources.files("edge_agent").joinpath("sql").iterdir()
            if f.name.endswith(".sql")
        ),
        key=lambda f: f.name,
    )
    for number, f in enumerate(files, 1):
        if not f.name.startswith(f"{number:04d}_"):
            raise RuntimeError(
                f"buffer migrations out of order: {f.name} should be number {number}"
            )
    return [f.read_text(encoding="utf-8") for f in files]


MIGRATIONS: list[str] = _scripts()
LATEST = len(MIGRATIONS)


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("pragma user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to the latest schema; idempotent. Returns the version reached.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each script carries its own
    ``begin immediate … commit``, and a failed statement rolls the whole step back."""
    current = version(conn)
    if current > LATEST:
        raise RuntimeError(f"buffer schema v{current} is newer than this agent (v{LATEST})")
    for number in range(current + 1, LATEST + 1):
        apply(conn, number)
    return LATEST


def apply(conn: sqlite3.Connection, number: int) -> None:
    """Apply migration ``number`` (1-based) and set ``user_version`` to it, in one transaction."""
    script = MIGRATIONS[number - 1]
    try:
        conn.executescript(f"begin immediate;\n{script}\n;pragma user_version = {number};\ncommit;")
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise
