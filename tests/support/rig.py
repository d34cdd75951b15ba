"""A whole reading path of real processes for the fault tests: agents, ingest workers, a broker,
PostgreSQL; and the one check every fault test ends with: 0 lost, 0 doubled.

With a ``pki`` the broker is the secure one (``tests/support/secure.py``): agents connect as
their gateway id, ingest worker ``n`` as ``svc-ingest-<n>``, over TLS with client certificates."""

from __future__ import annotations

import ast
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from central.pki import Pki
from tests.support.processes import Proc
from tests.support.secure import identity_env

START = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class Rig:
    tmp: Path
    pg_dsn: str
    broker_port: int
    topic_root: str
    procs: list[Proc]
    agent_broker_port: int | None = None  # e.g. through a proxy
    ingest_pg_dsn: str | None = None  # e.g. through a proxy
    gateways: list[str] = field(default_factory=lambda: ["gw-a"])
    fed: set[tuple[str, int]] = field(default_factory=set)
    agents: dict[str, Proc] = field(default_factory=dict)
    ingests: list[Proc] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    pki: Pki | None = None
    buffer_dir: Path | None = None  # where the agents' buffers and spools live (default: tmp)

    # --- processes ------------------------------------------------------------------------

    def _identity(self, name: str, port: int) -> dict[str, str]:
        if self.pki is None:
            return {"EIOT_BROKER_PORT": str(port)}
        return identity_env(self.pki, name, port)

    def agent_env(self, gw: str) -> dict[str, str]:
        return {
            **self._identity(gw, self.agent_broker_port or self.broker_port),
            "EIOT_GATEWAY_ID": gw,
            "EIOT_TOPIC_ROOT": self.topic_root,
            "EIOT_DB_PATH": str(self.db(gw)),
            "EIOT_SPOOL_DIR": str(self.spool(gw)),
            "EIOT_BATCH_MAX_READINGS": "500",
            "EIOT_BATCH_MAX_AGE_S": "0.2",
            "EIOT_ACK_TIMEOUT_S": "2",
            "EIOT_ACK_TIMEOUT_MAX_S": "4",
            "EIOT_BACKOFF_MIN_S": "0.2",
            "EIOT_BACKOFF_MAX_S": "1",
            "EIOT_KEEPALIVE_S": "5",
            "EIOT_SESSION_EXPIRY_S": "300",
            "EIOT_STATUS_INTERVAL_S": "2",
            "EIOT_ALERT_RESEND_S": "3",
            "EIOT_RETENTION_S": str(10 * 365 * 86400),
        }

    def start_agent(
        self, gw: str = "gw-a", failpoint: str | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """Start (or start again) the agent of ``gw``; ``env`` adds to its settings."""
        proc = self.agents.get(gw)
        if proc is None:
            proc = Proc(["-m", "edge_agent", "run"], self.agent_env(gw), self.tmp / f"{gw}.log")
            self.agents[gw] = proc
            self.procs.append(proc)
        return proc.start({**(env or {}), "EIOT_FAILPOINT": failpoint or ""})

    def start_ingest(self, worker: str = "1", failpoint: str | None = None) -> Proc:
        env = {
            **self._identity(f"svc-ingest-{worker}", self.broker_port),
            "EIOT_PG_DSN": self.ingest_pg_dsn or self.pg_dsn,
            "EIOT_TOPIC_ROOT": self.topic_root,
            "EIOT_STATE_DIR": str(self.tmp / "ingest-state"),
            # stable per worker: a restarted worker resumes its broker session
            "EIOT_WORKER_ID": f"{worker}-{self.run_id}",
            "EIOT_SESSION_EXPIRY_S": "300",
            "EIOT_DB_RETRY_MAX_S": "1",
            "EIOT_FAILPOINT": failpoint or "",
        }
        proc = Proc(["-m", "central", "ingest"], env, self.tmp / f"ingest-{worker}.log").start()
        self.ingests.append(proc)
        self.procs.append(proc)
        return proc

    def wait_ingest_ready(self, proc: Proc) -> None:
        """Until the broker has taken the worker's subscriptions: messages published before that
        go to the other workers, or to nobody when it is the first."""
        self.wait_until(lambda: "subscribed to" in proc.output(), 30, f"{proc.log.name} subscribed")

    def stop_ingests(self) -> dict[str, dict[str, int]]:
        """Stop the ingest workers (SIGTERM, as an operator would) and return what each one
        counted in its last run, by log name (``ingest-1``...), from the line it logs on its way
        out."""
        for proc in self.ingests:
            proc.stop()
        return {proc.log.stem: self.final_counters(proc) for proc in self.ingests}

    def final_counters(self, proc: Proc) -> dict[str, int]:
        found = re.findall(r"final counters (\{.*\})$", proc.output(), re.MULTILINE)
        assert found, f"no final counters in {proc.log.name}: was it stopped?\n{self.logs()}"
        return dict(ast.literal_eval(found[-1]))

    # --- input ----------------------------------------------------------------------------

    def spool(self, gw: str) -> Path:
        path = (self.buffer_dir or self.tmp) / f"spool-{gw}"
        path.mkdir(exist_ok=True)
        return path

    def db(self, gw: str) -> Path:
        return (self.buffer_dir or self.tmp) / f"{gw}.db"

    def feed(self, gw: str, file_no: int, meters: int = 50, intervals: int = 10) -> None:
        """Drop one JSONL spool file: ``meters`` meters × ``intervals`` intervals (atomic)."""
        lines = []
        for m in range(meters):
            for k in range(intervals):
                ts = START + timedelta(minutes=30 * (file_no * intervals + k + 1))
                meter = f"{gw}-m{m:04d}"
                lines.append(
                    json.dumps(
                        {
                            "meter_id": meter,
                            "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "kwh": round(0.01 * (m + k), 3),
                            "voltage_v": 230.0,
                        }
                    )
                )
                self.fed.add((meter, int(ts.timestamp())))
        tmp = self.spool(gw) / f"{file_no:05d}.jsonl.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(tmp.with_suffix(""))

    # --- observation ----------------------------------------------------------------------

    def accepted(self) -> set[tuple[str, int]]:
        keys: set[tuple[str, int]] = set()
        for gw in self.agents:
            with sqlite3.connect(self.db(gw)) as conn:
                keys |= {(m, t) for m, t in conn.execute("select meter_id, ts from readings")}
        return keys

    def stored(self) -> list[tuple[str, int]]:
        with psycopg.connect(self.pg_dsn) as conn:
            return [
                (m, int(ts.timestamp()))
                for m, ts in conn.execute("select meter_id, ts from raw.readings")
            ]

    def stored_count(self) -> int:
        with psycopg.connect(self.pg_dsn) as conn:
            return int(conn.execute("select count(*) from raw.readings").fetchone()[0])  # type: ignore[index]

    def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

    def pending(self, gw: str) -> int:
        with sqlite3.connect(self.db(gw)) as conn:
            return int(
                conn.execute("select count(*) from readings where acked_at is null").fetchone()[0]
            )

    def counters(self, gw: str) -> dict[str, int]:
        """The agent's counters; empty before its buffer exists."""
        try:
            with sqlite3.connect(f"file:{self.db(gw)}?mode=ro", uri=True) as conn:
                return dict(conn.execute("select name, value from counters").fetchall())
        except sqlite3.Error:
            return {}

    def wait_delivered(self, timeout: float = 60) -> None:
        """Every fed reading accepted, and central acknowledged all of them."""

        def done() -> bool:
            try:
                return self.accepted() >= self.fed and all(
                    self.pending(g) == 0 for g in self.agents
                )
            except sqlite3.Error:
                return False

        self.wait_until(done, timeout, "every reading accepted and acknowledged")

    def assert_exactly_once(self) -> None:
        accepted = self.accepted()
        stored = self.stored()
        lost = accepted - set(stored)
        extra = set(stored) - accepted
        assert accepted == self.fed, f"agent accepted {len(accepted)} of {len(self.fed)} fed"
        assert not lost, f"{len(lost)} accepted readings never reached PostgreSQL"
        assert len(stored) == len(set(stored)), "a reading is stored twice"
        assert not extra, f"{len(extra)} readings in PostgreSQL that no agent accepted"
        with psycopg.connect(self.pg_dsn) as conn:
            inserted, conflicts = conn.execute(
                "select coalesce(sum(inserted), 0), coalesce(sum(conflicts), 0) "
                "from raw.ingest_batches"
            ).fetchone()  # type: ignore[misc]
            quarantined = conn.execute("select count(*) from raw.quarantine").fetchone()[0]  # type: ignore[index]
        assert inserted == len(stored), "the ledger counts differ from the table"
        assert conflicts == 0 and quarantined == 0, "a resend was taken for a different reading"

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in self.procs)
