"""
### model_lifecycle

Started by the **`marts`** asset (`warehouse_refresh` passed its quality gate), at most once per
`EIOT_LIFECYCLE_MIN_HOURS` (default 20 h): retrains the gateway model set on the recent weeks of
raw readings, compares it with the model in service on the held-out last days, and publishes it
to the gateways (signed, retained `model.v1`) only when it is not worse. Every decision
(published / refused / rollback), both models' metrics and the reason are kept in `ml.models`.

* **due**: skipped (and so is the rest) when the last decision in `ml.models` is younger than
  the setting.
* **retrain**: `ml.lifecycle.run`: train, evaluate, decide, register, publish when not worse.

Settings (environment): `EIOT_PG_DSN` (the `ml` login), the broker (`EIOT_BROKER_*`, the
`svc-models` identity), `EIOT_TOPIC_ROOT`, the signing key (`EIOT_MODEL_SIGNING_KEY_FILE`), and
`EIOT_LIFECYCLE_WINDOW_DAYS` (28), `EIOT_LIFECYCLE_HOLDOUT_DAYS` (2). Both DAGs run in the `ML`
scope: `EIOT_ML__<NAME>`, where set, stands for `EIOT_<NAME>`
(`central/orchestration/identity.py`).

### model_rollback

Manual only: puts the previously published model set back in service (its models re-signed
under a new version, so gateways accept them), recorded as decision `rollback`. Param `reason`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Param, dag, task

from central.orchestration.assets import MARTS


@dag(
    dag_id="model_lifecycle",
    schedule=[MARTS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["eiot", "ml"],
)
def model_lifecycle() -> None:
    @task.short_circuit
    def due() -> bool:
        import os
        from datetime import timedelta

        from central.orchestration.identity import ML, acting_as
        from ml import lifecycle
        from ml.registry import default_dsn

        with acting_as(ML):
            hours = float(os.environ.get("EIOT_LIFECYCLE_MIN_HOURS", "20"))
            last = lifecycle.last_decision_at(default_dsn())
        go = lifecycle.due(last, datetime.now(UTC), timedelta(hours=hours))
        print(f"last decision {last}; minimum interval {hours} h: {'run' if go else 'skip'}")
        return go

    @task(multiple_outputs=False)
    def retrain() -> dict[str, Any]:
        import os

        from central.orchestration.identity import ML, acting_as
        from ml import lifecycle
        from ml.publish import load_private_key
        from ml.registry import Broker, default_dsn, default_root

        with acting_as(ML):
            cfg = lifecycle.LifecycleConfig(
                window_days=float(os.environ.get("EIOT_LIFECYCLE_WINDOW_DAYS", "28")),
                holdout_days=float(os.environ.get("EIOT_LIFECYCLE_HOLDOUT_DAYS", "2")),
            )
            result = lifecycle.run(
                default_dsn(), Broker.from_env(), load_private_key(), root=default_root(), cfg=cfg
            )
        return {k: result[k] for k in ("decision", "reason", "version", "in_service")}

    due() >> retrain()


@dag(
    dag_id="model_rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["eiot", "ml"],
    params={"reason": Param("manual rollback", type="string")},
)
def model_rollback() -> None:
    @task(multiple_outputs=False)
    def rollback(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from central.orchestration.identity import ML, acting_as
        from ml import lifecycle
        from ml.publish import load_private_key
        from ml.registry import Broker, default_dsn, default_root

        reason = str((params or {}).get("reason") or "manual rollback")
        with acting_as(ML):
            return lifecycle.rollback(
                default_dsn(),
                Broker.from_env(),
                load_private_key(),
                root=default_root(),
                reason=reason,
            )

    rollback()


model_lifecycle()
model_rollback()
