#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the examples,
# the tests and the benchmarks use. Idempotent: a second run only checks.
#   HYPER_OPT_VENV=path   use another location
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HYPER_OPT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.hyper_opt_installed"
want="$(cat setup.cfg scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup_env.sh: installing hyper_opt, torch (CPU) and the test and example extras into $VENV" \
     "(a few minutes the first time; later runs only check)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>/dev/null || true
# torch first, pinned: 2.13.0 is a CPU wheel on these machines; an unpinned torch may pull CUDA builds.
"$VENV/bin/python" -m pip install -q "torch==2.13.0" >"$VENV/pip-$$.log" 2>&1 || { tail -20 "$VENV/pip-$$.log" >&2; exit 1; }
"$VENV/bin/python" -m pip install -q -e ".[all,test]" >"$VENV/pip-$$.log" 2>&1 || { tail -20 "$VENV/pip-$$.log" >&2; exit 1; }
KERAS_BACKEND=torch "$VENV/bin/python" -c "import hyper_opt, optuna, torch, keras, pytorch_metric_learning, sklearn, psycopg, psycopg2" \
  || { echo "setup_env.sh: the environment in $VENV is incomplete" >&2; exit 1; }
echo "$want" > "$stamp"
