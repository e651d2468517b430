#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: installs what it needs (.venv with
# the dev extras; openssl, Node.js, npm and redis-server via apt-get when missing), then lints,
# type-checks and runs pytest. Extra arguments go to pytest.
set -euo pipefail
TICKETLOCK_EXTRAS=dev
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== ruff"; "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check .
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; exec "$VENV/bin/pytest" "$@"
