#!/usr/bin/env bash
# The whole test suite, from a fresh machine: the Python environment (.venv), the local Slurm
# cluster and PostgreSQL (scripts/local_cluster.sh up), then pytest. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slurm"` or `bash scripts/test.sh tests/test_config.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ "$(id -u)" = 0 ]; then
  bash scripts/local_cluster.sh up
  eval "$(bash scripts/local_cluster.sh env)"
  export HYPER_OPT_REQUIRE_SERVICES=1  # it started them: a service that is missing fails its tests
else
  echo "test.sh: not root, so the local Slurm cluster and PostgreSQL are not started;" \
       "their tests are skipped (CI runs as root and runs them)" >&2
fi
export PYTHONDONTWRITEBYTECODE=1
exec .venv/bin/python -m pytest -ra --durations=30 -p no:cacheprovider "$@"
