"""Run under .venv-airflow by tests/test_orchestration.py (Airflow cannot share the test venv):
``parse DAGS`` imports the DAG folder with every network connection refused and prints what it
found; ``test DAGS DAG_ID`` runs one DAG with ``dag.test()`` and prints its state, the asset
events, every task's XCom and state, and when each unmapped task started. One JSON object on the
last line of stdout."""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any


def parse(folder: str) -> dict[str, Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("network access while parsing a DAG file")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse
    from airflow.dag_processing.dagbag import DagBag

    start = time.monotonic()
    bag = DagBag(folder)
    seconds = time.monotonic() - start
    return {
        "dag_ids": sorted(bag.dag_ids),
        "import_errors": {str(k): str(v)[-2000:] for k, v in bag.import_errors.items()},
        "parse_s": round(seconds, 3),
        "documented": {d: bool(dag.doc_md) for d, dag in bag.dags.items()},
    }


def test(folder: str, dag_id: str) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = DagBag(folder).dags[dag_id]
    with create_session() as session:
        before = session.query(AssetEvent).count()
    start = time.monotonic()
    run = dag.test()
    seconds = time.monotonic() - start
    with create_session() as session:
        events = [
            {"uri": e.asset.uri, "dag_id": e.source_dag_id, "run_id": e.source_run_id}
            for e in session.query(AssetEvent).order_by(AssetEvent.id).all()[before:]
        ]
        # The return value of each task (a mapped task's: one per instance, in order) and any
        # other key a task pushed, as "task_id:key".
        xcoms: dict[str, Any] = {}
        for x in (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_id, XComModel.run_id == run.run_id)
            .order_by(XComModel.map_index)
        ):
            name = x.task_id if x.key == "return_value" else f"{x.task_id}:{x.key}"
            if x.map_index >= 0:
                xcoms.setdefault(name, []).append(x.value)
            else:
                xcoms[name] = x.value
        # A mapped task's instances as "task_id[rendered map index]".
        instances = run.get_task_instances(session=session)
        states = {
            ti.task_id
            if ti.map_index < 0
            else f"{ti.task_id}[{ti.rendered_map_index or ti.map_index}]": str(ti.state)
            for ti in instances
        }
        started = {ti.task_id: ti.start_date for ti in instances if ti.map_index < 0}
    return {
        "state": str(run.state),
        "run_id": run.run_id,
        "interval": [str(run.data_interval_start), str(run.data_interval_end)],
        "seconds": round(seconds, 2),
        "events": events,
        "xcom": xcoms,
        "tasks": states,
        "started": started,
    }


if __name__ == "__main__":
    command, folder, *rest = sys.argv[1:]
    result = parse(folder) if command == "parse" else test(folder, *rest)
    print(json.dumps(result, default=str))
