"""Upsert the registry into PostgreSQL (raw.grid_assets, raw.meters; central/sql/0001_raw.sql).

psycopg 3 is imported here only, so the simulator itself needs numpy alone.
"""

from __future__ import annotations

from typing import Any

from .registry import ASSET_KEYS, METER_KEYS, Registry


def _upsert_sql(table: str, keys: tuple[str, ...], pk: str, kept: tuple[str, ...] = ()) -> str:
    """Insert or update by ``pk``; a column of ``kept`` keeps a value it already has."""
    cols = ", ".join(keys)
    params = ", ".join(f"%({k})s" for k in keys)
    updates = ", ".join(
        f"{k} = coalesce({table}.{k}, excluded.{k})" if k in kept else f"{k} = excluded.{k}"
        for k in keys
        if k != pk
    )
    return (
        f"insert into {table} ({cols}) values ({params}) "
        f"on conflict ({pk}) do update set {updates}, updated_at = now()"
    )


ASSETS_SQL = _upsert_sql("raw.grid_assets", ASSET_KEYS, "asset_id")
# A load shape pinned centrally (central registry pin-shapes) outlives a new upsert.
METERS_SQL = _upsert_sql("raw.meters", METER_KEYS, "meter_id", kept=("load_shape",))


def upsert_registry(registry: Registry, dsn: str) -> dict[str, int]:
    """Insert or update every asset and meter in one transaction (assets first: regions,
    feeders, transformers, so foreign keys hold). Returns the row counts sent."""
    import psycopg

    meters: list[dict[str, Any]] = [{k: m.get(k) for k in METER_KEYS} for m in registry.meters]
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(ASSETS_SQL, registry.assets)
        cur.executemany(METERS_SQL, meters)
    return {"assets": len(registry.assets), "meters": len(meters)}
