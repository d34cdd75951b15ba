"""End to end with the real Mosquitto and PostgreSQL: train a model on synthetic meters, publish
it signed and retained, the agent (a real process) picks it up, a meter is bypassed, and the
anomaly alert reaches an MQTT subscriber and ``raw.alerts``; the scored readings reach
``raw.readings`` exactly once with their score and model version."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from central.local_services import SecureMosquitto
from central.pki import Pki
from edge_agent import topics
from tests.support.detection import T0, Subscriber, models, reading, write_spool
from tests.support.processes import Proc
from tests.support.rig import Rig
from tests.support.secure import connect

pytestmark = [pytest.mark.services, pytest.mark.slow]

GW = "gw-c"
METERS = ["m-theft", "m-outage", "m-a", "m-b", "m-c"]


@dataclass
class DetectionRig(Rig):
    extra_env: dict[str, str] = field(default_factory=dict)

    def agent_env(self, gw: str) -> dict[str, str]:
        return {**super().agent_env(gw), **self.extra_env}

    def feed_day(self, d: int, special: dict[str, dict[str, object]] | None = None) -> None:
        items = []
        for k in range(d * 48, d * 48 + 48):
            for m in METERS:
                items.append(reading(m, k, **(special or {}).get(m, {})))
                self.fed.add((m, T0 + 1800 * (k + 1)))
        write_spool(self.spool(GW), f"day{d:03d}", items)


def publish_retained(pki: Pki, port: int, root: str, message: dict[str, object]) -> None:
    """As the model publisher (the only identity allowed to)."""
    client = connect(pki, "svc-models", port)
    try:
        code = client.publish(topics.model(root, "iforest"), json.dumps(message).encode(), True)
        assert getattr(code, "value", code) in (0, 0x10), code
    finally:
        client.close()


def test_theft_detected_at_the_edge_reaches_subscribers_and_postgres(
    tmp_path: Path,
    pg_dsn: str,
    topic_root: str,
    procs: list[Proc],
    secure_broker: SecureMosquitto,
    pki: Pki,
) -> None:
    m = models()  # IsolationForest trained on labelled synthetic meters, signed
    port = secure_broker.port
    rig = DetectionRig(
        tmp_path,
        pg_dsn,
        port,
        topic_root,
        procs,
        gateways=[GW],
        pki=pki,
        extra_env={"EIOT_MODEL_PUBLIC_KEY": m.public_key, "EIOT_MODEL_NAME": "iforest"},
    )
    publish_retained(pki, port, topic_root, m.v1)
    watcher = "svc-alerts-test"  # reads alerts; the gateway's status comes through the ingest
    sub = Subscriber(
        port,
        [topics.alerts(topic_root, GW)],
        tls=(str(pki.ca_cert_path), str(pki.cert_path(watcher)), str(pki.key_path(watcher))),
    ).start()
    try:
        rig.start_ingest()
        rig.start_agent(GW)

        def model_in_use() -> str | None:  # as the gateway's status.v1 says, stored centrally
            with psycopg.connect(pg_dsn) as conn:
                row = conn.execute(
                    "select status->'model'->>'version' from raw.gateway_status "
                    "where gateway_id = %s order by received_at desc limit 1",
                    (GW,),
                ).fetchone()
            return None if row is None else row[0]

        rig.wait_until(lambda: model_in_use() == "v1", 30, "the agent to load the retained model")
        for d in range(8):
            rig.feed_day(d)
        # Day 8: a bypass (the meter reads nothing while supply is on) and an outage.
        rig.feed_day(8, {"m-theft": {"kwh": 0.0}, "m-outage": {"kwh": 0.0, "supply": "off"}})
        rig.feed_day(9)
        sub.wait_for(
            lambda: any(a["meter_id"] == "m-theft" for a in sub.payloads("/alerts")),
            60,
            "the theft alert on MQTT",
        )
        rig.wait_delivered(60)
        rig.assert_exactly_once()

        def stored_alerts() -> list[tuple[object, ...]]:
            with psycopg.connect(pg_dsn) as conn:
                return conn.execute(
                    "select alert_id, meter_id, kind, ts, score, threshold, model_version "
                    "from raw.alerts order by ts"
                ).fetchall()

        rig.wait_until(
            lambda: (
                {a[0] for a in stored_alerts()} >= {a["alert_id"] for a in sub.payloads("/alerts")}
            ),
            30,
            "the alerts stored centrally",
        )
    finally:
        sub.stop()

    theft = [a for a in stored_alerts() if a[1] == "m-theft"]
    assert theft and theft[0][2] == "anomaly" and theft[0][6] == "v1"
    assert theft[0][4] > theft[0][5]  # score above the model's threshold
    ts = theft[0][3]
    assert isinstance(ts, datetime) and T0 + 8 * 86400 < ts.timestamp() <= T0 + 9 * 86400
    assert not [a for a in stored_alerts() if a[1] == "m-outage"], "an outage is not theft"
    with psycopg.connect(pg_dsn) as conn:
        n, scored, versions = conn.execute(
            "select count(*), count(score), array_agg(distinct model_version) from raw.readings"
        ).fetchone()  # type: ignore[misc]
    assert n == scored == 10 * 48 * len(METERS) and versions == ["v1"]
    # what the subscriber saw is what central stored (once: alert_id is the primary key)
    assert {a["alert_id"] for a in sub.payloads("/alerts")} <= {a[0] for a in stored_alerts()}
