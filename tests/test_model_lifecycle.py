"""The model lifecycle (ml.lifecycle, DAGs model_lifecycle and model_rollback) against the real
PostgreSQL and the real secure broker (TLS, the svc-models identity): the decision rule; a
better candidate is published (a retained model.v1 the agent's own verifier accepts); a worse
one is refused (nothing new retained, the decision recorded); a rollback republishes the
previous model; a rollback while a run evaluates is not undone by its candidate (as the ml
role); and the same through Airflow with dag.test()."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from central import roles
from central.local_services import SecureMosquitto
from central.pki import Pki
from edge_agent import topics, wire
from edge_agent.signing import verify_message
from ml import lifecycle
from ml.lifecycle import LifecycleConfig, decide
from ml.publish import generate_keypair, load_private_key
from ml.registry import Broker, read_retained, service_change
from simulator import FleetConfig
from tests.support.logins import logins
from tests.support.secure import identity_env
from tests.test_ml_registry import copy_fleet

SMALL = LifecycleConfig(window_days=7, holdout_days=2, max_rows=20_000)
#: Thresholds set for 5 % alerts: far from the 0.1 % design rate, a worse model.
NOISY = LifecycleConfig(window_days=7, holdout_days=2, max_rows=20_000, train_alert_rate=0.05)


def test_the_decision_rule() -> None:
    cfg = LifecycleConfig(target_alert_rate=0.001, alert_rate_tolerance=0.001)
    assert decide({"alert_rate": 0.003}, None, cfg).publish  # nothing in service
    assert not decide({"alert_rate": None}, None, cfg).publish  # scored nothing
    assert decide({"alert_rate": 0.001}, {"alert_rate": 0.04}, cfg).publish  # closer to target
    assert decide({"alert_rate": 0.0018}, {"alert_rate": 0.001}, cfg).publish  # within tolerance
    worse = decide({"alert_rate": 0.04}, {"alert_rate": 0.001}, cfg)
    assert not worse.publish and "alert rate" in worse.reason
    # Too quiet is as far off as too noisy.
    quiet = LifecycleConfig(target_alert_rate=0.01, alert_rate_tolerance=0.001)
    assert not decide({"alert_rate": 0.0}, {"alert_rate": 0.01}, quiet).publish
    # With ground truth, PR-AUC must not drop by more than its tolerance.
    same = {"alert_rate": 0.001}
    assert decide({**same, "pr_auc": 0.795}, {**same, "pr_auc": 0.8}, cfg).publish
    lower = decide({**same, "pr_auc": 0.7}, {**same, "pr_auc": 0.8}, cfg)
    assert not lower.publish and "PR-AUC" in lower.reason


def test_due_at_most_once_per_interval() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert lifecycle.due(None, now)
    assert not lifecycle.due(now - timedelta(hours=19), now)
    assert lifecycle.due(now - timedelta(hours=20), now)
    assert lifecycle.due(now - timedelta(hours=2), now, timedelta(hours=1))


def svc_models(secure_broker: SecureMosquitto, pki: Pki) -> Broker:
    return Broker(
        port=secure_broker.port,
        tls=True,
        ca_file=str(pki.ca_cert_path),
        cert_file=str(pki.cert_path("svc-models")),
        key_file=str(pki.key_path("svc-models")),
    )


def retained_model(topic: str, broker: Broker, public: str) -> dict[str, Any]:
    """The retained message of ``topic``, checked by the agent's verifier."""
    payload = read_retained(topic, broker, timeout_s=3.0)
    assert payload is not None, f"nothing retained on {topic}"
    message = wire.decode(payload)
    verify_message(message, public)  # raises ModelRejected on a bad signature or checksum
    return dict(message)


def decisions(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select version, decision, decision_reason, evaluation, published_at is not null"
            " from ml.models where name = 'iforest' order by created_at"
        ).fetchall()


@pytest.mark.services
def test_better_published_worse_refused_rollback_republishes(
    pg_dsn: str, topic_root: str, secure_broker: SecureMosquitto, pki: Pki, tmp_path: Path
) -> None:
    copy_fleet(pg_dsn, FleetConfig(meters=40, days=10, seed=6))
    private = tmp_path / "keys" / "signing.pem"
    public = generate_keypair(private)
    key = load_private_key(private)
    broker = svc_models(secure_broker, pki)
    topic = topics.model(topic_root, "iforest")
    t0 = datetime.now(UTC) - timedelta(hours=3)

    def run(cfg: LifecycleConfig, hours: int) -> dict[str, Any]:
        return lifecycle.run(
            pg_dsn, broker, key, root=topic_root, cfg=cfg, now=t0 + timedelta(hours=hours)
        )

    noisy = run(NOISY, 0)
    assert noisy["decision"] == "published" and noisy["reason"] == "no model in service"
    assert retained_model(topic, broker, public)["version"] == noisy["version"]

    better = run(SMALL, 1)
    assert better["decision"] == "published", better["reason"]
    assert better["in_service"] == noisy["version"]
    ev = better["evaluation"]
    assert ev["candidate"]["alert_rate"] < ev["in_service"]["alert_rate"]
    assert ev["holdout"]["readings"] > 1000
    served = retained_model(topic, broker, public)
    assert served["version"] == better["version"]

    worse = run(NOISY, 2)
    assert worse["decision"] == "refused" and worse["in_service"] == better["version"]
    assert retained_model(topic, broker, public) == served  # nothing new retained
    rows = {r[0]: r for r in decisions(pg_dsn)}
    version, decision, reason, evaluation, published = rows[worse["version"]]
    assert decision == "refused" and not published and reason == worse["reason"]
    assert set(evaluation) >= {"candidate", "in_service", "holdout"}
    assert evaluation["in_service"]["version"] == better["version"]
    assert rows[better["version"]][1] == "published" and rows[better["version"]][4]

    back = lifecycle.rollback(pg_dsn, broker, key, root=topic_root, reason="test")
    assert back["rolled_back"] == better["version"] and back["restores"] == noisy["version"]
    restored = retained_model(topic, broker, public)
    assert restored["version"] == back["version"]
    with psycopg.connect(pg_dsn) as conn:
        shas = dict(
            conn.execute(
                "select version, sha256 from ml.models where name = 'iforest'"
                " and version = any(%s)",
                ([noisy["version"], back["version"]],),
            ).fetchall()
        )
    assert restored["sha256"] == shas[noisy["version"]] == shas[back["version"]]
    assert restored["created_at"] > served["created_at"]  # newer: gateways accept it
    assert decisions(pg_dsn)[-1][1] == "rollback"


@pytest.fixture
def ml_login(pg_dsn: str) -> Iterator[str]:
    """A login of the ml group role, what the lifecycle DAGs connect as."""
    with logins(pg_dsn) as make:
        yield make(roles.ML)


@pytest.fixture
def loader_login(pg_dsn: str) -> Iterator[str]:
    """A login of the loader group role, what warehouse_refresh connects as."""
    with logins(pg_dsn) as make:
        yield make(roles.LOADER)


@pytest.mark.services
def test_a_rollback_during_a_run_is_not_undone_by_its_candidate(
    pg_dsn: str,
    topic_root: str,
    secure_broker: SecureMosquitto,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ml_login: str,
) -> None:
    """An operator rolls back while a run trains and evaluates: the run's candidate, judged
    against the model rolled back, is registered but refused, and the rollback stays in service.
    All of it as the ml role, as the DAGs run it."""
    copy_fleet(pg_dsn, FleetConfig(meters=40, days=10, seed=7))
    private = tmp_path / "keys" / "signing.pem"
    public = generate_keypair(private)
    key = load_private_key(private)
    broker = svc_models(secure_broker, pki)
    t0 = datetime.now(UTC) - timedelta(hours=3)

    def run(cfg: LifecycleConfig, hours: int) -> dict[str, Any]:
        return lifecycle.run(
            ml_login, broker, key, root=topic_root, cfg=cfg, now=t0 + timedelta(hours=hours)
        )

    first = run(NOISY, 0)
    second = run(SMALL, 1)
    assert first["decision"] == second["decision"] == "published"

    evaluate = lifecycle.evaluate_model_set
    back: dict[str, Any] = {}

    def evaluate_while_rolled_back(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if not back:  # the operator's rollback lands while the run evaluates
            back.update(lifecycle.rollback(ml_login, broker, key, root=topic_root, reason="bad"))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "evaluate_model_set", evaluate_while_rolled_back)
    third = run(SMALL, 2)  # as good as the second: published, but for the rollback
    assert back["rolled_back"] == second["version"] and back["restores"] == first["version"]
    assert third["decision"] == "refused" and third["in_service"] == second["version"]
    assert "changed during this run" in third["reason"] and back["version"] in third["reason"]
    served = retained_model(topics.model(topic_root, "iforest"), broker, public)
    assert served["version"] == back["version"], "the rollback stays in service"
    rows = {r[0]: r for r in decisions(ml_login)}
    assert rows[third["version"]][1] == "refused" and not rows[third["version"]][4]
    assert rows[third["version"]][3]["in_service_now"] == back["version"]

    # The check and the publication are one step: a rollback waits while another change of
    # service (here held by hand) is under way.
    done = threading.Event()
    with (
        psycopg.connect(ml_login, autocommit=True) as conn,
        service_change(conn, "iforest") as serving,
    ):
        assert serving == back["version"]
        waiting = threading.Thread(
            target=lambda: (lifecycle.rollback(ml_login, broker, key, root=topic_root), done.set())
        )
        waiting.start()
        assert not done.wait(1.5), "the rollback went ahead under another change's lock"
    waiting.join(30)
    assert done.is_set()


@pytest.mark.services
def test_model_lifecycle_dag_publishes_then_skips_and_rollback_dag(
    pg_dsn: str,
    topic_root: str,
    secure_broker: SecureMosquitto,
    pki: Pki,
    tmp_path: Path,
    loader_login: str,
    ml_login: str,
) -> None:
    """The DAGs in the environment compose gives its one Airflow: the plain variables are
    warehouse_refresh's (the loader's login, which may not write ml.models, and here svc-ops,
    which may not publish models); the ML scope's are the ml login, svc-models and the key."""
    from central.orchestration.identity import ML, as_scope
    from tests.test_orchestration import DAGS, DRIVER, Airflow

    copy_fleet(pg_dsn, FleetConfig(meters=40, days=10, seed=6))
    private = tmp_path / "keys" / "signing.pem"
    public = generate_keypair(private)
    broker = svc_models(secure_broker, pki)
    topic = topics.model(topic_root, "iforest")
    # A worse model in service, decided a day ago.
    first = lifecycle.run(
        pg_dsn,
        broker,
        load_private_key(private),
        root=topic_root,
        cfg=NOISY,
        now=datetime.now(UTC) - timedelta(days=1),
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("update ml.models set decided_at = now() - interval '1 day'")

    airflow = Airflow(
        tmp_path / "airflow",
        {
            "EIOT_PG_DSN": loader_login,
            "EIOT_TOPIC_ROOT": topic_root,
            "EIOT_LIFECYCLE_WINDOW_DAYS": "7",
            **identity_env(pki, "svc-ops", secure_broker.port),
            **as_scope(
                ML,
                {
                    "EIOT_PG_DSN": ml_login,
                    "EIOT_MODEL_SIGNING_KEY_FILE": str(private),
                    **identity_env(pki, "svc-models", secure_broker.port),
                },
            ),
        },
    )
    airflow.cli("db", "migrate")
    start = time.monotonic()
    run = airflow.run(str(DRIVER), "test", str(DAGS), "model_lifecycle")
    assert run["state"] == "success", run["tasks"]
    result = run["xcom"]["retrain"]
    assert not [k for k in run["xcom"] if ":" in k], "a dict return value is one XCom"
    assert result["decision"] == "published" and result["in_service"] == first["version"]
    assert retained_model(topic, broker, public)["version"] == result["version"]

    again = airflow.run(str(DRIVER), "test", str(DAGS), "model_lifecycle")  # 20 h not over
    assert again["tasks"] == {"due": "success", "retrain": "skipped"}, again["tasks"]

    back = airflow.run(str(DRIVER), "test", str(DAGS), "model_rollback")
    assert back["state"] == "success", back["tasks"]
    assert back["xcom"]["rollback"]["restores"] == first["version"]
    assert back["xcom"]["rollback"]["reason"] == "manual rollback"  # the param's default
    assert retained_model(topic, broker, public)["version"] == back["xcom"]["rollback"]["version"]
    print(f"three DAG runs in {time.monotonic() - start:.1f} s")
