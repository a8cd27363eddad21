# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metric math for the generation checks, with the definitions of ``vllm bench serve``.

Standard library only (this runs on managed hosts).

Definitions (per successful request, times in seconds from the moment the request was sent):
  ttft     time to the first chunk that carries a token
  itl      every gap between two consecutive token chunks
  e2e      time to the last token chunk (not to the end of the HTTP body)
  tpot     (e2e - ttft) / (output_tokens - 1), only for requests with more than one output token
Throughputs divide by the wall-clock duration of the whole measured run (first request sent to
last request finished). Goodput counts successful requests whose ttft, and tpot (0 when the
request produced a single token), are at or below the SLOs. Percentiles interpolate linearly
between closest ranks, exactly like ``numpy.percentile`` with its default method.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

SUMMARY_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass
class RequestRecord:
    """What one request measured. Mutated while the stream runs, so it is meaningful when cut off."""

    index: int = 0
    start: float = 0.0
    ttft: float | None = None
    last_token: float | None = None
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    success: bool = False
    error: str = ""
    status: int | None = None
    text: str = ""
    finished: bool = False

    @property
    def latency(self) -> float | None:
        if self.last_token is None:
            return None
        return self.last_token - self.start

    @property
    def tokens(self) -> int:
        """Output tokens: the server's count when it gave one (not 0), else the token chunks received."""
        return self.output_tokens if self.output_tokens else self.chunks


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, as numpy.percentile (method linear)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of an empty list")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0 and 100, got {q}")
    pos = (q / 100.0) * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    a = sorted_values[lo]
    b = sorted_values[hi]
    # numpy's _lerp: a + (b - a) * t, mirrored for t >= 0.5 to stay monotonic at the far end
    diff = b - a
    if frac >= 0.5:
        return b - diff * (1.0 - frac)
    return a + diff * frac


def summarize(values_s: list[float]) -> dict[str, float | None]:
    """``{mean, p50, p90, p99}`` in milliseconds of values in seconds; None for each when empty."""
    if not values_s:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    ordered = sorted(values_s)
    out: dict[str, float | None] = {"mean": math.fsum(ordered) / len(ordered) * 1000.0}
    for q in SUMMARY_PERCENTILES:
        out[f"p{int(q)}"] = percentile(ordered, q) * 1000.0
    return out


def distribution(values_s: list[float], points: int = 101) -> list[float]:
    """Percentiles 0, 1, ..., 100 (for points=101) in milliseconds: enough to draw a CDF."""
    if not values_s:
        return []
    ordered = sorted(values_s)
    return [round(percentile(ordered, 100.0 * i / (points - 1)) * 1000.0, 4) for i in range(points)]


def tpot_of(record: RequestRecord) -> float | None:
    latency = record.latency
    if record.ttft is None or latency is None or record.tokens <= 1:
        return None
    return (latency - record.ttft) / (record.tokens - 1)


def compute_metrics(
    records: list[RequestRecord],
    duration_s: float,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
    cost_per_hour: float | None = None,
) -> dict:
    """Aggregate metrics over the measured requests (warm-up excluded by the caller)."""
    ok = [r for r in records if r.success]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    e2es = [r.latency for r in ok if r.latency is not None]
    itls = [gap for r in ok for gap in r.itl]
    tpots = [t for t in (tpot_of(r) for r in ok) if t is not None]
    output_tokens = sum(r.tokens for r in ok)
    known_prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    prompt_tokens = sum(known_prompt)
    dur = duration_s if duration_s > 0 else float("nan")

    good = 0
    for r in ok:
        if slo_ttft_ms is not None and (r.ttft is None or r.ttft * 1000.0 > slo_ttft_ms):
            continue
        tpot = tpot_of(r) or 0.0
        if slo_tpot_ms is not None and tpot * 1000.0 > slo_tpot_ms:
            continue
        good += 1
    total = len(records)

    metrics: dict = {
        "ttft_ms": summarize(ttfts),
        "tpot_ms": summarize(tpots),
        "itl_ms": summarize(itls),
        "e2e_ms": summarize(e2es),
        "completed": len(ok),
        "failed": total - len(ok),
        "success_ratio": (len(ok) / total) if total else None,
        "duration_s": duration_s,
        "total_input_tokens": prompt_tokens if len(known_prompt) == len(ok) and ok else None,
        "total_output_tokens": output_tokens,
        "mean_output_tokens": (output_tokens / len(ok)) if ok else None,
        "request_throughput": _finite(len(ok) / dur),
        "output_token_throughput": _finite(output_tokens / dur),
        "total_token_throughput": _finite((prompt_tokens + output_tokens) / dur),
        "goodput": _finite(good / dur),
        "goodput_ratio": (good / total) if total else None,
        "cost_per_million_output_tokens": None,
    }
    if cost_per_hour is not None:
        tps = metrics["output_token_throughput"]
        metrics["cost_per_million_output_tokens"] = cost_per_hour / 3600.0 / tps * 1_000_000 if tps else None
    return metrics


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# name in the module's arguments -> (metric path, kind, unit label)
THRESHOLDS = {
    "min_output_tokens_per_s": (("output_token_throughput",), "min", "tok/s"),
    "max_ttft_p99_ms": (("ttft_ms", "p99"), "max", "ms"),
    "max_tpot_p50_ms": (("tpot_ms", "p50"), "max", "ms"),
    "min_success_ratio": (("success_ratio",), "min", ""),
    "min_goodput_ratio": (("goodput_ratio",), "min", ""),
}


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.4g}"


def check_thresholds(values: dict, limits: dict, spec: dict | None = None) -> list[str]:
    """One message per missed threshold, naming the metric, the measured value and the limit.

    ``limits`` maps a threshold name to its limit (None = not set). A metric that was not measured
    (None) misses every threshold set on it.
    """
    spec = spec or THRESHOLDS
    misses = []
    for name, (path, kind, unit) in spec.items():
        limit = limits.get(name)
        if limit is None:
            continue
        value = values
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        metric = ".".join(path)
        suffix = f" {unit}" if unit else ""
        if value is None:
            misses.append(
                f"{metric} was not measured (no successful request), {name} is {_fmt(limit)}{suffix}"
            )
        elif kind == "min" and value < limit:
            misses.append(f"{metric} {_fmt(value)}{suffix} is below {name} {_fmt(limit)}{suffix}")
        elif kind == "max" and value > limit:
            misses.append(f"{metric} {_fmt(value)}{suffix} is above {name} {_fmt(limit)}{suffix}")
    return misses


_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([^\s]+)")

# vLLM Prometheus series summed over their labels (engines, models). Older vLLM names second.
SERVER_GAUGES = {
    "num_requests_running": ("vllm:num_requests_running",),
    "num_requests_waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage_perc": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
SERVER_COUNTERS = {
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
    "num_preemptions_total": ("vllm:num_preemptions_total",),
    "request_success_total": ("vllm:request_success_total",),
}


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of the vLLM series we report, over their label sets."""
    wanted = {}
    for key, names in {**SERVER_GAUGES, **SERVER_COUNTERS}.items():
        for rank, name in enumerate(names):
            wanted[name] = (key, rank)
    found: dict[str, tuple[int, float]] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        m = _PROM_LINE.match(line)
        if not m or m.group(1) not in wanted:
            continue
        key, rank = wanted[m.group(1)]
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        prev = found.get(key)
        if prev is None or rank < prev[0]:
            found[key] = (rank, value)
        elif rank == prev[0]:
            found[key] = (rank, prev[1] + value)
    return {key: value for key, (_rank, value) in found.items()}


def server_metrics_report(before: dict | None, after: dict | None, peak: dict | None) -> dict:
    """The server-side view: gauges before/after/peak and counter deltas over the run."""
    report: dict = {"available": bool(before or after), "before": before, "after": after, "peak": peak}
    delta = {}
    if before and after:
        for key in SERVER_COUNTERS:
            if key in before and key in after:
                delta[key] = after[key] - before[key]
    report["delta"] = delta
    return report
