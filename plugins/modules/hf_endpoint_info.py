#!/usr/bin/python
# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_endpoint_info
short_description: Read a Hugging Face Inference Endpoint and size a self-hosted vLLM fleet for it
version_added: 0.1.0
description:
  - Reads the description of a Hugging Face Inference Endpoint, either from the Inference Endpoints API
    (the same call as C(huggingface_hub.get_inference_endpoint)) or from a saved JSON file holding that
    description (C(endpoint.raw)).
  - Normalises what matters for a move to vLLM (model repository and revision, task, instance type and
    size, accelerator, minimum and maximum replicas, container settings such as C(MAX_INPUT_TOKENS),
    C(MAX_TOTAL_TOKENS), C(QUANTIZE), C(DTYPE)) and sizes the new fleet (tensor parallel size and GPUs per
    host from the model's size, serving and standby host counts from the replicas).
  - Returns the inventory variables that the roles C(selfhost.textgen.vllm) and C(selfhost.textgen.hf_proxy)
    read; the playbook C(selfhost.textgen.migrate_from_hf) writes them to a file.
  - Needs only the Python standard library. Read-only; supports check mode.
author:
  - selfhost.textgen maintainers (@selfhost)
options:
  path:
    description:
      - A JSON file with a saved endpoint description (on the machine the module runs on).
      - >-
        Save one with C(json.dump(huggingface_hub.get_inference_endpoint(NAME, namespace=NS\).raw, f\)), or
        with C(curl) from C(https://api.endpoints.huggingface.cloud/v2/endpoint/NS/NAME) with the token in an
        C(Authorization) header.
      - Mutually exclusive with O(name).
    type: path
  name:
    description: Name of the endpoint to read from the API. Needs O(namespace) and O(token).
    type: str
  namespace:
    description: User or organisation that owns the endpoint.
    type: str
  token:
    description:
      - Hugging Face access token with read access to Inference Endpoints (and to the model, when gated).
      - Also used to read the model's size from the Hub. Never logged.
    type: str
  api_url:
    description: Base URL of the Inference Endpoints API.
    type: str
    default: https://api.endpoints.huggingface.cloud/v2
  hub_url:
    description: Base URL of the Hugging Face Hub (for the model's parameter count).
    type: str
    default: https://huggingface.co
  model_parameters:
    description:
      - Parameter count of the model (for example V(70000000000)). When unset, the module asks the Hub
        (safetensors metadata, if O(fetch_model_info)) and then reads it from the model name (C(70B)).
    type: int
  fetch_model_info:
    description: Ask the Hub for the model's parameter count when O(model_parameters) is unset.
    type: bool
    default: true
  gpu_memory_gib:
    description: Memory of one GPU of the new hosts, in GiB (80 for an H100, 96 for an RTX PRO 6000).
    type: float
    default: 80
  gpu_memory_utilization:
    description: Share of GPU memory vLLM may use on the new hosts (C(vllm_gpu_memory_utilization)).
    type: float
    default: 0.9
  max_gpus_per_host:
    description: Most GPUs one new host has; a model that needs more fails with a clear message.
    type: int
    default: 8
  timeout_s:
    description: Timeout of each HTTP request, in seconds.
    type: float
    default: 30
  validate_certs:
    description: Verify TLS certificates of the API and the Hub.
    type: bool
    default: true
  ca_path:
    description: CA bundle for TLS verification (a corporate proxy's CA).
    type: path
notes:
  - The model size sets the tensor parallel size so that the weights take at most three quarters of the
    memory vLLM may use on the GPUs of one host; the rest is KV cache. Review the result before deploying.
  - An endpoint that scales to zero becomes one serving host (no cold starts) plus warm standby hosts up to
    its maximum replicas; the playbook C(selfhost.textgen.scale) moves them in.
seealso:
  - module: selfhost.textgen.generation_compare
"""

EXAMPLES = r"""
- name: Read a saved endpoint description
  selfhost.textgen.hf_endpoint_info:
    path: inventories/example/hf_endpoint.json
    gpu_memory_gib: 96
  register: hf

- name: Read it from the API
  selfhost.textgen.hf_endpoint_info:
    namespace: acme
    name: support-bot-llama
    token: "{{ textgen_hf_api_token }}"
  register: hf

- name: Show the variables for the new fleet
  ansible.builtin.debug:
    var: hf.inventory_vars
"""

RETURN = r"""
endpoint:
  description: The endpoint's facts, normalised. Values of secret-looking env names are masked.
  returned: success
  type: dict
  sample:
    name: support-bot-llama
    state: running
    url: https://abc123.us-east-1.aws.endpoints.huggingface.cloud
    repository: meta-llama/Llama-3.1-8B-Instruct
    revision: 0e9e39f249a16976918f6564b8830bc894c89659
    task: text-generation
    accelerator: gpu
    instance_type: nvidia-a10g
    instance_size: x1
    gpu_count: 1
    gpu_memory_gib: 24
    min_replica: 1
    max_replica: 3
    image: tgi
    max_input_tokens: 7168
    max_total_tokens: 8192
plan:
  description: The sizing of the new fleet and the notes explaining it.
  returned: success
  type: dict
  sample:
    parameters: 8030261248
    weights_gib: 15.0
    tensor_parallel_size: 1
    gpus_per_host: 1
    serving_hosts: 1
    standby_hosts: 2
    notes: []
inventory_vars:
  description: Variables for the new fleet's gpu_servers group (vllm and hf_proxy roles, scale/rollout knobs).
  returned: success
  type: dict
  sample:
    vllm_model: meta-llama/Llama-3.1-8B-Instruct
    vllm_model_revision: 0e9e39f249a16976918f6564b8830bc894c89659
    vllm_served_model_name: meta-llama/Llama-3.1-8B-Instruct
    vllm_max_model_len: 8192
    vllm_tensor_parallel_size: 1
old_capacity:
  description: GPUs and GPU memory the endpoint used per replica and at most.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhost.textgen.plugins.module_utils._hf_endpoint import (
    API_URL,
    HUB_URL,
    EndpointError,
    describe,
    fetch_endpoint,
    fetch_model_parameters,
    inventory_vars,
    load_endpoint_json,
    old_capacity,
    parameters_from_name,
    plan_fleet,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            name=dict(type="str"),
            namespace=dict(type="str"),
            token=dict(type="str", no_log=True),
            api_url=dict(type="str", default=API_URL),
            hub_url=dict(type="str", default=HUB_URL),
            model_parameters=dict(type="int"),
            fetch_model_info=dict(type="bool", default=True),
            gpu_memory_gib=dict(type="float", default=80),
            gpu_memory_utilization=dict(type="float", default=0.9),
            max_gpus_per_host=dict(type="int", default=8),
            timeout_s=dict(type="float", default=30),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
        ),
        mutually_exclusive=[("path", "name")],
        required_one_of=[("path", "name")],
        required_by={"name": ("namespace", "token")},
        supports_check_mode=True,
    )
    p = module.params
    http = dict(timeout_s=p["timeout_s"], validate_certs=p["validate_certs"], ca_path=p["ca_path"])
    warnings = []
    try:
        if p["path"]:
            try:
                with open(p["path"], encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                module.fail_json(msg="cannot read path {}: {}".format(p["path"], exc.strerror))
            raw = load_endpoint_json(text, source=p["path"])
        else:
            raw = fetch_endpoint(p["namespace"], p["name"], p["token"], api_url=p["api_url"], **http)
        desc = describe(raw)
        params = p["model_parameters"]
        source = "option model_parameters" if params else None
        if not params and p["fetch_model_info"]:
            try:
                params = fetch_model_parameters(
                    desc["repository"], desc["revision"], p["token"], hub_url=p["hub_url"], **http
                )
                source = "Hub safetensors metadata" if params else None
            except EndpointError as exc:
                warnings.append(f"model size not read from the Hub ({exc}); using the model name")
        if not params:
            params = parameters_from_name(desc["repository"])
            source = "model name" if params else None
        plan = plan_fleet(
            desc,
            params,
            gpu_memory_gib=p["gpu_memory_gib"],
            gpu_memory_utilization=p["gpu_memory_utilization"],
            max_gpus_per_host=p["max_gpus_per_host"],
        )
        plan["parameters_source"] = source
    except EndpointError as exc:
        module.fail_json(msg=str(exc))
    for note in plan["notes"]:
        warnings.append(note)
    for w in warnings:
        module.warn(w)
    module.exit_json(
        changed=False,
        endpoint=desc,
        plan=plan,
        inventory_vars=inventory_vars(desc, plan),
        old_capacity=old_capacity(desc),
    )


if __name__ == "__main__":
    main()
