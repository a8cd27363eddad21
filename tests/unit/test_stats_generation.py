"""Metric math of the generation checks against numpy and the definitions of `vllm bench serve`."""

from __future__ import annotations

import random

import numpy as np
import pytest
from ansible_collections.selfhost.textgen.plugins.module_utils._stats import (
    THRESHOLDS,
    RequestRecord,
    check_thresholds,
    compute_metrics,
    distribution,
    parse_prometheus,
    percentile,
    server_metrics_report,
    summarize,
)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 17, 100, 1001])
def test_percentile_matches_numpy_linear(n):
    rng = random.Random(n)
    values = sorted(rng.uniform(0, 10) for _unused in range(n))
    for q in [0, 1, 10, 25, 33.3, 50, 66.6, 90, 95, 99, 99.9, 100]:
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-15)


def test_percentile_with_ties_and_negative_values():
    values = sorted([-3.0, -3.0, 0.0, 0.0, 0.0, 7.5, 7.5, 1e9])
    for q in range(0, 101, 7):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_is_in_milliseconds_and_empty_is_null():
    values = [0.010, 0.020, 0.030, 0.100]
    s = summarize(values)
    arr = np.array(values) * 1000
    assert s["mean"] == pytest.approx(arr.mean())
    assert s["p50"] == pytest.approx(np.percentile(arr, 50))
    assert s["p90"] == pytest.approx(np.percentile(arr, 90))
    assert s["p99"] == pytest.approx(np.percentile(arr, 99))
    assert summarize([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_distribution_is_percentiles_0_to_100():
    rng = random.Random(3)
    values = [rng.expovariate(20) for _unused in range(257)]
    d = distribution(values)
    assert len(d) == 101
    assert d == sorted(d)
    expected = np.percentile(np.array(values) * 1000, np.arange(101))
    assert np.allclose(d, expected, atol=1e-3)
    assert distribution([]) == []


def make_record(i, start, ttft, itls, output_tokens=None, prompt_tokens=None, success=True):
    rec = RequestRecord(index=i, start=start)
    rec.success = success
    if ttft is not None:
        rec.ttft = ttft
        t = start + ttft
        rec.chunks = 1
        for gap in itls:
            t += gap
            rec.itl.append(gap)
            rec.chunks += 1
        rec.last_token = t
    rec.output_tokens = output_tokens
    rec.prompt_tokens = prompt_tokens
    if not success:
        rec.error = "HTTP 500"
    return rec


def vllm_reference(records, duration, slo_ttft_ms=None, slo_tpot_ms=None):
    """calculate_metrics of vllm/benchmarks/serve.py, written out with numpy."""
    ttfts, tpots, all_tpots, itls, e2els, out_lens = [], [], [], [], [], []
    total_input = 0
    for r in records:
        if not r.success:
            continue
        n = r.output_tokens if r.output_tokens else r.chunks
        out_lens.append(n)
        total_input += r.prompt_tokens or 0
        latency = r.last_token - r.start
        tpot = 0.0
        if n > 1:
            tpot = (latency - r.ttft) / (n - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls += r.itl
        ttfts.append(r.ttft)
        e2els.append(latency)
    good = 0
    for ttft, tpot in zip(ttfts, all_tpots, strict=True):
        ok = True
        if slo_ttft_ms is not None:
            ok &= slo_ttft_ms / 1000 >= ttft
        if slo_tpot_ms is not None:
            ok &= slo_tpot_ms / 1000 >= tpot
        good += ok
    return {
        "completed": len(ttfts),
        "output_throughput": sum(out_lens) / duration,
        "total_token_throughput": (total_input + sum(out_lens)) / duration,
        "request_throughput": len(ttfts) / duration,
        "goodput": good / duration,
        "ttft": {p: np.percentile(ttfts, p) * 1000 for p in (50, 90, 99)} | {"mean": np.mean(ttfts) * 1000},
        "tpot": {p: np.percentile(tpots, p) * 1000 for p in (50, 90, 99)} | {"mean": np.mean(tpots) * 1000},
        "itl": {p: np.percentile(itls, p) * 1000 for p in (50, 90, 99)} | {"mean": np.mean(itls) * 1000},
        "e2e": {p: np.percentile(e2els, p) * 1000 for p in (50, 90, 99)} | {"mean": np.mean(e2els) * 1000},
    }


def workload(seed=0, n=40):
    rng = random.Random(seed)
    records = []
    for i in range(n):
        start = rng.uniform(0, 2)
        tokens = rng.choice([1, 2, 16, 64])
        itls = [rng.uniform(0.002, 0.02) for _unused in range(tokens - 1)]
        usage = tokens if rng.random() < 0.7 else None  # some servers give no usage: chunks count
        records.append(
            make_record(i, start, rng.uniform(0.01, 0.3), itls, usage, rng.randint(5, 50), rng.random() > 0.1)
        )
    return records


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compute_metrics_matches_vllm_definitions(seed):
    records = workload(seed)
    duration = 3.7
    m = compute_metrics(records, duration, slo_ttft_ms=150, slo_tpot_ms=12)
    ref = vllm_reference(records, duration, 150, 12)
    assert m["completed"] == ref["completed"]
    assert m["failed"] == len(records) - ref["completed"]
    assert m["success_ratio"] == pytest.approx(ref["completed"] / len(records))
    assert m["output_token_throughput"] == pytest.approx(ref["output_throughput"])
    assert m["total_token_throughput"] == pytest.approx(ref["total_token_throughput"])
    assert m["request_throughput"] == pytest.approx(ref["request_throughput"])
    assert m["goodput"] == pytest.approx(ref["goodput"])
    assert m["goodput_ratio"] == pytest.approx(ref["goodput"] * duration / len(records))
    for ours, theirs in (("ttft_ms", "ttft"), ("tpot_ms", "tpot"), ("itl_ms", "itl"), ("e2e_ms", "e2e")):
        assert m[ours]["mean"] == pytest.approx(ref[theirs]["mean"], rel=1e-9)
        for p in (50, 90, 99):
            assert m[ours][f"p{p}"] == pytest.approx(ref[theirs][p], rel=1e-9), (ours, p)


def test_goodput_boundaries_and_single_token_requests():
    # exactly at the SLO is good (vLLM: slo >= value); a one-token request has tpot 0 for goodput
    recs = [
        make_record(0, 0.0, 0.100, [0.010] * 3, 4),  # ttft 100 ms, tpot 10 ms -> good
        make_record(1, 0.0, 0.1001, [0.010] * 3, 4),  # ttft just over -> bad
        make_record(2, 0.0, 0.050, [], 1),  # single token: tpot counts as 0 -> good
        make_record(3, 0.0, 0.050, [0.0101] * 3, 4),  # tpot just over -> bad
        make_record(4, 0.0, None, [], None, success=False),
    ]
    m = compute_metrics(recs, 2.0, slo_ttft_ms=100, slo_tpot_ms=10)
    assert m["goodput"] == pytest.approx(2 / 2.0)
    assert m["goodput_ratio"] == pytest.approx(2 / 5)
    # without SLOs every successful request is good
    assert compute_metrics(recs, 2.0)["goodput_ratio"] == pytest.approx(4 / 5)


def test_cost_per_million_output_tokens():
    recs = [make_record(i, 0.0, 0.05, [0.01] * 99, 100) for i in range(10)]
    m = compute_metrics(recs, 1.0, cost_per_hour=3.6)  # 1000 tok/s, $0.001/s -> $1 per million
    assert m["output_token_throughput"] == pytest.approx(1000.0)
    assert m["cost_per_million_output_tokens"] == pytest.approx(1.0)
    assert compute_metrics(recs, 1.0)["cost_per_million_output_tokens"] is None


def test_all_failed_gives_null_latencies_and_zero_throughput():
    recs = [make_record(i, 0.0, None, [], success=False) for i in range(3)]
    m = compute_metrics(recs, 1.0)
    assert m["completed"] == 0 and m["failed"] == 3
    assert m["ttft_ms"]["p99"] is None
    assert m["output_token_throughput"] == 0.0
    assert m["success_ratio"] == 0.0


def test_threshold_messages_name_metric_value_and_limit():
    metrics = {
        "output_token_throughput": 812.34,
        "ttft_ms": {"p99": 2345.0},
        "tpot_ms": {"p50": 12.5},
        "success_ratio": 0.95,
        "goodput_ratio": 0.5,
    }
    limits = {
        "min_output_tokens_per_s": 1000,
        "max_ttft_p99_ms": 2000,
        "max_tpot_p50_ms": 20,
        "min_success_ratio": 1.0,
        "min_goodput_ratio": None,
    }
    assert check_thresholds(metrics, limits) == [
        "output_token_throughput 812.3 tok/s is below min_output_tokens_per_s 1000.0 tok/s",
        "ttft_ms.p99 2345.0 ms is above max_ttft_p99_ms 2000.0 ms",
        "success_ratio 0.95 is below min_success_ratio 1",
    ]


def test_threshold_on_unmeasured_metric_fails():
    metrics = {"ttft_ms": {"p99": None}, "output_token_throughput": 0.0, "success_ratio": 0.0}
    msgs = check_thresholds(metrics, {"max_ttft_p99_ms": 500})
    assert msgs == ["ttft_ms.p99 was not measured (no successful request), max_ttft_p99_ms is 500.0 ms"]


def test_thresholds_pass_when_met():
    metrics = {"output_token_throughput": 1000.0, "ttft_ms": {"p99": 2000.0}, "success_ratio": 1.0}
    limits = {"min_output_tokens_per_s": 1000, "max_ttft_p99_ms": 2000, "min_success_ratio": 1.0}
    assert check_thresholds(metrics, limits) == []
    assert set(THRESHOLDS) == {
        "min_output_tokens_per_s",
        "max_ttft_p99_ms",
        "max_tpot_p50_ms",
        "min_success_ratio",
        "min_goodput_ratio",
    }


PROM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 7.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 99.0
vllm:gpu_cache_usage_perc{engine="0",model_name="tiny"} 0.9
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:generation_tokens_total{engine="0",model_name="tiny"} 1.5e3
vllm:generation_tokens_created{engine="0",model_name="tiny"} 1.7e9
tgi_request_count 4
"""


def test_parse_prometheus_sums_labels_and_prefers_current_names():
    m = parse_prometheus(PROM)
    assert m == {
        "num_requests_running": 5.0,
        "num_requests_waiting": 7.0,
        "kv_cache_usage_perc": 0.25,
        "generation_tokens_total": 1500.0,
    }
    assert parse_prometheus("vllm:gpu_cache_usage_perc 0.5\n") == {"kv_cache_usage_perc": 0.5}
    assert parse_prometheus("tgi_request_count 4\n") == {}


def test_server_metrics_report_deltas():
    rep = server_metrics_report(
        {"generation_tokens_total": 10.0, "num_requests_running": 0.0},
        {"generation_tokens_total": 110.0, "num_requests_running": 0.0},
        {"num_requests_running": 8.0},
    )
    assert rep["available"] is True
    assert rep["delta"] == {"generation_tokens_total": 100.0}
    assert rep["peak"] == {"num_requests_running": 8.0}
    assert server_metrics_report(None, None, None)["available"] is False
