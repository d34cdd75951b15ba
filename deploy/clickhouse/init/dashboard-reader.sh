#!/bin/bash
# First start of the ClickHouse server of docker-compose.yml (/docker-entrypoint-initdb.d): the
# login the dashboards read with, which may read the marts and nothing else (readonly = 2: it
# may set a query's settings, as Superset's driver does, but change no data).
set -euo pipefail
password=${CLICKHOUSE_DASHBOARD_PASSWORD//\\/\\\\}
password=${password//\'/\\\'}
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE USER IF NOT EXISTS dashboard IDENTIFIED WITH sha256_password BY '${password}'
    SETTINGS readonly = 2;
GRANT SELECT ON marts.* TO dashboard;
SQL
