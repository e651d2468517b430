# Sourced by scripts/serve.sh and scripts/test.sh: a virtualenv in .venv with this
# package installed (extras in $TICKETLOCK_EXTRAS), reinstalled only when
# pyproject.toml changes. Needs Python 3.10+ and, for the first run, PyPI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TICKETLOCK_VENV:-$ROOT/.venv}"

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3.10 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "ticketlock: Python 3.10+ with venv is required (apt-get install python3 python3-venv)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  "$(pick_python)" -m venv "$VENV"
fi
stamp="$VENV/.ticketlock-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)-${TICKETLOCK_EXTRAS}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$TICKETLOCK_EXTRAS]"
  echo "$want" > "$stamp"
fi
