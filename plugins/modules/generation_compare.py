#!/usr/bin/python
# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: generation_compare
short_description: Check that a new text-generation endpoint answers like the old one before cutting over
version_added: 0.1.0
description:
  - Sends the same prompts with deterministic (greedy) generation to two endpoints, a O(baseline) (for
    example the Hugging Face Inference Endpoint being left) and a O(candidate) (the new host), each with its
    own API, URL and token, and reports how far their answers agree.
  - Reports the exact-match rate (texts equal after Unicode NFC normalisation), the mean normalised
    similarity (difflib ratio with whitespace runs collapsed, 1.0 = identical), the length difference, TTFT,
    TPOT and end-to-end latency side by side, and the most different pairs.
  - The baseline is asked first, then the candidate, so that they do not compete for shared resources.
  - Thresholds make it a cut-over gate; a missed threshold fails the task with a message naming the metric,
    the measured value and the threshold. Unreachable endpoints, refused tokens and broken streams fail it
    with the results gathered so far. The whole comparison never runs longer than O(timeout_s).
  - Standard library only on the host running it. Never changes anything; in check mode it sends nothing.
author:
  - selfhost.textgen maintainers (@selfhost)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Sends no request and returns no comparison.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  baseline:
    description:
      - The endpoint answers are compared against.
    type: dict
    required: true
    suboptions: &endpoint
      url:
        description:
          - Base URL of the endpoint; the API path is appended.
        type: str
        required: true
      api:
        description:
          - C(tgi) streams from C(/generate_stream) with C(do_sample=false); C(openai) from
            C(/v1/completions) and C(openai_chat) from C(/v1/chat/completions), with C(temperature=0) and
            C(seed=0).
        type: str
        choices: [tgi, openai, openai_chat]
        default: tgi
      model:
        description:
          - Model name for OpenAI requests. Default is the first model of C(GET /v1/models).
        type: str
      token:
        description:
          - Bearer token sent as C(Authorization) header. Never logged.
        type: str
      validate_certs:
        description:
          - Verify the server certificate for C(https) URLs.
        type: bool
        default: true
      ca_path:
        description:
          - PEM file of CA certificates to verify the server with.
        type: path
  candidate:
    description:
      - The endpoint under test, with the same settings as O(baseline).
    type: dict
    required: true
    suboptions: *endpoint
  prompts_file:
    description:
      - JSON Lines file of real prompts on the host running the module, one object with a C(prompt) string or
        JSON string a line. Each prompt is sent once to each endpoint.
      - Exactly one of O(prompts_file) and O(prompts) is required.
    type: path
  prompts:
    description:
      - The prompts, inline.
    type: list
    elements: str
  max_new_tokens:
    description:
      - Most tokens generated per answer (answers may end earlier at the end-of-sequence token).
    type: int
    default: 64
  concurrency:
    description:
      - Requests in flight at a time, on each endpoint.
    type: int
    default: 4
  timeout_s:
    description:
      - Hard limit in seconds for the whole comparison, both endpoints together.
    type: float
    default: 300
  top_differences:
    description:
      - How many of the most different pairs to return in RV(comparison.most_different).
    type: int
    default: 5
  min_exact_match_ratio:
    description:
      - Fail when a smaller share of the answer pairs match exactly (0 to 1).
    type: float
  min_mean_similarity:
    description:
      - Fail when the mean similarity of the answer pairs is lower (0 to 1).
    type: float
  max_length_diff_ratio:
    description:
      - Fail when the mean length difference, relative to the longer answer of each pair, is higher (0 to 1).
    type: float
  min_success_ratio:
    description:
      - Fail when a smaller share of the prompts got an answer from both endpoints (0 to 1).
    type: float
    default: 1.0
seealso:
  - module: selfhost.textgen.generation_check
"""

EXAMPLES = r"""
- name: Compare the new host with the Hugging Face endpoint before the cut-over
  selfhost.textgen.generation_compare:
    baseline:
      url: https://xyz.us-east-1.aws.endpoints.huggingface.cloud
      api: tgi
      token: "{{ hf_token }}"
    candidate:
      url: "https://{{ inventory_hostname }}"
      api: tgi
      token: "{{ textgen_api_token }}"
    prompts_file: files/cutover-prompts.jsonl
    max_new_tokens: 64
    min_exact_match_ratio: 0.9
    min_mean_similarity: 0.97
  delegate_to: localhost
  register: cutover

- name: Show the most different answers
  ansible.builtin.debug:
    var: cutover.comparison.most_different
"""

RETURN = r"""
msg:
  description: One line summary, or why the comparison failed (every missed threshold is named).
  returned: always
  type: str
  sample: "32 of 32 prompts compared: exact match 0.969, mean similarity 0.998, mean length difference 0.004"
failed_checks:
  description: The messages of the thresholds missed; empty when all passed.
  returned: when the requests ran
  type: list
  elements: str
  sample: ["exact_match_ratio 0.8 is below min_exact_match_ratio 0.9"]
comparison:
  description: Agreement of the answers over the prompts answered by both endpoints.
  returned: when the requests ran
  type: dict
  contains:
    prompts:
      description: Number of prompts.
      type: int
      returned: success
      sample: 32
    compared:
      description: Prompts answered successfully by both endpoints.
      type: int
      returned: success
      sample: 32
    success_ratio:
      description: RV(comparison.compared) divided by RV(comparison.prompts).
      type: float
      returned: success
      sample: 1.0
    exact_matches:
      description: Pairs whose texts are equal.
      type: int
      returned: success
      sample: 31
    exact_match_ratio:
      description: RV(comparison.exact_matches) divided by RV(comparison.compared) (null without pairs).
      type: float
      returned: success
      sample: 0.969
    mean_similarity:
      description: Mean similarity of the pairs, 0 to 1.
      type: float
      returned: success
      sample: 0.998
    min_similarity:
      description: Lowest similarity of a pair.
      type: float
      returned: success
      sample: 0.93
    mean_length_diff_ratio:
      description: Mean of |len(baseline) - len(candidate)| / the longer length, over the pairs.
      type: float
      returned: success
      sample: 0.004
    mean_length_diff_chars:
      description:
        - Mean of len(candidate) - len(baseline) in characters (negative when the candidate is shorter).
      type: float
      returned: success
      sample: -0.3
    most_different:
      description:
        - The least similar pairs that are not exact matches, least similar first, at most O(top_differences).
          Texts are cut after 400 characters.
      type: list
      elements: dict
      returned: success
      sample:
        - index: 7
          prompt: "Write a haiku about rain"
          baseline: "Soft rain on the roof"
          candidate: "Soft rain on a roof"
          similarity: 0.93
          length_diff_chars: -2
baseline:
  description: What the baseline did, with latency summaries C({mean, p50, p90, p99}) in milliseconds.
  returned: when the requests ran
  type: dict
  sample:
    url: https://xyz.endpoints.huggingface.cloud
    api: tgi
    model: meta-llama/Llama-3.1-8B-Instruct
    completed: 32
    failed: 0
    failure: null
    errors: []
    ttft_ms: {"mean": 210.0, "p50": 200.0, "p90": 260.0, "p99": 300.0}
    tpot_ms: {"mean": 21.0, "p50": 20.0, "p90": 24.0, "p99": 30.0}
    e2e_ms: {"mean": 1500.0, "p50": 1450.0, "p90": 1800.0, "p99": 2000.0}
    output_token_throughput: 180.5
    mean_output_tokens: 60.2
candidate:
  description: What the candidate did, as RV(baseline).
  returned: when the requests ran
  type: dict
  sample:
    url: https://new-host
    api: tgi
    model: meta-llama/Llama-3.1-8B-Instruct
    completed: 32
    failed: 0
    failure: null
    errors: []
    ttft_ms: {"mean": 42.0, "p50": 40.0, "p90": 50.0, "p99": 60.0}
    tpot_ms: {"mean": 6.0, "p50": 6.0, "p90": 7.0, "p99": 8.0}
    e2e_ms: {"mean": 420.0, "p50": 400.0, "p90": 480.0, "p99": 520.0}
    output_token_throughput: 720.1
    mean_output_tokens: 60.2
latency:
  description: TTFT, TPOT and E2E summaries side by side, each C({baseline, candidate}).
  returned: when the requests ran
  type: dict
  sample:
    ttft_ms:
      baseline: {"mean": 210.0, "p50": 200.0, "p90": 260.0, "p99": 300.0}
      candidate: {"mean": 42.0, "p50": 40.0, "p90": 50.0, "p99": 60.0}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhost.textgen.plugins.module_utils._compare import THRESHOLDS, run_compare
from ansible_collections.selfhost.textgen.plugins.module_utils._http import Endpoint
from ansible_collections.selfhost.textgen.plugins.module_utils._loadgen import APIS, LoadConfig, load_prompts
from ansible_collections.selfhost.textgen.plugins.module_utils._stats import check_thresholds

ENDPOINT_SPEC = dict(
    url=dict(type="str", required=True),
    api=dict(type="str", choices=list(APIS), default="tgi"),
    model=dict(type="str"),
    token=dict(type="str", no_log=True),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_line(c: dict) -> str:
    return (
        f"{c['compared']} of {c['prompts']} prompts compared: exact match {_fmt(c['exact_match_ratio'])}, "
        f"mean similarity {_fmt(c['mean_similarity'])}, "
        f"mean length difference {_fmt(c['mean_length_diff_ratio'])}"
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            baseline=dict(type="dict", required=True, options=ENDPOINT_SPEC),
            candidate=dict(type="dict", required=True, options=ENDPOINT_SPEC),
            prompts_file=dict(type="path"),
            prompts=dict(type="list", elements="str"),
            max_new_tokens=dict(type="int", default=64, no_log=False),
            concurrency=dict(type="int", default=4),
            timeout_s=dict(type="float", default=300),
            top_differences=dict(type="int", default=5),
            min_exact_match_ratio=dict(type="float"),
            min_mean_similarity=dict(type="float"),
            max_length_diff_ratio=dict(type="float"),
            min_success_ratio=dict(type="float", default=1.0),
        ),
        mutually_exclusive=[("prompts_file", "prompts")],
        required_one_of=[("prompts_file", "prompts")],
        supports_check_mode=True,
    )
    p = module.params
    for name in ("max_new_tokens", "concurrency"):
        if p[name] < 1:
            module.fail_json(msg=f"{name} must be at least 1, got {p[name]}")
    if p["top_differences"] < 0:
        module.fail_json(msg=f"top_differences must be 0 or more, got {p['top_differences']}")
    if p["timeout_s"] <= 0:
        module.fail_json(msg=f"timeout_s must be greater than 0, got {p['timeout_s']}")
    for name in THRESHOLDS:
        if p[name] is not None and not 0 <= p[name] <= 1:
            module.fail_json(msg=f"{name} must be between 0 and 1, got {p[name]}")
    try:
        prompts = load_prompts(p["prompts_file"]) if p["prompts_file"] else list(p["prompts"])
        if not prompts or not all(prompts):
            raise ValueError("prompts must hold at least one prompt and no empty one")
        sides = []
        for name in ("baseline", "candidate"):
            side = p[name]
            try:
                Endpoint(side["url"], None, side["validate_certs"], side["ca_path"])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            sides.append(
                LoadConfig(
                    url=side["url"],
                    api=side["api"],
                    model=side["model"],
                    token=side["token"],
                    validate_certs=side["validate_certs"],
                    ca_path=side["ca_path"],
                    concurrency=p["concurrency"],
                    num_requests=len(prompts),
                    warmup_requests=1,
                    prompts=prompts,
                    max_new_tokens=p["max_new_tokens"],
                    timeout_s=p["timeout_s"],
                    fixed_length=False,
                    greedy=True,
                    keep_text=True,
                    server_metrics=False,
                )
            )
    except (ValueError, OSError) as exc:
        module.fail_json(msg=str(exc))

    if module.check_mode:
        module.exit_json(changed=False, msg="check mode: no request sent")

    result = run_compare(sides[0], sides[1], p["timeout_s"], p["top_differences"])
    comparison = result["comparison"]
    out = {
        "changed": False,
        "comparison": comparison,
        "baseline": result["baseline"],
        "candidate": result["candidate"],
        "latency": result["latency"],
        "failed_checks": check_thresholds(comparison, p, THRESHOLDS),
    }
    problems = list(result["failures"])
    if out["failed_checks"]:
        problems.append("; ".join(out["failed_checks"]))
    if problems:
        for name in ("baseline", "candidate"):
            errors = result[name]["errors"]
            if errors:
                problems.append(f"most frequent {name} error ({errors[0]['count']}x): {errors[0]['error']}")
        problems.append(summary_line(comparison))
        module.fail_json(msg=". ".join(problems), **out)
    module.exit_json(msg=summary_line(comparison), **out)


if __name__ == "__main__":
    main()
