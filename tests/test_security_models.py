"""Detection cannot be switched off or rolled back by a stranger: withdrawals are signed, an
agent never goes back to an older model (also across restarts), a gateway without a model says
why, and central raises ``scoring_off`` for it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.ingest import IngestWorker
from central.settings import CentralSettings
from edge_agent import wire
from edge_agent.rollout import models_in_use
from ml.publish import build_withdrawal
from tests.support.detection import gateway, models
from tests.support.processes import BROKER_PORT

TOPIC = "eiot/v1/models/iforest"


def offer(gw: object, message: dict[str, object]) -> None:
    manager = gw.models  # type: ignore[attr-defined]
    manager.on_message(json.dumps(message).encode(), TOPIC)
    manager.drain()


def test_an_agent_never_goes_back_to_an_older_model(tmp_path: Path) -> None:
    m = models()
    gw = gateway(tmp_path / "b.db", model=m.v2)
    offer(gw, m.v1)  # a captured older model, replayed
    assert [s.version for s in gw.models.states()] == ["v2"]
    assert (gw.models.error or "").startswith("rollback")
    assert gw.buffer.counters.all()["models_rejected_rollback"] == 1
    gw.close()
    again = gateway(tmp_path / "b.db")  # after a restart: v2 from the buffer, v1 still refused
    assert [s.version for s in again.models.states()] == ["v2"]
    offer(again, m.v1)
    assert [s.version for s in again.models.states()] == ["v2"]
    again.close()


def test_only_a_signed_withdrawal_stops_detection(tmp_path: Path) -> None:
    m = models()
    gw = gateway(tmp_path / "b.db", model=m.v1)
    gw.models.on_message(b"", TOPIC)  # an empty retained message
    gw.models.drain()
    forged = build_withdrawal("iforest", private_key=Ed25519PrivateKey.generate())
    offer(gw, forged)
    assert [s.version for s in gw.models.states()] == ["v1"]  # still scoring
    assert (gw.models.error or "").startswith("bad_signature")
    offer(gw, build_withdrawal("iforest", private_key=m.key))
    assert gw.models.states() == []
    assert (gw.models.status_error() or "").startswith("withdrawn")


def test_a_gateway_without_a_model_says_why(tmp_path: Path) -> None:
    gw = gateway(tmp_path / "b.db")
    assert gw.models.status_error() == "no_model: none received yet"
    offer(gw, {**models().v1, "signature": "A" * 88})
    assert (gw.models.status_error() or "").startswith("bad_signature")


def test_central_raises_scoring_off_once_a_day(
    pg_dsn: str, pg: psycopg.Connection, tmp_path: Path
) -> None:
    worker = IngestWorker(
        CentralSettings(pg_dsn=pg_dsn, broker_port=BROKER_PORT, state_dir=tmp_path)
    )
    status = {
        "schema": "status.v1",
        "gateway_id": "gw1",
        "state": "online",
        "sent_at": "2026-03-02T10:00:00Z",
        "model_error": "withdrawn: central withdrew iforest",
    }
    with psycopg.connect(pg_dsn) as conn:
        for hour in ("10", "11"):  # twice the same day: one alert
            worker.handle(
                conn,
                "eiot/v1/gw/gw1/status",
                json.dumps({**status, "sent_at": f"2026-03-02T{hour}:00:00Z"}).encode(),
            )
        scoring = {**status, "model": {"name": "iforest", "version": "v1", "loaded_at": "x"}}
        scoring["model"]["loaded_at"] = "2026-03-02T12:00:00Z"  # type: ignore[index]
        worker.handle(conn, "eiot/v1/gw/gw1/status", json.dumps(scoring).encode())
    rows = pg.execute("select kind, gateway_id, meter_id, detail from raw.alerts").fetchall()
    assert rows == [("scoring_off", "gw1", "gw1", "withdrawn: central withdrew iforest")]
    assert wire.Status.model_validate(scoring).model is not None


def test_a_damaged_stored_model_gives_way_to_the_previous_one(tmp_path: Path) -> None:
    """The newest stored model no longer verifies (a flipped bit on the card): after a restart
    the agent scores with the previous one it accepted, verified again, says so, and
    ``edge-agent status`` names the model in use, not the damaged one."""
    m = models()
    gw = gateway(tmp_path / "b.db", model=m.v1)
    offer(gw, m.v2)
    assert [s.version for s in gw.models.states()] == ["v2"]
    gw.close()
    with sqlite3.connect(tmp_path / "b.db") as conn:
        damaged = conn.execute(
            "update models set message = replace(message, ?, ?) where version = 'v2'",
            (m.v2["sha256"], "0" * 64),
        ).rowcount
    assert damaged == 1
    again = gateway(tmp_path / "b.db")
    assert [s.version for s in again.models.states()] == ["v1"]
    assert (again.models.status_error() or "").startswith("stored model refused: checksum")
    assert again.buffer.counters.all()["models_fallback"] == 1
    assert models_in_use(again.buffer.meta) == {"iforest": "v1"}
    again.close()
    shown = subprocess.run(
        [sys.executable, "-m", "edge_agent", "status", "--json"],
        env={**os.environ, "EIOT_DB_PATH": str(tmp_path / "b.db")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)["models"] == ["iforest v1"]
