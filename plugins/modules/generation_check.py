#!/usr/bin/python
# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: generation_check
short_description: Load-test a streaming text-generation endpoint and gate on throughput and latency
version_added: 0.1.0
description:
  - Sends streamed generation requests to a TGI-compatible (C(/generate_stream)) or OpenAI-compatible
    (C(/v1/completions), C(/v1/chat/completions)) endpoint with a given concurrency and, optionally, a
    Poisson arrival rate, and measures every token as it arrives.
  - Reports the metrics of C(vllm bench serve) with its definitions. TTFT is the time from sending the
    request to the first chunk carrying a token; ITL every gap between token chunks; E2E the time to the
    last token chunk; TPOT is (E2E - TTFT) / (output tokens - 1) for requests with more than one token.
    Throughputs divide by the wall-clock time of the measured run. Percentiles interpolate linearly, as
    C(numpy.percentile) does.
  - Output tokens are the server's count (C(usage.completion_tokens) of OpenAI streams,
    C(details.generated_tokens) of TGI streams) and the token chunks received otherwise.
  - Reads the server's vLLM metrics from C(/metrics) before, during and after the run when that path
    answers (running and waiting requests, KV cache usage, token counters).
  - Fails the task when a threshold is missed, with a message naming the metric, the measured value and
    the threshold; and when the endpoint is unreachable, refuses the token, or its streams break. A failed
    task still returns the metrics measured so far.
  - The whole check, model discovery and warm-up included, never runs longer than O(timeout_s).
  - Runs on the host it is executed on with the Python standard library only; use C(delegate_to) to run
    it from the controller or from another host.
  - Never changes anything; in check mode it sends no request at all.
author:
  - selfhost.textgen maintainers (@selfhost)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Sends no load and returns no metrics.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  url:
    description:
      - Base URL of the endpoint, for example C(https://textgen.example.com) or C(http://127.0.0.1:8000).
      - The API path is appended to it.
    type: str
    required: true
  api:
    description:
      - Which streaming API to use.
      - C(tgi) posts C({"inputs", "parameters"}) to C(/generate_stream) (Hugging Face TGI and Inference
        Endpoints, and the proxy of this collection).
      - C(openai) posts to C(/v1/completions) with C(stream) and C(stream_options.include_usage).
      - C(openai_chat) posts one user message to C(/v1/chat/completions).
    type: str
    choices: [tgi, openai, openai_chat]
    default: tgi
  model:
    description:
      - Model name sent with OpenAI requests.
      - Default is the first model of C(GET /v1/models). The C(tgi) API sends no model name; there the
        default is reported from C(GET /info) when it answers.
    type: str
  token:
    description:
      - Bearer token sent as C(Authorization) header. Never logged.
    type: str
  validate_certs:
    description:
      - Verify the server certificate and host name for C(https) URLs.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of CA certificates to verify the server with, instead of the system's.
    type: path
  metrics_url:
    description:
      - URL of the vLLM server's Prometheus metrics, read before, during and after the run
        (RV(server_metrics)), for an O(url) whose own C(/metrics) is not vLLM's, such as the proxy of this
        collection or nginx in front of it. For example C(http://127.0.0.1:8000/metrics) when the module
        runs on the GPU host.
      - Default is O(url) with C(/metrics). O(token) is never sent there (vLLM serves its metrics without
        one); O(validate_certs) and O(ca_path) apply.
    type: str
  concurrency:
    description:
      - Most requests in flight at a time.
    type: int
    default: 8
  request_rate:
    description:
      - Mean requests per second, with exponential gaps between arrivals (a Poisson process), still capped
        by O(concurrency).
      - Default is unlimited, which keeps O(concurrency) requests in flight.
    type: float
  num_requests:
    description:
      - Number of measured requests (warm-up excluded).
      - Mutually exclusive with O(duration_s). When neither is given, 64 requests are sent.
    type: int
  duration_s:
    description:
      - Send requests for this many seconds instead of a fixed number, then wait for those in flight.
    type: float
  warmup_requests:
    description:
      - Requests sent before the measurement and not counted. If one of them fails, the check stops there
        and no load is sent.
    type: int
    default: 1
  prompt_tokens:
    description:
      - Approximate prompt length in tokens of generated prompts (distinct, built from common English words
        at about 1.3 tokens a word). The measured mean is returned in RV(workload.mean_prompt_tokens) when
        the server counts it.
      - Mutually exclusive with O(prompts_file). Without either, prompts of about 128 tokens are generated.
    type: int
  prompts_file:
    description:
      - JSON Lines file of prompts on the host running the module, one object with a C(prompt) string or a
        JSON string a line (the format of C(vllm bench serve --dataset-name custom)). Used in order, repeated
        as needed.
    type: path
  max_new_tokens:
    description:
      - Output length of each request. OpenAI requests also send C(ignore_eos) so that vLLM produces exactly
        this many tokens; TGI has no such parameter and the output length is reported as measured.
    type: int
    default: 128
  timeout_s:
    description:
      - Hard limit in seconds for the whole check. Requests still running then are cancelled and counted as
        failed, saying how far they got (no response, no first token, stalled stream), and the task fails
        with the metrics measured so far.
    type: float
    default: 300
  cost_per_hour:
    description:
      - Price of the serving host per hour, in any currency, to compute
        RV(metrics.cost_per_million_output_tokens) at the measured throughput.
    type: float
  min_output_tokens_per_s:
    description:
      - Fail when RV(metrics.output_token_throughput) is lower.
    type: float
  max_ttft_p99_ms:
    description:
      - Fail when the 99th percentile of TTFT is higher (milliseconds).
    type: float
  max_tpot_p50_ms:
    description:
      - Fail when the median TPOT is higher (milliseconds).
    type: float
  min_success_ratio:
    description:
      - Fail when fewer of the measured requests succeed than this share (0 to 1).
    type: float
    default: 1.0
  min_goodput_ratio:
    description:
      - Fail when fewer of the measured requests succeed within the SLOs than this share (0 to 1).
      - Needs O(slo_ttft_ms) or O(slo_tpot_ms).
    type: float
  slo_ttft_ms:
    description:
      - TTFT service level objective of goodput (milliseconds).
    type: float
  slo_tpot_ms:
    description:
      - TPOT service level objective of goodput (milliseconds).
    type: float
notes:
  - One event loop drives all streams; a single core sustains several hundred concurrent streams (see
    C(benchmarks/check_ceiling.py) in the collection's source). The open-files limit is raised when needed.
  - Tokens of one network read share one arrival time, as in C(vllm bench serve).
seealso:
  - module: selfhost.textgen.generation_compare
"""

EXAMPLES = r"""
- name: Gate the deployment on the endpoint's performance
  selfhost.textgen.generation_check:
    url: "https://{{ inventory_hostname }}"
    api: tgi
    token: "{{ textgen_api_token }}"
    concurrency: 16
    num_requests: 128
    prompt_tokens: 256
    max_new_tokens: 128
    min_output_tokens_per_s: 1500
    max_ttft_p99_ms: 2000
    max_tpot_p50_ms: 50
  delegate_to: localhost

- name: Measure vLLM directly on the host, with goodput and cost
  selfhost.textgen.generation_check:
    url: http://127.0.0.1:8000
    api: openai
    duration_s: 60
    concurrency: 64
    request_rate: 20
    slo_ttft_ms: 500
    slo_tpot_ms: 40
    min_goodput_ratio: 0.9
    cost_per_hour: 2.49
  register: bench

- name: Show the result
  ansible.builtin.debug:
    msg: >-
      {{ bench.metrics.output_token_throughput | round(1) }} tok/s,
      TTFT p99 {{ bench.metrics.ttft_ms.p99 | round }} ms
"""

RETURN = r"""
msg:
  description: One line summary, or why the check failed (every missed threshold is named).
  returned: always
  type: str
  sample: "1790.5 output tok/s, TTFT p50 40.5 ms p99 45.6 ms, TPOT p50 3.96 ms, 32 of 32 requests succeeded"
model:
  description: The model name used (given, or discovered).
  returned: when the load ran
  type: str
  sample: tiny
failed_checks:
  description: The threshold messages of the thresholds missed; empty when all passed.
  returned: when the load ran
  type: list
  elements: str
  sample: ["ttft_ms.p99 2345.0 ms is above max_ttft_p99_ms 2000 ms"]
metrics:
  description:
    - Client-side metrics of the measured requests, with the definitions of C(vllm bench serve). Latency
      summaries cover the successful requests; a summary without samples has null values.
  returned: when the load ran (also on failure, with what was measured so far)
  type: dict
  contains:
    ttft_ms:
      description: Time to first token, C({mean, p50, p90, p99}) in milliseconds.
      type: dict
      returned: success
      sample: {"mean": 39.4, "p50": 40.5, "p90": 44.6, "p99": 45.6}
    tpot_ms:
      description: Time per output token after the first, C({mean, p50, p90, p99}) in milliseconds.
      type: dict
      returned: success
      sample: {"mean": 3.87, "p50": 3.96, "p90": 4.08, "p99": 4.12}
    itl_ms:
      description: Inter-token latency, C({mean, p50, p90, p99}) in milliseconds.
      type: dict
      returned: success
      sample: {"mean": 3.87, "p50": 3.53, "p90": 4.87, "p99": 10.5}
    e2e_ms:
      description: End-to-end latency to the last token, C({mean, p50, p90, p99}) in milliseconds.
      type: dict
      returned: success
      sample: {"mean": 283.1, "p50": 285.1, "p90": 300.5, "p99": 303.5}
    completed:
      description: Measured requests that succeeded.
      type: int
      returned: success
      sample: 32
    failed:
      description: Measured requests that failed (HTTP error, error event, broken or unfinished stream).
      type: int
      returned: success
      sample: 0
    success_ratio:
      description: RV(metrics.completed) divided by the measured requests sent.
      type: float
      returned: success
      sample: 1.0
    duration_s:
      description: Wall-clock time from the first measured request sent to the last one finished.
      type: float
      returned: success
      sample: 1.14
    total_input_tokens:
      description: Prompt tokens of the successful requests as counted by the server (null when not told).
      type: int
      returned: success
      sample: 2451
    total_output_tokens:
      description: Output tokens of the successful requests.
      type: int
      returned: success
      sample: 2048
    mean_output_tokens:
      description: Mean output tokens per successful request.
      type: float
      returned: success
      sample: 64.0
    request_throughput:
      description: Successful requests per second.
      type: float
      returned: success
      sample: 27.98
    output_token_throughput:
      description: Output tokens per second.
      type: float
      returned: success
      sample: 1790.5
    total_token_throughput:
      description: Prompt plus output tokens per second.
      type: float
      returned: success
      sample: 3933.3
    goodput:
      description: Requests per second that succeeded within O(slo_ttft_ms) and O(slo_tpot_ms) (all
        successful ones when no SLO is set).
      type: float
      returned: success
      sample: 27.98
    goodput_ratio:
      description: Share of the measured requests that succeeded within the SLOs.
      type: float
      returned: success
      sample: 1.0
    cost_per_million_output_tokens:
      description: O(cost_per_hour) divided by the output tokens produced in an hour at the measured rate;
        null without O(cost_per_hour).
      type: float
      returned: success
      sample: 0.31
distributions:
  description:
    - Percentiles 0, 1, ..., 100 in milliseconds of TTFT, TPOT, ITL and E2E over the successful requests
      (101 values each, empty without samples), to plot distributions.
  returned: when the load ran
  type: dict
  sample: {"ttft_ms": [30.1, 31.0], "tpot_ms": [], "itl_ms": [], "e2e_ms": []}
server_metrics:
  description:
    - The server's own vLLM metrics from C(/metrics), summed over engines and models.
    - C(before) and C(after) hold gauges (C(num_requests_running), C(num_requests_waiting),
      C(kv_cache_usage_perc)) and counters (C(prompt_tokens_total), C(generation_tokens_total),
      C(num_preemptions_total), C(request_success_total)); C(peak) the largest gauges seen twice a second
      during the run; C(delta) the counters' growth (warm-up included).
  returned: when the load ran
  type: dict
  sample:
    available: true
    before: {"num_requests_running": 0.0, "kv_cache_usage_perc": 0.0}
    after: {"num_requests_running": 0.0, "kv_cache_usage_perc": 0.0}
    peak: {"num_requests_running": 8.0, "num_requests_waiting": 0.0, "kv_cache_usage_perc": 0.001}
    delta: {"generation_tokens_total": 2112.0}
errors:
  description: Distinct errors of failed requests and their counts, most frequent first (ten at most).
  returned: when the load ran
  type: list
  elements: dict
  sample: [{"error": "HTTP 500 Internal Server Error: upstream died", "count": 3}]
workload:
  description: What was sent.
  returned: when the load ran
  type: dict
  contains:
    api:
      description: The API used.
      type: str
      returned: success
      sample: openai
    requests_sent:
      description: Measured requests sent (warm-up excluded).
      type: int
      returned: success
      sample: 32
    warmup_requests:
      description: Warm-up requests sent before the measurement.
      type: int
      returned: success
      sample: 1
    concurrency:
      description: Most requests in flight.
      type: int
      returned: success
      sample: 8
    request_rate:
      description: Mean arrival rate in requests per second, null when unlimited.
      type: float
      returned: success
      sample: null
    max_new_tokens:
      description: Output length asked for.
      type: int
      returned: success
      sample: 64
    distinct_prompts:
      description: Number of different prompts used.
      type: int
      returned: success
      sample: 32
    mean_prompt_tokens:
      description: Mean prompt length in tokens as counted by the server; null when it does not say.
      type: float
      returned: success
      sample: 76.6
    output_length_fixed:
      description: Whether every successful request produced exactly O(max_new_tokens) tokens.
      type: bool
      returned: success
      sample: true
timed_out:
  description: Whether O(timeout_s) cut the check short.
  returned: when the load ran
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhost.textgen.plugins.module_utils._http import Endpoint
from ansible_collections.selfhost.textgen.plugins.module_utils._loadgen import (
    APIS,
    LoadConfig,
    generate_prompts,
    load_prompts,
    run_load,
)
from ansible_collections.selfhost.textgen.plugins.module_utils._stats import check_thresholds


def summary_line(metrics: dict, sent: int) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"

    tps = metrics.get("output_token_throughput")
    return (f"{tps:.1f} output tok/s" if tps is not None else "no output throughput") + (
        f", TTFT p50 {ms(metrics['ttft_ms']['p50'])} p99 {ms(metrics['ttft_ms']['p99'])}"
        f", TPOT p50 {ms(metrics['tpot_ms']['p50'])}"
        f", {metrics['completed']} of {sent} requests succeeded"
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            api=dict(type="str", choices=list(APIS), default="tgi"),
            model=dict(type="str"),
            token=dict(type="str", no_log=True),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            metrics_url=dict(type="str"),
            concurrency=dict(type="int", default=8),
            request_rate=dict(type="float"),
            num_requests=dict(type="int"),
            duration_s=dict(type="float"),
            warmup_requests=dict(type="int", default=1),
            prompt_tokens=dict(type="int", no_log=False),
            prompts_file=dict(type="path"),
            max_new_tokens=dict(type="int", default=128, no_log=False),
            timeout_s=dict(type="float", default=300),
            cost_per_hour=dict(type="float"),
            min_output_tokens_per_s=dict(type="float", no_log=False),
            max_ttft_p99_ms=dict(type="float"),
            max_tpot_p50_ms=dict(type="float"),
            min_success_ratio=dict(type="float", default=1.0),
            min_goodput_ratio=dict(type="float"),
            slo_ttft_ms=dict(type="float"),
            slo_tpot_ms=dict(type="float"),
        ),
        mutually_exclusive=[("num_requests", "duration_s"), ("prompt_tokens", "prompts_file")],
        supports_check_mode=True,
    )
    p = module.params
    for name in ("concurrency", "max_new_tokens", "prompt_tokens", "num_requests"):
        if p[name] is not None and p[name] < 1:
            module.fail_json(msg=f"{name} must be at least 1, got {p[name]}")
    for name in ("timeout_s", "duration_s", "request_rate"):
        if p[name] is not None and p[name] <= 0:
            module.fail_json(msg=f"{name} must be greater than 0, got {p[name]}")
    if p["warmup_requests"] < 0:
        module.fail_json(msg=f"warmup_requests must be 0 or more, got {p['warmup_requests']}")
    for name in ("min_success_ratio", "min_goodput_ratio"):
        if p[name] is not None and not 0 <= p[name] <= 1:
            module.fail_json(msg=f"{name} must be between 0 and 1, got {p[name]}")
    if p["min_goodput_ratio"] is not None and p["slo_ttft_ms"] is None and p["slo_tpot_ms"] is None:
        module.fail_json(msg="min_goodput_ratio needs slo_ttft_ms or slo_tpot_ms")

    try:
        if p["prompts_file"]:
            prompts = load_prompts(p["prompts_file"])
        else:
            count = (p["num_requests"] or 64) if p["duration_s"] is None else 256
            prompts = generate_prompts(min(count, 1024), p["prompt_tokens"] or 128)
        cfg = LoadConfig(
            url=p["url"],
            api=p["api"],
            model=p["model"],
            token=p["token"],
            validate_certs=p["validate_certs"],
            ca_path=p["ca_path"],
            metrics_url=p["metrics_url"],
            concurrency=p["concurrency"],
            request_rate=p["request_rate"],
            num_requests=None if p["duration_s"] is not None else (p["num_requests"] or 64),
            duration_s=p["duration_s"],
            warmup_requests=p["warmup_requests"],
            prompts=prompts,
            max_new_tokens=p["max_new_tokens"],
            timeout_s=p["timeout_s"],
            slo_ttft_ms=p["slo_ttft_ms"],
            slo_tpot_ms=p["slo_tpot_ms"],
            cost_per_hour=p["cost_per_hour"],
        )
        Endpoint(cfg.url, None, cfg.validate_certs, cfg.ca_path)
    except (ValueError, OSError) as exc:
        module.fail_json(msg=str(exc))

    if module.check_mode:
        module.exit_json(changed=False, msg="check mode: no load sent")

    result = run_load(cfg)
    metrics = result["metrics"]
    out = {
        "changed": False,
        "model": result["model"],
        "metrics": metrics,
        "distributions": result["distributions"],
        "server_metrics": result["server_metrics"],
        "errors": result["errors"],
        "workload": result["workload"],
        "timed_out": result["timed_out"],
        "failed_checks": [],
    }
    if metrics is not None:
        out["failed_checks"] = check_thresholds(metrics, p)
    sent = result["workload"]["requests_sent"]
    problems = []
    if result["failure"]:
        problems.append(result["failure"])
    if out["failed_checks"]:
        problems.append("; ".join(out["failed_checks"]))
    if problems:
        if result["errors"]:
            top = result["errors"][0]
            problems.append(f"most frequent error ({top['count']}x): {top['error']}")
        if metrics is not None:
            label = "measured so far" if result["failure"] else "measured"
            problems.append(f"{label}: " + summary_line(metrics, sent))
        module.fail_json(msg=". ".join(problems), **out)
    module.exit_json(msg=summary_line(metrics, sent), **out)


if __name__ == "__main__":
    main()
