"""
### warehouse_refresh

Every 15 minutes: the raw readings PostgreSQL stored since the last run go to the warehouse,
dbt builds the marts (every model, its data tests and the unit tests) into the build database,
Great Expectations checks raw and those marts, and only then are they published to the marts
dashboards and training read. Only then is the **`marts`** asset updated, which starts
`model_lifecycle` and tells every consumer the marts are fresh and sound.

* **hold_warehouse**: waits until no other run (a backfill's, a manual one) holds the
  warehouse, then holds it (a lease in PostgreSQL, `ops.leases`) until **release_warehouse**
  (a teardown: it runs whether the run succeeded or failed). Each step below renews the lease
  while it runs, fails if another run took it, and checks that the step before it ran under the
  same hold: after clearing a step, clear the run from **load**.
* **load**: `central warehouse load`, incremental by watermark (a run with no new data changes
  nothing). A run whose interval ended more than two periods ago (a backfill, an old run
  cleared) reloads the rows that arrived in its interval instead; running it again changes
  nothing.
* **dbt_build**: one `dbt build` (Cosmos, one dbt process); **dbt_model** shows one instance per
  model (named by the model; it fails where the model or one of its data or unit tests failed,
  and its log lists each test).
* **quality_gate**: fails with the failing expectations and the Data Docs page; the served
  marts stay as they were (yesterday's marts keep serving).
* **publish**: the checked marts replace the served ones (copy, then an atomic swap per table).

Settings come from the environment (`EIOT_PG_DSN` of the loader's login,
`EIOT_CLICKHOUSE_DSN`); the steps are `central/orchestration/steps.py`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import PokeReturnValue, dag, get_current_context, task

from central.orchestration import holding, steps
from central.orchestration.assets import MARTS
from central.orchestration.dbt_build import NODES_KEY, WarehouseDbtBuild

PERIOD = timedelta(minutes=15)
#: How often a run waiting for the warehouse asks again (the task is rescheduled in between,
#: holding no worker slot) and how long it waits: long enough for a dead holder's lease to expire
#: (EIOT_LEASE_TTL_S, 2 h by default, must stay below it).
LEASE_POKE = timedelta(seconds=20)
LEASE_WAIT = timedelta(hours=4)
#: A warehouse step that runs longer is stopped (and the run fails, releasing the lease): a hung
#: step must not keep its lease alive for ever. Below LEASE_WAIT, so a waiting run outlasts it.
STEP_TIMEOUT = timedelta(hours=3)


@dag(
    dag_id="warehouse_refresh",
    schedule=PERIOD,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["eiot", "warehouse"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
)
def warehouse_refresh() -> None:
    @task.sensor(
        task_id=holding.HOLD_TASK,
        poke_interval=LEASE_POKE.total_seconds(),
        timeout=LEASE_WAIT.total_seconds(),
        mode="reschedule",
    )
    def hold_warehouse() -> PokeReturnValue:
        """Hold the warehouse for this run; its XCom is the lease's generation."""
        got = holding.acquire(get_current_context())
        return PokeReturnValue(is_done=got is not None, xcom_value=got)

    @task
    def release_warehouse() -> bool:
        return holding.release(get_current_context())

    # multiple_outputs=False on every task returning a dict: one XCom row, its return value (by
    # default Airflow infers one more row per key from the annotation; lint rule AIR202).
    @task(multiple_outputs=False, execution_timeout=STEP_TIMEOUT)
    def load() -> dict[str, Any]:
        context = get_current_context()
        window = steps.reload_window(
            context.get("data_interval_start"),
            context.get("data_interval_end"),
            datetime.now(UTC),
            PERIOD,
        )
        with holding.held(context) as s:
            rows = steps.load_warehouse(s, window)
        return {"rows": rows, "window": [str(w) for w in window] if window else None}

    build = WarehouseDbtBuild(task_id="dbt_build", retries=0, execution_timeout=STEP_TIMEOUT)

    # dbt_models and dbt_model report what the build recorded: a retry cannot change it.
    @task(trigger_rule="one_done", retries=0)  # after the build, failed or not; not if it never ran
    def dbt_models() -> list[dict[str, Any]]:
        """The models dbt ran with their tests, also when the build failed (to show which)."""
        ti = get_current_context()["ti"]
        nodes = ti.xcom_pull(task_ids="dbt_build", key=NODES_KEY)
        if not nodes:  # no run_results.json: nothing to check, so nothing to publish
            raise RuntimeError("dbt reported no nodes (see the dbt_build log)")
        return steps.per_model(list(nodes))

    @task(
        multiple_outputs=False,
        trigger_rule="all_done",
        retries=0,
        map_index_template="{{ dbt_model }}",
    )
    def dbt_model(model: dict[str, Any]) -> dict[str, Any]:
        from airflow.exceptions import AirflowSkipException

        get_current_context()["dbt_model"] = model["name"]  # type: ignore[literal-required]
        for node in model["nodes"]:
            print(f"{node['status']:8} {node['kind']} {node['name']} ({node['seconds']} s)")
        if model["status"] == "skipped":
            raise AirflowSkipException(f"{model['name']}: dbt skipped it (an upstream failed)")
        if model["status"] != "success":
            raise RuntimeError(f"{model['name']}: {model['message']}")
        return {k: model[k] for k in ("name", "status", "seconds")}

    @task(multiple_outputs=False, retries=0, execution_timeout=STEP_TIMEOUT)
    def quality_gate() -> dict[str, Any]:
        with holding.held(get_current_context(), after="dbt_build") as s:
            docs = Path(s.gx_dir) / "uncommitted" / "data_docs" / "local_site"
            return steps.quality_gate(s, docs)

    @task(multiple_outputs=False, outlets=[MARTS], execution_timeout=STEP_TIMEOUT)
    def publish() -> dict[str, int]:
        with holding.held(get_current_context(), after="quality_gate") as s:
            return steps.publish(s)

    hold = hold_warehouse()
    loaded = load()
    models = dbt_models()
    hold >> loaded >> build >> models
    gate = quality_gate()
    [build, dbt_model.expand(model=models)] >> gate
    published = publish()
    gate >> published
    # After every step that touches the warehouse, not only the last: clearing one step clears
    # the hold and the release too, and the release must then wait for that step again.
    [loaded, build, gate, published] >> release_warehouse().as_teardown(setups=hold)


warehouse_refresh()
