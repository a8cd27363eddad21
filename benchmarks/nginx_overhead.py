#!/usr/bin/env python3
"""Requests/s through nginx (selfhost.textgen.nginx) vs straight to the proxy (selfhost.textgen.hf_proxy).

Starts its own systemd target container (`edge-bench`, from textgen-testbed:bookworm), applies the
edge scenario's prepare playbook (the STAND-IN upstream where vLLM would be) and both roles with limits
high enough not to interfere, then runs one load generator inside the container against both paths in
alternating slices of the same run, 64 keep-alive connections each:

- nginx:  https://127.0.0.1:443  (TLS, bearer-token check, limits, JSON log, proxy keep-alive pool)
- direct: http://127.0.0.1:8080  (the proxy itself)

Two routes: `GET /info` (answered by the proxy itself: the cost of nginx alone) and `POST /generate`
with 16 tokens (through the stand-in upstream, a threaded stdlib server that bounds both paths).
Prints requests/s, p50 latency and the ratio nginx/direct for each. Nothing here is a fake number:
every figure is measured in this run on this machine.

    python benchmarks/nginx_overhead.py [--seconds 4] [--rounds 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "edge-bench"
IMAGE = "textgen-testbed:bookworm"
TOKEN = "bench-token-" + "0123456789abcdef" * 2

LOADGEN = r"""
import asyncio, json, ssl, sys, time
host, slices, conns = "127.0.0.1", json.loads(sys.argv[1]), int(sys.argv[2])
TOKEN = sys.argv[3]

def request(route):
    if route == "info":
        return (f"GET /info HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode()
    body = json.dumps({"inputs": "hello world", "parameters": {"max_new_tokens": 16}}).encode()
    return (f"POST /generate HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

async def conn_loop(port, tls, req, deadline, lat, statuses):
    ctx = ssl._create_unverified_context() if tls else None
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    while time.monotonic() < deadline:
        t = time.perf_counter()
        writer.write(req)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError):
            # the server ended this keep-alive connection (nginx: keepalive_requests): open a new one
            writer.close()
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            statuses["reconnects"] = statuses.get("reconnects", 0) + 1
            continue
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for ln in lines[1:]:
            if ln.lower().startswith(b"content-length:"):
                length = int(ln.split(b":")[1])
        await reader.readexactly(length)
        lat.append(time.perf_counter() - t)
        statuses[status] = statuses.get(status, 0) + 1
    writer.close()

async def run_slice(port, tls, req, seconds):
    lat, statuses = [], {}
    deadline = time.monotonic() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(conn_loop(port, tls, req, deadline, lat, statuses) for _ in range(conns)))
    return {"n": len(lat), "elapsed": time.perf_counter() - t0, "lat": lat, "statuses": statuses}

async def main():
    out = []
    for route, path, port, tls, seconds in slices:
        r = await run_slice(port, tls, request(route), seconds)
        r.update(route=route, path=path)
        out.append(r)
    print(json.dumps(out))

asyncio.run(main())
"""


def sh(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, check=False, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return r


def start_target() -> None:
    sh("docker", "rm", "-f", NAME, check=False)
    sh(
        "docker", "run", "-d", "--name", NAME, "--hostname", NAME,
        "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--cgroupns", "host",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "--stop-signal", "SIGRTMIN+3", IMAGE, "/lib/systemd/systemd",
    )  # fmt: skip


def converge(tmp: Path) -> None:
    inventory = tmp / "inventory.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {NAME: {"ansible_connection": "community.docker.docker"}},
                    "vars": {
                        "edge_standin_port": 8000,
                        "hf_proxy_upstreams": ["http://127.0.0.1:8000"],
                        "hf_proxy_private_users": False,
                        "nginx_tokens": [{"id": "bench", "token": TOKEN}],
                        "nginx_rate_per_token": "1000000r/s",
                        "nginx_burst_per_token": 1000000,
                        "nginx_rate_per_address": "1000000r/s",
                        "nginx_burst_per_address": 1000000,
                        "nginx_connections_per_address": 60000,
                        "nginx_connections_per_token": 60000,
                    },
                }
            }
        )
    )
    playbook = tmp / "bench.yml"
    playbook.write_text(
        json.dumps(
            [
                {"import_playbook": str(ROOT / "molecule/edge/prepare.yml")},
                {
                    "name": "Proxy and front door",
                    "hosts": "all",
                    "tasks": [
                        {"ansible.builtin.include_role": {"name": "selfhost.textgen.hf_proxy"}},
                        {"ansible.builtin.include_role": {"name": "selfhost.textgen.nginx"}},
                    ],
                },
            ]
        )
    )
    # prepare.yml copies files/standin_upstream.py relative to itself.
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".build/collections"))
    env["ANSIBLE_ROLES_PATH"] = str(ROOT / "roles")
    r = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook)],
        text=True,
        capture_output=True,
        env=env,
        cwd=ROOT / "molecule/edge",
        check=False,
    )
    if r.returncode != 0:
        sys.exit("converge failed:\n" + r.stdout[-4000:] + r.stderr[-2000:])


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one slice")
    ap.add_argument("--rounds", type=int, default=3, help="alternating nginx/direct slices per route")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the edge-bench container")
    args = ap.parse_args()
    if sh("docker", "image", "inspect", IMAGE, check=False).returncode != 0:
        sys.exit(f"{IMAGE} missing: run `make images` (tests/testbed/build-image.sh bookworm)")
    start_target()
    try:
        with tempfile.TemporaryDirectory() as d:
            print(
                "nginx_overhead: converging edge-bench (hf_proxy + nginx, stand-in upstream) ...", flush=True
            )
            converge(Path(d))
        slices = []
        for route in ("info", "generate"):
            slices.append([route, "warmup", 443, True, 1.0])
            slices.append([route, "warmup", 8080, False, 1.0])
            for i in range(args.rounds):
                pair = [
                    [route, "nginx", 443, True, args.seconds],
                    [route, "direct", 8080, False, args.seconds],
                ]
                slices.extend(pair if i % 2 == 0 else pair[::-1])
        r = sh(
            "docker", "exec", NAME, "python3", "-c", LOADGEN, json.dumps(slices), str(args.connections), TOKEN
        )  # fmt: skip
        results = json.loads(r.stdout)
    finally:
        if not args.keep:
            sh("docker", "rm", "-f", NAME, check=False)
    cpus = os.cpu_count()
    print(
        f"nginx_overhead: {args.connections} connections, {args.rounds} x {args.seconds:.0f} s per path, "
        f"load generator inside the target, {cpus} CPUs shared by nginx, proxy, upstream and client"
    )
    for route in ("info", "generate"):
        agg = {}
        for path in ("nginx", "direct"):
            rs = [x for x in results if x["route"] == route and x["path"] == path]
            n = sum(x["n"] for x in rs)
            t = sum(x["elapsed"] for x in rs)
            lat = [v for x in rs for v in x["lat"]]
            statuses: dict[str, int] = {}
            for x in rs:
                for k, v in x["statuses"].items():
                    statuses[k] = statuses.get(k, 0) + v
            agg[path] = (n / t, pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000, statuses)
        label = (
            "GET /info (proxy answers itself)" if route == "info" else "POST /generate 16 tokens (stand-in)"
        )
        for path in ("nginx", "direct"):
            rps, p50, p99, st = agg[path]
            print(
                f"  {label:40s} {path:6s} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                f"statuses {st}"
            )
        print(f"  {label:40s} ratio nginx/direct = {agg['nginx'][0] / agg['direct'][0]:.2f}")


if __name__ == "__main__":
    main()
