#!/usr/bin/env bash
# The embedded demo: a local systemd container `textgen-demo` (same settings as the Molecule targets)
# deployed with playbooks/site.yml and inventories/local, then one measured generation.
# Usage: demo.sh up|down     (make demo / make demo-clean; `make demo` fills images and wheelhouse first)
# The endpoint is reached from this host on the container's address on Docker's bridge (host-local);
# publishing to 127.0.0.1 needs docker-proxy, which is not reliable on every host of this kind.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
name=textgen-demo
image=textgen-testbed:bookworm
state="$top/.build/demo"
export PATH="$top/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="${ANSIBLE_COLLECTIONS_PATH:-$top/.build/collections}"
export ANSIBLE_ROLES_PATH="$top/roles"
export ANSIBLE_PIPELINING=1

down() {
  if docker container inspect "$name" >/dev/null 2>&1; then
    docker rm -f "$name" >/dev/null
    echo "demo: removed the container $name"
  else
    echo "demo: no container $name"
  fi
  rm -rf "$state"
}

container() {
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "demo: the image $image is missing: run 'make demo' (it builds it)" >&2
    exit 1
  fi
  if ! docker container inspect "$name" >/dev/null 2>&1; then
    echo "demo: creating the systemd container $name"
    docker run -d --name "$name" --hostname "$name" \
      --cap-add SYS_ADMIN --security-opt seccomp=unconfined --cgroupns host \
      -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock --shm-size 1g \
      --stop-signal SIGRTMIN+3 \
      "$image" /lib/systemd/systemd >/dev/null
  elif [ "$(docker container inspect -f '{{.State.Running}}' "$name")" != true ]; then
    docker start "$name" >/dev/null
  fi
  local s=""
  for _ in $(seq 1 60); do
    s=$(docker exec "$name" systemctl is-system-running 2>/dev/null || true)
    case "$s" in running | degraded) return 0 ;; esac
    sleep 1
  done
  echo "demo: systemd in $name did not finish booting (state: ${s:-unknown})" >&2
  exit 1
}

up() {
  [ -f "$top/.build/tiny-model/model.safetensors" ] || "$top/.venv/bin/python" "$top/tests/tiny_model/build.py" "$top/.build/tiny-model"
  export TEXTGEN_TINY_MODEL="$top/.build/tiny-model"
  TEXTGEN_WHEELHOUSE=$(bash "$top/tests/testbed/wheelhouse.sh" | tail -n 1)
  export TEXTGEN_WHEELHOUSE
  container
  mkdir -p "$state" && chmod 700 "$state"
  if [ ! -s "$state/secrets.yml" ]; then
    (umask 077 && python3 -c 'import secrets; t = lambda: secrets.token_urlsafe(32)
print(f"vllm_api_key: \"{t()}\"\nnginx_tokens:\n  - id: demo\n    token: \"{t()}\"")' >"$state/secrets.yml")
  fi
  local t0 t1
  t0=$(date +%s)
  ansible-playbook -i "$top/inventories/local" "$top/playbooks/site.yml" -e "@$state/secrets.yml" | tee "$state/playbook.log"
  t1=$(date +%s)
  echo "demo: playbook took $((t1 - t0)) s"
  local ip
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")
  python3 - "$ip" "$state/secrets.yml" <<'PY'
import json, re, ssl, sys, time, urllib.request

ip, secrets = sys.argv[1], sys.argv[2]
token = re.search(r'token: "(.*)"', open(secrets).read()).group(1)
url = f"https://{ip}"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the demo's certificate is self-signed
body = {"inputs": "hello world", "parameters": {"max_new_tokens": 128, "details": True}}
req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
t = time.perf_counter()
with urllib.request.urlopen(req, timeout=300, context=ctx) as r:
    out = json.loads(r.read())
dt = time.perf_counter() - t
n = out["details"]["generated_tokens"]
print(f"""
==================================================================================================
 The endpoint (nginx -> hf-proxy -> vLLM CPU build, tiny random-weight model): {url}
 TGI API as on HF Inference Endpoints. The bearer token is in {secrets} (mode 0600). From this host:

   curl -sk {url}/generate -H "Authorization: Bearer $(sed -n 's/^ *token: "\\(.*\\)"/\\1/p' {secrets})" \\
        -H 'Content-Type: application/json' -d '{{"inputs": "hello world", "parameters": {{"max_new_tokens": 16}}}}'

   or: InferenceClient("{url}", token=TOKEN).text_generation("hello world")  (trust or skip the cert)

 One measured generation: {n} tokens in {dt:.3f} s = {n / dt:.1f} tokens/s
   (single request through nginx and the proxy, measured here end to end over HTTPS;
    finish reason {out["details"]["finish_reason"]})
 Text (random weights, so it is noise): {out["generated_text"][:60]!r}...
 Remove it: make demo-clean
==================================================================================================""")
PY
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
