#!/usr/bin/env bash
# Stop the dockerd that docker-up.sh started (and nothing else).
set -euo pipefail
state="${TEXTGEN_STATE_DIR:-$(pwd)/.build}"
pidfile="$state/dockerd.pid"
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
fi
rm -f "$pidfile"
echo "docker-down: dockerd stopped"
