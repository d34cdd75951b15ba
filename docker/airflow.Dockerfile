# Airflow 3 with the project installed (its DAGs call the project's own functions) and dbt in
# its own venv (its pins clash with Airflow's).
FROM apache/airflow:3.3.2-python3.11
USER root
COPY --chown=airflow:root pyproject.toml README.md /opt/eiot/
COPY --chown=airflow:root edge_agent /opt/eiot/edge_agent
COPY --chown=airflow:root central /opt/eiot/central
COPY --chown=airflow:root ml /opt/eiot/ml
COPY --chown=airflow:root simulator /opt/eiot/simulator
COPY --chown=airflow:root bench /opt/eiot/bench
COPY --chown=airflow:root dbt /opt/eiot/dbt
COPY --chown=airflow:root gx /opt/eiot/gx
RUN python -m venv /opt/dbt \
    && /opt/dbt/bin/pip install --no-cache-dir "dbt-core~=1.11.0" "dbt-clickhouse~=1.10.0"
USER airflow
RUN pip install --no-cache-dir "/opt/eiot[warehouse,ml]" "astronomer-cosmos~=1.15"
ENV EIOT_DBT_EXECUTABLE=/opt/dbt/bin/dbt \
    EIOT_DBT_PROJECT_DIR=/opt/eiot/dbt \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__COSMOS__ENABLE_TELEMETRY=False
