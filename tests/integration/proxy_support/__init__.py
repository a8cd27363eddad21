"""Helpers for the proxy's integration tests: start a real `hf-proxy` process, client venvs with
other huggingface_hub versions, and a TCP relay to cut an upstream off and bring it back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CLIENTS = Path(__file__).resolve().parents[1] / "proxy_clients"
HF_PROXY = Path(sys.executable).parent / "hf-proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Proxy:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def start_proxy(
    upstreams: list[str],
    *args: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    wait_healthy: bool = True,
) -> Iterator[Proxy]:
    """A real `hf-proxy` process on a free port; stopped (SIGTERM) at the end."""
    port = free_port()
    cmd = [str(HF_PROXY), "--host", "127.0.0.1", "--port", str(port)]
    for u in upstreams:
        cmd += ["--upstream", u]
    cmd += list(args)
    log = log_dir / f"hf-proxy-{port}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        st = http_status(url + "/health")
        if (st == 200) or (not wait_healthy and st in (200, 503)):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("hf-proxy did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.1)
    try:
        yield Proxy(url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def client_python(name: str) -> Path:
    """A venv with proxy_clients/requirements-NAME.txt, cached under $TEXTGEN_CACHE_DIR."""
    req = CLIENTS / f"requirements-{name}.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("TEXTGEN_CACHE_DIR", "/var/cache/selfhost-textgen"))
    venv = cache / "proxy-clients" / f"{name}-{digest}"
    if not (venv / ".complete").exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-r", str(req)],
            check=True,
        )
        (venv / ".complete").touch()
    return venv / "bin" / "python"


class TcpRelay:
    """Forwards 127.0.0.1:port to a target; `stop()` cuts every connection and refuses new ones,
    `start()` brings it back (a real network interruption between the proxy and an upstream)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        self.writers |= {w, uw}
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        self.writers -= {w, uw}

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
