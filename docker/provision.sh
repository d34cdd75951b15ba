#!/bin/sh
# One-shot provisioning for docker-compose.yml (service `provision`), idempotent: the PKI and
# every identity the stack uses, the broker's configuration, the schema, the services' logins.
set -eu
pki=/var/lib/eiot/pki
central pki init --dir "$pki" --name "eiot compose CA"
central pki issue mosquitto --role broker --host mosquitto --host localhost --dir "$pki" --if-missing
for name in svc-ingest-1 svc-ingest-2; do
    central pki issue "$name" --role ingest --dir "$pki" --if-missing
done
central pki issue svc-models --role models --dir "$pki" --if-missing
central pki issue svc-models-keeper --role models --dir "$pki" --if-missing
central pki issue svc-ops --role ops --dir "$pki" --if-missing
central pki issue svc-admin --role admin --dir "$pki" --if-missing
central pki issue svc-alerts-webhook --role alerts --dir "$pki" --if-missing
for n in $(seq 1 "${GATEWAYS:-3}"); do
    central pki issue "gw-$n" --role gateway --dir "$pki" --if-missing
done
# The model signing key, in its own volume (only Airflow mounts it); its public half beside the
# PKI, where the gateways read it.
python -m ml keygen --private /var/lib/eiot-signing/model_signing.pem \
    --public /var/lib/eiot/model.pub --if-missing
central broker config --dir "$pki" --state-dir /var/lib/eiot-broker --broker-name mosquitto \
    --port 8883 --bind 0.0.0.0
central db migrate --create-db --dsn "$EIOT_ADMIN_DSN"
# Airflow's own metadata database, beside the project's
psql "$EIOT_ADMIN_DSN" -tAc "select 1 from pg_database where datname = 'airflow'" | grep -q 1 \
    || psql "$EIOT_ADMIN_DSN" -c "create database airflow"
EIOT_LOGIN_PASSWORD="$INGEST_DB_PASSWORD" central db login --name ingest --role eiot_ingest
EIOT_LOGIN_PASSWORD="$LOADER_DB_PASSWORD" central db login --name loader --role eiot_loader
EIOT_LOGIN_PASSWORD="$ML_DB_PASSWORD" central db login --name ml --role eiot_ml
EIOT_LOGIN_PASSWORD="$DASHBOARD_DB_PASSWORD" central db login --name dashboard --role eiot_dashboard
echo "provisioned"
