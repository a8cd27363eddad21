"""Prometheus metrics shared by all worker processes, with TGI's names where TGI has them.

Each worker writes only its own slot of an anonymous shared memory map (no locks); `/metrics`, answered
by any worker, sums the slots. The in-flight gauge doubles as the global concurrency count for 429s.
"""

from __future__ import annotations

import mmap
from bisect import bisect_left

ERROR_TYPES = (
    "validation",
    "generation",
    "overloaded",
    "incomplete_generation",
    "healthcheck",
    "tokenizer",
)

_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

COUNTERS = {
    "tgi_request_count": "Requests received on the TGI routes",
    "tgi_request_success": "Requests answered successfully",
    "hf_proxy_openai_request_count": "Requests passed through to the upstream /v1 routes",
}
GAUGES = {"hf_proxy_requests_in_flight": "Requests being handled now (all workers)"}
HISTOGRAMS = {
    "tgi_request_duration": ("Total request duration (s)", _TIME_BUCKETS),
    "tgi_request_validation_duration": ("Validation duration (s)", _TIME_BUCKETS),
    "tgi_request_queue_duration": ("Time before the upstream started the request (s)", _TIME_BUCKETS),
    "tgi_request_inference_duration": ("Upstream generation duration (s)", _TIME_BUCKETS),
    "tgi_request_mean_time_per_token_duration": ("Mean time per generated token (s)", _TIME_BUCKETS),
    "tgi_request_input_length": ("Input length (tokens)", _TOKEN_BUCKETS),
    "tgi_request_generated_tokens": ("Generated tokens", _TOKEN_BUCKETS),
}


class Metrics:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.index: dict[str, int] = {}
        n = 0
        for name in COUNTERS:
            self.index[name] = n
            n += 1
        for err in ERROR_TYPES:
            self.index["failure:" + err] = n
            n += 1
        for name in GAUGES:
            self.index[name] = n
            n += 1
        for name, (_help, buckets) in HISTOGRAMS.items():
            self.index[name] = n
            n += len(buckets) + 2  # buckets, sum, count
        self.width = n
        self._mm = mmap.mmap(-1, 8 * n * slots)
        self.values = memoryview(self._mm).cast("d")
        self.base = 0

    def use_slot(self, slot: int) -> None:
        self.base = slot * self.width

    def reset_gauges(self, slot: int) -> None:
        for name in GAUGES:
            self.values[slot * self.width + self.index[name]] = 0.0

    # -- writers (own slot) ------------------------------------------------------------------
    def inc(self, name: str, value: float = 1.0) -> None:
        self.values[self.base + self.index[name]] += value

    def observe_many(self, pairs: tuple[tuple[str, float], ...]) -> None:
        """Several histogram observations at once (one request's figures)."""
        v = self.values
        base = self.base
        index = self.index
        for name, value in pairs:
            i = base + index[name]
            buckets = HISTOGRAMS[name][1]
            n = len(buckets)
            j = bisect_left(buckets, value)
            if j < n:
                v[i + j] += 1.0
            v[i + n] += value
            v[i + n + 1] += 1.0

    def failure(self, err: str) -> None:
        key = "failure:" + err
        if key in self.index:
            self.values[self.base + self.index[key]] += 1.0

    def observe(self, name: str, value: float) -> None:
        i = self.base + self.index[name]
        buckets = HISTOGRAMS[name][1]
        v = self.values
        n = len(buckets)
        j = bisect_left(buckets, value)
        if j < n:
            v[i + j] += 1.0
        v[i + n] += value
        v[i + n + 1] += 1.0

    # -- readers (all slots) -----------------------------------------------------------------
    def total(self, name: str) -> float:
        i = self.index[name]
        v, w = self.values, self.width
        return sum(v[s * w + i] for s in range(self.slots))

    def _sum_range(self, start: int, length: int) -> list[float]:
        v, w = self.values, self.width
        return [sum(v[s * w + start + k] for s in range(self.slots)) for k in range(length)]

    def render(self, extra: list[str] | None = None) -> bytes:
        out: list[str] = []
        for name, help_ in COUNTERS.items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {self.total(name):g}"]
        out += [
            "# HELP tgi_request_failure Failed requests by error type",
            "# TYPE tgi_request_failure counter",
        ]
        for err in ERROR_TYPES:
            out.append(f'tgi_request_failure{{err="{err}"}} {self.total("failure:" + err):g}')
        for name, help_ in GAUGES.items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {self.total(name):g}"]
        for name, (help_, buckets) in HISTOGRAMS.items():
            vals = self._sum_range(self.index[name], len(buckets) + 2)
            out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            acc = 0.0
            for j, b in enumerate(buckets):
                acc += vals[j]
                out.append(f'{name}_bucket{{le="{b:g}"}} {acc:g}')
            out.append(f'{name}_bucket{{le="+Inf"}} {vals[-1]:g}')
            out.append(f"{name}_sum {vals[-2]:.6f}")
            out.append(f"{name}_count {vals[-1]:g}")
        if extra:
            out += extra
        return ("\n".join(out) + "\n").encode()
