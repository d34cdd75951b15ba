"""Attacks on the broker with the shipped secure configuration (central.broker): each is refused,
with the MQTT 5 reason code where the protocol gives one."""

from __future__ import annotations

import time

import pytest

from central.broker import BrokerAdmin
from central.local_services import SecureMosquitto
from central.pki import Pki, PkiError
from tests.support.secure import connect, refused_tls

pytestmark = pytest.mark.services

NOT_AUTHORIZED = 0x87


def code(reason: object) -> int:
    return int(getattr(reason, "value", reason))  # type: ignore[call-overload]


def test_a_gateway_speaks_only_as_itself(
    secure_broker: SecureMosquitto, pki: Pki, topic_root: str
) -> None:
    port, r = secure_broker.port, topic_root
    a = connect(pki, "gw-a", port)
    try:
        assert code(a.connack) == 0
        assert code(a.publish(f"{r}/gw/gw-a/readings", b"{}")) in (0, 0x10)  # no subscriber
        for topic in (
            f"{r}/gw/gw-b/readings",  # as another gateway
            f"{r}/gw/gw-b/status",
            f"{r}/gw/gw-a/ack",  # an ack, even its own
            f"{r}/gw/gw-b/ack",
            f"{r}/models/iforest",  # a model
        ):
            assert code(a.publish(topic, b"{}")) == NOT_AUTHORIZED, topic
        # withdrawing a model (an empty retained message) is publishing one
        assert code(a.publish(f"{r}/models/iforest", b"", retain=True)) == NOT_AUTHORIZED
        for topic in (
            "#",
            f"{r}/#",
            f"{r}/gw/+/readings",
            f"$share/ingest/{r}/gw/+/readings",  # joining the ingest's group
            f"$share/x/{r}/gw/+/status",
            f"{r}/gw/gw-b/ack",
            f"{r}/gw/+/alerts",
        ):
            assert code(a.subscribe(topic)) == NOT_AUTHORIZED, topic
        assert code(a.subscribe(f"{r}/gw/gw-a/ack")) == 1  # granted QoS 1
        assert code(a.subscribe(f"{r}/models/+")) == 1
    finally:
        a.close()


def test_only_central_reads_every_gateway_and_acks(
    secure_broker: SecureMosquitto, pki: Pki, topic_root: str
) -> None:
    port, r = secure_broker.port, topic_root
    ingest = connect(pki, "svc-ingest-1", port)
    alerts = connect(pki, "svc-alerts-test", port)
    gw = connect(pki, "gw-a", port)
    try:
        assert code(ingest.subscribe(f"$share/ingest/{r}/gw/+/readings")) == 1
        assert code(ingest.subscribe(f"{r}/gw/+/status")) == 1
        assert code(ingest.publish(f"{r}/gw/gw-a/ack", b"{}")) in (0, 0x10)
        assert code(ingest.publish(f"{r}/models/iforest", b"{}")) == NOT_AUTHORIZED
        assert code(alerts.subscribe(f"{r}/gw/+/alerts")) == 1
        # a group of its own, never the ingest's (it would take a share of central's alerts)
        assert code(alerts.subscribe(f"$share/svc-alerts-test/{r}/gw/+/alerts")) == 1
        assert code(alerts.subscribe(f"$share/ingest/{r}/gw/+/alerts")) == NOT_AUTHORIZED
        assert code(alerts.subscribe(f"$share/+/{r}/gw/+/alerts")) == NOT_AUTHORIZED
        assert code(alerts.subscribe(f"{r}/gw/+/readings")) == NOT_AUTHORIZED
        assert code(alerts.publish(f"{r}/gw/gw-a/ack", b"{}")) == NOT_AUTHORIZED
        gw.publish(f"{r}/gw/gw-a/readings", b"batch")
        ingest.wait(lambda: bool(ingest.messages), what="the batch at the ingest")
        assert [m.topic for m in ingest.messages] == [f"{r}/gw/gw-a/readings"]
    finally:
        for c in (ingest, alerts, gw):
            c.close()


def test_nobody_takes_over_another_session(secure_broker: SecureMosquitto, pki: Pki) -> None:
    port = secure_broker.port
    ingest = connect(pki, "svc-ingest-1", port, client_id="eiot-ingest-1", session=True)
    intruder = connect(pki, "gw-a", port, client_id="svc-ingest-1")  # the ingest's client id
    try:
        assert code(intruder.connack) == 0  # connected, but as itself: the id is the identity
        time.sleep(0.5)
        assert ingest.disconnects == []  # the real ingest keeps its session
    finally:
        ingest.close()
        intruder.close()


REFUSED = "connack=None"  # the broker closed the connection before any CONNACK


def test_no_anonymous_no_plaintext_no_stranger(
    secure_broker: SecureMosquitto, pki: Pki, tmp_path: object
) -> None:
    port = secure_broker.port
    assert refused_tls(pki, None, port).startswith(REFUSED)  # TLS without a certificate
    assert refused_tls(pki, None, port, tls=False).startswith(REFUSED)  # plaintext
    stranger = Pki(f"{tmp_path}/other-ca")  # a certificate from another CA, a gateway's name
    stranger.init("another CA")
    stranger.issue("gw-a", "gateway")
    assert refused_tls(stranger, "gw-a", port, ca=pki.ca_cert_path).startswith(REFUSED)
    ok = connect(pki, "gw-a", port)  # the same name with the project's CA is accepted
    assert code(ok.connack) == 0
    ok.close()


def test_revocation_cuts_a_gateway_off(
    secure_broker: SecureMosquitto, pki: Pki, topic_root: str, tmp_path: object
) -> None:
    own = Pki(pki.dir)  # the session PKI: revoke a gateway no other test uses
    gw = connect(pki, "gw-d", secure_broker.port)
    assert code(gw.publish(f"{topic_root}/gw/gw-d/readings", b"{}")) in (0, 0x10)
    own.revoke("gw-d")
    try:
        admin = BrokerAdmin("127.0.0.1", secure_broker.port, pki)
        try:  # the running broker drops the identity at once
            commands, failed = admin.sync(pki, topic_root)
            assert commands == [
                {"command": "deleteClient", "username": "gw-d"},
                {"command": "deleteRole", "rolename": "gw.gw-d"},
            ]
            assert failed == []
        finally:
            admin.close()
        gw.wait(lambda: bool(gw.disconnects), what="the revoked gateway's disconnection")
        secure_broker.stop()
        secure_broker.start()  # after a restart the CRL refuses its certificate
        assert refused_tls(pki, "gw-d", secure_broker.port).startswith(REFUSED)
    finally:
        gw.close()
        own.issue("gw-d", "gateway")  # give the session PKI its gateway back


def test_names_say_their_role(tmp_path: object) -> None:
    p = Pki(f"{tmp_path}/pki")
    p.init()
    with pytest.raises(PkiError):
        p.issue("svc-ingest-9", "gateway")  # a gateway cannot look like a service
    with pytest.raises(PkiError):
        p.issue("gw-x", "ingest")
    with pytest.raises(PkiError):
        p.issue("gw/x", "gateway")
    p.issue("gw-x", "gateway")
    with pytest.raises(PkiError):
        p.issue("gw-x", "alerts")  # one name, one role


def test_sync_repairs_a_broker_that_drifted(
    secure_broker: SecureMosquitto, pki: Pki, topic_root: str
) -> None:
    """ACLs changed by hand (or by an older release), a client given a role too many, a role
    nobody uses: one sync puts it all back; a second has nothing to do."""
    port, r = secure_broker.port, topic_root
    admin = BrokerAdmin("127.0.0.1", port, pki)
    try:
        drift = [
            {
                "command": "addRoleACL",
                "rolename": "gw.gw-a",
                "acltype": "subscribePattern",
                "topic": "#",
                "allow": True,
                "priority": 0,
            },
            {
                "command": "removeRoleACL",
                "rolename": "gw.gw-a",
                "acltype": "publishClientSend",
                "topic": f"{r}/gw/gw-a/status",
            },
            {"command": "addClientRole", "username": "gw-b", "rolename": "ingest"},
            {"command": "createRole", "rolename": "legacy", "acls": []},
        ]
        assert [a.get("error") for a in admin.send(drift)] == [None] * len(drift)
        a = connect(pki, "gw-a", port)
        assert code(a.subscribe("#")) == 1  # the drift is real
        a.close()
        commands, failed = admin.sync(pki, r)
        assert failed == [] and {c["command"] for c in commands} == {
            "removeRoleACL",
            "addRoleACL",
            "removeClientRole",
            "deleteRole",
        }
        assert admin.sync(pki, r) == ([], [])
    finally:
        admin.close()
    a = connect(pki, "gw-a", port)
    assert code(a.subscribe("#")) == NOT_AUTHORIZED
    assert code(a.publish(f"{r}/gw/gw-a/status", b"{}")) in (0, 0x10)
    a.close()
    b = connect(pki, "gw-b", port)
    assert code(b.subscribe(f"{r}/gw/+/readings")) == NOT_AUTHORIZED
    b.close()
