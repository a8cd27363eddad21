# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The load generator behind generation_check and generation_compare.

Standard library only. One asyncio event loop drives every stream: requests are written on pooled
keep-alive connections and their responses are parsed in protocol callbacks (see _http), so a
single core sustains hundreds of concurrent streams. Times come from ``time.perf_counter``.

The whole run (model discovery, warm-up, load, server metrics) is bounded by ``timeout_s``: when
it runs out, requests still in flight are cancelled and recorded as failures that say how far they
got, and the metrics measured so far are returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from ansible_collections.selfhost.textgen.plugins.module_utils._http import (
    Endpoint,
    HTTPClientError,
    Pool,
    ResponseHandler,
)
from ansible_collections.selfhost.textgen.plugins.module_utils._sse import (
    TOKEN,
    SSEParser,
    StreamError,
    StreamInterpreter,
    build_request,
)
from ansible_collections.selfhost.textgen.plugins.module_utils._stats import (
    RequestRecord,
    compute_metrics,
    distribution,
    parse_prometheus,
    server_metrics_report,
    tpot_of,
)

APIS = ("tgi", "openai", "openai_chat")

# Prompts of about N tokens are made from common English words (about 1.3 tokens per word with
# the usual BPE tokenizers); the servers' own counts are reported as measured.
# fmt: off
_WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by", "at",
    "from", "his", "her", "they", "this", "which", "have", "had", "not", "are", "but", "one",
    "were", "all", "there", "their", "when", "would", "been", "who", "will", "more", "if", "out",
    "so", "said", "what", "about", "up", "into", "than", "them", "can", "only", "other", "new",
    "some", "could", "time", "these", "two", "may", "then", "first", "any", "like", "now", "my",
    "over", "such", "our", "man", "me", "even", "most", "made", "after", "also", "did", "many",
    "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down",
    "should", "because", "each", "just", "those", "people", "how", "too", "little", "state",
    "good", "very", "make", "world", "still", "own", "see", "men", "work", "long", "get", "here",
    "between", "both", "life", "being", "under", "never", "day", "same", "another", "know",
    "while", "last", "might", "us", "great", "old", "year", "off", "come", "since", "against",
    "go", "came", "right", "used", "take", "three", "place", "small", "found", "part", "again",
    "house", "home", "water", "river", "mountain", "city", "market", "garden", "engine", "signal",
    "window", "letter", "number", "story", "music", "winter", "summer", "morning", "evening",
    "question", "answer",
)
# fmt: on
TOKENS_PER_WORD = 1.3


def generate_prompts(count: int, prompt_tokens: int, seed: int = 0) -> list[str]:
    """Distinct prompts of about ``prompt_tokens`` tokens each (different from the first word on,
    so a prefix cache cannot serve them)."""
    rng = random.Random(seed)
    words = max(1, round(prompt_tokens / TOKENS_PER_WORD))
    return [" ".join(rng.choice(_WORDS) for _word in range(words)) for _prompt in range(count)]


def load_prompts(path: str) -> list[str]:
    """Prompts from a JSON Lines file: one ``{"prompt": "..."}`` object (or a JSON string) a line."""
    prompts = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"prompts_file {path} line {number}: not JSON ({exc})") from None
                if isinstance(item, dict):
                    item = item.get("prompt")
                if not isinstance(item, str) or not item:
                    raise ValueError(
                        f'prompts_file {path} line {number}: expected {{"prompt": "..."}} or a JSON string'
                    )
                prompts.append(item)
    except OSError as exc:
        raise ValueError(f"prompts_file {path}: {exc.strerror or exc}") from None
    if not prompts:
        raise ValueError(f"prompts_file {path} holds no prompt")
    return prompts


class StreamHandler(ResponseHandler):
    """Measures one streamed generation as its bytes arrive."""

    def __init__(self, api: str, record: RequestRecord, keep_text: bool = False) -> None:
        super().__init__()
        self.record = record
        self.parser = SSEParser()
        self.interp = StreamInterpreter(api, keep_text=keep_text)
        self.streaming = False

    def on_head(self, status: int, reason: str, headers: dict[str, str], now: float) -> None:
        super().on_head(status, reason, headers, now)
        self.record.status = status
        ctype = headers.get("content-type", "")
        self.streaming = status == 200 and "text/event-stream" in ctype
        if status == 200 and not self.streaming:
            raise StreamError(f"expected a text/event-stream response, got Content-Type {ctype or 'none'!r}")

    def on_body(self, data: bytes, now: float) -> None:
        if not self.streaming:
            super().on_body(data, now)
            return
        self._events(self.parser.feed(data), now)

    def _events(self, events: list[tuple[str, str]], now: float) -> None:
        rec = self.record
        for event_type, payload in events:
            kind = self.interp.interpret(event_type, payload)
            if kind == TOKEN:
                if rec.ttft is None:
                    rec.ttft = now - rec.start
                else:
                    rec.itl.append(now - rec.last_token)
                rec.last_token = now
                rec.chunks += 1

    def on_end(self, now: float) -> None:
        rec = self.record
        if not self.streaming:
            return
        self._events(self.parser.finish(), now)
        interp = self.interp
        rec.output_tokens = interp.output_tokens
        rec.prompt_tokens = interp.prompt_tokens
        rec.text = interp.text
        if interp.done:
            if rec.chunks == 0:
                rec.error = "the stream ended without any token"
            else:
                rec.success = True
        elif self.parser.pending.strip():
            pending = _cut(self.parser.pending)
            rec.error = f"the stream ended inside an event (no blank line after {pending!r})"
        elif interp.api == "tgi":
            rec.error = "the stream ended without the final event (generated_text)"
        else:
            rec.error = "the stream ended without 'data: [DONE]'"


def _cut(data: bytes, limit: int = 80) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


def http_error_text(handler: ResponseHandler) -> str:
    body = bytes(handler.body).decode("utf-8", "replace").strip()
    message = body
    try:
        obj = json.loads(body)
        if isinstance(obj, dict):
            err = obj.get("error", obj.get("message", obj.get("detail")))
            if isinstance(err, dict):
                err = err.get("message", err)
            if err is not None:
                message = str(err)
    except ValueError:
        pass
    if len(message) > 200:
        message = message[:200] + "..."
    text = f"HTTP {handler.status} {handler.reason}".rstrip()
    if handler.status in (401, 403):
        text += " (check token)"
    elif handler.status in (404, 405):
        text += " (check url and api)"
    elif handler.status is not None and 300 <= handler.status < 400 and handler.headers.get("location"):
        text += f" (redirects to {handler.headers['location'][:200]}: use that url)"
    return f"{text}: {message}" if message else text


@dataclass
class LoadConfig:
    url: str
    api: str = "openai"
    model: str | None = None
    token: str | None = None
    validate_certs: bool = True
    ca_path: str | None = None
    concurrency: int = 8
    request_rate: float | None = None
    num_requests: int | None = 64
    duration_s: float | None = None
    warmup_requests: int = 1
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 128
    timeout_s: float = 300.0
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    cost_per_hour: float | None = None
    seed: int = 0
    fixed_length: bool = True
    greedy: bool = False
    keep_text: bool = False
    server_metrics: bool = True
    metrics_url: str | None = None  # vLLM's /metrics when not at url (behind a proxy or nginx)


class CheckFailed(Exception):
    """The check cannot go on (endpoint unreachable, rejected, or the warm-up failed)."""


@dataclass
class RunState:
    phase: str = "start"
    model: str | None = None
    records: list[RequestRecord] = field(default_factory=list)
    t0: float | None = None
    t_end: float | None = None
    sent: int = 0
    metrics_before: dict | None = None
    metrics_after: dict | None = None
    metrics_peak: dict | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)


class LoadGenerator:
    def __init__(self, cfg: LoadConfig) -> None:
        if cfg.api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, got {cfg.api!r}")
        if not cfg.prompts:
            raise ValueError("no prompts")
        self.cfg = cfg
        self.endpoint = Endpoint(cfg.url, cfg.token, cfg.validate_certs, cfg.ca_path)
        # vLLM's /metrics needs no token: the endpoint's is never sent to a separate metrics URL
        self.metrics_endpoint = self.endpoint
        self.metrics_path = "/metrics"
        if cfg.metrics_url:
            try:
                self.metrics_endpoint = Endpoint(cfg.metrics_url, None, cfg.validate_certs, cfg.ca_path)
            except ValueError as exc:
                raise ValueError(f"metrics_url: {exc}") from None
            self.metrics_path = "" if self.metrics_endpoint.base_path else "/metrics"
        self.state = RunState()

    # ----- single requests -------------------------------------------------------------------
    async def stream_one(self, pool: Pool, record: RequestRecord, prompt: str) -> RequestRecord:
        cfg = self.cfg
        path, body = build_request(
            cfg.api, prompt, cfg.max_new_tokens, self.state.model, cfg.fixed_length, cfg.greedy
        )
        handler = StreamHandler(cfg.api, record, cfg.keep_text)
        record.start = time.perf_counter()
        try:
            await pool.request("POST", path, body, handler, accept="text/event-stream")
            if not handler.streaming:
                record.error = http_error_text(handler)
        except (HTTPClientError, StreamError) as exc:
            record.error = str(exc)
            if record.ttft is not None:
                record.error += f" (after {record.chunks} token chunks)"
        except OSError as exc:
            record.error = f"connection error: {exc}"
        record.finished = True
        return record

    async def discover(self, pool: Pool) -> str | None:
        """The served model: the first of GET /v1/models (OpenAI), model_id of GET /info (TGI)."""
        cfg = self.cfg
        path = "/info" if cfg.api == "tgi" else "/v1/models"
        try:
            resp = await pool.get(path)
        except HTTPClientError as exc:
            raise CheckFailed(f"{cfg.url} is unreachable: {exc}") from None
        if resp.status in (401, 403):
            raise CheckFailed(f"GET {path} was refused: {http_error_text(resp)}")
        if resp.status != 200:
            if cfg.api == "tgi" or cfg.model:
                return cfg.model
            raise CheckFailed(f"cannot discover the model: GET {path} answered {http_error_text(resp)}")
        try:
            info = json.loads(bytes(resp.body))
            if cfg.api == "tgi":
                return cfg.model or info.get("model_id")
            if cfg.model:
                return cfg.model
            return info["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            if cfg.api == "tgi" or cfg.model:
                return cfg.model
            raise CheckFailed(f"cannot discover the model: GET {path} gave no model list") from None

    async def read_server_metrics(self, pool: Pool) -> dict | None:
        try:
            resp = await asyncio.wait_for(pool.get(self.metrics_path, accept="text/plain"), 5)
        except (HTTPClientError, asyncio.TimeoutError, OSError):
            return None
        if resp.status != 200:
            return None
        return parse_prometheus(bytes(resp.body).decode("utf-8", "replace")) or None

    async def _sample_server_metrics(self, pool: Pool) -> None:
        state = self.state
        while True:
            await asyncio.sleep(0.5)
            sample = await self.read_server_metrics(pool)
            if not sample:
                continue
            peak = state.metrics_peak if state.metrics_peak is not None else {}
            for key in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
                if key in sample:
                    peak[key] = max(peak.get(key, sample[key]), sample[key])
            state.metrics_peak = peak

    # ----- the run ---------------------------------------------------------------------------
    async def _run(self, pool: Pool, side_pool: Pool) -> None:
        cfg, state = self.cfg, self.state
        state.phase = "discovery"
        state.model = await self.discover(pool)
        if cfg.server_metrics:
            state.phase = "server metrics"
            state.metrics_before = await self.read_server_metrics(side_pool)

        sem = asyncio.Semaphore(cfg.concurrency)
        if cfg.warmup_requests > 0:
            state.phase = "warm-up"

            async def warm(i: int) -> RequestRecord:
                async with sem:
                    prompt = cfg.prompts[(i + 7) % len(cfg.prompts)]
                    return await self.stream_one(pool, RequestRecord(index=-1 - i), prompt)

            warmups = [asyncio.ensure_future(warm(i)) for i in range(cfg.warmup_requests)]
            state.tasks = warmups
            done = await asyncio.gather(*warmups)
            bad = [r for r in done if not r.success]
            if bad:
                raise CheckFailed(
                    f"the warm-up request failed, no load was sent: {bad[0].error}"
                    + (f" ({len(bad)} of {len(done)} warm-up requests failed)" if len(done) > 1 else "")
                )

        state.phase = "load"
        sampler = None
        if state.metrics_before is not None:
            sampler = asyncio.ensure_future(self._sample_server_metrics(side_pool))
        rng = random.Random(cfg.seed)
        tasks: list[asyncio.Task] = []
        state.tasks = tasks

        async def limited(record: RequestRecord, prompt: str, holds: bool) -> None:
            try:
                if holds:
                    await self.stream_one(pool, record, prompt)
                else:
                    async with sem:
                        await self.stream_one(pool, record, prompt)
            finally:
                if holds:
                    sem.release()

        loop = asyncio.get_running_loop()
        state.t0 = time.perf_counter()
        start_loop = loop.time()
        next_at = start_loop
        i = 0
        try:
            while True:
                if cfg.num_requests is not None and i >= cfg.num_requests:
                    break
                if cfg.request_rate:
                    next_at += rng.expovariate(cfg.request_rate)
                    delay = next_at - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                holds = False
                if not cfg.request_rate:
                    await sem.acquire()
                    holds = True
                if cfg.duration_s is not None and loop.time() - start_loop >= cfg.duration_s:
                    if holds:
                        sem.release()
                    break
                record = RequestRecord(index=i)
                state.records.append(record)
                tasks.append(asyncio.ensure_future(limited(record, cfg.prompts[i % len(cfg.prompts)], holds)))
                i += 1
                state.sent = i
            if tasks:
                await asyncio.gather(*tasks)
            state.t_end = time.perf_counter()
        finally:
            if sampler is not None:
                sampler.cancel()
        if cfg.server_metrics and state.metrics_before is not None:
            state.phase = "server metrics"
            state.metrics_after = await self.read_server_metrics(side_pool)
        state.phase = "done"

    async def run(self) -> dict:
        cfg, state = self.cfg, self.state
        pool = Pool(self.endpoint, connect_timeout=min(10.0, cfg.timeout_s))
        side_pool = Pool(self.metrics_endpoint, connect_timeout=min(5.0, cfg.timeout_s))
        failure = None
        timed_out = False
        started = time.perf_counter()
        main = asyncio.ensure_future(self._run(pool, side_pool))
        try:
            await asyncio.wait_for(asyncio.shield(main), cfg.timeout_s)
        except asyncio.TimeoutError:
            timed_out = True
            failure = f"timed out after timeout_s={cfg.timeout_s:g} s during {state.phase}"
        except CheckFailed as exc:
            failure = str(exc)
        finally:
            if not main.done():
                main.cancel()
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(main, *state.tasks, return_exceptions=True)
            pool.close()
            side_pool.close()
        now = time.perf_counter()
        if timed_out:
            for rec in state.records:
                if not rec.finished:
                    rec.error = _timeout_text(rec, cfg.timeout_s)
        return self.result(failure, timed_out, now - started)

    def result(self, failure: str | None, timed_out: bool, elapsed: float) -> dict:
        cfg, state = self.cfg, self.state
        records = state.records
        measured = state.t0 is not None
        duration = 0.0
        if measured:
            duration = (state.t_end or time.perf_counter()) - state.t0
        metrics = None
        dists = None
        if measured:
            metrics = compute_metrics(records, duration, cfg.slo_ttft_ms, cfg.slo_tpot_ms, cfg.cost_per_hour)
            ok = [r for r in records if r.success]
            dists = {
                "ttft_ms": distribution([r.ttft for r in ok if r.ttft is not None]),
                "tpot_ms": distribution([t for t in (tpot_of(r) for r in ok) if t is not None]),
                "itl_ms": distribution([g for r in ok for g in r.itl]),
                "e2e_ms": distribution([r.latency for r in ok if r.latency is not None]),
            }
        errors = Counter(r.error for r in records if not r.success and r.error)
        ok_records = [r for r in records if r.success]
        prompt_counts = [r.prompt_tokens for r in ok_records if r.prompt_tokens is not None]
        token_counts = [r.tokens for r in ok_records]
        return {
            "failure": failure,
            "timed_out": timed_out,
            "elapsed_s": elapsed,
            "model": state.model,
            "metrics": metrics,
            "distributions": dists,
            "errors": [{"error": e, "count": n} for e, n in errors.most_common(10)],
            "server_metrics": server_metrics_report(
                state.metrics_before, state.metrics_after, state.metrics_peak
            ),
            "workload": {
                "api": cfg.api,
                "requests_sent": state.sent,
                "warmup_requests": cfg.warmup_requests,
                "concurrency": cfg.concurrency,
                "request_rate": cfg.request_rate,
                "max_new_tokens": cfg.max_new_tokens,
                "distinct_prompts": len(cfg.prompts),
                "mean_prompt_tokens": (sum(prompt_counts) / len(prompt_counts)) if prompt_counts else None,
                "output_length_fixed": bool(token_counts)
                and all(n == cfg.max_new_tokens for n in token_counts),
            },
            "records": records,
        }


def _timeout_text(rec: RequestRecord, timeout_s: float) -> str:
    if rec.status is None:
        return f"no response within timeout_s={timeout_s:g} s"
    if rec.ttft is None:
        return f"no first token within timeout_s={timeout_s:g} s (HTTP {rec.status}, stream open)"
    return f"stream stalled: {rec.chunks} token chunks, then nothing until timeout_s={timeout_s:g} s"


def raise_fd_limit(wanted: int) -> None:
    """Each stream holds a socket: lift the soft open-files limit toward the hard one if needed."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run_load(cfg: LoadConfig) -> dict:
    """Run a check to the end (or to timeout_s) and return the raw result."""
    raise_fd_limit(cfg.concurrency * 2 + 64)
    return asyncio.run(LoadGenerator(cfg).run())
