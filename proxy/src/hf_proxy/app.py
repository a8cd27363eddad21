"""Routes, error answers, TGI headers and metrics. One request reads top to bottom here, calling
validate (TGI's rules), translate (to and from vLLM), upstream (which instance) and stream (SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any

import orjson

from . import __version__
from . import tokenizer as tokenizer_mod
from .client import Response, UpstreamError, fetch
from .config import Settings
from .metrics import Metrics
from .server import HttpProtocol, Request
from .stream import DONE, KEEPALIVE, SSEParser, error_event
from .translate import GenerationError, StreamState, from_vllm, plan_request, to_vllm
from .upstream import Balancer, ModelInfo, Upstream
from .validate import (
    Limits,
    RequestError,
    parse_generate,
    parse_json,
    validate_grammar,
    validate_lengths,
    validate_params,
    validate_stream,
)

log = logging.getLogger("hf_proxy")

UNHEALTHY = RequestError(503, "unhealthy", "healthcheck")
_TGI_HEADERS = (
    b"x-compute-type: %b\r\nx-compute-time: %.6f\r\nx-compute-characters: %d\r\nx-total-time: %d\r\n"
    b"x-validation-time: %d\r\nx-queue-time: %d\r\nx-inference-time: %d\r\nx-time-per-token: %d\r\n"
    b"x-prompt-tokens: %d\r\nx-generated-tokens: %d\r\n"
)
OVERLOADED = RequestError(429, "Model is overloaded", "overloaded")
ALIASES = ("tgi", "dummy", "")


def _now() -> float:
    return time.perf_counter()


def error_body(e: RequestError) -> tuple[bytes, str]:
    if e.plain:
        return e.message.encode(), "text/plain; charset=utf-8"
    return orjson.dumps({"error": e.message, "error_type": e.error_type}), "application/json"


def _upstream_message(status: int, body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip() or f"upstream status {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if isinstance(err, str):
            return err
        if "message" in data:
            return str(data["message"])
        if "detail" in data:
            return str(data["detail"])
    return body.decode("utf-8", "replace")


def upstream_error(status: int, body: bytes) -> RequestError:
    """vLLM's error answers in TGI's terms: its 4xx are validation (422), the rest generation (424)."""
    msg = _upstream_message(status, body)
    if 400 <= status < 500 and status != 429:
        return RequestError(422, "Input validation error: " + msg, "validation")
    if status == 429:
        return OVERLOADED
    return RequestError(424, "Request failed during generation: " + msg, "generation")


class App:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.s = settings
        self.metrics = metrics
        self.rng = random.Random()
        self.auth = (
            [("authorization", f"Bearer {settings.upstream_api_key}")] if settings.upstream_api_key else []
        )
        self.tok: tokenizer_mod.ModelTokenizer | None = None
        self._tok_tried = False
        if settings.tokenizer:
            self.tok = tokenizer_mod.load(settings.tokenizer, "")
            self._tok_tried = True
        self.balancer = Balancer(
            settings.upstreams,
            settings.connect_timeout,
            settings.health_check_interval,
            settings.served_model,
            self.auth,
            self._on_model,
        )
        self.streams: dict[Request, float] = {}
        self._limits: Limits | None = None
        self._limits_for: ModelInfo | None = None
        self.timeout = settings.request_timeout or None
        self._compute_type = settings.compute_type.encode("latin-1", "replace")

    # -- model and limits ------------------------------------------------------------------
    def _on_model(self, info: ModelInfo) -> None:
        if not self._tok_tried:
            self._tok_tried = True
            self.tok = tokenizer_mod.load("", info.root)

    @property
    def limits(self) -> Limits:
        m = self.balancer.model
        if self._limits is not None and self._limits_for is m:
            return self._limits
        self._limits_for = m
        mml = m.max_model_len if m and m.max_model_len else 0
        total = self.s.max_total_tokens or mml or 2048
        self._limits = Limits(
            max_best_of=self.s.max_best_of,
            max_stop_sequences=self.s.max_stop_sequences,
            max_top_n_tokens=self.s.max_top_n_tokens,
            max_input_tokens=self.s.max_input_tokens or max(total - 1, 1),
            max_total_tokens=total,
            default_max_new_tokens=self.s.default_max_new_tokens,
        )
        return self._limits

    # -- dispatch --------------------------------------------------------------------------
    async def handle(self, req: Request) -> None:
        req.started = _now()
        path, method = req.path, req.method
        if method == "POST":
            if path == "/generate":
                return await self.generate(req, stream=False, compat=False)
            if path == "/generate_stream":
                return await self.generate(req, stream=True, compat=False)
            if path == "/":
                return await self.generate(req, stream=False, compat=True)
            if path in ("/v1/completions", "/v1/chat/completions"):
                return await self.passthrough(req)
            if path == "/tokenize":
                return self.tokenize(req)
        elif method in ("GET", "HEAD"):
            if path in ("/health", "/", "/ping"):
                return await self.health(req)
            if path == "/info":
                return await self.info(req)
            if path == "/metrics":
                return self.metrics_route(req)
            if path == "/v1/models":
                return await self.passthrough(req)
        known = {"/generate", "/generate_stream", "/", "/health", "/ping", "/info", "/metrics", "/tokenize"}
        if path in known or path.startswith("/v1/"):
            req.respond(405 if path in known else 404, b"", None)
        else:
            req.respond(404, b"", None)
        return None

    def too_large(self, req: Request) -> None:
        req.keep_alive = False
        req.respond(
            413, b"Failed to buffer the request body: length limit exceeded", "text/plain; charset=utf-8"
        )

    def fail(self, req: Request, e: RequestError, count: bool = True) -> None:
        if count:
            self.metrics.failure(e.error_type)
        body, ct = error_body(e)
        req.respond(e.status, body, ct)

    # -- small routes ----------------------------------------------------------------------
    async def health(self, req: Request) -> None:
        if self.balancer.any_healthy or await self.balancer.recheck():
            req.respond(200, b"", None)
        else:
            self.fail(req, UNHEALTHY, count=False)

    async def info(self, req: Request) -> None:
        m = await self.balancer.known_model()
        lim = self.limits
        model_id = self.s.model_id or (m.name if m else self.s.served_model) or "unknown"
        body = {
            "model_id": model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.s.max_concurrent_requests,
            "max_best_of": self.s.max_best_of,
            "max_stop_sequences": self.s.max_stop_sequences,
            "max_input_tokens": lim.max_input_tokens,
            "max_total_tokens": lim.max_total_tokens,
            "validation_workers": 1,
            "max_client_batch_size": self.s.max_client_batch_size,
            "router": "text-generation-router",
            "version": __version__,
            "sha": None,
            "docker_label": None,
        }
        if self.tok is not None and self.tok.config:
            body["tokenizer_config"] = {
                k: v
                for k, v in self.tok.config.items()
                if k
                in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "model_max_length")
            }
        body["upstreams"] = [{"url": u.url, "healthy": u.healthy} for u in self.balancer.upstreams]
        body["tokenizer"] = str(self.tok.path) if self.tok is not None else None
        req.respond(200, orjson.dumps(body))

    def metrics_route(self, req: Request) -> None:
        extra = [
            "# HELP hf_proxy_upstream_healthy Upstream health as seen by the answering worker",
            "# TYPE hf_proxy_upstream_healthy gauge",
        ]
        for u in self.balancer.upstreams:
            extra.append(f'hf_proxy_upstream_healthy{{upstream="{u.url}"}} {1 if u.healthy else 0}')
        req.respond(200, self.metrics.render(extra), "text/plain; version=0.0.4")

    def tokenize(self, req: Request) -> None:
        try:
            data = parse_json(req.body, req.headers.get("content-type"))
            greq = parse_generate(data)
        except RequestError as e:
            return self.fail(req, e, count=False)
        if self.tok is None:
            return self.fail(
                req,
                RequestError(404, "No fast tokenizer or tokenizer.json for this model", "no fast tokenizer"),
            )
        req.respond(200, orjson.dumps(self.tok.tokenize(greq.inputs)))
        return None

    # -- upstream calls --------------------------------------------------------------------
    async def _send(
        self, path: str, body: bytes, headers: list[tuple[str, str]], whole: bool = False
    ) -> tuple[Upstream, Response]:
        """POST to a healthy upstream; a connection failure ejects it and tries the next one."""
        tried: set[Upstream] = set()
        while True:
            u = self.balancer.choose(tried)
            if u is None and not tried and await self.balancer.recheck():
                u = self.balancer.choose(tried)
            if u is None:
                raise UNHEALTHY
            tried.add(u)
            u.in_flight += 1
            try:
                resp = await u.pool.request("POST", u.prefix + path, body, headers, whole=whole)
            except UpstreamError as e:
                u.in_flight -= 1
                u.mark(False, str(e))
                continue
            except BaseException:
                u.in_flight -= 1
                raise
            return u, resp

    async def _input_length(self, text: str, truncate: int | None, model: str) -> int:
        if self.tok is not None:
            return self.tok.count(text, truncate)
        u = self.balancer.choose()
        if u is None and await self.balancer.recheck():
            u = self.balancer.choose()
        if u is None:
            raise UNHEALTHY
        try:
            status, body = await fetch(
                u.pool, "POST", u.prefix + "/tokenize", orjson.dumps({"model": model, "prompt": text})
            )
        except (UpstreamError, asyncio.TimeoutError) as e:
            raise RequestError(424, f"Request failed during generation: {e}", "generation") from None
        if status != 200:
            raise upstream_error(status, body)
        n = int(orjson.loads(body)["count"])
        return min(n, truncate) if truncate else n

    # -- TGI generation --------------------------------------------------------------------
    async def generate(self, req: Request, stream: bool, compat: bool) -> None:
        m = self.metrics
        m.inc("tgi_request_count")
        try:
            data = parse_json(req.body, req.headers.get("content-type"))
            greq = parse_generate(data, compat=compat)
        except RequestError as e:
            return self.fail(req, e)
        stream = stream or greq.stream
        greq.stream = stream
        if stream:
            return await self.generate_stream(req, greq, compat)
        return await self._counted(req, self._generate(req, greq, compat))

    async def _counted(self, req: Request, work: Coroutine[Any, Any, None]) -> None:
        """One request's work, counted in the in-flight gauge; a RequestError becomes its TGI answer."""
        m = self.metrics
        m.inc("hf_proxy_requests_in_flight")
        try:
            await work
        except RequestError as e:
            self.fail(req, e)
        finally:
            m.inc("hf_proxy_requests_in_flight", -1.0)

    async def _prepare(self, greq: Any, compat: bool) -> tuple[Any, bytes, float]:
        """Checks in TGI's order, then the vLLM body. Returns (plan, body, validation end)."""
        if self.metrics.total("hf_proxy_requests_in_flight") > self.s.max_concurrent_requests:
            raise OVERLOADED
        model = await self.balancer.known_model()
        if model is None:
            raise UNHEALTHY
        lim = self.limits
        validate_params(greq, lim)
        if self.tok is None and greq.top_n_tokens:
            raise RequestError(
                422,
                "Input validation error: `top_n_tokens` needs the model's tokenizer, which this proxy "
                "has not loaded (start it with --tokenizer)",
                "validation",
            )
        fixed = greq.max_new_tokens or lim.default_max_new_tokens
        if fixed and fixed + 2 * len(greq.inputs.encode()) + 8 <= lim.max_input_tokens:
            # No tokenizer gives more than 2 tokens a byte (plus special tokens): the length checks
            # cannot fail, so the count is left to the upstream (prompt_token_ids in its answer).
            input_length, max_new = -1, fixed
        else:
            input_length = await self._input_length(greq.inputs, greq.truncate, model.name)
            max_new = validate_lengths(greq, input_length, lim)
        greq.grammar = validate_grammar(greq)
        plan = plan_request(greq, input_length, compat, self.tok is not None, self.rng)
        body = orjson.dumps(to_vllm(greq, plan, model.name, max_new, greq.stream))
        return plan, body, _now()

    async def _refused(self, greq: Any, plan: Any, status: int, raw: bytes) -> RequestError:
        """An upstream refusal; when the prompt was not counted before, TGI's length message wins."""
        if status == 400 and plan.input_length < 0:
            m = self.balancer.model
            try:
                n = await self._input_length(greq.inputs, greq.truncate, m.name if m else "")
                validate_lengths(greq, n, self.limits)
            except RequestError as e:
                return e
        return upstream_error(status, raw)

    def _headers(self) -> list[tuple[str, str]]:
        return [("accept", "application/json"), *self.auth]

    async def _generate(self, req: Request, greq: Any, compat: bool) -> None:
        m = self.metrics
        plan, body, t_valid = await self._prepare(greq, compat)
        t_sent = _now()
        # without a time limit, wait for the whole (small) answer in one go
        u, resp = await self._send("/v1/completions", body, self._headers(), whole=not self.timeout)
        try:
            raw = await (asyncio.wait_for(resp.read(), self.timeout) if self.timeout else resp.read())
        except asyncio.TimeoutError:
            resp.abort()
            raise RequestError(
                424, "Request failed during generation: upstream timed out", "generation"
            ) from None
        except UpstreamError as e:
            u.mark(False, str(e))
            raise RequestError(424, f"Request failed during generation: {e}", "generation") from None
        except BaseException:
            resp.abort()
            raise
        finally:
            u.in_flight -= 1
        if resp.status != 200:
            raise await self._refused(greq, plan, resp.status, raw)
        try:
            out, generated, prompt_tokens = from_vllm(orjson.loads(raw), plan, self.tok)
        except GenerationError as e:
            raise RequestError(500, str(e), "incomplete_generation") from None
        except (ValueError, KeyError, TypeError) as e:
            raise RequestError(
                424, f"Request failed during generation: bad upstream answer: {e}", "generation"
            ) from None
        t_end = _now()
        total = t_end - req.started
        validation = t_valid - req.started
        queue = t_sent - t_valid
        inference = t_end - t_sent
        per_token = inference / generated if generated else 0.0
        raw_headers = _TGI_HEADERS % (
            self._compute_type,
            total,
            len(greq.inputs),
            int(total * 1000),
            int(validation * 1000),
            int(queue * 1000),
            int(inference * 1000),
            int(per_token * 1000),
            prompt_tokens,
            generated,
        )
        req.respond(200, orjson.dumps([out] if compat else out), raw_headers=raw_headers)
        m.inc("tgi_request_success")
        m.observe_many(
            (
                ("tgi_request_duration", total),
                ("tgi_request_validation_duration", validation),
                ("tgi_request_queue_duration", queue),
                ("tgi_request_inference_duration", inference),
                ("tgi_request_mean_time_per_token_duration", per_token),
                ("tgi_request_input_length", prompt_tokens),
                ("tgi_request_generated_tokens", generated),
            )
        )

    async def generate_stream(self, req: Request, greq: Any, compat: bool) -> None:
        m = self.metrics
        req.start_stream(
            200,
            "text/event-stream",
            [
                ("x-compute-type", self.s.compute_type),
                ("x-compute-characters", str(len(greq.inputs))),
                ("x-accel-buffering", "no"),
            ],
        )
        self.streams[req] = time.monotonic()
        m.inc("hf_proxy_requests_in_flight")
        try:
            await self._stream(req, greq, compat)
        except RequestError as e:
            m.failure(e.error_type)
            req.write_chunk(error_event(e.message, e.error_type))
        finally:
            m.inc("hf_proxy_requests_in_flight", -1.0)
            self.streams.pop(req, None)
        if not req.closed:
            req.end_stream()

    async def _stream(self, req: Request, greq: Any, compat: bool) -> None:
        m = self.metrics
        validate_stream(greq)
        plan, body, t_valid = await self._prepare(greq, compat)
        u, resp = await self._send("/v1/completions", body, self._headers())
        t_sent = _now()
        first: float | None = None
        state = StreamState(plan, self.tok)
        parser = SSEParser()
        ok = False
        try:
            if resp.status != 200:
                raise await self._refused(greq, plan, resp.status, await resp.read())
            async for chunk in resp.iter_chunks():
                out: list[bytes] = []
                for item in parser.feed(chunk):
                    if item is DONE:
                        continue
                    if "error" in item and "choices" not in item:
                        err = item["error"]
                        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                        code = err.get("code", 500) if isinstance(err, dict) else 500
                        raise upstream_error(
                            int(code) if str(code).isdigit() else 500, orjson.dumps({"error": msg})
                        )
                    out.append(state.feed(item))
                if out and (data := b"".join(out)):
                    if first is None:
                        first = _now()
                    req.write_chunk_soon(data)
                    self.streams[req] = time.monotonic()
                    if req.closed:
                        raise asyncio.CancelledError
                    await req.drain()
            ok = state.finished is not None
            resp.release()
        except UpstreamError:
            pass
        except GenerationError:
            ok = False
        except BaseException:
            resp.abort()
            raise
        finally:
            u.in_flight -= 1
            if not ok:
                resp.abort()
        if not ok:
            raise RequestError(500, "Incomplete generation stream", "incomplete_generation_stream")
        t_end = _now()
        total = t_end - req.started
        m.inc("tgi_request_success")
        m.observe("tgi_request_duration", total)
        m.observe("tgi_request_validation_duration", t_valid - req.started)
        m.observe("tgi_request_queue_duration", (first or t_end) - t_sent)
        m.observe("tgi_request_inference_duration", t_end - t_sent)
        if state.index:
            m.observe("tgi_request_mean_time_per_token_duration", (t_end - t_sent) / state.index)
        m.observe("tgi_request_input_length", max(state.input_length, 0))
        m.observe("tgi_request_generated_tokens", state.index)

    async def keepalive_loop(self) -> None:
        interval = self.s.keepalive_interval
        while True:
            await asyncio.sleep(min(interval / 3, 1.0))
            now = time.monotonic()
            for req, last in list(self.streams.items()):
                if now - last >= interval and not req.closed:
                    req.write_chunk(KEEPALIVE)
                    self.streams[req] = now

    # -- OpenAI pass-through ---------------------------------------------------------------
    async def passthrough(self, req: Request) -> None:
        m = self.metrics
        model = self.balancer.model
        body = req.body
        if req.method == "POST":
            m.inc("hf_proxy_openai_request_count")
            if m.total("hf_proxy_requests_in_flight") >= self.s.max_concurrent_requests:
                return self.fail(req, OVERLOADED)
            if model is not None:
                try:
                    data = orjson.loads(body)
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict) and (data.get("model") in ALIASES or data.get("model") is None):
                    data["model"] = model.name
                    body = orjson.dumps(data)
        headers = list(self.auth)
        if not headers and "authorization" in req.headers:
            headers.append(("authorization", req.headers["authorization"]))
        return await self._counted(req, self._passthrough(req, body, headers))

    async def _passthrough(self, req: Request, body: bytes, headers: list[tuple[str, str]]) -> None:
        if req.method == "GET":
            u = self.balancer.choose()
            if u is None and await self.balancer.recheck():
                u = self.balancer.choose()
            if u is None:
                raise UNHEALTHY
            try:
                resp = await u.pool.request("GET", u.prefix + req.path, b"", headers)
            except UpstreamError as e:
                u.mark(False, str(e))
                raise UNHEALTHY from None
            u.in_flight += 1
        else:
            u, resp = await self._send(req.path, body, headers)
        try:
            ct = resp.headers.get("content-type", "application/json")
            if ct.startswith("text/event-stream"):
                req.start_stream(resp.status, ct, [("x-accel-buffering", "no")])
                async for chunk in resp.iter_chunks():
                    req.write_chunk(chunk)
                    if req.closed:
                        raise asyncio.CancelledError
                    await req.drain()
                resp.release()
                req.end_stream()
            else:
                data = await resp.read()
                req.respond(resp.status, data, ct)
        except UpstreamError as e:
            resp.abort()
            if req.streaming:
                req.keep_alive = False
                return
            raise RequestError(424, f"Request failed during generation: {e}", "generation") from None
        except BaseException:
            resp.abort()
            raise
        finally:
            u.in_flight -= 1


def serve(settings: Settings, sock: socket.socket, metrics: Metrics, slot: int) -> None:
    import uvloop

    metrics.use_slot(slot)
    metrics.reset_gauges(slot)
    # Requests allocate many short-lived containers (parsed chunks): collect the young generation
    # less often, and keep start-up objects out of the collector's way.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

    async def main() -> None:
        app = App(settings, metrics)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        app.balancer.start()
        ka = loop.create_task(app.keepalive_loop())
        server = await loop.create_server(
            lambda: HttpProtocol(app.handle, settings.max_body_bytes, app.too_large), sock=sock, backlog=2048
        )
        await stop.wait()
        server.close()
        ka.cancel()
        await app.balancer.stop()

    uvloop.run(main())
