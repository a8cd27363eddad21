# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Old endpoint vs new endpoint: the same prompts, deterministic generation, answers compared.

Standard library only. Texts are compared after Unicode NFC normalisation (exact match); the
similarity is difflib's ratio of the two texts with whitespace runs collapsed (1.0 = identical).
"""

from __future__ import annotations

import asyncio
import difflib
import math
import time
import unicodedata
from dataclasses import replace

from ansible_collections.selfhost.textgen.plugins.module_utils._loadgen import (
    LoadConfig,
    LoadGenerator,
    raise_fd_limit,
)
from ansible_collections.selfhost.textgen.plugins.module_utils._stats import summarize

THRESHOLDS = {
    "min_exact_match_ratio": (("exact_match_ratio",), "min", ""),
    "min_mean_similarity": (("mean_similarity",), "min", ""),
    "max_length_diff_ratio": (("mean_length_diff_ratio",), "max", ""),
    "min_success_ratio": (("success_ratio",), "min", ""),
}


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def similarity(a: str, b: str) -> float:
    na, nb = normalise(a), normalise(b)
    if na == nb:
        return 1.0
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()


def length_diff_ratio(a: str, b: str) -> float:
    """|len(a) - len(b)| relative to the longer text (0 when both are empty)."""
    longest = max(len(a), len(b))
    return abs(len(a) - len(b)) / longest if longest else 0.0


def _excerpt(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def compare_outputs(prompts: list[str], a: list, b: list, top: int) -> dict:
    """Agreement between the records of both sides (request i of each side used prompts[i])."""
    pairs = []
    both_ok = 0
    for i, prompt in enumerate(prompts):
        ra, rb = a[i] if i < len(a) else None, b[i] if i < len(b) else None
        if ra is None or rb is None or not ra.success or not rb.success:
            continue
        both_ok += 1
        ta = unicodedata.normalize("NFC", ra.text)
        tb = unicodedata.normalize("NFC", rb.text)
        pairs.append(
            {
                "index": i,
                "prompt": prompt,
                "exact": ta == tb,
                "similarity": similarity(ta, tb),
                "length_diff_ratio": length_diff_ratio(ta, tb),
                "length_diff_chars": len(tb) - len(ta),
                "baseline": ta,
                "candidate": tb,
            }
        )
    n = len(pairs)
    total = len(prompts)
    worst = sorted(pairs, key=lambda p: (p["similarity"], -p["length_diff_ratio"], p["index"]))[:top]
    return {
        "prompts": total,
        "compared": n,
        "success_ratio": both_ok / total if total else None,
        "exact_matches": sum(1 for p in pairs if p["exact"]),
        "exact_match_ratio": (sum(1 for p in pairs if p["exact"]) / n) if n else None,
        "mean_similarity": (math.fsum(p["similarity"] for p in pairs) / n) if n else None,
        "min_similarity": min((p["similarity"] for p in pairs), default=None),
        "mean_length_diff_ratio": (math.fsum(p["length_diff_ratio"] for p in pairs) / n) if n else None,
        "mean_length_diff_chars": (math.fsum(p["length_diff_chars"] for p in pairs) / n) if n else None,
        "most_different": [
            {
                "index": p["index"],
                "prompt": _excerpt(p["prompt"]),
                "baseline": _excerpt(p["baseline"]),
                "candidate": _excerpt(p["candidate"]),
                "similarity": round(p["similarity"], 4),
                "length_diff_chars": p["length_diff_chars"],
            }
            for p in worst
            if not p["exact"]
        ],
    }


def side_summary(cfg: LoadConfig, result: dict) -> dict:
    records = [r for r in result["records"] if r.success]
    metrics = result["metrics"] or {}
    return {
        "url": cfg.url,
        "api": cfg.api,
        "model": result["model"],
        "completed": metrics.get("completed", 0),
        "failed": metrics.get("failed", 0),
        "failure": result["failure"],
        "errors": result["errors"],
        "ttft_ms": summarize([r.ttft for r in records if r.ttft is not None]),
        "e2e_ms": summarize([r.latency for r in records if r.latency is not None]),
        "tpot_ms": metrics.get("tpot_ms") or summarize([]),
        "output_token_throughput": metrics.get("output_token_throughput"),
        "mean_output_tokens": metrics.get("mean_output_tokens"),
    }


async def _compare(baseline: LoadConfig, candidate: LoadConfig, timeout_s: float) -> tuple[dict, dict]:
    start = time.monotonic()
    result_a = await LoadGenerator(replace(baseline, timeout_s=timeout_s)).run()
    left = timeout_s - (time.monotonic() - start)
    if left < 1:
        result_b = {
            "failure": f"timed out after timeout_s={timeout_s:g} s before the candidate was asked",
            "timed_out": True,
            "model": None,
            "metrics": None,
            "errors": [],
            "records": [],
        }
    else:
        result_b = await LoadGenerator(replace(candidate, timeout_s=left)).run()
    return result_a, result_b


def run_compare(baseline: LoadConfig, candidate: LoadConfig, timeout_s: float, top: int) -> dict:
    """Ask the baseline, then the candidate, each every prompt once, within timeout_s in all."""
    raise_fd_limit(max(baseline.concurrency, candidate.concurrency) * 2 + 64)
    result_a, result_b = asyncio.run(_compare(baseline, candidate, timeout_s))
    prompts = baseline.prompts
    comparison = compare_outputs(prompts, result_a["records"], result_b["records"], top)
    latency = {}
    a_side = side_summary(baseline, result_a)
    b_side = side_summary(candidate, result_b)
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        latency[key] = {"baseline": a_side[key], "candidate": b_side[key]}
    failures = [
        f"{name}: {r['failure']}"
        for name, r in (("baseline", result_a), ("candidate", result_b))
        if r["failure"]
    ]
    return {
        "comparison": comparison,
        "baseline": a_side,
        "candidate": b_side,
        "latency": latency,
        "failures": failures,
    }
