#!/usr/bin/env bash
# The test suite, from a fresh machine: the Python environment (.venv), the local Slurm cluster,
# PostgreSQL and OpenPBS (scripts/local_cluster.sh up), then pytest with pytest-xdist.
#
#   bash scripts/test.sh              the whole suite (what .ci/run runs)
#   bash scripts/test.sh --fast       the fast tier: no service, nothing marked slow (-m "not services and not slow")
#   bash scripts/test.sh --no-cluster every test that needs no service (-m "not services"); starts nothing
#
# Tiers follow from what a test uses (tests/conftest.py): a test that asks for the PostgreSQL,
# Slurm or OpenPBS fixtures is marked `services`. Other arguments go to pytest, e.g.
# `bash scripts/test.sh --fast tests/test_config.py` or `bash scripts/test.sh -k walltime`.
#   HYPER_OPT_TEST_JOBS=N       pytest-xdist workers (default: 6 for the whole suite, whose cluster
#                               tests mostly wait on schedulers' clocks; the CPU count for the others)
#   HYPER_OPT_TEST_CPU_SLOTS=N  CPU-bound tests (marker cpu) that run at once (default: the CPU count)
set -euo pipefail
cd "$(dirname "$0")/.."
tier=all
case "${1:-}" in
  --fast) tier=fast; shift ;;
  --no-cluster) tier=no-cluster; shift ;;
esac
bash scripts/setup_env.sh
markers=()
jobs=${HYPER_OPT_TEST_JOBS:-}
if [ "$tier" = all ]; then
  jobs=${jobs:-6}
  if [ "$(id -u)" = 0 ]; then
    bash scripts/local_cluster.sh up
    eval "$(bash scripts/local_cluster.sh env)"
    export HYPER_OPT_REQUIRE_SERVICES=1  # it started them: a service that is missing fails its tests
  else
    echo "test.sh: not root, so the local Slurm cluster, PostgreSQL and OpenPBS are not started;" \
         "their tests are skipped (CI runs as root and runs them)" >&2
  fi
else
  jobs=${jobs:-$(nproc)}
  if [ "$tier" = fast ]; then markers=(-m "not services and not slow"); else markers=(-m "not services"); fi
fi
export PYTHONDONTWRITEBYTECODE=1
started=$(date +%s)
rc=0
.venv/bin/python -m pytest -ra --durations=30 -p no:cacheprovider -n "$jobs" --dist loadgroup \
  "${markers[@]}" "$@" || rc=$?
echo "test.sh: tier $tier, $jobs workers: $(( $(date +%s) - started )) s of pytest (exit $rc)" >&2
exit $rc
