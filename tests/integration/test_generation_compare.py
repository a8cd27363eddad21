"""generation_compare: the real CPU vLLM against itself through another API, and against a stand-in.

The TGI side is the collection's hf-proxy in front of the same vLLM: greedy answers must match exactly
across the two APIs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation_servers import ServerProcess
from proxy_support import start_proxy
from test_generation_check import ansible_module, port

PROMPTS = Path(__file__).resolve().parent / "fixtures" / "prompts_compare.jsonl"


def test_same_model_through_tgi_and_openai_matches_exactly(vllm_url, tmp_path):
    with start_proxy([vllm_url], log_dir=tmp_path) as proxy:
        rc, res, out = ansible_module(
            "generation_compare",
            {
                "baseline": {"url": vllm_url, "api": "openai"},
                "candidate": {"url": proxy.url, "api": "tgi"},
                "prompts_file": str(PROMPTS),
                "max_new_tokens": 24,
                "concurrency": 1,
                "min_exact_match_ratio": 1.0,
                "min_mean_similarity": 1.0,
                "max_length_diff_ratio": 0.0,
            },
        )
    assert rc == 0, out
    n = sum(1 for line in PROMPTS.read_text().splitlines() if line.strip())
    c = res["comparison"]
    assert c["prompts"] == c["compared"] == c["exact_matches"] == n
    assert c["exact_match_ratio"] == 1.0 and c["mean_similarity"] == 1.0
    assert c["most_different"] == []
    assert res["baseline"]["model"] == "tiny" and res["candidate"]["model"] == "tiny"
    assert res["latency"]["ttft_ms"]["baseline"]["p50"] > 0
    assert res["latency"]["ttft_ms"]["candidate"]["p50"] > 0
    for side in ("baseline", "candidate"):
        # The tiny CPU model at concurrency 1 often hands a whole answer to the client in one read: its
        # measured TPOT is then 0, truly (the client cannot see tokens that arrive together apart).
        lat = res["latency"]
        assert 0 <= lat["tpot_ms"][side]["p50"] <= lat["e2e_ms"][side]["p50"], lat
    assert res["msg"] == f"{n} of {n} prompts compared: exact match 1.000, mean similarity 1.000, " + (
        "mean length difference 0.000"
    )


def test_different_answers_fail_the_gate_and_show_the_worst_pairs(vllm_url):
    # SYNTHETIC candidate: answers "tok0 tok1 ..." whatever the prompt
    with ServerProcess(port(), "--interval", "0.001") as srv:
        rc, res, _unused = ansible_module(
            "generation_compare",
            {
                "baseline": {"url": vllm_url, "api": "openai"},
                "candidate": {"url": srv.url, "api": "tgi"},
                "prompts": ["hello world", "the river and the mountain", "once upon a time"],
                "max_new_tokens": 8,
                "top_differences": 2,
                "min_mean_similarity": 0.9,
            },
        )
    assert rc != 0
    c = res["comparison"]
    assert c["compared"] == 3 and c["exact_matches"] == 0
    assert f"mean_similarity {c['mean_similarity']:.4g} is below min_mean_similarity 0.9" in res["msg"]
    assert len(c["most_different"]) == 2
    worst = c["most_different"][0]
    assert worst["candidate"] == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
    assert worst["similarity"] <= c["most_different"][1]["similarity"]


def test_unreachable_candidate_fails_with_the_baseline_results(vllm_url):
    p = port()
    rc, res, _unused = ansible_module(
        "generation_compare",
        {
            "baseline": {"url": vllm_url, "api": "openai"},
            "candidate": {"url": f"http://127.0.0.1:{p}", "api": "tgi", "token": "hidden-token-123"},
            "prompts": ["hello world"],
            "max_new_tokens": 4,
        },
    )
    assert rc != 0
    assert res["msg"].startswith(f"candidate: http://127.0.0.1:{p} is unreachable: cannot connect")
    assert res["baseline"]["completed"] == 1
    assert res["comparison"]["success_ratio"] == 0.0
    assert "hidden-token-123" not in json.dumps(res)


def test_check_mode_sends_nothing():
    with ServerProcess(port()) as srv:
        rc, res, out = ansible_module(
            "generation_compare",
            {"baseline": {"url": srv.url}, "candidate": {"url": srv.url}, "prompts": ["a"]},
            check=True,
        )
        assert rc == 0, out
        assert res["msg"] == "check mode: no request sent"
        assert srv.stats()["posts"] == 0
