"""Accepted ``model.v1`` messages, as received, the newest few of each name."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.buffer.db import BufferDB


@dataclass(frozen=True)
class StoredModel:
    message: str  # the model.v1 JSON
    accepted_at: float


class ModelStore:
    def __init__(self, db: BufferDB, keep: int = 3) -> None:
        self._db = db
        self.keep = keep

    def save(
        self,
        *,
        name: str,
        version: str,
        created_at: str,
        sha256: str,
        message: str,
        public_key_sha256: str,
        now: float,
    ) -> None:
        """Record an accepted model as the current one of its name (the last ``keep`` of each
        name are kept)."""
        with self._db.transaction() as conn:
            conn.execute(
                "insert into models (name, version, created_at, sha256, message, accepted_at, "
                "public_key_sha256) values (?, ?, ?, ?, ?, ?, ?)",
                (name, version, created_at, sha256, message, now, public_key_sha256),
            )
            conn.execute(
                "delete from models where name = ? and id not in "
                "(select id from models where name = ? order by id desc limit ?)",
                (name, name, self.keep),
            )
            self._db.counters.add({"models_accepted": 1})

    def forget(self, name: str) -> int:
        """Drop the stored models of ``name`` (withdrawn by central)."""
        with self._db.transaction() as conn:
            cur = conn.execute("delete from models where name = ?", (name,))
            if cur.rowcount:
                self._db.counters.add({"models_withdrawn": 1})
        return int(cur.rowcount)

    def by_name(self) -> dict[str, list[StoredModel]]:
        """Every stored model, by name, newest first (the ones to fall back on after it)."""
        out: dict[str, list[StoredModel]] = {}
        for name, message, at in self._db.conn.execute(
            "select name, message, accepted_at from models order by name, id desc"
        ):
            out.setdefault(str(name), []).append(StoredModel(str(message), float(at)))
        return out

    def current(self) -> list[StoredModel]:
        """The newest accepted model of each name, by name."""
        return [
            StoredModel(str(message), float(at))
            for message, at in self._db.conn.execute(
                "select message, accepted_at from models "
                "where id in (select max(id) from models group by name) order by name"
            )
        ]
