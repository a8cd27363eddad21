"""generation_check against the real CPU vLLM, our TGI-format servers, and servers that misbehave.

The TGI api mode runs against the collection's real hf-proxy in front of the real vLLM, and against a
synthetic TGI-format stream (tests/integration/generation_servers.py) where timing or misbehaviour must
be exact. Every module call runs both directly and through `ansible`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation_servers import ServerProcess, _collection_path  # noqa: E402
from proxy_support import start_proxy  # noqa: E402

_collection_path()

from ansible_collections.selfhost.textgen.plugins.module_utils._loadgen import (  # noqa: E402
    LoadConfig,
    generate_prompts,
    run_load,
)

_PORTS = iter(range(19010, 19100))


def port() -> int:
    """Next free port of the range reserved for these tests."""
    for p in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise RuntimeError("no free port in 19010-19099")


def ansible_module(module: str, args: dict, check: bool = False, verbose: bool = False, timeout: float = 600):
    """Run one module through the `ansible` CLI on localhost; return (rc, result, stdout).
    Also used by the fleet scenario's verify (molecule/fleet/tests/test_chain.py)."""
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
    )
    cmd = [
        str(Path(sys.executable).parent / "ansible"),
        "localhost",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        f"selfhost.textgen.{module}",
        "-a",
        json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    if verbose:
        cmd.append("-vvv")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    out = proc.stdout
    # the JSON document alone: under Molecule, its profile_tasks callback prints after it
    data, _end = json.JSONDecoder().raw_decode(out[out.find("{") :])
    result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return proc.returncode, result, out + proc.stderr


def test_vllm_openai_agrees_with_the_servers_own_counters(vllm_url):
    prompts = generate_prompts(24, 24)
    cfg = LoadConfig(
        url=vllm_url, api="openai", prompts=prompts, num_requests=24, concurrency=6, max_new_tokens=32
    )
    r = run_load(cfg)
    m = r["metrics"]
    assert r["failure"] is None, r["errors"]
    assert r["model"] == "tiny"
    assert m["completed"] == 24 and m["failed"] == 0
    assert m["total_output_tokens"] == 24 * 32
    assert r["workload"]["output_length_fixed"] is True
    # the server counted the same tokens (24 measured + 1 warm-up request)
    sm = r["server_metrics"]
    assert sm["available"]
    assert sm["delta"]["generation_tokens_total"] == 25 * 32
    assert sm["delta"]["prompt_tokens_total"] >= m["total_input_tokens"] > 0
    if m["duration_s"] > 1.2:  # sampled twice a second during the run
        assert 1 <= sm["peak"]["num_requests_running"] <= 6
    # internal consistency of the metrics
    assert m["output_token_throughput"] == pytest.approx(m["total_output_tokens"] / m["duration_s"])
    assert 0 < m["ttft_ms"]["p50"] <= m["ttft_ms"]["p99"] <= m["e2e_ms"]["p99"]
    assert 0 < m["tpot_ms"]["p50"] < m["e2e_ms"]["p50"]
    assert m["duration_s"] * 1000 >= m["e2e_ms"]["p99"]
    records = r["records"]
    assert all(len(rec.itl) <= 31 for rec in records)
    assert len(r["distributions"]["ttft_ms"]) == 101


def test_vllm_chat_through_ansible_with_thresholds(vllm_url):
    args = {
        "url": vllm_url,
        "api": "openai_chat",
        "num_requests": 12,
        "concurrency": 4,
        "max_new_tokens": 16,
        "prompt_tokens": 32,
        "min_output_tokens_per_s": 1,
        "max_ttft_p99_ms": 60000,
        "cost_per_hour": 2.5,
    }
    rc, res, out = ansible_module("generation_check", args)
    assert rc == 0, out
    assert res["changed"] is False
    assert res["metrics"]["completed"] == 12
    assert res["metrics"]["total_output_tokens"] == 12 * 16
    assert res["metrics"]["cost_per_million_output_tokens"] > 0
    assert "output tok/s" in res["msg"] and res["failed_checks"] == []

    rc, res, out = ansible_module("generation_check", dict(args, max_ttft_p99_ms=0.001, num_requests=4))
    assert rc != 0
    assert re.match(r"ttft_ms\.p99 [0-9.]+ ms is above max_ttft_p99_ms 0\.001 ms\. measured: ", res["msg"])
    assert res["failed_checks"] == [res["msg"].split(". measured")[0]]
    assert res["metrics"]["completed"] == 4  # the metrics come with the failure


def test_tgi_mode_timing_against_a_synthetic_tgi_stream():
    # SYNTHETIC server: first token after 200 ms, then one every 20 ms
    with ServerProcess(port(), "--ttft", "0.2", "--interval", "0.02") as srv:
        rc, res, out = ansible_module(
            "generation_check",
            {"url": srv.url, "api": "tgi", "num_requests": 16, "concurrency": 8, "max_new_tokens": 30},
        )
    assert rc == 0, out
    m = res["metrics"]
    assert res["model"] == "synthetic/tgi"  # from GET /info
    assert m["completed"] == 16 and m["total_output_tokens"] == 16 * 30
    # never before the server sent it; far below the ~780 ms end of the stream (slack for busy hosts)
    assert 195 <= m["ttft_ms"]["p50"] <= 500
    assert 17 <= m["tpot_ms"]["p50"] <= 35
    assert 17 <= m["itl_ms"]["p50"] <= 35
    assert m["e2e_ms"]["p50"] >= 200 + 29 * 20 - 5
    assert res["workload"]["mean_prompt_tokens"] == round(128 / 1.3)  # details.input_length
    assert res["server_metrics"]["available"] is False  # no vLLM metrics behind it


def test_tgi_mode_through_the_proxy_to_vllm(vllm_url, tmp_path):
    def load(**kw: str) -> dict:
        cfg = LoadConfig(
            url=proxy.url, api="tgi", prompts=generate_prompts(8, 16), num_requests=8, concurrency=4,
            max_new_tokens=16, **kw,
        )  # fmt: skip
        return run_load(cfg)

    with start_proxy([vllm_url], log_dir=tmp_path) as proxy:
        r = load()
        # the proxy's /metrics is its own (TGI names): vLLM's are read where metrics_url points
        r_vllm = load(metrics_url=vllm_url + "/metrics")
    assert r["failure"] is None, r["errors"]
    assert r["metrics"]["completed"] == 8
    assert 0 < r["metrics"]["mean_output_tokens"] <= 16
    assert r["model"] == "tiny"
    assert r["server_metrics"]["available"] is False
    sm = r_vllm["server_metrics"]
    assert r_vllm["failure"] is None and sm["available"] is True
    assert sm["delta"]["generation_tokens_total"] == 9 * 16  # 8 measured + 1 warm-up, fixed length


def test_a_bad_metrics_url_is_named():
    rc, res, _unused = ansible_module(
        "generation_check", {"url": "http://127.0.0.1:1", "metrics_url": "ftp://x/metrics"}
    )
    assert rc != 0
    assert "metrics_url: url must be an http:// or https:// URL" in res["msg"], res["msg"]


def test_unreachable_endpoint_fails_fast_and_clearly():
    p = port()  # nothing listens there
    t0 = time.monotonic()
    rc, res, _unused = ansible_module("generation_check", {"url": f"http://127.0.0.1:{p}", "timeout_s": 60})
    assert rc != 0
    assert time.monotonic() - t0 < 30
    assert res["msg"].startswith(f"http://127.0.0.1:{p} is unreachable: cannot connect to 127.0.0.1:{p}")
    assert "refused" in res["msg"].lower()
    assert res["workload"]["requests_sent"] == 0


def test_401_names_the_token_and_the_token_never_shows():
    secret = "s3cret-token-4711"
    with ServerProcess(port(), "--require-token", secret) as srv:
        rc, res, out = ansible_module("generation_check", {"url": srv.url, "num_requests": 2})
        assert rc != 0
        assert res["msg"] == (
            "GET /info was refused: HTTP 401 Unauthorized (check token): "
            "Authorization header is missing or invalid"
        )
        assert srv.stats()["posts"] == 0  # no load sent
        rc, res, out = ansible_module(
            "generation_check", {"url": srv.url, "token": secret, "num_requests": 4}, verbose=True
        )
        assert rc == 0, out
        assert res["metrics"]["completed"] == 4
        assert secret not in out


def test_5xx_mid_run_counts_failures_and_keeps_metrics():
    # SYNTHETIC server: POSTs after the 9th (1 warm-up + 8 measured) get HTTP 500
    with ServerProcess(port(), "--interval", "0.001", "--fail-after", "9") as srv:
        rc, res, _unused = ansible_module(
            "generation_check", {"url": srv.url, "num_requests": 16, "concurrency": 1, "max_new_tokens": 8}
        )
    assert rc != 0
    m = res["metrics"]
    assert m["completed"] == 8 and m["failed"] == 8
    assert "success_ratio 0.5 is below min_success_ratio 1" in res["msg"]
    assert res["errors"] == [
        {
            "error": "HTTP 500 Internal Server Error: Request failed during generation: backend died",
            "count": 8,
        }
    ]
    assert "most frequent error (8x): HTTP 500" in res["msg"]


def test_malformed_sse_is_a_clear_failure():
    with ServerProcess(port(), "--malformed") as srv:
        rc, res, _unused = ansible_module("generation_check", {"url": srv.url, "num_requests": 4})
        assert rc != 0
        assert res["msg"].startswith(
            "the warm-up request failed, no load was sent: malformed SSE data (not JSON): {this is not json"
        )
        assert srv.stats()["posts"] == 1
        r = run_load(LoadConfig(url=srv.url, api="tgi", prompts=["a b"], num_requests=3, warmup_requests=0))
    assert r["metrics"]["failed"] == 3
    assert (
        r["errors"][0]["error"] == "malformed SSE data (not JSON): {this is not json (after 1 token chunks)"
    )


def test_first_token_that_never_comes_stops_at_timeout_with_partial_metrics():
    # SYNTHETIC server: every 3rd POST sends headers and keep-alives but never a token
    with ServerProcess(port(), "--interval", "0.005", "--stall-every", "3") as srv:
        t0 = time.monotonic()
        r = run_load(
            LoadConfig(
                url=srv.url,
                api="tgi",
                prompts=["a b c"],
                num_requests=12,
                concurrency=12,
                warmup_requests=0,
                max_new_tokens=10,
                timeout_s=3,
            )
        )
        elapsed = time.monotonic() - t0
        assert elapsed < 5.0
        assert r["timed_out"] is True
        assert r["failure"] == "timed out after timeout_s=3 s during load"
        m = r["metrics"]
        assert m["completed"] == 8 and m["failed"] == 4
        assert m["total_output_tokens"] == 80 and m["ttft_ms"]["p50"] is not None
        assert r["errors"] == [
            {"error": "no first token within timeout_s=3 s (HTTP 200, stream open)", "count": 4}
        ]

        rc, res, _unused = ansible_module(
            "generation_check",
            {"url": srv.url, "num_requests": 6, "concurrency": 6, "warmup_requests": 0, "timeout_s": 2},
        )
    assert rc != 0
    assert res["timed_out"] is True
    assert res["msg"].startswith("timed out after timeout_s=2 s during load")
    assert "measured so far:" in res["msg"]
    assert res["metrics"]["failed"] == 2


def test_stream_cut_and_error_event_mid_stream():
    with ServerProcess(port(), "--interval", "0.002", "--cut-after", "5") as srv:
        r = run_load(LoadConfig(url=srv.url, api="openai", prompts=["x"], num_requests=2, warmup_requests=0))
    assert r["errors"] == [
        {
            "error": "connection closed by the server in the middle of the response (after 5 token chunks)",
            "count": 2,
        }
    ]
    with ServerProcess(port(), "--interval", "0.002", "--error-after", "3") as srv:
        r = run_load(LoadConfig(url=srv.url, api="tgi", prompts=["x"], num_requests=2, warmup_requests=0))
    assert r["errors"] == [
        {
            "error": "error event (incomplete_generation_stream): Incomplete generation stream "
            "(after 3 token chunks)",
            "count": 2,
        }
    ]


def test_check_mode_sends_no_load():
    with ServerProcess(port()) as srv:
        rc, res, out = ansible_module("generation_check", {"url": srv.url, "num_requests": 50}, check=True)
        assert rc == 0, out
        assert res["msg"] == "check mode: no load sent"
        assert "metrics" not in res
        assert srv.stats()["posts"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"concurrency": 0}, "concurrency must be at least 1, got 0"),
        ({"min_goodput_ratio": 0.9}, "min_goodput_ratio needs slo_ttft_ms or slo_tpot_ms"),
        ({"num_requests": 5, "duration_s": 5}, "parameters are mutually exclusive: num_requests|duration_s"),
        ({"api": "grpc"}, "value of api must be one of: tgi, openai, openai_chat, got: grpc"),
        ({"url": "localhost:8000"}, "url must be an http:// or https:// URL with a host"),
        (
            {"prompts_file": "/nonexistent.jsonl"},
            "prompts_file /nonexistent.jsonl: No such file or directory",
        ),
    ],
)
def test_bad_arguments_fail_before_any_request(args, message):
    rc, res, _unused = ansible_module("generation_check", {"url": "http://127.0.0.1:9", **args})
    assert rc != 0
    assert message in res["msg"]


def test_duration_and_poisson_rate():
    with ServerProcess(port(), "--interval", "0.002") as srv:
        r = run_load(
            LoadConfig(
                url=srv.url,
                api="tgi",
                prompts=["a"],
                num_requests=None,
                duration_s=1.5,
                concurrency=4,
                max_new_tokens=8,
            )
        )
        assert r["failure"] is None
        assert r["metrics"]["duration_s"] >= 1.5
        assert r["workload"]["requests_sent"] == r["metrics"]["completed"] > 10
        r = run_load(
            LoadConfig(
                url=srv.url,
                api="tgi",
                prompts=["a"],
                num_requests=30,
                request_rate=30.0,
                concurrency=30,
                max_new_tokens=2,
            )
        )
        # 30 arrivals at 30/s: about one second (Poisson, fixed seed)
        assert 0.4 < r["metrics"]["duration_s"] < 4.0
        assert r["metrics"]["completed"] == 30


def test_https_with_ca_path_and_validate_certs(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with ServerProcess(port(), "--tls-cert", str(cert), "--tls-key", str(key), "--interval", "0.001") as srv:
        assert srv.url.startswith("https://")
        rc, res, _unused = ansible_module("generation_check", {"url": srv.url, "num_requests": 2})
        assert rc != 0
        assert "TLS handshake with 127.0.0.1" in res["msg"] and "CERTIFICATE_VERIFY_FAILED" in res["msg"]
        rc, res, out = ansible_module(
            "generation_check", {"url": srv.url, "num_requests": 2, "ca_path": str(cert)}
        )
        assert rc == 0, out
        rc, res, out = ansible_module(
            "generation_check", {"url": srv.url, "num_requests": 2, "validate_certs": False}
        )
        assert rc == 0, out


def test_goodput_slo_threshold():
    # SYNTHETIC server: first token after 100 ms, so a 50 ms TTFT SLO fails every request
    with ServerProcess(port(), "--ttft", "0.1", "--interval", "0.002") as srv:
        args = {"url": srv.url, "num_requests": 6, "concurrency": 3, "max_new_tokens": 4, "slo_tpot_ms": 50}
        rc, res, out = ansible_module("generation_check", dict(args, slo_ttft_ms=500, min_goodput_ratio=1.0))
        assert rc == 0, out
        assert res["metrics"]["goodput_ratio"] == 1.0
        assert res["metrics"]["goodput"] == pytest.approx(res["metrics"]["request_throughput"])
        rc, res, _unused = ansible_module(
            "generation_check", dict(args, slo_ttft_ms=50, min_goodput_ratio=0.5)
        )
    assert rc != 0
    assert res["metrics"]["goodput_ratio"] == 0.0 and res["metrics"]["completed"] == 6
    assert res["failed_checks"] == ["goodput_ratio 0 is below min_goodput_ratio 0.5"]
