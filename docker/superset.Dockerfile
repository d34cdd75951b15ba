# Superset with the ClickHouse driver (the dashboards read the warehouse marts); the same
# Superset version as .venv-superset (Makefile), where dashboards/ is tested.
FROM apache/superset:6.1.0
USER root
RUN pip install --no-cache-dir "clickhouse-connect[sqlalchemy]>=0.8"
COPY docker/superset-start.sh /app/docker/eiot-superset-start.sh
# The configuration `make dashboards` runs with (content security policy, chart cache, audit log);
# SUPERSET_SECRET_KEY comes from .env, the metadata database and cache from the volume.
COPY deploy/superset/superset_config.py /app/eiot/superset_config.py
ENV SUPERSET_CONFIG_PATH=/app/eiot/superset_config.py \
    SUPERSET_HOME=/app/superset_home
USER superset
CMD ["sh", "/app/docker/eiot-superset-start.sh"]
