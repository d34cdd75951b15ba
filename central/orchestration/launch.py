"""``make airflow``: Airflow 3 standalone on 127.0.0.1 with this project's DAGs, over the demo's
PostgreSQL and warehouse (run ``make demo`` first), from ``.venv-airflow``.

* Airflow's home is ``var/airflow``. Its metadata database is ``airflow`` in the PostgreSQL on
  127.0.0.1:5432 when one answers (``EIOT_AIRFLOW_ADMIN_DSN`` names another), else SQLite in
  its home (fine for one person; the scheduler then runs one task at a time);
  ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, when set, names it instead.
* No default password: Airflow's simple auth manager generates the ``admin`` password on the
  first start, prints it, and keeps it in ``var/airflow/simple_auth_manager_passwords.json.
  generated``.
* The DAGs read ``EIOT_PG_DSN`` (default: the warehouse loader's login the demo wrote to
  ``var/demo/secrets/eiot_demo_loader.dsn``) and ``EIOT_CLICKHOUSE_DSN`` (default: the embedded
  warehouse in ``var/demo/warehouse``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[2]
HOME = REPO / "var" / "airflow"
DAGS = Path(__file__).resolve().parent / "dags"
# What `make demo` leaves behind (central/demo.py, default --var and --database).
DEMO_VAR = REPO / "var" / "demo"
DEMO_LOADER_DSN = DEMO_VAR / "secrets" / "eiot_demo_loader.dsn"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def metadata_url(admin_dsn: str, home: Path) -> str:
    """Airflow's metadata database: ``airflow`` in PostgreSQL if it answers, else SQLite."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute("select 1 from pg_database where datname = 'airflow'")
            if exists.fetchone() is None:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier("airflow")))
            info = conn.info
            auth = info.user + (f":{info.password}" if info.password else "")
            return f"postgresql+psycopg://{auth}@{info.host}:{info.port}/airflow"
    except psycopg.OperationalError as exc:
        print(f"no PostgreSQL for Airflow's metadata ({exc}): SQLite in {home}", file=sys.stderr)
        return f"sqlite:///{home / 'airflow.db'}"


def environment(home: Path, port: int, sqlite: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    if "EIOT_PG_DSN" not in env:
        if not DEMO_LOADER_DSN.exists():
            raise SystemExit("run `make demo` first, or set EIOT_PG_DSN (the loader's login)")
        env["EIOT_PG_DSN"] = DEMO_LOADER_DSN.read_text().strip()
    env.setdefault("EIOT_CLICKHOUSE_DSN", f"chdb://{DEMO_VAR / 'warehouse'}")
    env.update(
        {
            # standalone starts its parts as `airflow ...` from PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Airflow's own variable, when set, names the metadata database
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
            or (
                f"sqlite:///{home / 'airflow.db'}"
                if sqlite
                else metadata_url(env.get("EIOT_AIRFLOW_ADMIN_DSN", ADMIN_DSN), home)
            ),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            # where task processes reach the api-server (Airflow's default assumes port 8080)
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
            "AIRFLOW__COSMOS__CACHE_DIR": str(home / "cosmos"),
        }
    )
    return env


def prepare(env: dict[str, str]) -> str:
    """Airflow's metadata database migrated and the DAGs serialized; the ``airflow`` command."""
    airflow = str(Path(sys.executable).parent / "airflow")
    for step in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([airflow, *step], env=env, check=True, stdout=subprocess.DEVNULL)
    return airflow


def run_once(dag_id: str, env: dict[str, str]) -> bool:
    """One run of ``dag_id`` now, in this process (``dag.test()``: no scheduler needed); prints
    each task's state. True when the run succeeded."""
    prepare(env)
    os.environ.update(env)  # read by Airflow when it is imported, below
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAGS))
    if dag_id not in bag.dags:
        raise SystemExit(f"no DAG {dag_id!r} in {DAGS}: {sorted(bag.dags)} {bag.import_errors}")
    run = bag.dags[dag_id].test()
    print(f"\n{dag_id} {run.run_id}: {run.state}")
    mapped: dict[str, Counter[str]] = {}
    for ti in sorted(run.get_task_instances(), key=lambda ti: str(ti.start_date)):
        if ti.map_index < 0:
            print(f"  {str(ti.state):16} {ti.task_id}")
            continue
        mapped.setdefault(ti.task_id, Counter())[str(ti.state)] += 1
        if str(ti.state) not in ("success", "skipped"):
            print(f"  {str(ti.state):16} {ti.task_id}[{ti.rendered_map_index}]")
    for task_id, states in mapped.items():
        print(f"  {task_id}: " + ", ".join(f"{n} {s}" for s, n in states.most_common()))
    return str(run.state) == "success"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m central.orchestration.launch",
        description="Airflow standalone on 127.0.0.1 with the project's DAGs (make airflow); "
        "or, with --run, one run of one DAG now, without a scheduler (make demo AIRFLOW=1).",
    )
    parser.add_argument("--port", type=int, default=8080, help="the UI and API port")
    parser.add_argument("--home", type=Path, default=HOME, help="AIRFLOW_HOME (var/airflow)")
    parser.add_argument("--run", metavar="DAG_ID", help="run this DAG once and exit")
    parser.add_argument(
        "--sqlite", action="store_true", help="Airflow's metadata in SQLite in its home"
    )
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    env = environment(args.home, args.port, args.sqlite)
    if args.run:
        return 0 if run_once(args.run, env) else 1
    airflow = prepare(env)
    print(f"Airflow on http://127.0.0.1:{args.port} (user admin, password printed below)")
    os.execve(airflow, [airflow, "standalone"], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
