#!/usr/bin/env bash
# GPU-host check for selfhost.textgen: gpu_facts and the nvidia_driver role (verify entry point) on a real GPU.
#
# For a host with an NVIDIA GPU and a loaded driver, no network, no systemd needed (Ubuntu 24.04, Python 3.12).
# Installs ansible-core from the wheels carried in tests/gpu/wheels/ (extracted into a temporary directory:
# no pip, no venv, nothing written outside it), runs tests/gpu/check.yml with a local connection, prints the
# facts and the role's result, and checks that nothing changed. Exit 0 when every check passed.
#
#   bash tests/gpu/check.sh              # expects driver branch 580
#   TEXTGEN_GPU_BRANCH=570 bash tests/gpu/check.sh
#   PYTHON=/usr/bin/python3.12 bash tests/gpu/check.sh
#
# The wheels: tests/gpu/wheels/README.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-python3}
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/textgen-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== host: $(uname -srm); $("$py" -V 2>&1); $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
command -v nvidia-smi >/dev/null || echo "WARNING: nvidia-smi is not on PATH ($PATH)"

echo "== ansible-core from $(find "$here/wheels" -name '*.whl' | wc -l) wheels in tests/gpu/wheels ($(du -sh "$here/wheels" | cut -f1))"
"$py" - "$here/wheels" "$work/site" <<'PY'
import pathlib, sys, zipfile
src, dst = (pathlib.Path(p) for p in sys.argv[1:])
wheels = sorted(src.glob("*.whl"))
if not any(w.name.startswith("ansible_core-") for w in wheels):
    sys.exit(f"no ansible_core wheel in {src}")
for wheel in wheels:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(dst)
PY

mkdir -p "$work/collections/ansible_collections/selfhost" "$work/home" "$work/tmp"
ln -s "$repo" "$work/collections/ansible_collections/selfhost/textgen"
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
export ANSIBLE_COLLECTIONS_PATH="$work/collections"
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_HOME="$work/home"
export ANSIBLE_LOCAL_TEMP="$work/tmp"
export ANSIBLE_REMOTE_TEMP="$work/tmp"
ANSIBLE_PYTHON_INTERPRETER="$(command -v "$py")"
export ANSIBLE_PYTHON_INTERPRETER
export ANSIBLE_RETRY_FILES_ENABLED=false
export ANSIBLE_LOCALHOST_WARNING=false
export ANSIBLE_INVENTORY_UNPARSED_WARNING=false
export ANSIBLE_FORCE_COLOR=false
export ANSIBLE_NOCOLOR=true
export ANSIBLE_CALLBACKS_ENABLED=ansible.builtin.default
printf "[defaults]\n" >"$work/ansible.cfg"
export ANSIBLE_CONFIG="$work/ansible.cfg"   # ignore any ansible.cfg in the working directory

"$py" -m ansible adhoc --version | head -n 1
set +e
"$py" -m ansible playbook -i localhost, "$here/check.yml" 2>&1 | tee "$work/run.log"
rc=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - start ))
if [ "$rc" -eq 0 ] && ! grep -Eq 'localhost +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$work/run.log"; then
  echo "FAIL: the run reported changes or failures (see the recap above)"
  rc=1
fi
echo "== gpu check: $([ "$rc" -eq 0 ] && echo PASSED || echo "FAILED (rc $rc)") in ${elapsed} s"
exit "$rc"
