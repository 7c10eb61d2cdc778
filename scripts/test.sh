#!/usr/bin/env bash
# `make test` after lint: the sanitizer run and the whole pytest suite, with the tests marked
# `slow` started first, beside the sanitizer. They mostly wait on the protocol's own clock (a
# real rekey comes 120 s into a session), so they cost the machine little and, run after the
# rest, they would add minutes of wall time to every run. Exit status: 0 when all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

slow_log=$(mktemp /tmp/vpn-slow-tests.XXXXXX)
"$PYTHON" -m pytest -q -p no:cacheprovider -m slow tests >"$slow_log" 2>&1 &
slow=$!
# Stopped by its pid if this script is interrupted; the lab tears down its namespaces.
trap 'kill "$slow" 2>/dev/null; rm -f "$slow_log"' EXIT

status=0
PYTHON=$PYTHON bash scripts/sanitize.sh || status=1
docker-compose -f docker/docker-compose.yml config -q || status=1
wait "$slow"
slow_status=$?
[ "$slow_status" -eq 0 ] || [ "$slow_status" -eq 5 ] || status=1  # 5: none marked slow
echo "--- the slow tests (run beside the sanitizer):"
cat "$slow_log"
"$PYTHON" -m pytest -q -m "not slow" tests || status=1
exit "$status"
