#!/usr/bin/env bash
# Make sure a Docker engine answers. Installs the host packages when missing and starts dockerd by
# hand when no engine runs (hosts without systemd as PID 1). Records the PID it started so that
# docker-down.sh stops only what this script started.
set -euo pipefail
state="${TEXTGEN_STATE_DIR:-$(pwd)/.build}"
mkdir -p "$state"
bash "$(dirname "$0")/host-packages.sh"
if docker info >/dev/null 2>&1; then
  echo "docker-up: engine already answers"
  exit 0
fi
echo "docker-up: starting dockerd"
nohup dockerd >"$state/dockerd.log" 2>&1 &
echo $! >"$state/dockerd.pid"
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && { echo "docker-up: engine ready"; exit 0; }
  sleep 1
done
echo "docker-up: dockerd did not answer in 60 s; see $state/dockerd.log" >&2
exit 1
