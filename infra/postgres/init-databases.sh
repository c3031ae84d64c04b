#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume (/docker-entrypoint-initdb.d):
# one server, two databases, each owned by its own role: `prefect` for the Prefect server, `mlflow` for MLflow.
# Passwords come from the environment (infra/.env) and reach SQL as psql variables, never spliced into the text.
set -euo pipefail
: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD in infra/.env}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in infra/.env}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
     -v prefect_password="$PREFECT_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
