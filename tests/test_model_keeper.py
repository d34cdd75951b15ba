"""The model in service survives a broker that lost its retained messages: the broker is
killed and started on an empty store (as after a crash inside its autosave interval); the
keeper (``python -m ml keep-published``) reconnects and publishes the model again, retained;
what the broker still holds is not sent again, and what is newer (a withdrawal) is never
overwritten. The keeper has its own identity: ``ml publish`` connecting does not throw it off."""

from __future__ import annotations

import threading

import psycopg
import pytest

from central.local_services import SecureMosquitto, free_port
from central.pki import Pki
from edge_agent import topics, wire
from ml.keeper import RetainedKeeper
from ml.publish import build_withdrawal
from ml.registry import Broker, mark_published, publish_retained, read_retained, register
from tests.support.detection import models
from tests.support.processes import wait_until

pytestmark = pytest.mark.services


def as_identity(secure_broker: SecureMosquitto, pki: Pki, name: str) -> Broker:
    return Broker(
        port=secure_broker.port,
        tls=True,
        ca_file=str(pki.ca_cert_path),
        cert_file=str(pki.cert_path(name)),
        key_file=str(pki.key_path(name)),
    )


def test_keeper_publishes_again_what_a_restarted_broker_lost(
    pg_dsn: str, topic_root: str, secure_broker: SecureMosquitto, pki: Pki
) -> None:
    broker = as_identity(secure_broker, pki, "svc-models")
    m = models()
    topic = topics.model(topic_root, "iforest")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for message in (m.v1, m.v2):  # v2 is the newest published: the one in service
            stored, _ = register(conn, message)
            publish_retained(topic, wire.encode(stored, compress=True), broker)
            mark_published(conn, message["name"], message["version"], topic)

    keeper = RetainedKeeper(
        pg_dsn, as_identity(secure_broker, pki, "svc-models-keeper"), root=topic_root, settle_s=1.0
    )
    stop = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: keeper.checks >= 1, 20, "the first check")
        assert keeper.republished == 0  # the broker holds v2: nothing sent again

        secure_broker.kill()
        for store in secure_broker.files.state_dir.glob("*.db"):
            store.unlink()  # a fresh store: the retained model is gone
        secure_broker.start()
        wait_until(lambda: keeper.checks >= 2, 30, "a check after the restart")
        assert keeper.republished == 1
        payload = read_retained(topic, broker, timeout_s=5)
        assert payload is not None
        assert wire.decode(payload, wire.MODEL_LIMITS)["version"] == "v2"
        # ml publish connecting as svc-models did not take the keeper's session over
        assert keeper.link.connects == 2, keeper.link.connects  # first start, broker restart

        # central withdraws the model: a newer retained message the keeper leaves alone
        withdrawal = build_withdrawal("iforest", private_key=m.key)
        publish_retained(topic, wire.encode(withdrawal, compress=False), broker)
        checks = keeper.checks
        keeper._due.set()
        wait_until(lambda: keeper.checks > checks, 20, "a check after the withdrawal")
        assert keeper.republished == 1
        payload = read_retained(topic, broker, timeout_s=5)
        assert payload is not None
        assert wire.schema_of(wire.decode(payload, wire.MODEL_LIMITS)) == "model_withdrawal.v1"
    finally:
        stop.set()
        thread.join(10)


def test_keeper_outlives_a_database_it_cannot_reach(
    topic_root: str, secure_broker: SecureMosquitto, pki: Pki
) -> None:
    keeper = RetainedKeeper(
        f"postgresql://eiot@127.0.0.1:{free_port()}/nothing",
        as_identity(secure_broker, pki, "svc-models-keeper"),
        root=topic_root,
        settle_s=0.2,
        retry_s=0.5,
    )
    stop = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: keeper.failures >= 3, 20, "checks failing and retried")
        assert thread.is_alive() and keeper.checks == 0
    finally:
        stop.set()
        thread.join(10)
