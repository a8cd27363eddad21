"""Verify the `fleet` scenario: playbooks/rollout.yml under load, through the load balancer.

Runs after converge. Each test runs the real rollout playbook (ansible-playbook, the Molecule
inventory) while a load generator on the controller sends TGI requests (/generate and
/generate_stream, a new TLS connection each) through the load balancer fleet-lb the whole time.
The tests depend on each other and run in file order.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[3]
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
TOKEN = "fleet-test-token-loadgen-0123456789abcdef"
GPUS = ["fleet-gpu1", "fleet-gpu2"]
UPSTREAMS = "/etc/nginx/textgen/upstreams.conf"
GOOD = {"vllm_max_num_seqs": 20}
BAD = {"vllm_max_num_seqs": 20, "vllm_max_model_len": 64}  # the gate's ~100-token prompts no longer fit


def target(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def lb_address() -> str:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", "fleet-lb"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out, "fleet-lb has no IP address"
    return out[0]


class LoadGenerator:
    """Sends TGI requests through the load balancer until stopped; counts every outcome."""

    def __init__(self, address: str, workers: int = 2) -> None:
        self.address = address
        self.workers = workers
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE

    def _one(self, n: int) -> None:
        stream = n % 2 == 1
        body = json.dumps({"inputs": f"hello world {n}", "parameters": {"max_new_tokens": 8}})
        conn = http.client.HTTPSConnection(self.address, 443, timeout=60, context=self._ctx)
        try:
            conn.request(
                "POST",
                "/generate_stream" if stream else "/generate",
                body=body,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", "replace")
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]}")
            if stream:
                events = [json.loads(x[5:]) for x in data.splitlines() if x.startswith("data:")]
                if not events or events[-1].get("generated_text") is None:
                    raise RuntimeError(f"stream ended without its final event: {data[-200:]!r}")
            elif "generated_text" not in json.loads(data):  # TGI's /generate: one object
                raise RuntimeError(f"no generated_text: {data[:200]}")
            with self._lock:
                self.ok += 1
        except Exception as exc:
            with self._lock:
                kind = "stream" if stream else "generate"
                self.failures.append(f"{time.strftime('%H:%M:%S')} {kind}: {exc}")
        finally:
            conn.close()

    def _run(self, w: int) -> None:
        n = w
        while not self._stop.is_set():
            self._one(n)
            n += self.workers
            time.sleep(0.05)

    def __enter__(self) -> LoadGenerator:
        for w in range(self.workers):
            t = threading.Thread(target=self._run, args=(w,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)


def playbook(
    name: str, extra: dict | None = None, inventories: list[str] | None = None
) -> tuple[int, str, float]:
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [str(Path(sys.executable).parent / "ansible-playbook")]
    for inv in inventories or [INVENTORY]:
        cmd += ["-i", inv]
    cmd.append(str(ROOT / "playbooks" / name))
    if extra:
        cmd += ["-e", json.dumps(extra)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    took = time.monotonic() - start
    out = proc.stdout + proc.stderr
    print(f"\n----- {name} {extra or ''}: rc={proc.returncode} in {took:.0f} s -----\n{out[-6000:]}")
    return proc.returncode, out, took


def rollout(extra: dict) -> tuple[int, str, float]:
    return playbook("rollout.yml", extra)


def invocation(name: str) -> str:
    return target(name).check_output("systemctl show -p InvocationID --value vllm@main.service")


def vllm_config(name: str) -> str:
    return target(name).file("/etc/vllm/main.yaml").content_string


def lb_line(name: str) -> str:
    text = target("fleet-lb").file(UPSTREAMS).content_string
    lines = [x for x in text.splitlines() if x.endswith(f"# {name}")]
    assert len(lines) == 1, f"no upstream line for {name}"
    return lines[0]


@pytest.fixture(scope="module")
def address() -> str:
    addr = lb_address()
    with LoadGenerator(addr, workers=1) as probe:
        time.sleep(3)
    assert probe.ok > 0 and not probe.failures, f"the load balancer does not serve: {probe.failures}"
    return addr


def test_rollout_under_load_fails_no_request(address):
    before = {h: invocation(h) for h in GPUS}
    for h in GPUS:
        assert "max-num-seqs: 20" not in vllm_config(h)
    with LoadGenerator(address) as load:
        rc, out, took = rollout(GOOD)
    print(f"load during the rollout: {load.ok} succeeded, {len(load.failures)} failed; rollout {took:.0f} s")
    assert rc == 0, out[-3000:]
    assert load.failures == [], load.failures[:20]
    assert load.ok >= 20, f"the load generator sent too little to mean anything ({load.ok})"
    for h in GPUS:
        assert "max-num-seqs: 20" in vllm_config(h), f"{h} was not updated"
        assert invocation(h) != before[h], f"vLLM on {h} was not restarted"
        assert not lb_line(h).rstrip().split("#")[0].rstrip().endswith("down;"), f"{h} left drained"
    assert out.count("passed the gate") == 2
    baseline = json.loads(target("fleet-gpu1").file("/var/lib/textgen/baseline.json").content_string)
    assert baseline["output_token_throughput"] > 0


def test_bad_canary_stops_the_rollout(address):
    untouched = invocation("fleet-gpu2")
    with LoadGenerator(address) as load:
        rc, out, _ = rollout(BAD)
    print(f"load during the failed rollout: {load.ok} succeeded, {len(load.failures)} failed")
    assert rc != 0, "the rollout did not stop"
    assert "The rollout stopped at fleet-gpu1" in out
    # the canary has the bad setting and stays out of the load balancer
    assert "max-model-len: 64" in vllm_config("fleet-gpu1")
    assert lb_line("fleet-gpu1").split("#")[0].rstrip().endswith("down;")
    # the second host was not touched and serves
    assert "max-model-len: 512" in vllm_config("fleet-gpu2")
    assert invocation("fleet-gpu2") == untouched
    assert not lb_line("fleet-gpu2").split("#")[0].rstrip().endswith("down;")
    # the load balancer served every request meanwhile
    assert load.failures == [], load.failures[:20]
    assert load.ok >= 10


def test_rollback_is_a_rerun_with_the_old_values(address):
    before = {h: invocation(h) for h in GPUS}
    with LoadGenerator(address) as load:
        rc, out, took = rollout(GOOD)
    print(f"load during the rollback: {load.ok} ok, {len(load.failures)} failed; rollback {took:.0f} s")
    assert rc == 0, out[-3000:]
    assert load.failures == [], load.failures[:20]
    for h in GPUS:
        assert "max-model-len: 512" in vllm_config(h)
        assert not lb_line(h).split("#")[0].rstrip().endswith("down;")
    # only the host the bad canary changed restarts; the other one already has these values
    assert invocation("fleet-gpu1") != before["fleet-gpu1"], "the reverted canary was not restarted"
    assert invocation("fleet-gpu2") == before["fleet-gpu2"], "an unchanged host was restarted"
    assert out.count("passed the gate") == 2


def test_scale_moves_a_host_to_standby_and_back_without_a_restart(address, tmp_path):
    standby = tmp_path / "standby.yml"
    standby.write_text("all:\n  children:\n    standby:\n      hosts:\n        fleet-gpu2:\n")
    running = invocation("fleet-gpu2")
    with LoadGenerator(address) as load:
        rc, out, _ = playbook("scale.yml", inventories=[INVENTORY, str(standby)])
        assert rc == 0, out[-3000:]
        assert lb_line("fleet-gpu2").split("#")[0].rstrip().endswith("down;"), "fleet-gpu2 still serves"
        assert not lb_line("fleet-gpu1").split("#")[0].rstrip().endswith("down;")
        rc, out, took = playbook("scale.yml")
        assert rc == 0, out[-3000:]
    print(f"load while scaling: {load.ok} ok, {len(load.failures)} failed; serving again in {took:.0f} s")
    assert not lb_line("fleet-gpu2").split("#")[0].rstrip().endswith("down;"), "fleet-gpu2 not back"
    assert invocation("fleet-gpu2") == running, "vLLM restarted: scaling must not cold-start"
    assert load.failures == [], load.failures[:20]
