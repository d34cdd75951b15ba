"""Each meter's long-memory profile (``meter_profiles``), kept between intake calls."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from edge_agent.buffer.db import BufferDB
from edge_agent.feature_spec import MeterProfile


class ProfileStore:
    def __init__(self, db: BufferDB) -> None:
        self._db = db

    def load(self, meter_ids: Iterable[str]) -> dict[str, MeterProfile]:
        """The stored profiles of these meters (a meter without one is absent)."""
        return {
            str(m): MeterProfile(int(day), bytes(sums), bytes(weights))
            for m, day, sums, weights in self._db.conn.execute(
                "select meter_id, through_day, sums, weights from meter_profiles "
                "where meter_id in (select value from json_each(?))",
                (json.dumps(sorted(set(meter_ids))),),
            )
        }

    def save(self, profiles: Mapping[str, MeterProfile]) -> None:
        """Store profiles, inside the caller's transaction (the readings that moved them)."""
        self._db.conn.executemany(
            "insert or replace into meter_profiles (meter_id, through_day, sums, weights) "
            "values (?, ?, ?, ?)",
            [(m, p.through_day, p.sums, p.weights) for m, p in profiles.items()],
        )
