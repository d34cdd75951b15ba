#!/bin/sh
# Superset in docker-compose.yml: its metadata database migrated, the admin account with the
# password from .env (reset on each start, so .env stays the one place it is set), the roles,
# then the server. The dashboards are imported by the one-shot service `dashboards-import`.
set -eu
superset db upgrade
superset fab create-admin --username admin --firstname Control --lastname Room \
    --email admin@localhost --password "$SUPERSET_ADMIN_PASSWORD" >/dev/null \
    || echo "admin exists"
superset fab reset-password --username admin --password "$SUPERSET_ADMIN_PASSWORD"
superset init
exec /usr/bin/run-server.sh
