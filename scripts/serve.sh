#!/usr/bin/env bash
# Start ticketlock-server (in-memory store on 127.0.0.1:50051 unless options say
# otherwise), installing it into .venv first if needed. Options are passed on:
#   scripts/serve.sh --listen 0.0.0.0:50051 --endpoints endpoints.yml
set -euo pipefail
TICKETLOCK_EXTRAS=server
source "$(dirname "$0")/bootstrap.sh"
exec "$VENV/bin/ticketlock-server" "$@"
