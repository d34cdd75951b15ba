# Superset with the ClickHouse driver (the dashboards read the warehouse marts); the same
# Superset version as .venv-superset (Makefile), where dashboards/ is tested.
FROM apache/superset:6.1.0
USER root
RUN pip install --no-cache-dir "clickhouse-connect[sqlalchemy]>=0.8"
COPY docker/superset-start.sh /app/docker/eiot-superset-start.sh
USER superset
CMD ["sh", "/app/docker/eiot-superset-start.sh"]
