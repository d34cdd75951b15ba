"""The Airflow assets the DAGs exchange, defined once: a producer's outlet and a consumer's
schedule must name the same URI."""

from __future__ import annotations

from airflow.sdk import Asset

#: The marts passed the quality gate: emitted by ``warehouse_refresh``, starts ``model_lifecycle``.
MARTS = Asset(name="marts", uri="eiot://warehouse/marts")
