# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a Hugging Face Inference Endpoint description and size a self-hosted vLLM fleet for it.

Python standard library and Ansible's own module_utils only: this runs wherever the module runs
(usually the controller).

The description is the JSON the Inference Endpoints API returns for
``GET https://api.endpoints.huggingface.cloud/v2/endpoint/{namespace}/{name}``; it is what
``huggingface_hub.get_inference_endpoint(name, namespace=...).raw`` holds. The keys used here:

    name, type, provider.{vendor,region},
    compute.{accelerator, instanceType, instanceSize, scaling.{minReplica, maxReplica, scaleToZeroTimeout}},
    model.{repository, revision, task, framework, env,
           image.{huggingface | tgi | custom | tgiNeuron | tei | llamacpp | vllm}},
    status.{state, url, readyReplica, targetReplica}

Container settings arrive either as TGI environment variables (``image.custom.env``, ``model.env``)
or as camelCase fields of ``image.tgi`` (``maxInputLength``, ``maxTotalTokens``, ...); both are
normalised to TGI's environment names (``MAX_INPUT_TOKENS``, ``MAX_TOTAL_TOKENS``, ...).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse

from ansible.module_utils.urls import open_url

API_URL = "https://api.endpoints.huggingface.cloud/v2"
HUB_URL = "https://huggingface.co"

# Memory per GPU (GiB) of the instance types Inference Endpoints offers for text generation.
# Sources: the Inference Endpoints pricing page (GPU column). A100 on AWS/GCP endpoints is the 80 GB part.
GPU_MEMORY_GIB = {
    "nvidia-t4": 16,
    "nvidia-a10g": 24,
    "nvidia-l4": 24,
    "nvidia-l40s": 48,
    "nvidia-a100": 80,
    "nvidia-h100": 80,
    "nvidia-h200": 141,
}

TEXT_GENERATION_TASKS = ("text-generation", "text2text-generation", "conversational")

# TGI's QUANTIZE values -> vLLM's --quantization (None: vLLM reads it from the checkpoint config).
QUANTIZATION_MAP = {
    "awq": "awq",
    "gptq": "gptq",
    "marlin": "gptq_marlin",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "bitsandbytes-nf4": "bitsandbytes",
    "bitsandbytes-fp4": "bitsandbytes",
    "compressed-tensors": "compressed-tensors",
    "exl2": None,
    "eetq": None,
}
# Bytes per weight for sizing, by vLLM quantization (None = unquantized, from the dtype).
BYTES_PER_PARAM = {
    "awq": 0.5,
    "gptq": 0.5,
    "gptq_marlin": 0.5,
    "bitsandbytes": 0.5,
    "fp8": 1.0,
    "compressed-tensors": 1.0,
}
DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "auto": 2.0}

# image.tgi camelCase fields -> TGI environment variable names.
TGI_FIELD_ENV = {
    "maxInputLength": "MAX_INPUT_TOKENS",
    "maxInputTokens": "MAX_INPUT_TOKENS",
    "maxTotalTokens": "MAX_TOTAL_TOKENS",
    "maxBatchPrefillTokens": "MAX_BATCH_PREFILL_TOKENS",
    "maxBatchTotalTokens": "MAX_BATCH_TOTAL_TOKENS",
    "quantize": "QUANTIZE",
    "dtype": "DTYPE",
    "numShard": "NUM_SHARD",
    "maxConcurrentRequests": "MAX_CONCURRENT_REQUESTS",
}
# Deprecated TGI variable names -> current names.
ENV_ALIASES = {"MAX_INPUT_LENGTH": "MAX_INPUT_TOKENS"}
INT_ENV = (
    "MAX_INPUT_TOKENS",
    "MAX_TOTAL_TOKENS",
    "MAX_BATCH_PREFILL_TOKENS",
    "MAX_BATCH_TOTAL_TOKENS",
    "NUM_SHARD",
    "MAX_CONCURRENT_REQUESTS",
)
# HF_TOKEN, OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD ... but not MAX_TOTAL_TOKENS.
SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIALS?|PRIVATE)(?:$|_)", re.IGNORECASE
)
IMAGE_KINDS = ("huggingface", "tgi", "custom", "tgiNeuron", "tei", "llamacpp", "vllm", "huggingfaceNeuron")

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# Share of the memory vLLM may use that weights may take; the rest is KV cache and activations.
WEIGHT_SHARE = 0.75
GIB = 1024**3


class EndpointError(Exception):
    """A description that cannot be read or used; the message names what is wrong."""


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def _get_json(
    url: str,
    token: str | None,
    timeout_s: float,
    validate_certs: bool = True,
    ca_path: str | None = None,
    what: str = "",
) -> object:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    what = what or "request"
    try:
        resp = open_url(
            url,
            headers=headers,
            timeout=timeout_s,
            validate_certs=validate_certs,
            ca_path=ca_path,
            http_agent="selfhost.textgen",
        )
        body = resp.read()
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            detail = exc.read(500).decode("utf-8", "replace").strip()
        except Exception:
            detail = ""
        hint = {
            401: "the token is missing or invalid (option token / variable textgen_hf_api_token)",
            403: "the token may not read this namespace (it needs read access to Inference Endpoints)",
            404: "no such endpoint or model (check the namespace and name)",
        }.get(exc.code, "")
        msg = f"{what}: HTTP {exc.code} from {url}"
        if hint:
            msg += ": " + hint
        if detail:
            msg += f" (server said: {detail})"
        raise EndpointError(msg) from None
    except Exception as exc:  # URLError, SSL validation, timeouts, refused connections
        reason = getattr(exc, "reason", None) or exc
        raise EndpointError(f"{what}: cannot reach {url}: {reason}") from None
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        raise EndpointError(f"{what}: {url} did not return JSON") from None


def fetch_endpoint(
    namespace: str,
    name: str,
    token: str,
    api_url: str = API_URL,
    timeout_s: float = 30.0,
    validate_certs: bool = True,
    ca_path: str | None = None,
) -> dict:
    """The raw description of one endpoint, as huggingface_hub.get_inference_endpoint reads it."""
    if not namespace or not name:
        raise EndpointError("both namespace and name are needed to read an endpoint from the API")
    url = "{}/endpoint/{}/{}".format(
        api_url.rstrip("/"),
        urllib.parse.quote(namespace, safe=""),
        urllib.parse.quote(name, safe=""),
    )
    raw = _get_json(url, token, timeout_s, validate_certs, ca_path, f"reading endpoint {namespace}/{name}")
    if not isinstance(raw, dict):
        raise EndpointError(f"endpoint {namespace}/{name}: the API returned {type(raw)}, not an object")
    return raw


def fetch_model_parameters(
    repository: str,
    revision: str | None,
    token: str | None,
    hub_url: str = HUB_URL,
    timeout_s: float = 30.0,
    validate_certs: bool = True,
    ca_path: str | None = None,
) -> int | None:
    """The parameter count the Hub computed from the model's safetensors headers, or None."""
    path = "/api/models/{}".format(urllib.parse.quote(repository, safe="/"))
    if revision:
        path += "/revision/{}".format(urllib.parse.quote(revision, safe=""))
    url = hub_url.rstrip("/") + path + "?expand[]=safetensors"
    info = _get_json(url, token, timeout_s, validate_certs, ca_path, f"reading model {repository}")
    if not isinstance(info, dict):
        return None
    st = info.get("safetensors")
    if isinstance(st, dict):
        total = st.get("total")
        if isinstance(total, int) and total > 0:
            return total
        params = st.get("parameters")
        if isinstance(params, dict):
            s = sum(v for v in params.values() if isinstance(v, int))
            return s or None
    return None


def load_endpoint_json(text: str, source: str = "file") -> dict:
    """Parse a saved description: the raw dict, or an object that wraps it under "raw"."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EndpointError(f"{source} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("raw"), dict) and "model" not in data:
        data = data["raw"]
    if not isinstance(data, dict):
        raise EndpointError(f"{source} must hold a JSON object (the endpoint description)")
    return data


# ---------------------------------------------------------------------------------------------------
# Normalising
# ---------------------------------------------------------------------------------------------------


def _need(raw: dict, dotted: str) -> object:
    cur: object = raw
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise EndpointError(f"endpoint description has no {dotted}")
        cur = cur[part]
    return cur


def _opt(raw: dict, dotted: str, default: object = None) -> object:
    try:
        v = _need(raw, dotted)
    except EndpointError:
        return default
    return default if v is None else v


def _as_int(value: object, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise EndpointError(f"{field} must be an integer, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise EndpointError(f"{field} must be an integer, got {value!r}") from None


def instance_gpu_count(instance_size: str) -> int:
    """``x1`` -> 1, ``x4`` -> 4 (the GPU count for GPU instances)."""
    m = re.fullmatch(r"x(\d+)", (instance_size or "").strip().lower())
    if not m or int(m.group(1)) < 1:
        raise EndpointError(f"compute.instanceSize {instance_size!r} is not of the form x1, x2, x4, x8")
    return int(m.group(1))


def container_env(raw: dict) -> dict:
    """The container settings of the endpoint, as TGI environment variables (names normalised)."""
    env: dict = {}
    model_env = _opt(raw, "model.env", {})
    if isinstance(model_env, dict):
        env.update(model_env)
    image = _opt(raw, "model.image", {})
    if isinstance(image, dict):
        for kind, spec in image.items():
            if not isinstance(spec, dict):
                continue
            if isinstance(spec.get("env"), dict):
                env.update(spec["env"])
            if kind in ("tgi", "tgiNeuron"):
                for field, name in TGI_FIELD_ENV.items():
                    if spec.get(field) is not None:
                        env[name] = spec[field]
    out: dict = {}
    for key, value in env.items():
        name = ENV_ALIASES.get(str(key).upper(), str(key).upper())
        if name in out and str(key).upper() in ENV_ALIASES:
            continue  # the current name wins over its deprecated alias
        out[name] = value
    for name in INT_ENV:
        if name in out:
            out[name] = _as_int(out[name], "container env " + name)
    return out


def redact_env(env: dict) -> dict:
    """The env with values of secret-looking names replaced (safe to log and to write in reports)."""
    return {k: ("********" if SECRET_NAME.search(k) else v) for k, v in env.items()}


def image_of(raw: dict) -> tuple:
    image = _opt(raw, "model.image", {})
    if not isinstance(image, dict) or not image:
        return ("huggingface", None)
    for kind in IMAGE_KINDS:
        if kind in image:
            spec = image[kind] if isinstance(image[kind], dict) else {}
            return (kind, spec.get("url"))
    kind = sorted(image)[0]
    spec = image[kind] if isinstance(image[kind], dict) else {}
    return (kind, spec.get("url"))


def describe(raw: dict) -> dict:
    """The facts of an endpoint description that matter for the move, validated and normalised."""
    if not isinstance(raw, dict):
        raise EndpointError("the endpoint description must be a JSON object")
    repository = _need(raw, "model.repository")
    if not isinstance(repository, str) or not repository:
        raise EndpointError("model.repository must be a non-empty string")
    accelerator = str(_opt(raw, "compute.accelerator", "")).lower()
    instance_type = str(_opt(raw, "compute.instanceType", "")).lower()
    instance_size = str(_opt(raw, "compute.instanceSize", "x1"))
    gpus = instance_gpu_count(instance_size) if accelerator == "gpu" else 0
    min_replica = _as_int(_opt(raw, "compute.scaling.minReplica", 0), "compute.scaling.minReplica") or 0
    max_replica = _as_int(_opt(raw, "compute.scaling.maxReplica", 1), "compute.scaling.maxReplica") or 1
    if min_replica < 0 or max_replica < 1 or min_replica > max_replica:
        raise EndpointError(
            f"compute.scaling: minReplica {min_replica} / maxReplica {max_replica} is not a valid range"
        )
    env = container_env(raw)
    kind, image_url = image_of(raw)
    revision = _opt(raw, "model.revision")
    return {
        "name": _opt(raw, "name"),
        "type": _opt(raw, "type"),
        "state": _opt(raw, "status.state"),
        "url": _opt(raw, "status.url"),
        "vendor": _opt(raw, "provider.vendor"),
        "region": _opt(raw, "provider.region"),
        "accelerator": accelerator or None,
        "instance_type": instance_type or None,
        "instance_size": instance_size,
        "gpu_count": gpus,
        "gpu_memory_gib": GPU_MEMORY_GIB.get(instance_type) if gpus else None,
        "min_replica": min_replica,
        "max_replica": max_replica,
        "scale_to_zero_timeout_min": _as_int(
            _opt(raw, "compute.scaling.scaleToZeroTimeout"), "compute.scaling.scaleToZeroTimeout"
        ),
        "repository": repository,
        "revision": str(revision) if revision else None,
        "task": _opt(raw, "model.task"),
        "framework": _opt(raw, "model.framework"),
        "image": kind,
        "image_url": image_url,
        "env": redact_env(env),
        "max_input_tokens": env.get("MAX_INPUT_TOKENS"),
        "max_total_tokens": env.get("MAX_TOTAL_TOKENS"),
        "max_batch_prefill_tokens": env.get("MAX_BATCH_PREFILL_TOKENS"),
        "max_concurrent_requests": env.get("MAX_CONCURRENT_REQUESTS"),
        "quantize": (str(env["QUANTIZE"]).lower() if env.get("QUANTIZE") else None),
        "dtype": (str(env["DTYPE"]).lower() if env.get("DTYPE") else None),
        "num_shard": env.get("NUM_SHARD"),
        "secret_names": sorted(_opt(raw, "model.secrets", {}) or {}),
    }


# ---------------------------------------------------------------------------------------------------
# Sizing
# ---------------------------------------------------------------------------------------------------


def parameters_from_name(repository: str) -> int | None:
    """A parameter count read from a model name (``Llama-3.1-70B`` -> 70e9, ``8x7B`` -> 56e9), or None.

    A fallback only: the Hub's safetensors metadata, or an explicit value, is preferred.
    """
    base = repository.rsplit("/", 1)[-1]
    moe = re.search(r"(?:^|[-_.])(\d+)x(\d+(?:\.\d+)?)([bm])(?=$|[-_.])", base, re.IGNORECASE)
    if moe:
        scale = 1e9 if moe.group(3).lower() == "b" else 1e6
        return int(int(moe.group(1)) * float(moe.group(2)) * scale)
    dense = re.findall(r"(?:^|[-_.])(\d+(?:\.\d+)?)([bm])(?=$|[-_.])", base, re.IGNORECASE)
    if dense:
        num, unit = dense[-1]
        return int(float(num) * (1e9 if unit.lower() == "b" else 1e6))
    return None


def plan_fleet(
    desc: dict,
    parameters: int | None,
    gpu_memory_gib: float,
    gpu_memory_utilization: float = 0.9,
    max_gpus_per_host: int = 8,
) -> dict:
    """Size the new fleet: tensor parallel size, GPUs and hosts, and the vLLM limits.

    Weights must fit in WEIGHT_SHARE of the memory vLLM may use on the GPUs of one tensor-parallel
    group, so that at least a quarter stays for the KV cache. Tensor parallel sizes are powers of two
    (attention head counts divide by them). Hosts: the endpoint's minimum replicas serve (at least one),
    the rest up to its maximum are warm standby hosts (scale.yml moves them in within seconds).
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise EndpointError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if gpu_memory_gib <= 0:
        raise EndpointError(f"target GPU memory must be positive, got {gpu_memory_gib} GiB")
    notes: list = []
    quantization = None
    if desc.get("quantize"):
        q = desc["quantize"]
        if q not in QUANTIZATION_MAP:
            notes.append(f"unknown TGI QUANTIZE={q}: left to vLLM (it reads the checkpoint's config)")
        else:
            quantization = QUANTIZATION_MAP[q]
            if quantization is None:
                notes.append(
                    f"TGI QUANTIZE={q} has no vLLM equivalent: serve an AWQ/GPTQ/FP8 checkpoint instead,"
                    " or the unquantized model (sized here as unquantized)"
                )
    dtype = desc.get("dtype")
    if dtype and dtype not in DTYPE_BYTES:
        notes.append(f"unknown TGI DTYPE={dtype}: vLLM's default (auto) is used")
        dtype = None
    bytes_per_param = BYTES_PER_PARAM.get(quantization or "", DTYPE_BYTES.get(dtype or "auto", 2.0))

    tp = None
    weights_gib = None
    if parameters:
        weights_gib = parameters * bytes_per_param / GIB
        budget = gpu_memory_gib * gpu_memory_utilization * WEIGHT_SHARE
        for size in TENSOR_PARALLEL_SIZES:
            if size > max_gpus_per_host:
                break
            if weights_gib <= size * budget:
                tp = size
                break
        if tp is None:
            raise EndpointError(
                f"model {desc['repository']} needs {weights_gib:.0f} GiB for its weights: more than"
                f" {max_gpus_per_host} GPUs of {gpu_memory_gib} GiB hold with room for a KV cache; use a"
                " quantized checkpoint or larger GPUs (multi-host serving is not supported)"
            )
    else:
        notes.append(
            "model size unknown: set model_parameters (or let the module read it from the Hub);"
            " tensor parallel size left at 1"
        )
        tp = 1
    if desc.get("num_shard") and desc["num_shard"] > tp:
        notes.append(
            f"the endpoint sharded the model over {desc['num_shard']} GPUs (NUM_SHARD);"
            f" {tp} GPUs of {gpu_memory_gib} GiB suffice here"
        )

    max_model_len = desc.get("max_total_tokens")
    if not max_model_len:
        notes.append("the endpoint sets no MAX_TOTAL_TOKENS: vLLM uses the model's own context length")
    if desc.get("max_input_tokens") and max_model_len and desc["max_input_tokens"] >= max_model_len:
        raise EndpointError(
            f"container env MAX_INPUT_TOKENS ({desc['max_input_tokens']}) must be below"
            f" MAX_TOTAL_TOKENS ({max_model_len})"
        )
    serving = max(1, desc.get("min_replica") or 0)
    standby = max(0, (desc.get("max_replica") or 1) - serving)
    if (desc.get("min_replica") or 0) == 0:
        notes.append(
            "the endpoint scales to zero; the new fleet keeps one host serving (no cold starts),"
            " and the others warm in standby"
        )
    if desc.get("task") not in TEXT_GENERATION_TASKS:
        raise EndpointError(
            "endpoint task is {!r}: only text generation ({}) moves to vLLM".format(
                desc.get("task"), ", ".join(TEXT_GENERATION_TASKS)
            )
        )
    return {
        "model": desc["repository"],
        "revision": desc.get("revision"),
        "parameters": parameters,
        "bytes_per_param": bytes_per_param,
        "weights_gib": round(weights_gib, 1) if weights_gib is not None else None,
        "tensor_parallel_size": tp,
        "gpus_per_host": tp,
        "gpu_memory_gib": gpu_memory_gib,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "max_input_tokens": desc.get("max_input_tokens"),
        "max_concurrent_requests": desc.get("max_concurrent_requests"),
        "quantization": quantization,
        "dtype": dtype,
        "serving_hosts": serving,
        "standby_hosts": standby,
        "notes": notes,
    }


def old_capacity(desc: dict) -> dict:
    """What the endpoint ran on, for the report: GPUs per replica and memory per replica."""
    mem = desc.get("gpu_memory_gib")
    gpus = desc.get("gpu_count") or 0
    return {
        "gpus_per_replica": gpus,
        "gpu_memory_gib_per_replica": (mem * gpus) if mem and gpus else None,
        "max_gpus": gpus * (desc.get("max_replica") or 1),
    }


def inventory_vars(desc: dict, plan: dict) -> dict:
    """Inventory variables for the new fleet's gpu_servers group (vllm and hf_proxy role variables).

    The TGI limits of the endpoint carry over to the proxy, which enforces them with TGI's messages:
    MAX_INPUT_TOKENS and MAX_TOTAL_TOKENS (proxy settings), MAX_CONCURRENT_REQUESTS; /info reports the
    model repository as model_id, as TGI did.
    """
    out = {
        "vllm_model": plan["model"],
        "vllm_model_revision": plan["revision"] or "",
        "vllm_served_model_name": plan["model"],
        "vllm_max_model_len": plan["max_model_len"] or 0,
        "vllm_tensor_parallel_size": plan["tensor_parallel_size"],
        "vllm_gpu_memory_utilization": plan["gpu_memory_utilization"],
        "vllm_dtype": plan["dtype"] or "auto",
        "vllm_quantization": plan["quantization"] or "",
        "hf_proxy_model_id": plan["model"],
    }
    if plan.get("max_concurrent_requests"):
        out["hf_proxy_max_concurrent_requests"] = plan["max_concurrent_requests"]
    settings = {}
    if plan.get("max_input_tokens"):
        settings["max_input_tokens"] = plan["max_input_tokens"]
    if plan.get("max_model_len"):
        settings["max_total_tokens"] = plan["max_model_len"]
    if settings:
        out["hf_proxy_settings"] = settings
    return out
