"""generation_check and generation_compare through the collection's HF/TGI proxy (proxy/) in front of
the real CPU vLLM: the `tgi` api mode against the real thing, not only our TGI-format stand-ins."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_generation_check import ROOT, ansible_module, port

PROMPTS = Path(__file__).resolve().parent / "fixtures" / "prompts_compare.jsonl"


@pytest.fixture(scope="module")
def proxy_url(vllm_url, tmp_path_factory):
    exe = shutil.which("hf-proxy", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hf-proxy is not installed in this venv (make venv installs ./proxy)")
    p = port()
    log = (tmp_path_factory.mktemp("proxy") / "proxy.log").open("w")
    proc = subprocess.Popen(
        [exe, "--upstream", vllm_url, "--port", str(p), "--workers", "1",
         "--tokenizer", str(ROOT / ".build" / "tiny-model")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{p}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("hf-proxy did not become healthy")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_generation_check_tgi_through_the_proxy(proxy_url):
    rc, res, out = ansible_module(
        "generation_check",
        {"url": proxy_url, "api": "tgi", "num_requests": 12, "concurrency": 4, "max_new_tokens": 16,
         "prompt_tokens": 32, "max_ttft_p99_ms": 60000},
    )  # fmt: skip
    assert rc == 0, out
    m = res["metrics"]
    assert res["model"] == "tiny"
    assert m["completed"] == 12 and m["failed"] == 0
    assert 12 <= m["total_output_tokens"] <= 12 * 16  # TGI has no ignore_eos: measured
    assert res["workload"]["mean_prompt_tokens"] > 0  # details.input_length from the proxy
    assert m["ttft_ms"]["p50"] > 0


def test_proxy_answers_like_vllm(vllm_url, proxy_url):
    rc, res, out = ansible_module(
        "generation_compare",
        {
            "baseline": {"url": vllm_url, "api": "openai"},
            "candidate": {"url": proxy_url, "api": "tgi"},
            "prompts_file": str(PROMPTS),
            "max_new_tokens": 24,
            "concurrency": 1,
            "min_exact_match_ratio": 1.0,
        },
    )
    assert rc == 0, out
    assert res["comparison"]["exact_match_ratio"] == 1.0
