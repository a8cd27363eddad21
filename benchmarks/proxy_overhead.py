"""The proxy's overhead, measured in one run against a FAKE fast upstream (see proxy_fake_upstream.py).

Starts the fake upstream, `hf-proxy` in front of it, and the migration guide's FastAPI layer (the
baseline, proxy_guide_layer.py), then drives them from this process with a keep-alive HTTP/1.1 load
generator and prints the figures and ratios of issue 3:

  non-streaming /generate, 16 tokens, 64 concurrent: proxied req/s / direct req/s        (>= 0.40)
  added p50 latency at concurrency 1                                                      (<= 1.5 ms)
  streaming, 256 tokens a request, 32 concurrent: proxied tokens/s / direct tokens/s      (>= 0.40)
  ours / the guide's layer, non-streaming req/s                                           (>= 50)
  RSS of all proxy processes with 512 open streams                                        (<= 200 MB)
  RSS growth over 10,000 requests                                                         (~ 0)

    python benchmarks/proxy_overhead.py [--duration 5] [--workers N]
Everything runs on this machine (load generator included), so figures depend on its load: the run
prints the load average it started and ended with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import uvloop
from hf_proxy.client import Pool

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_kb(pids: list[int]) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in kB over the given processes."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def tree(pid: int) -> list[int]:
    out = [pid]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p.name))
    return out


class Load:
    """Keep-alive load on one route: `concurrency` clients, each sending its next request as soon as
    the last answer is in; counts requests, streamed events (tokens) and latencies while measuring."""

    def __init__(self, port: int, path: str, body: bytes, concurrency: int, stream: bool = False) -> None:
        self.pool = Pool("127.0.0.1", port, max_idle=concurrency + 8)
        self.path, self.body, self.concurrency, self.stream = path, body, concurrency, stream
        self.lat: list[float] = []
        self.tokens = 0
        self.errors = 0
        self.elapsed = 0.0

    async def run(self, duration: float, measure: bool = True) -> None:
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                resp = await self.pool.request("POST", self.path, self.body)
                data = await resp.read()
                if resp.status != 200:
                    self.errors += 1
                    continue
                if measure:
                    self.lat.append(time.perf_counter() - t)
                    if self.stream:
                        self.tokens += data.count(b"data: ") - data.count(b"data: [DONE]")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _i in range(self.concurrency)))
        if measure:
            self.elapsed += time.perf_counter() - t0

    def result(self) -> dict[str, float]:
        self.pool.close()
        return {
            "rps": len(self.lat) / self.elapsed,
            "tps": self.tokens / self.elapsed,
            "p50_ms": statistics.median(self.lat) * 1000 if self.lat else float("nan"),
            "errors": self.errors,
            "n": len(self.lat),
        }


async def paired(loads: list[Load], duration: float, rounds: int = 5) -> list[dict[str, float]]:
    """Measure the loads in alternating short slices (after a warm-up of each), so that a change of
    load on this shared machine hits all of them alike."""
    for ld in loads:
        await ld.run(min(1.0, duration / 3), measure=False)
    for _i in range(rounds):
        for ld in loads:
            await ld.run(duration / rounds)
    return [ld.result() for ld in loads]


async def hold_streams(port: int, n: int, body: bytes, proxy_pid: int) -> tuple[int, int, int]:
    """Open n streams, wait until all have started, measure memory, then drop them (disconnect)."""
    started = 0
    conns = []

    async def one() -> None:
        nonlocal started
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conns.append(writer)
        writer.write(
            b"POST /generate_stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(body), body)
        )
        await reader.readuntil(b"data: ")
        started += 1
        await reader.read(1)

    tasks = [asyncio.create_task(one()) for _i in range(n)]
    deadline = time.monotonic() + 30
    while started < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    rss, pss = rss_kb(tree(proxy_pid))
    for w in conns:
        w.transport.abort()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return started, rss, pss


async def bench(
    args: argparse.Namespace, up_port: int, px_port: int, guide_port: int, proxy_pid: int, alt_port: int
) -> None:
    d = args.duration
    gen16 = orjson.dumps({"inputs": "hello world", "parameters": {"max_new_tokens": 16}})
    direct16 = orjson.dumps({"model": "fake", "prompt": "hello world", "max_tokens": 16, "temperature": 0})
    gen256 = orjson.dumps({"inputs": "hello world", "parameters": {"max_new_tokens": 256}})
    direct256 = orjson.dumps({"model": "fake", "prompt": "hello world", "max_tokens": 256, "stream": True})

    la = os.getloadavg()
    print(
        f"fake upstream: {args.fake}; proxy workers: {args.workers or os.cpu_count()}; "
        f"cores: {os.cpu_count()}"
    )
    print(f"load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    res: dict[str, dict[str, float]] = {}
    res["direct_64"], res["proxy_64"] = await paired(
        [Load(up_port, "/v1/completions", direct16, 64), Load(px_port, "/generate", gen16, 64)], d
    )
    # the guide's layer, paired with ours (it is slow: longer slices)
    res["guide_64"], res["proxy_64_vs_guide"] = await paired(
        [Load(guide_port, "/generate", gen16, 64), Load(px_port, "/generate", gen16, 64)], 2 * d, rounds=2
    )
    res["direct_1"], res["proxy_1"] = await paired(
        [Load(up_port, "/v1/completions", direct16, 1), Load(px_port, "/generate", gen16, 1)], d
    )
    res["direct_stream"], res["proxy_stream"] = await paired(
        [
            Load(up_port, "/v1/completions", direct256, 32, stream=True),
            Load(px_port, "/generate_stream", gen256, 32, stream=True),
        ],
        d,
    )

    if args.compare:
        # the same proxy logic on aiohttp (server + one ClientSession per process), same worker count
        res["aiohttp_64"], res["ours_64"] = await paired(
            [Load(alt_port, "/generate", gen16, 64), Load(px_port, "/generate", gen16, 64)], d
        )
        res["aiohttp_stream"], res["ours_stream"] = await paired(
            [
                Load(alt_port, "/generate_stream", gen256, 32, stream=True),
                Load(px_port, "/generate_stream", gen256, 32, stream=True),
            ],
            d,
        )

    for name, r in res.items():
        print(
            f"  {name:15s} {r['rps']:9.1f} req/s {r['tps']:11.0f} tok/s  p50 {r['p50_ms']:7.3f} ms"
            f"  ({int(r['n'])} requests, {int(r['errors'])} errors)"
        )

    # memory: 512 open streams, then growth over 10,000 requests
    slow = orjson.dumps({"inputs": "slow", "parameters": {"max_new_tokens": 200}})
    rss_idle, _pss = rss_kb(tree(proxy_pid))
    started, rss_open, pss_open = await hold_streams(px_port, 512, slow, proxy_pid)
    await asyncio.sleep(1.0)
    base = await count_requests(px_port, gen16, 2000)
    rss_before, _pss = rss_kb(tree(proxy_pid))
    await count_requests(px_port, gen16, 10_000)
    rss_after, _pss = rss_kb(tree(proxy_pid))
    assert base == 2000

    ratio_rps = res["proxy_64"]["rps"] / res["direct_64"]["rps"]
    added_p50 = res["proxy_1"]["p50_ms"] - res["direct_1"]["p50_ms"]
    ratio_tps = res["proxy_stream"]["tps"] / res["direct_stream"]["tps"]
    vs_guide = res["proxy_64_vs_guide"]["rps"] / max(res["guide_64"]["rps"], 1e-9)
    rows = [
        ("non-stream 64 conc: proxied/direct req/s", f"{ratio_rps:.3f}", ">= 0.40", ratio_rps >= 0.40),
        ("added p50 latency at concurrency 1", f"{added_p50:.3f} ms", "<= 1.5 ms", added_p50 <= 1.5),
        ("stream 32 conc x 256 tok: proxied/direct tok/s", f"{ratio_tps:.3f}", ">= 0.40", ratio_tps >= 0.40),
        ("ours / guide's FastAPI+httpx layer req/s", f"{vs_guide:.1f}x", ">= 50x", vs_guide >= 50),
        (
            f"RSS, all proxy processes, {started} open streams",
            f"{rss_open / 1024:.1f} MB (PSS {pss_open / 1024:.1f})",
            "<= 200 MB",
            rss_open / 1024 <= 200 and started == 512,
        ),
        (
            "RSS growth over 10,000 requests",
            f"{(rss_after - rss_before) / 1024:+.1f} MB",
            "~0 (< 5 MB)",
            rss_after - rss_before < 5 * 1024,
        ),
    ]
    print(f"\nproxy RSS idle {rss_idle / 1024:.1f} MB; workers: {len(tree(proxy_pid)) - 1 or 1}")
    print(f"{'figure':50s} {'measured':>26s}  {'target':>12s}")
    for name, val, target, ok in rows:
        print(f"{name:50s} {val:>26s}  {target:>12s}  {'PASS' if ok else 'FAIL'}")
    la = os.getloadavg()
    print(f"load average at end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    print("all targets met" if all(r[3] for r in rows) else "SOME TARGETS MISSED")


async def count_requests(port: int, body: bytes, n: int) -> int:
    pool = Pool("127.0.0.1", port, max_idle=64)
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        for _i in range(k):
            resp = await pool.request("POST", "/generate", body)
            await resp.read()
            done += resp.status == 200

    await asyncio.gather(*(worker(n // 50) for _i in range(50)))
    pool.close()
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured phase")
    ap.add_argument("--workers", type=int, default=0, help="proxy workers (default: one per core)")
    ap.add_argument(
        "--fake",
        choices=("aiohttp", "raw"),
        default="aiohttp",
        help="build of the fake upstream (raw: the proxy's own httptools server, the harshest baseline)",
    )
    ap.add_argument(
        "--compare",
        action="store_true",
        help="also measure the same proxy logic on aiohttp (the library choice)",
    )
    args = ap.parse_args()
    up_port, px_port, guide_port, alt_port = free_port(), free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*cmd: str) -> subprocess.Popen[bytes]:
        # each in its own session: stopping it stops its worker processes too
        p = subprocess.Popen(cmd, start_new_session=True)
        procs.append(p)
        return p

    try:
        tok = HERE.parent / ".build" / "tiny-model" / "tokenizer.json"
        if not tok.is_file():
            sys.exit(f"{tok} is missing: run `make tiny-model` first (the proxy needs a tokenizer)")
        up = f"http://127.0.0.1:{up_port}"
        spawn(sys.executable, str(HERE / "proxy_fake_upstream.py"), str(up_port), str(tok), args.fake)
        wait_http(up + "/health")
        proxy = spawn(
            str(BIN / "hf-proxy"),
            *("--upstream", up, "--port", str(px_port), "--workers", str(args.workers)),
            *("--max-concurrent-requests", "1024", "--log-level", "warning"),
        )
        spawn(sys.executable, str(HERE / "proxy_guide_layer.py"), str(guide_port), up)
        if args.compare:
            workers = str(args.workers or os.cpu_count() or 1)
            spawn(sys.executable, str(HERE / "proxy_alt_aiohttp.py"), str(alt_port), up, workers, str(tok))
            wait_http(f"http://127.0.0.1:{alt_port}/health")
        wait_http(f"http://127.0.0.1:{px_port}/health")
        wait_http(f"http://127.0.0.1:{guide_port}/docs")
        time.sleep(0.5)
        uvloop.run(bench(args, up_port, px_port, guide_port, proxy.pid, alt_port))
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
