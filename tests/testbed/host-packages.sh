#!/usr/bin/env bash
# Debian packages the test run needs on this host (docker engine, debootstrap, shellcheck for
# ansible-test, curl). Installs only what is missing.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v curl >/dev/null || need+=(curl)
command -v git >/dev/null || need+=(git)
[ ${#need[@]} -eq 0 ] && exit 0
echo "host-packages: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
