#!/usr/bin/env bash
# Build the virtualenv that runs Airflow for the example DAG (jobs/airflow/segmentation_dag.py).
#
#   jobs/airflow/make_venv.sh [VENV_DIR]        default: <repo>/.venv-airflow
#
# Airflow gets its own venv: its provider for Spark pulls pyspark-client (a second copy of the
# `pyspark` package, 4.2) and Airflow pins much of the web stack, which would clash with this
# project's pyspark 4.3 environment. The Spark jobs themselves run with the project's venv
# (spark-submit and PYSPARK_PYTHON from .venv/bin); this venv only needs Airflow + the provider.
# Idempotent: a venv whose marker names the same pins is reused; a half-built one is rebuilt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.venv-airflow}"
python="${AIRFLOW_VENV_PYTHON:-python3}"
pins="apache-airflow==3.3.2 apache-airflow-providers-apache-spark==6.3.4"
constraints="$here/constraints-3.11.txt"
marker="$venv/.segmentation-airflow-venv"
want="$pins $(sha256sum "$constraints" | cut -c1-16)"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9                                           # one builder at a time (CI step, test)
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -x "$venv/bin/airflow" ]; then
  echo "airflow venv up to date: $venv"
  exit 0
fi
t0=$(date +%s)
rm -rf "$venv"
"$python" -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/pip" install -q -c "$constraints" $pins
"$venv/bin/airflow" version >/dev/null
echo "$want" > "$marker"
echo "built airflow venv $venv ($pins) in $(( $(date +%s) - t0 ))s"
