"""Unit tests for plugins/module_utils/_hf_endpoint.py and the hf_endpoint_info module.

The HTTP tests talk to a small server on 127.0.0.1 (no outside network): they check the URL, the
Authorization header and the error messages of the real urllib code path.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventories" / "example" / "hf_endpoint.json"

_spec = importlib.util.spec_from_file_location(
    "_hf_endpoint", ROOT / "plugins" / "module_utils" / "_hf_endpoint.py"
)
hf = importlib.util.module_from_spec(_spec)
sys.modules["_hf_endpoint"] = hf
_spec.loader.exec_module(hf)

# The shape huggingface_hub's own tests use for a running endpoint (huggingface_hub/tests).
HUB_RUNNING = {
    "name": "my-endpoint-name",
    "type": "protected",
    "accountId": None,
    "provider": {"vendor": "aws", "region": "us-east-1"},
    "compute": {
        "accelerator": "gpu",
        "instanceType": "nvidia-a100",
        "instanceSize": "x4",
        "scaling": {"minReplica": 0, "maxReplica": 2},
    },
    "model": {
        "repository": "meta-llama/Llama-3.1-70B-Instruct",
        "revision": "1605565b47bb9346c5515c34102e054115b4f98b",
        "task": "text-generation",
        "framework": "pytorch",
        "image": {"huggingface": {}},
    },
    "status": {
        "createdAt": "2023-10-26T12:41:53.263Z",
        "updatedAt": "2023-10-26T12:41:53.263Z",
        "state": "running",
        "message": "Endpoint is ready",
        "url": "https://vksrvs8pc1xnifhq.us-east-1.aws.endpoints.huggingface.cloud",
        "readyReplica": 1,
        "targetReplica": 1,
    },
}


def example() -> dict:
    return json.loads(EXAMPLE.read_text())


# --------------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------------


def test_example_file_describes():
    d = hf.describe(example())
    assert d["repository"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert d["revision"] == "0e9e39f249a16976918f6564b8830bc894c89659"
    assert d["task"] == "text-generation"
    assert (d["accelerator"], d["instance_type"], d["instance_size"]) == ("gpu", "nvidia-a10g", "x1")
    assert d["gpu_count"] == 1 and d["gpu_memory_gib"] == 24
    assert (d["min_replica"], d["max_replica"]) == (1, 3)
    assert d["max_input_tokens"] == 7168 and d["max_total_tokens"] == 8192
    assert d["max_concurrent_requests"] == 128
    assert d["dtype"] == "bfloat16"
    assert d["image"] == "custom"
    assert d["image_url"].startswith("ghcr.io/huggingface/text-generation-inference")
    assert d["state"] == "running"
    assert d["url"].endswith(".endpoints.huggingface.cloud")
    assert d["secret_names"] == ["HF_TOKEN"]


def test_huggingface_hub_shape_with_default_image():
    d = hf.describe(HUB_RUNNING)
    assert d["image"] == "huggingface"
    assert d["gpu_count"] == 4 and d["gpu_memory_gib"] == 80
    assert d["max_total_tokens"] is None
    assert d["min_replica"] == 0


def test_tgi_image_camelcase_fields_become_env_names():
    raw = copy.deepcopy(HUB_RUNNING)
    raw["model"]["image"] = {
        "tgi": {
            "url": "ghcr.io/huggingface/text-generation-inference:3.2.0",
            "healthRoute": "/health",
            "port": 80,
            "maxInputLength": 3072,
            "maxTotalTokens": 4096,
            "maxBatchPrefillTokens": 4096,
            "quantize": "awq",
        }
    }
    d = hf.describe(raw)
    assert d["image"] == "tgi"
    assert d["max_input_tokens"] == 3072 and d["max_total_tokens"] == 4096
    assert d["quantize"] == "awq"
    assert d["env"]["MAX_BATCH_PREFILL_TOKENS"] == 4096


def test_deprecated_max_input_length_is_read_and_current_name_wins():
    raw = example()
    env = raw["model"]["image"]["custom"]["env"]
    del env["MAX_INPUT_TOKENS"]
    env["MAX_INPUT_LENGTH"] = "1000"
    assert hf.describe(raw)["max_input_tokens"] == 1000
    env["MAX_INPUT_TOKENS"] = "2000"
    assert hf.describe(raw)["max_input_tokens"] == 2000


def test_model_env_is_read_too():
    raw = copy.deepcopy(HUB_RUNNING)
    raw["model"]["env"] = {"MAX_TOTAL_TOKENS": "16384"}
    assert hf.describe(raw)["max_total_tokens"] == 16384


def test_secret_looking_env_values_are_masked():
    raw = example()
    raw["model"]["image"]["custom"]["env"]["HUGGING_FACE_HUB_TOKEN"] = "hf_supersecret"
    raw["model"]["image"]["custom"]["env"]["OPENAI_API_KEY"] = "sk-abc"
    d = hf.describe(raw)
    assert "hf_supersecret" not in json.dumps(d)
    assert "sk-abc" not in json.dumps(d)
    assert d["env"]["HUGGING_FACE_HUB_TOKEN"] == "********"
    assert d["env"]["MAX_TOTAL_TOKENS"] == 8192


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["model"].pop("repository"), "model.repository"),
        (lambda r: r["compute"].update(instanceSize="large"), "compute.instanceSize"),
        (lambda r: r["compute"]["scaling"].update(minReplica=4), "minReplica 4 / maxReplica 3"),
        (lambda r: r["model"]["image"]["custom"]["env"].update(MAX_TOTAL_TOKENS="lots"), "MAX_TOTAL_TOKENS"),
    ],
)
def test_bad_descriptions_name_the_field(mutate, message):
    raw = example()
    mutate(raw)
    with pytest.raises(hf.EndpointError, match=message):
        hf.describe(raw)


def test_load_endpoint_json_accepts_raw_and_wrapped_and_rejects_garbage():
    text = EXAMPLE.read_text()
    assert hf.load_endpoint_json(text)["name"] == "support-bot-llama-8b"
    wrapped = json.dumps({"raw": json.loads(text), "namespace": "acme"})
    assert hf.load_endpoint_json(wrapped)["name"] == "support-bot-llama-8b"
    with pytest.raises(hf.EndpointError, match="not valid JSON"):
        hf.load_endpoint_json("{nope", source="x.json")
    with pytest.raises(hf.EndpointError, match="JSON object"):
        hf.load_endpoint_json("[1, 2]", source="x.json")


# --------------------------------------------------------------------------------------------------
# sizing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("meta-llama/Llama-3.1-70B-Instruct", 70e9),
        ("Qwen/Qwen2.5-1.5B-Instruct", 1.5e9),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", 56e9),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 135e6),
        ("google/gemma-2-9b-it", 9e9),
        ("openai-community/gpt2", None),
    ],
)
def test_parameters_from_name(name, params):
    got = hf.parameters_from_name(name)
    assert got == (int(params) if params else None)


@pytest.mark.parametrize(
    ("params", "gpu_gib", "quantize", "tp"),
    [
        (8_030_261_248, 80, None, 1),  # 15 GiB of bf16 weights on an H100
        (8_030_261_248, 24, None, 1),  # 15 GiB fits 24 * 0.9 * 0.75 = 16.2 GiB
        (14_000_000_000, 24, None, 2),  # 26 GiB: two A10G-class GPUs
        (70_553_706_496, 80, None, 4),  # 131 GiB: 2 x 54 GiB is not enough
        (70_553_706_496, 96, None, 4),  # 2 x 64.8 GiB = 129.6 GiB, still short by a little
        (70_553_706_496, 80, "awq", 1),  # 33 GiB of int4 weights
        (70_553_706_496, 80, "fp8", 2),  # 66 GiB of fp8 weights
        (405_000_000_000, 80, None, None),  # 754 GiB: more than 8 GPUs
    ],
)
def test_tensor_parallel_sizing(params, gpu_gib, quantize, tp):
    desc = hf.describe(example())
    desc["quantize"] = quantize
    if tp is None:
        with pytest.raises(hf.EndpointError, match="more than 8 GPUs"):
            hf.plan_fleet(desc, params, gpu_memory_gib=gpu_gib)
        return
    plan = hf.plan_fleet(desc, params, gpu_memory_gib=gpu_gib)
    assert plan["tensor_parallel_size"] == tp
    assert plan["gpus_per_host"] == tp
    budget = tp * gpu_gib * 0.9 * hf.WEIGHT_SHARE
    assert plan["weights_gib"] <= budget
    if tp > 1:  # the next smaller size would not hold the weights
        assert plan["weights_gib"] > (tp // 2) * gpu_gib * 0.9 * hf.WEIGHT_SHARE


def test_max_gpus_per_host_limits_the_plan():
    desc = hf.describe(HUB_RUNNING)
    with pytest.raises(hf.EndpointError, match="more than 2 GPUs"):
        hf.plan_fleet(desc, 70_000_000_000, gpu_memory_gib=80, max_gpus_per_host=2)


def test_plan_hosts_from_replicas_and_notes():
    plan = hf.plan_fleet(hf.describe(example()), 8_030_261_248, gpu_memory_gib=80)
    assert (plan["serving_hosts"], plan["standby_hosts"]) == (1, 2)
    assert plan["max_model_len"] == 8192 and plan["max_input_tokens"] == 7168
    assert plan["dtype"] == "bfloat16"
    scale_to_zero = hf.plan_fleet(hf.describe(HUB_RUNNING), 70_000_000_000, gpu_memory_gib=80)
    assert (scale_to_zero["serving_hosts"], scale_to_zero["standby_hosts"]) == (1, 1)
    assert any("scales to zero" in n for n in scale_to_zero["notes"])
    assert any("MAX_TOTAL_TOKENS" in n for n in scale_to_zero["notes"])


def test_unknown_size_keeps_tp_1_with_a_note():
    plan = hf.plan_fleet(hf.describe(example()), None, gpu_memory_gib=80)
    assert plan["tensor_parallel_size"] == 1
    assert any("model size unknown" in n for n in plan["notes"])


def test_quantize_mapping_and_unsupported_quantization():
    desc = hf.describe(example())
    desc["quantize"] = "marlin"
    assert hf.plan_fleet(desc, 8e9, gpu_memory_gib=80)["quantization"] == "gptq_marlin"
    desc["quantize"] = "eetq"
    plan = hf.plan_fleet(desc, 8e9, gpu_memory_gib=80)
    assert plan["quantization"] is None
    assert any("eetq" in n for n in plan["notes"])


def test_non_text_generation_task_is_refused():
    raw = example()
    raw["model"]["task"] = "sentence-embeddings"
    with pytest.raises(hf.EndpointError, match="sentence-embeddings"):
        hf.plan_fleet(hf.describe(raw), 8e9, gpu_memory_gib=80)


def test_input_limit_must_be_below_total():
    raw = example()
    raw["model"]["image"]["custom"]["env"]["MAX_INPUT_TOKENS"] = "8192"
    with pytest.raises(hf.EndpointError, match="MAX_INPUT_TOKENS"):
        hf.plan_fleet(hf.describe(raw), 8e9, gpu_memory_gib=80)


@pytest.mark.parametrize("util", [0, 1.5, -0.1])
def test_bad_utilization_is_refused(util):
    with pytest.raises(hf.EndpointError, match="gpu_memory_utilization"):
        hf.plan_fleet(hf.describe(example()), 8e9, gpu_memory_gib=80, gpu_memory_utilization=util)


def test_inventory_vars_use_role_variable_names():
    desc = hf.describe(example())
    plan = hf.plan_fleet(desc, 8_030_261_248, gpu_memory_gib=80)
    iv = hf.inventory_vars(desc, plan)
    assert iv["vllm_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert iv["vllm_model_revision"] == "0e9e39f249a16976918f6564b8830bc894c89659"
    assert iv["vllm_max_model_len"] == 8192
    assert iv["vllm_tensor_parallel_size"] == 1
    assert iv["vllm_dtype"] == "bfloat16"
    assert iv["vllm_quantization"] == ""
    assert iv["hf_proxy_model_id"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert iv["hf_proxy_max_concurrent_requests"] == 128
    assert iv["hf_proxy_settings"] == {"max_input_tokens": 7168, "max_total_tokens": 8192}
    for name in iv:
        role = name.split("_")[0] if name.startswith("vllm_") else "hf_proxy"
        defaults = (ROOT / "roles" / role / "defaults" / "main.yml").read_text()
        assert f"\n{name}:" in defaults, f"{name} is not a variable of the {role} role"


def test_inventory_vars_without_tgi_limits():
    desc = hf.describe(HUB_RUNNING)
    iv = hf.inventory_vars(desc, hf.plan_fleet(desc, 70_000_000_000, gpu_memory_gib=80))
    assert iv["vllm_max_model_len"] == 0
    assert iv["vllm_tensor_parallel_size"] == 4
    assert "hf_proxy_settings" not in iv and "hf_proxy_max_concurrent_requests" not in iv


def test_old_capacity():
    cap = hf.old_capacity(hf.describe(HUB_RUNNING))
    assert cap == {"gpus_per_replica": 4, "gpu_memory_gib_per_replica": 320, "max_gpus": 8}


# --------------------------------------------------------------------------------------------------
# HTTP: a local stand-in for the Inference Endpoints API and the Hub
# --------------------------------------------------------------------------------------------------

TOKEN = "hf_testtoken_123"


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        _Handler.seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/v2/endpoint/acme/support-bot-llama-8b":
            return self._send(200, example())
        if self.path.startswith("/api/models/meta-llama/Llama-3.1-8B-Instruct/revision/0e9e39f"):
            return self._send(200, {"safetensors": {"parameters": {"BF16": 8030261248}, "total": 8030261248}})
        if self.path == "/v2/endpoint/acme/broken":
            data = b"<html>oops</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        return self._send(404, {"error": "Endpoint not found"})


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_fetch_endpoint_sends_the_token_and_reads_the_description(server):
    _Handler.seen.clear()
    raw = hf.fetch_endpoint("acme", "support-bot-llama-8b", TOKEN, api_url=server + "/v2")
    assert raw["name"] == "support-bot-llama-8b"
    assert _Handler.seen == [("/v2/endpoint/acme/support-bot-llama-8b", f"Bearer {TOKEN}")]


def test_fetch_errors_are_clear_and_never_show_the_token(server):
    with pytest.raises(hf.EndpointError, match=r"HTTP 401.*token is missing or invalid") as e401:
        hf.fetch_endpoint("acme", "support-bot-llama-8b", "hf_wrong", api_url=server + "/v2")
    assert "hf_wrong" not in str(e401.value)
    with pytest.raises(hf.EndpointError, match=r"HTTP 404.*no such endpoint") as e404:
        hf.fetch_endpoint("acme", "nope", TOKEN, api_url=server + "/v2")
    assert TOKEN not in str(e404.value)
    with pytest.raises(hf.EndpointError, match="did not return JSON"):
        hf.fetch_endpoint("acme", "broken", TOKEN, api_url=server + "/v2")
    with pytest.raises(hf.EndpointError, match="cannot reach"):
        hf.fetch_endpoint("acme", "x", TOKEN, api_url="http://127.0.0.1:9/v2", timeout_s=2)


def test_fetch_model_parameters_from_safetensors_metadata(server):
    n = hf.fetch_model_parameters(
        "meta-llama/Llama-3.1-8B-Instruct", "0e9e39f249a16976918f6564b8830bc894c89659", TOKEN, hub_url=server
    )
    assert n == 8030261248
    path = _Handler.seen[-1][0]
    assert path == (
        "/api/models/meta-llama/Llama-3.1-8B-Instruct/revision/0e9e39f249a16976918f6564b8830bc894c89659"
        "?expand[]=safetensors"
    )


# --------------------------------------------------------------------------------------------------
# the module, run the way Ansible runs it
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def run_module(tmp_path, monkeypatch):
    """Run plugins/modules/hf_endpoint_info.py with given arguments; return (rc, result)."""
    tree = tmp_path / "collections" / "ansible_collections" / "selfhost"
    tree.mkdir(parents=True)
    (tree / "textgen").symlink_to(ROOT)
    pytest.importorskip("ansible")
    import subprocess

    def run(args: dict):
        env = {"PYTHONPATH": str(tmp_path / "collections"), "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(
            [sys.executable, "-m", "ansible_collections.selfhost.textgen.plugins.modules.hf_endpoint_info"],
            input=json.dumps({"ANSIBLE_MODULE_ARGS": args}),
            capture_output=True,
            check=False,
            text=True,
            env=env,
            timeout=60,
        )
        out = proc.stdout.strip().splitlines()
        return proc.returncode, json.loads(out[-1]) if out else {"stderr": proc.stderr}

    return run


def test_module_with_saved_file(run_module):
    rc, res = run_module({"path": str(EXAMPLE), "fetch_model_info": False, "gpu_memory_gib": 96})
    assert rc == 0, res
    assert res["changed"] is False
    assert res["plan"]["parameters"] == 8_000_000_000
    assert res["plan"]["parameters_source"] == "model name"
    assert res["inventory_vars"]["vllm_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert res["inventory_vars"]["vllm_tensor_parallel_size"] == 1


def test_module_from_api_hides_the_token(run_module, server):
    rc, res = run_module(
        {
            "namespace": "acme",
            "name": "support-bot-llama-8b",
            "token": TOKEN,
            "api_url": server + "/v2",
            "hub_url": server,
        }
    )
    assert rc == 0, res
    assert res["plan"]["parameters"] == 8030261248
    assert res["plan"]["parameters_source"] == "Hub safetensors metadata"
    assert TOKEN not in json.dumps(res)


def test_module_errors(run_module, tmp_path):
    rc, res = run_module({"path": str(tmp_path / "missing.json")})
    assert rc == 1 and "cannot read path" in res["msg"]
    rc, res = run_module({"name": "x"})
    assert rc == 1 and "namespace" in res["msg"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"repository": "a/b", "task": "text-to-image"}, "compute": {}}')
    rc, res = run_module({"path": str(bad), "fetch_model_info": False})
    assert rc == 1 and "text-to-image" in res["msg"]
