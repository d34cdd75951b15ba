"""The agent and its anomaly model, on the real broker: models arrive as retained model.v1
messages; bad ones are refused and reported while the old model keeps scoring; a newer model is
hot-swapped under load with every reading scored by exactly one version."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import topics
from edge_agent.agent import Agent
from edge_agent.features import (
    DEFAULT_FLAG_BITS,
    NO_CREDIT_FLAG,
    compute_features_grouped,
    flags_mask,
    history_window_s,
    supplied,
)
from edge_agent.long_memory import Usual, fold
from edge_agent.model import load_model
from edge_agent.settings import AgentSettings
from ml.publish import build_model_message
from tests.support.detection import Subscriber, models, normal_history, write_spool
from tests.support.processes import BROKER_PORT, wait_until

pytestmark = pytest.mark.services

GW = "gw-model"


class Running:
    """An in-process agent on its own thread (main loop), stopped at the end."""

    def __init__(self, settings: AgentSettings) -> None:
        self.agent = Agent(settings)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


def settings_for(tmp: Path, root: str, **kw: Any) -> AgentSettings:
    base: dict[str, Any] = dict(
        gateway_id=GW,
        broker_port=BROKER_PORT,
        topic_root=root,
        db_path=tmp / "buffer.db",
        spool_dir=tmp / "spool",
        status_interval_s=0.5,
        batch_max_age_s=0.2,
        backoff_min_s=0.2,
        backoff_max_s=1.0,
        keepalive_s=5,
        session_expiry_s=60,
        ack_timeout_s=60,
    )
    base.update(kw)
    return AgentSettings(**base)


def publish(root: str, payload: bytes, name: str = "iforest") -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", BROKER_PORT)
    client.loop_start()
    try:
        client.publish(topics.model(root, name), payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
def clear_retained(topic_root: str) -> Iterator[None]:
    yield
    publish(topic_root, b"")  # an empty retained message deletes it


def status_where(sub: Subscriber, cond: Any, what: str, timeout: float = 15) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = [s for s in sub.payloads("/status") if cond(s)]
        return bool(found)

    sub.wait_for(check, timeout, what)
    return found[-1]


def versions(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select seq, meter_id, ts, kwh, supply_on, flags, register_kwh, score, model_version "
            "from readings order by seq"
        ).fetchall()


def scored_by(db: Path, version: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            "select count(*) from readings where model_version = ?", (version,)
        ).fetchone()
        return int(n)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bad_models() -> list[tuple[str, bytes]]:
    """Each a variant of the (valid, newer) v2 message: installing any of them is a failure."""
    m = models()
    v2 = m.v2
    onnx = bytearray(base64.b64decode(v2["onnx_b64"]))
    onnx[len(onnx) // 2] ^= 0x01
    flipped = copy.deepcopy(v2) | {"onnx_b64": _b64(bytes(onnx))}  # checksum no longer matches
    resummed = flipped | {"sha256": hashlib.sha256(bytes(onnx)).hexdigest()}  # attacker re-sums
    lowered = copy.deepcopy(v2) | {"threshold": 0.99}  # a signed field changed: fewer alerts
    other_key = build_model_message(
        base64.b64decode(v2["onnx_b64"]),
        name="iforest",
        version="v3",
        feature_names=v2["feature_names"],
        threshold=v2["threshold"],
        private_key=Ed25519PrivateKey.generate(),
    )
    text = json.dumps(v2).encode()
    return [
        ("checksum_mismatch", json.dumps(flipped).encode()),
        ("bad_signature", json.dumps(resummed).encode()),
        ("bad_signature", json.dumps(lowered).encode()),
        ("bad_signature", json.dumps(other_key).encode()),
        ("invalid_message", text[: len(text) // 2]),  # truncated on the way
    ]


def test_bad_models_refused_old_one_kept_and_reported(
    tmp_path: Path, topic_root: str, clear_retained: None
) -> None:
    m = models()
    sub = Subscriber(BROKER_PORT, [topics.status(topic_root, GW)]).start()
    settings = settings_for(tmp_path, topic_root, model_public_key=m.public_key)
    publish(topic_root, json.dumps(m.v1).encode())
    run = Running(settings)
    try:
        status_where(sub, lambda s: s.get("model", {}).get("version") == "v1", "model v1 loaded")
        for i, (reason, payload) in enumerate(bad_models(), 1):
            publish(topic_root, payload)
            st = status_where(
                sub,
                lambda s, i=i: s.get("counters", {}).get("models_rejected") == i,
                f"refusal {i} ({reason}) reported",
            )
            assert st["model"]["version"] == "v1", "the old model must stay in use"
            assert st["model_error"].startswith(reason), st["model_error"]
        write_spool(settings.spool_dir or tmp_path, "day0", normal_history(["a", "b"], 0, 48))
        sub.wait_for(lambda: len(versions(settings.db_path)) == 96, 15, "readings accepted")
    finally:
        run.stop()
    assert {r[8] for r in versions(settings.db_path)} == {"v1"}
    counters = dict(sqlite3.connect(settings.db_path).execute("select * from counters").fetchall())
    assert counters["models_rejected_bad_signature"] == 3
    assert counters["models_rejected_checksum_mismatch"] == 1
    assert counters["models_rejected_invalid_message"] == 1

    # Restart: the stored v1 is verified again and used; the retained (truncated) message is
    # refused again and reported.
    sub.messages.clear()
    run = Running(settings)
    try:
        st = status_where(
            sub, lambda s: s.get("model_error") and s.get("model"), "status after restart"
        )
        assert st["model"]["version"] == "v1"
        assert st["model_error"].startswith("invalid_message")
    finally:
        run.stop()
        sub.stop()


def test_without_public_key_every_model_is_refused(
    tmp_path: Path, topic_root: str, clear_retained: None
) -> None:
    m = models()
    sub = Subscriber(BROKER_PORT, [topics.status(topic_root, GW)]).start()
    publish(topic_root, json.dumps(m.v1).encode())
    run = Running(settings_for(tmp_path, topic_root))
    try:
        st = status_where(sub, lambda s: s.get("model_error"), "the refusal reported")
        assert st["model_error"].startswith("no_public_key")
        assert "model" not in st
        write_spool(tmp_path / "spool", "day0", normal_history(["a"], 0, 8))
        sub.wait_for(lambda: len(versions(tmp_path / "buffer.db")) == 8, 15, "readings")
    finally:
        run.stop()
        sub.stop()
    assert all(r[7] is None and r[8] is None for r in versions(tmp_path / "buffer.db"))


def test_hot_swap_under_load(tmp_path: Path, topic_root: str, clear_retained: None) -> None:
    """Readings stream in (one spool file per interval) while v1, then v2 arrive. Every reading
    is scored by exactly one version — its stored score is that version's score of its features,
    recomputed here — versions never go back, and none is unscored after the first model."""
    m = models()
    settings = settings_for(tmp_path, topic_root, model_public_key=m.public_key)
    spool = tmp_path / "spool"
    meters = [f"m{i:02d}" for i in range(20)]
    intervals = 9 * 48
    run = Running(settings)
    try:
        for k in range(intervals):
            write_spool(spool, f"{k:05d}", normal_history(meters, k, k + 1))
            if k == 7 * 48:
                publish(topic_root, json.dumps(m.v1).encode())
            if k == 8 * 48:
                # The first call with a model folds a week of history and is slow; on a slow
                # machine the writer outran it by a day. v2 goes out once v1 has scored some
                # readings, with the rest of the files still to come (and any backlog).
                wait_until(lambda: scored_by(settings.db_path, "v1") > 200, 60, "v1 scores")
                publish(topic_root, json.dumps(m.v2).encode())
            time.sleep(0.004)
        deadline = time.monotonic() + 60
        while len(versions(settings.db_path)) < intervals * len(meters):
            assert time.monotonic() < deadline, "the agent did not take every file"
            time.sleep(0.2)
    finally:
        run.stop()

    rows = versions(settings.db_path)
    labels = [r[8] for r in rows]
    first = labels.index("v1")
    assert all(v is None for v in labels[:first])
    assert all(v in ("v1", "v2") for v in labels[first:]), "a reading left unscored"
    swap = labels.index("v2")
    assert set(labels[first:swap]) == {"v1"} and set(labels[swap:]) == {"v2"}, "went back"
    assert swap - first > 100 and len(labels) - swap > 100, "the swaps did not happen under load"

    # Recompute every reading's features from the buffer (readings came in time order, so the
    # history at scoring time was exactly the readings before) and score with both versions.
    # The long memory began with the first scored call: it folded that call's week of history
    # (readings taken before any model were never folded), then each call's new days.
    by_meter = sorted(rows, key=lambda r: (r[1], r[2]))
    codes = np.array([meters.index(r[1]) for r in by_meter])
    ts = np.array([r[2] for r in by_meter])
    kwh = np.array([r[3] for r in by_meter])
    on = np.array([r[4] for r in by_meter])
    flags = flags_mask([(r[5] or "").split(",") for r in by_meter], DEFAULT_FLAG_BITS)
    first_scored = min(r[2] for r in rows if r[8] is not None)
    folded = ts >= first_scored - history_window_s(1800)
    usual = Usual(np.full(ts.size, np.nan))
    usual.level_kw[folded] = fold(
        codes[folded],
        ts[folded],
        kwh[folded],
        supplied(on, flags, DEFAULT_FLAG_BITS[NO_CREDIT_FLAG])[folded],
        0,
        1800,
    ).level_kw
    x = compute_features_grouped(
        codes,
        ts,
        kwh,
        on,
        flags,
        np.array([np.nan if r[6] is None else r[6] for r in by_meter]),
        1800,
        DEFAULT_FLAG_BITS,
        usual=usual,
    )
    s1 = load_model(m.v1, m.public_key).score(x)
    s2 = load_model(m.v2, m.public_key).score(x)
    mine = {"v1": s1, "v2": s2}
    told_apart = 0
    for i, r in enumerate(by_meter):
        if r[8] is None:
            continue
        assert abs(r[7] - float(mine[r[8]][i])) <= 1e-6, (r, s1[i], s2[i])
        other = s2 if r[8] == "v1" else s1
        told_apart += abs(r[7] - float(other[i])) > 1e-6
    assert told_apart > 0.9 * (len(rows) - first), "the two versions cannot be told apart"


def test_agent_subscribes_to_the_models_of_its_customer_classes(
    tmp_path: Path, topic_root: str, clear_retained: None
) -> None:
    m = models()
    registry = tmp_path / "registry.json"
    registry.write_text(
        json.dumps(
            {
                "meters": [
                    {"meter_id": "u1", "meter_role": "customer", "customer_class": "urban"},
                    {"meter_id": "l1", "meter_role": "customer", "customer_class": "lifeline"},
                ]
            }
        )
    )
    publish(topic_root, json.dumps(m.v1).encode())
    publish(topic_root, json.dumps(m.urban).encode(), name="iforest.urban")
    sub = Subscriber(BROKER_PORT, [topics.status(topic_root, GW)]).start()
    settings = settings_for(
        tmp_path,
        topic_root,
        model_public_key=m.public_key,
        registry_path=registry,
        timezone="Africa/Abidjan",
    )
    run = Running(settings)
    try:
        st = status_where(sub, lambda s: len(s.get("models", [])) == 2, "both models loaded")
        assert st["timezone"] == "Africa/Abidjan"  # central trains unzoned meters in it
        assert [(x["name"], x["version"]) for x in st["models"]] == [
            ("iforest", "v1"),
            ("iforest.urban", "c1"),
        ]
        assert st["model"]["name"] == "iforest"
        write_spool(tmp_path / "spool", "day0", normal_history(["u1", "l1"], 0, 48))
        sub.wait_for(lambda: len(versions(settings.db_path)) == 96, 15, "readings accepted")
    finally:
        run.stop()
        sub.stop()
        publish(topic_root, b"", name="iforest.urban")
    by_meter = {(r[1], r[8]) for r in versions(settings.db_path)}
    assert by_meter == {("u1", "c1"), ("l1", "v1")}
