"""The model lifecycle: retrain, compare with the model in service, publish only when not
worse, record the decision; roll back to the previous model. Run by the Airflow DAGs
``model_lifecycle`` and ``model_rollback`` (``central/orchestration/dags/model_lifecycle.py``);
no Airflow here.

:func:`run`, once:

1. **Data**: the last ``window_days`` of ``raw.readings`` in PostgreSQL up to the newest reading
   (:func:`ml.dataset.from_postgres`, with the feature history before the window). Raw, not the
   warehouse: the gateway model scores single readings with features built from the readings
   before them, and only raw has them; the marts are daily aggregates. The DAG runs after the
   ``marts`` asset, i.e. after the quality gate passed on these raw readings.
2. **Hold-out**: the last ``holdout_days`` are not trained on. The candidate model set (the
   per-class set by default, as ``python -m ml train --variant per_class``) is trained on the
   window before them.
3. **Evaluation** (:func:`evaluate_model_set`): the candidate and the model set in service (the
   newest published version in ``ml.models``) score the valid customer readings of the hold-out
   days, each meter by the member of its class, as the gateways would. Metrics, with
   ``ml.metrics`` (the functions ``ml.evaluate`` uses): ``alert_rate``, the share of those
   readings alerted on (``flag_rate`` of the margins above 0); with ground truth (simulated
   data only) also ``pr_auc`` and ``roc_auc`` of theft vs normal readings.
4. **Decision** (:func:`decide`).
5. **Record / publish**: the candidate is signed and registered in ``ml.models`` either way;
   published (retained ``model.v1`` over MQTT, :func:`ml.registry.publish_model_set`, as the
   ``svc-models`` identity the broker settings name) only when the decision is ``published``.
   Its rows get ``decision``, ``decided_at``, ``decision_reason`` and ``evaluation`` (both
   models' metrics and the hold-out window; ``central/sql/0015_ml_model_decisions.sql``).

:func:`rollback` puts the previous published model set back in service. A gateway never accepts
a model created before the one it runs (``edge_agent.rollout``) and the keeper keeps the newest
one retained (``ml.keeper``), so the previous set's models are re-signed unchanged (same ONNX,
same threshold) under a new version ``<previous>.rb<UTC time>`` created now, registered with
decision ``rollback`` and published. The version rolled back from is never chosen as "previous"
again.

A run trains and evaluates for minutes; an operator's rollback may come meanwhile. Whatever
changes which model set is in service does it under one lock (:func:`ml.registry.service_change`,
a PostgreSQL advisory lock per set name, which ``ml publish`` takes too), and :func:`run`
publishes only if the set in service is still the one it was compared with: otherwise it records
``refused`` with the reason, so a rollback is never undone unseen by a candidate judged against
the model it rolled back.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.types.json import Jsonb

from edge_agent import topics
from ml import metrics as mt
from ml.dataset import MeterData, from_postgres, reading_features
from ml.modelset import DEFAULT_NAME, ModelSet, default_version, reading_labels, train_model_set
from ml.ranking import model_set_from_registry
from ml.registry import Broker, publish_model_set, register, service_change, sign_member
from ml.train import DEFAULT_ALERT_RATE

log = logging.getLogger(__name__)

PUBLISHED, REFUSED, ROLLBACK = "published", "refused", "rollback"
#: The DAG runs at most this often (the marts asset comes every 15 minutes).
DEFAULT_MIN_INTERVAL = timedelta(hours=20)


@dataclass(frozen=True)
class LifecycleConfig:
    name: str = DEFAULT_NAME
    window_days: float = 28.0
    holdout_days: float = 2.0
    variant: str = "per_class"
    interval_s: int = 1800
    max_rows: int = 300_000
    seed: int = 0
    #: The alert rate the thresholds are set for when training (unlabelled: a quantile).
    train_alert_rate: float = DEFAULT_ALERT_RATE
    #: The alert rate a model should show on the hold-out days (the design rate).
    target_alert_rate: float = DEFAULT_ALERT_RATE
    #: Absolute slack on the alert-rate distance and on PR-AUC (see :func:`decide`).
    alert_rate_tolerance: float = 0.001
    pr_auc_tolerance: float = 0.01


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str


def decide(
    candidate: Mapping[str, Any], in_service: Mapping[str, Any] | None, cfg: LifecycleConfig
) -> Decision:
    """Publish the candidate only when it is **not worse** than the model in service, on the
    same hold-out readings. With ``a_c``, ``a_s`` their alert rates, ``t`` the target alert
    rate, ``tol`` the alert-rate tolerance, the candidate is not worse when

    * ``|a_c - t| <= |a_s - t| + tol``: its alert rate is no farther from the design rate than
      the in-service one's, give or take ``tol`` (field readings are almost all honest: alerting
      more means false alarms, inspector trips and 3G traffic; alerting much less means a
      threshold that no longer fits the data), **and**
    * when both have a PR-AUC (labelled data): ``pr_c >= pr_s - pr_auc_tolerance``.

    No model in service: publish. A candidate with no hold-out readings scored: refuse."""
    a_c = candidate.get("alert_rate")
    if a_c is None:
        return Decision(False, "the candidate scored no hold-out reading")
    if in_service is None:
        return Decision(True, "no model in service")
    a_s = in_service.get("alert_rate")
    if a_s is None:
        return Decision(True, "the model in service scored no hold-out reading")
    t, tol = cfg.target_alert_rate, cfg.alert_rate_tolerance
    d_c, d_s = abs(a_c - t), abs(a_s - t)
    if d_c > d_s + tol:
        return Decision(
            False,
            f"alert rate {a_c:.5f} is {d_c:.5f} from the target {t:g}, the model in service's "
            f"{a_s:.5f} is {d_s:.5f} from it (tolerance {tol:g})",
        )
    pr_c, pr_s = candidate.get("pr_auc"), in_service.get("pr_auc")
    if pr_c is not None and pr_s is not None and pr_c < pr_s - cfg.pr_auc_tolerance:
        return Decision(
            False, f"PR-AUC {pr_c:.4f} < {pr_s:.4f} in service (tolerance {cfg.pr_auc_tolerance})"
        )
    why = f"alert rate {a_c:.5f} vs {a_s:.5f} in service (target {t:g}, tolerance {tol:g})"
    if pr_c is not None and pr_s is not None:
        why += f"; PR-AUC {pr_c:.4f} vs {pr_s:.4f}"
    return Decision(True, "not worse: " + why)


def holdout_rows(data: MeterData, first: int) -> npt.NDArray[np.bool_]:
    """The valid customer readings from interval ``first`` on, ``(T, M)``."""
    rows = data.valid & data.customers[None, :]
    rows[:first] = False
    return rows


def evaluate_model_set(
    model_set: ModelSet,
    data: MeterData,
    features: npt.NDArray[np.float32],
    rows: npt.NDArray[np.bool_],
) -> dict[str, Any]:
    """Metrics of ``model_set`` on ``rows`` (see the module doc, step 3)."""
    margins = model_set.margins(features, data.customer_class, rows, load_shape=data.load_shapes)[
        rows
    ]
    out: dict[str, Any] = {
        "version": model_set.version,
        "members": [m.name for m in model_set.members],
        "readings": int(rows.sum()),
        "alert_rate": mt.flag_rate(margins, 0.0),
    }
    labels = reading_labels(data)
    if labels is not None:
        theft, normal = labels[0][rows], labels[1][rows]
        scored = theft | normal
        out["pr_auc"] = mt.pr_auc(theft[scored], margins[scored])
        out["roc_auc"] = mt.roc_auc(theft[scored], margins[scored])
    return out


def _head(data: MeterData, n: int) -> MeterData:
    """The first ``n`` intervals of ``data``."""
    cut = {
        f.name: getattr(data, f.name)[:n]
        for f in dataclasses.fields(data)
        if f.name in ("ts", "kwh", "register_kwh", "supply_on", "flags", "present", "label_code")
        and getattr(data, f.name) is not None
    }
    return dataclasses.replace(data, **cut)


def train_candidate(
    data: MeterData,
    features: npt.NDArray[np.float32],
    *,
    window_start: datetime,
    cfg: LifecycleConfig,
    now: datetime,
) -> tuple[ModelSet, int]:
    """The candidate trained on ``data`` before the hold-out days, and the first hold-out
    interval. ``window_start``: the readings before it only feed the features."""
    holdout_from = int(data.ts[-1]) - int(cfg.holdout_days * 86400)
    first = int(np.searchsorted(data.ts, holdout_from, side="right"))
    warmup = max(0.0, (window_start.timestamp() - (data.ts[0] - data.interval_s)) / 86400.0)
    candidate = train_model_set(
        _head(data, first),
        features[:first],
        name=cfg.name,
        version=default_version(now),
        variant=cfg.variant,
        warmup_days=warmup,
        max_rows=cfg.max_rows,
        seed=cfg.seed,
        alert_rate=cfg.train_alert_rate,
        created_at=now,
    )
    candidate.training["holdout_start"] = datetime.fromtimestamp(holdout_from, UTC).isoformat()
    return candidate, first


def _register_set(conn: psycopg.Connection, model_set: ModelSet, key: Ed25519PrivateKey) -> None:
    """Sign and register every member, unpublished (as ``publish_model_set`` registers)."""
    training = model_set.training
    for member in model_set.members:
        register(
            conn,
            sign_member(model_set, member, key),
            customer_class=member.customer_class or None,
            variant=model_set.variant,
            threshold_method=member.threshold_method,
            score_offset=member.offset,
            train_start=training.get("window_start"),
            train_end=training.get("window_end"),
            train_rows=member.train_rows,
            metrics=member.metrics,
            training=training,
        )


def record_decision(
    conn: psycopg.Connection,
    model_set: ModelSet,
    decision: str,
    reason: str,
    evaluation: Mapping[str, Any],
) -> None:
    """Stamp the decision on every row of ``model_set``'s version."""
    with conn.transaction():
        conn.execute(
            "update ml.models set decision = %s, decided_at = now(), decision_reason = %s,"
            " evaluation = %s where version = %s and (name = %s or left(name, length(%s) + 1)"
            " = %s || '.')",
            (
                decision,
                reason,
                Jsonb(dict(evaluation)),
                model_set.version,
                model_set.name,
                model_set.name,
                model_set.name,
            ),
        )


def run(
    dsn: str,
    broker: Broker,
    key: Ed25519PrivateKey,
    *,
    root: str = topics.DEFAULT_ROOT,
    cfg: LifecycleConfig | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Train, evaluate, decide, register, publish when not worse (module doc). Returns the
    decision, the reason, the candidate's version and the evaluation."""
    cfg = cfg or LifecycleConfig()
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(
            "select max(ts) from raw.readings where interval_s = %s", (cfg.interval_s,)
        ).fetchone()
    if row is None or row[0] is None:
        raise ValueError("no readings in raw.readings to train on")
    end: datetime = row[0]
    start = end - timedelta(days=cfg.window_days)
    data = from_postgres(dsn, start, end, interval_s=cfg.interval_s)
    features = reading_features(data)
    candidate, first = train_candidate(data, features, window_start=start, cfg=cfg, now=now)
    rows = holdout_rows(data, first)
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        serving = model_set_from_registry(conn, cfg.name)
        cand_metrics = evaluate_model_set(candidate, data, features, rows)
        serv_metrics = (
            None if serving is None else evaluate_model_set(serving, data, features, rows)
        )
        verdict = decide(cand_metrics, serv_metrics, cfg)
        evaluation: dict[str, Any] = {
            "candidate": cand_metrics,
            "in_service": serv_metrics,
            "holdout": {
                "start": candidate.training["holdout_start"],
                "end": end.isoformat(),
                "readings": int(rows.sum()),
            },
            "rule": dataclasses.asdict(cfg),
        }
        compared = None if serving is None else serving.version
        with service_change(conn, cfg.name) as now_serving:
            if now_serving != compared:
                evaluation["in_service_now"] = now_serving
                verdict = Decision(
                    False,
                    f"the model in service changed during this run ({compared} -> "
                    f"{now_serving}: a rollback or a publication by hand): not published; "
                    "the next run compares with it",
                )
            if verdict.publish:
                publish_model_set(candidate, key, dsn=dsn, broker=broker, root=root)
            else:
                _register_set(conn, candidate, key)
            decision = PUBLISHED if verdict.publish else REFUSED
            record_decision(conn, candidate, decision, verdict.reason, evaluation)
    log.info("model %s %s: %s (%s)", cfg.name, candidate.version, decision, verdict.reason)
    return {
        "decision": decision,
        "reason": verdict.reason,
        "version": candidate.version,
        "in_service": None if serving is None else serving.version,
        "evaluation": evaluation,
    }


def rollback(
    dsn: str,
    broker: Broker,
    key: Ed25519PrivateKey,
    *,
    root: str = topics.DEFAULT_ROOT,
    name: str = DEFAULT_NAME,
    reason: str = "manual rollback",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Put the published model set before the one in service back in service (module doc).
    Raises LookupError when there is none."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    with (
        psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn,
        service_change(conn, name) as serving,
    ):
        current = model_set_from_registry(conn, name, serving)
        if current is None:
            raise LookupError(f"no model {name} in service: nothing to roll back")
        row = conn.execute(
            "select version from ml.models where name = %s and published_at is not null"
            " and created_at < %s and version <> %s and version not in (select"
            " evaluation->>'rolled_back' from ml.models where decision = 'rollback'"
            " and evaluation ? 'rolled_back') order by created_at desc limit 1",
            (name, current.created_at, current.version),
        ).fetchone()
        if row is None:
            raise LookupError(f"no model {name} published before {current.version}")
        previous = model_set_from_registry(conn, name, str(row[0]))
        assert previous is not None
        restored = dataclasses.replace(
            previous,
            version=f"{previous.version}.rb{default_version(now)}",
            created_at=now,
            training={"restores": previous.version},
        )
        publish_model_set(restored, key, dsn=dsn, broker=broker, root=root)
        evaluation = {"rolled_back": current.version, "restores": previous.version}
        record_decision(conn, restored, ROLLBACK, reason, evaluation)
    log.info("model %s: rolled back %s, %s in service", name, current.version, restored.version)
    return {"decision": ROLLBACK, "reason": reason, "version": restored.version, **evaluation}


def last_decision_at(dsn: str) -> datetime | None:
    """When the lifecycle last decided (published, refused or rolled back); None if never."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("select max(decided_at) from ml.models").fetchone()
    return None if row is None else row[0]


def due(
    last: datetime | None, now: datetime, min_interval: timedelta = DEFAULT_MIN_INTERVAL
) -> bool:
    """Whether a lifecycle run should go ahead: the last decision is at least
    ``min_interval`` old (or there is none)."""
    return last is None or now - last >= min_interval
