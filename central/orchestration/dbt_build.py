"""The dbt step of ``warehouse_refresh`` as a Cosmos operator.

Cosmos's ``DbtBuildLocalOperator`` (``ExecutionMode.LOCAL``) runs ``dbt build`` over the whole
project in one dbt process: every model, its data tests and the unit tests, in dependency order,
with dbt's own threads. One task per model (Cosmos's ``DbtTaskGroup``) starts one dbt process per
node and parses the project each time, which made the DAG several times slower than the plain
command; Cosmos's watcher mode runs one process too but its sensors hang under ``dag.test()``.
So the build is one task, and the per-model view comes after it: the operator's callback reads
dbt's ``run_results.json`` (and, from ``manifest.json``, which model each test checks) into the
XCom ``nodes``, and ``warehouse_refresh`` maps one task instance per model over it, named by the
model, failing where the model or one of its tests failed.

The build runs under the run's lease on the warehouse (``central/orchestration/holding.py``):
renewed while dbt runs; when another run took it, dbt is stopped at the next renewal and the
build fails.

The embedded warehouse is served over HTTP for the duration of the build (dbt-clickhouse speaks
HTTP), as ``central warehouse dbt`` does. The marts are built into the build database
(``marts_build_schema``); the quality gate checks them there before they are published.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cosmos.config import ProfileConfig
from cosmos.operators.local import DbtBuildLocalOperator
from pydantic import ValidationError

from central.orchestration import holding, steps
from central.warehouse.client import chdb_path, served
from central.warehouse.dbt import dbt_env, dbt_executable

NODES_KEY = "nodes"
log = logging.getLogger(__name__)


def push_nodes(project_dir: str, context: Any = None, **_: Any) -> None:
    """Cosmos callback (after dbt ran, failed or not): the nodes' results, each with the model it
    checks, into XCom."""
    target = Path(os.environ.get("DBT_TARGET_PATH") or Path(project_dir) / "target")
    results = target / "run_results.json"
    nodes = steps.node_results(results, target / "manifest.json") if results.exists() else []
    context["ti"].xcom_push(key=NODES_KEY, value=nodes)


class WarehouseDbtBuild(DbtBuildLocalOperator):
    """``dbt build`` of the project against the configured warehouse (``EIOT_*``)."""

    def __init__(self, **kwargs: Any) -> None:
        try:
            s = steps.settings()
        except ValidationError as exc:
            # A bad EIOT_* value must not make the DAG an import error (it would vanish from
            # Airflow): the defaults place the project here, and the run fails at its first
            # step, which reads the settings again, naming the value.
            log.error("warehouse settings invalid, the run will fail on them: %s", exc)
            s = steps.WarehouseSettings.model_construct()
        super().__init__(
            project_dir=str(s.dbt_project_dir),
            profile_config=self._profile(s),
            dbt_executable_path=s.dbt_executable,
            callback=push_nodes,
            install_deps=False,
            # Cosmos would emit one asset per model, named by the warehouse's host and port (an
            # ephemeral port for the embedded one), before the gate: the DAG emits `marts` itself.
            emit_datasets=False,
            **kwargs,
        )

    @staticmethod
    def _profile(s: steps.WarehouseSettings) -> ProfileConfig:
        embedded = chdb_path(s.clickhouse_dsn) is not None
        return ProfileConfig(
            profile_name="eiot",
            target_name=s.dbt_target or ("embedded" if embedded else "server"),
            profiles_yml_filepath=s.dbt_project_dir / "profiles.yml",
        )

    def execute(self, context: Any, **kwargs: Any) -> Any:
        # the worker's environment, not the parser's
        # a lease lost while dbt runs stops dbt (Cosmos's on_kill: SIGINT to dbt's process
        # group, which cancels its queries): another run may be building into the same database
        with (
            holding.held(context, after="load", on_lost=self.on_kill) as s,
            served(s.clickhouse_dsn) as url,
        ):
            self.profile_config = self._profile(s)
            self.dbt_executable_path = dbt_executable(s)
            self.vars = steps.dbt_vars(s)
            self.env = {
                **(self.env or {}),
                **dbt_env(url, self.profile_config.target_name),
                "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            }
            return super().execute(context, **kwargs)
