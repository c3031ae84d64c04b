#!/usr/bin/env bash
# Start the MLflow tracking server that quantflow logs to (QUANTFLOW_MLFLOW_TRACKING_URI=http://HOST:PORT).
#
#   mlflow/start.sh                          # SQLite under $QUANTFLOW_HOME, artifacts in a local folder, 127.0.0.1:5000
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow:PASSWORD@db:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://mlflow/artifacts MLFLOW_S3_ENDPOINT_URL=http://seaweedfs:8333 \
#   MLFLOW_HOST=0.0.0.0 mlflow/start.sh      # the compose stack's setting
#
# Environment (all optional):
#   QUANTFLOW_HOME                 data dir for the SQLite store and local artifacts (default .quantflow)
#   MLFLOW_BACKEND_STORE_URI       runs/experiments store; default sqlite:///$QUANTFLOW_HOME/mlflow.db;
#                                  PostgreSQL as postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB
#   MLFLOW_ARTIFACTS_DESTINATION   where the server keeps artifacts: s3://bucket/prefix (credentials from AWS_*,
#                                  endpoint from MLFLOW_S3_ENDPOINT_URL) or a folder; default $QUANTFLOW_HOME/mlartifacts
#   MLFLOW_HOST / MLFLOW_PORT      bind address (default 127.0.0.1: this machine only) and port (default 5000)
#   MLFLOW_WORKERS                 server worker processes (default 1)
#   MLFLOW_SERVER_ALLOWED_HOSTS    Host headers accepted (read by MLflow itself; default localhost + private IPs)
#   MLFLOW_BIN                     the mlflow executable (default: on PATH, else the repository's .venv)
#   MLFLOW_START_DRY_RUN=1         print the command, one word a line (passwords masked), instead of running it
# Extra arguments are passed to `mlflow server` as they are.
#
# Artifacts are always served through the server (--serve-artifacts): clients upload and download over HTTP
# (mlflow-artifacts:/ URIs) and need no storage credentials of their own.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${QUANTFLOW_HOME:-.quantflow}"

if [[ -n "${MLFLOW_BIN:-}" ]]; then
  mlflow_bin="$MLFLOW_BIN"
elif command -v mlflow >/dev/null 2>&1; then
  mlflow_bin="$(command -v mlflow)"
elif [[ -x "$root/.venv/bin/mlflow" ]]; then
  mlflow_bin="$root/.venv/bin/mlflow"
else
  echo "mlflow/start.sh: no mlflow executable: run 'make setup', or set MLFLOW_BIN" >&2
  exit 2
fi

# Print a URI with any password replaced by ***.
mask() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }

backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${home}/mlflow.db}"
case "$backend" in
  sqlite:///*)
    mkdir -p "$home" ;;
  postgresql://* | postgres://*)
    # SQLAlchemy's name for the driver MLflow's images and this script expect.
    backend="postgresql+psycopg2://${backend#*://}" ;;
  postgresql+* | mysql* | mssql*) ;;
  *)
    echo "mlflow/start.sh: MLFLOW_BACKEND_STORE_URI must be a sqlite:///, postgresql+psycopg2:// (or other" \
         "SQLAlchemy) URI, got '$(mask "$backend")'" >&2
    exit 2 ;;
esac
if [[ "$backend" == postgresql+psycopg2://* ]] \
   && ! "$(dirname "$mlflow_bin")/python" -c "import psycopg2" >/dev/null 2>&1 \
   && [[ "${MLFLOW_START_DRY_RUN:-0}" != 1 ]]; then
  echo "mlflow/start.sh: a PostgreSQL backend needs psycopg2 beside mlflow: pip install psycopg2-binary" >&2
  exit 2
fi

if [[ -n "${MLFLOW_ARTIFACTS_DESTINATION:-}" ]]; then
  artifacts="$MLFLOW_ARTIFACTS_DESTINATION"
else
  mkdir -p "$home/mlartifacts"
  artifacts="$(cd "$home/mlartifacts" && pwd)"
fi

# The server's background job runner (huey) is not used by quantflow.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

cmd=("$mlflow_bin" server
     --backend-store-uri "$backend"
     --artifacts-destination "$artifacts"
     --serve-artifacts
     --host "${MLFLOW_HOST:-127.0.0.1}"
     --port "${MLFLOW_PORT:-5000}"
     --workers "${MLFLOW_WORKERS:-1}"
     "$@")

shown=()
for arg in "${cmd[@]}"; do shown+=("$(mask "$arg")"); done
if [[ "${MLFLOW_START_DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' env "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$MLFLOW_SERVER_ENABLE_JOB_EXECUTION" "${shown[@]}"
  exit 0
fi
echo "mlflow/start.sh: ${shown[*]}" >&2
exec "${cmd[@]}"
