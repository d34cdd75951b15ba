"""Orchestration of the central pipeline: the steps (``steps``) and the Airflow DAGs that run
them (``dags/``, the folder Airflow reads; docs/orchestration.md)."""
