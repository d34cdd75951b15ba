# Superset with the ClickHouse driver (the dashboards read the warehouse marts).
FROM apache/superset:6.0.0
USER root
RUN pip install --no-cache-dir "clickhouse-connect[sqlalchemy]>=0.8"
USER superset
