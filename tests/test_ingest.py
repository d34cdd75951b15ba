"""The ingest worker: bad payloads become quarantine rows with reasons; the worker lives on."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import zlib
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from central.ingest import IngestWorker
from central.local_services import free_port
from central.settings import CentralSettings
from edge_agent import topics, wire
from tests.support.processes import BROKER_HOST, BROKER_PORT, wait_until

VALID = {
    "schema": "readings.v1",
    "gateway_id": "gw1",
    "batch_id": "x-1",
    "batch_seq": 1,
    "sent_at": "2026-03-02T00:00:00Z",
    "readings": [{"meter_id": "m1", "ts": "2026-03-01T00:30:00Z", "kwh": 0.5}],
}
VALID_V2 = {
    **{k: v for k, v in VALID.items() if k != "readings"},
    "schema": "readings.v2",
    "n": 2,
    "columns": {"meter_id": "m1", "ts_delta": [1772325000, 1800], "kwh": [0.5, 0.25]},
}
TOPIC = "eiot/v1/gw/gw1/readings"


def worker_for(dsn: str, root: str = "eiot/v1", **kw: Any) -> IngestWorker:
    return IngestWorker(CentralSettings(pg_dsn=dsn, topic_root=root, broker_port=BROKER_PORT, **kw))


def quarantine(pg: psycopg.Connection) -> list[tuple[str, str | None]]:
    return pg.execute(
        "select reason, batch_id from raw.quarantine order by quarantine_id"
    ).fetchall()


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "acked"),
    [
        (TOPIC, b"{oops", "malformed_json", False),
        (TOPIC, b"\x01garbage", "bad_compression", False),
        (TOPIC, b"\x7fELF", "bad_encoding", False),
        (TOPIC, json.dumps({**VALID, "schema": "readings.v9"}).encode(), "unknown_schema", True),
        (TOPIC, json.dumps({**VALID, "gateway_id": "gw2"}).encode(), "gateway_mismatch", True),
        (TOPIC, json.dumps({**VALID, "batch_seq": "x"}).encode(), "invalid_envelope", True),
        (
            TOPIC,
            json.dumps({k: v for k, v in VALID.items() if k != "batch_id"}).encode(),
            "invalid_envelope",
            False,
        ),
        (TOPIC, b"{" + b" " * 3000 + b"}", "oversize", False),
        ("eiot/v1/gw/readings", json.dumps(VALID).encode(), "bad_topic", False),
    ],
)
def test_bad_messages_quarantined_with_reason(
    pg_dsn: str, pg: psycopg.Connection, topic: str, payload: bytes, reason: str, acked: bool
) -> None:
    w = worker_for(pg_dsn, max_message_bytes=2048)
    with psycopg.connect(pg_dsn) as conn:
        ack_topic, outcome = w.handle(conn, topic, payload)
    rows = quarantine(pg)
    assert len(rows) == 1 and rows[0][0].startswith(reason), rows
    # the exact bytes are kept, whatever their size, so a rejected batch can be recovered
    stored = pg.execute("select payload from raw.quarantine").fetchone()
    assert stored is not None and bytes(stored[0]) == payload
    assert (outcome is not None and outcome.ack is not None) == acked
    if acked:
        assert outcome and outcome.ack and outcome.ack.status == "rejected"
        assert ack_topic == "eiot/v1/gw/gw1/ack"


def _mutations() -> st.SearchStrategy[bytes]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    )
    json_values = st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
    field = st.sampled_from(
        sorted(VALID_V2)
        + [
            "readings.0.kwh",
            "readings.0.ts",
            "readings.0.meter_id",
            "columns.kwh",
            "columns.ts_delta",
            "columns.meter_id",
            "columns.supply",
            "columns.flags",
        ]
    )

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        obj = json.loads(json.dumps(draw(st.sampled_from([VALID, VALID_V2]))))
        for _ in range(draw(st.integers(1, 3))):
            path = draw(field).split(".")
            target: Any = obj
            try:
                for part in path[:-1]:
                    target = target[int(part)] if part.isdigit() else target[part]
                if not isinstance(target, dict):
                    continue
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed the parent
            if draw(st.booleans()):
                target[path[-1]] = draw(json_values)
            else:
                target.pop(path[-1], None)
        body = json.dumps(obj).encode()
        return wire.ZLIB_HEADER + zlib.compress(body) if draw(st.booleans()) else body

    return st.one_of(
        st.binary(max_size=200), mutated(), json_values.map(lambda v: json.dumps(v).encode())
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=_mutations())
def test_fuzzed_payloads_never_crash(pg_dsn: str, payload: bytes) -> None:
    w = worker_for(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        before = conn.execute(
            "select (select count(*) from raw.quarantine) + "
            "(select count(*) from raw.ingest_batches)"
        ).fetchone()
        w.handle(conn, TOPIC, payload)  # must not raise
        after = conn.execute(
            "select (select count(*) from raw.quarantine) + "
            "(select count(*) from raw.ingest_batches), "
            "(select count(*) from raw.quarantine where payload_sha256 = "
            "encode(sha256(%s), 'hex'))",
            (payload,),
        ).fetchone()
        try:
            batch_id = wire.decode(payload).get("batch_id")
        except wire.DecodeError:
            batch_id = None
        replay = conn.execute(
            "select count(*) from raw.ingest_batches where batch_id = %s", (str(batch_id),)
        ).fetchone()
    assert before is not None and after is not None and replay is not None
    # something was recorded: a stored batch, a quarantine row, or this very message seen before
    assert after[0] > before[0] or after[1] == 1 or replay[0] == 1


def test_worker_process_survives_garbage_over_mqtt(
    pg_dsn: str, pg: psycopg.Connection, topic_root: str
) -> None:
    w = worker_for(pg_dsn, root=topic_root, worker_id=f"t{time.monotonic_ns()}", share_group="")
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    acks: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: acks.append(m.payload)
    client.connect(BROKER_HOST, BROKER_PORT)
    client.loop_start()
    try:
        assert w.link.wait_connected(10)
        client.subscribe(topics.ack(topic_root, "gw1"), qos=1)
        time.sleep(0.3)
        topic = topics.readings(topic_root, "gw1")
        for junk in (b"", b"{", b"\x01\x00", b"[]", b'{"schema":1}', b"\xff" * 100):
            client.publish(topic, junk, qos=1).wait_for_publish(5)
        client.publish(topic, wire.encode(VALID), qos=1).wait_for_publish(5)
        client.publish(topics.status(topic_root, "gw1"), b"not a status", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not acks:
            time.sleep(0.1)
        assert acks, "the valid batch after the garbage was never acknowledged"
        ack = wire.Ack.model_validate(wire.decode(acks[0]))
        assert ack.status == "stored" and ack.inserted == 1
        assert thread.is_alive()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(quarantine(pg)) < 7:
            time.sleep(0.1)
        assert len(quarantine(pg)) == 7
    finally:
        stop.set()
        thread.join(5)
        client.loop_stop()
        client.disconnect()


def test_status_with_a_nul_character_is_quarantined(pg_dsn: str, pg: psycopg.Connection) -> None:
    w = worker_for(pg_dsn)
    status = {
        "schema": "status.v1",
        "gateway_id": "gw1",
        "state": "online",
        "sent_at": "2026-03-02T00:00:00Z",
        "agent_version": "0.1\u0000",
    }
    with psycopg.connect(pg_dsn) as conn:
        w.handle(conn, "eiot/v1/gw/gw1/status", json.dumps(status).encode())
    (reason,) = [r for r, _ in quarantine(pg)]
    assert reason.startswith(("store_error", "invalid_status"))


def test_a_worker_exposes_its_ack_latency(pg_dsn: str, topic_root: str) -> None:
    """With ingest_metrics_port set, the worker serves /metrics: one observation of the ack
    latency per answer it published, labelled by its id; nothing for garbage it cannot answer."""
    port = free_port()
    worker_id = f"m{time.monotonic_ns()}"
    w = worker_for(
        pg_dsn, root=topic_root, worker_id=worker_id, share_group="", ingest_metrics_port=port
    )
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    acks: list[bytes] = []
    client.on_message = lambda c, u, m: acks.append(m.payload)
    client.connect(BROKER_HOST, BROKER_PORT)
    client.loop_start()

    def ack_latency() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        (family,) = [
            f
            for f in text_string_to_metric_families(text)
            if f.name == "eiot_ingest_ack_latency_seconds"
        ]
        return {
            s.name.rsplit("_", 1)[-1]: s.value
            for s in family.samples
            if s.labels.get("worker") == worker_id and s.name.endswith(("_count", "_sum"))
        }

    try:
        assert w.link.wait_connected(10)
        assert ack_latency() == {"count": 0.0, "sum": 0.0}
        client.subscribe(topics.ack(topic_root, "gw1"), qos=1)
        time.sleep(0.3)
        topic = topics.readings(topic_root, "gw1")
        client.publish(topic, b"\x01\x00", qos=1).wait_for_publish(5)  # unanswerable
        batch = {**VALID, "batch_id": f"lat-{worker_id}"}
        client.publish(topic, wire.encode(batch), qos=1).wait_for_publish(5)
        client.publish(topic, wire.encode(batch), qos=1).wait_for_publish(5)  # duplicate
        wait_until(lambda: len(acks) == 2, 15, "two answers")
        seen = ack_latency()
        assert seen["count"] == 2.0
        assert 0.0 < seen["sum"] < 15.0
    finally:
        stop.set()
        thread.join(5)
        client.loop_stop()
        client.disconnect()
    with pytest.raises(OSError):  # the endpoint goes with the worker
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
