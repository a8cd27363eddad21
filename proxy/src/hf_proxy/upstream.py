"""The upstream vLLM instances: one pooled client each, health checks, ejection and re-admission,
least-busy choice, and discovery of the served model (name, max_model_len, local path)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from .client import Pool, UpstreamError, fetch

log = logging.getLogger("hf_proxy")


@dataclass
class ModelInfo:
    name: str
    max_model_len: int
    root: str


class Upstream:
    def __init__(self, url: str, connect_timeout: float) -> None:
        u = urlsplit(url)
        self.url = url.rstrip("/")
        self.prefix = u.path.rstrip("/")
        self.pool = Pool(u.hostname or "127.0.0.1", u.port or 80, connect_timeout)
        self.healthy = False
        self.in_flight = 0
        self.last_error = "not checked yet"
        self.changed_at = time.monotonic()

    def mark(self, healthy: bool, why: str = "") -> None:
        if healthy != self.healthy:
            if healthy:
                log.info("upstream %s is healthy: admitted", self.url)
            else:
                log.warning("upstream %s ejected: %s", self.url, why)
            self.changed_at = time.monotonic()
        self.healthy = healthy
        if not healthy:
            self.last_error = why


class Balancer:
    def __init__(
        self,
        urls: list[str],
        connect_timeout: float,
        interval: float,
        served_model: str = "",
        auth_header: list[tuple[str, str]] | None = None,
        on_model: Callable[[ModelInfo], None] | None = None,
    ) -> None:
        self.upstreams = [Upstream(u, connect_timeout) for u in urls]
        self.interval = interval
        self.model: ModelInfo | None = None
        self.forced_name = served_model
        self.auth = auth_header or []
        self.on_model = on_model
        self._rr = 0
        self._probe: asyncio.Future[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    @property
    def any_healthy(self) -> bool:
        return any(u.healthy for u in self.upstreams)

    def choose(self, exclude: set[Upstream] | None = None) -> Upstream | None:
        best: Upstream | None = None
        n = len(self.upstreams)
        self._rr = (self._rr + 1) % n
        for i in range(n):
            u = self.upstreams[(self._rr + i) % n]
            if not u.healthy or (exclude and u in exclude):
                continue
            if best is None or u.in_flight < best.in_flight:
                best = u
        return best

    async def check(self, u: Upstream) -> None:
        try:
            status, _body = await fetch(u.pool, "GET", u.prefix + "/health", timeout=5.0)
            if status != 200:
                u.mark(False, f"/health answered {status}")
                return
            if self.model is None:
                await self.discover(u)
            u.mark(True)
        except (UpstreamError, asyncio.TimeoutError, OSError) as e:
            u.mark(False, str(e) or type(e).__name__)
        except ValueError as e:
            u.mark(False, f"bad /v1/models answer: {e}")

    async def discover(self, u: Upstream) -> None:
        resp = await u.pool.request("GET", u.prefix + "/v1/models", headers=self.auth, timeout=5.0)
        body = await resp.read()
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        models = orjson.loads(body)["data"]
        chosen = None
        for m in models:
            if not self.forced_name or m["id"] == self.forced_name:
                chosen = m
                break
        if chosen is None:
            raise ValueError(f"served model {self.forced_name!r} not among {[m['id'] for m in models]}")
        info = ModelInfo(chosen["id"], int(chosen.get("max_model_len") or 0), str(chosen.get("root") or ""))
        self.model = info
        log.info("served model %r (max_model_len %d, root %s)", info.name, info.max_model_len, info.root)
        if self.on_model is not None:
            self.on_model(info)
        self.ready.set()

    async def known_model(self) -> ModelInfo | None:
        """The served model; when this worker process has not met it yet (each keeps its own view),
        probe the upstreams first."""
        if self.model is None:
            await self.recheck()
        return self.model

    async def recheck(self) -> bool:
        """With no upstream healthy: probe them all now instead of waiting for the next round (each
        worker process keeps its own view). Concurrent callers share one probe."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.gather(*(self.check(u) for u in self.upstreams)))
        await asyncio.shield(self._probe)
        return self.any_healthy

    async def _loop(self) -> None:
        while True:
            await asyncio.gather(*(self.check(u) for u in self.upstreams))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for u in self.upstreams:
            u.pool.close()
