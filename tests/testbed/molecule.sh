#!/usr/bin/env bash
# Run Molecule scenarios in lanes side by side (their containers are distinct).
#   molecule.sh LANE...   LANE = SCENARIO[,SCENARIO...], run one after the other
# e.g. `molecule.sh stack,fleet edge,gpu_driver`: stack then fleet, beside edge then gpu_driver.
# The first lane writes to stdout as it runs; the others write to a log under $TEXTGEN_STATE_DIR that is
# printed once the first lane ends. Exit status: non-zero when any scenario failed.
# When the noble image is missing (Ubuntu archive unreachable), scenarios with a noble platform run their
# bookworm platform only, with a loud warning.
set -euo pipefail
state="${TEXTGEN_STATE_DIR:-$(pwd)/.build}"
mkdir -p "$state"
noble=1
docker image inspect textgen-testbed:noble >/dev/null 2>&1 || noble=0

scenario() {
  local s=$1 args=() keep start rc=0
  if [ $noble -eq 0 ] && grep -qE 'name: [a-z_-]+-noble' "molecule/$s/molecule.yml"; then
    keep=$(grep -oE 'name: [a-z_-]+-bookworm' "molecule/$s/molecule.yml" | head -n 1 | cut -d' ' -f2)
    echo "##### WARNING: no textgen-testbed:noble image (Ubuntu archive unreachable): scenario $s runs $keep only; noble is SKIPPED #####"
    args=(--platform-name "$keep")
  fi
  echo "===== molecule test -s $s ${args[*]} ====="
  start=$(date +%s)
  molecule test -s "$s" "${args[@]}" || rc=$?
  echo "===== molecule test -s $s: $(($(date +%s) - start)) s, rc=$rc ====="
  return $rc
}

lane() {
  local s
  IFS=, read -ra names <<<"$1"
  for s in "${names[@]}"; do scenario "$s" || return 1; done
}

lanes=("$@")
pids=()
logs=()
for i in "${!lanes[@]}"; do
  [ "$i" -eq 0 ] && continue
  logs[i]="$state/molecule-${lanes[i]//,/-}.log"
  echo "===== lane ${lanes[i]} runs beside ${lanes[0]}; its output: ${logs[i]} ====="
  lane "${lanes[i]}" >"${logs[i]}" 2>&1 &
  pids[i]=$!
done
failed=()
start=$(date +%s)
lane "${lanes[0]}" || failed+=("${lanes[0]}")
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[i]}" || rc=$?
  echo "===== output of lane ${lanes[i]} (rc=$rc) ====="
  cat "${logs[i]}"
  [ $rc -eq 0 ] || failed+=("${lanes[i]}")
done
echo "===== molecule: $(($(date +%s) - start)) s ====="
if [ ${#failed[@]} -gt 0 ]; then
  echo "===== FAILED: ${failed[*]} =====" >&2
  exit 1
fi
