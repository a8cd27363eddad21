"""Accuracy of generation_check against `vllm bench serve` on the same CPU vLLM and workload.

Same server, same prompts (a JSON Lines file both read: vLLM's `custom` dataset format), same fixed
output length (ignore_eos), same concurrency, one warm-up request each. Both clients run in one
process (the vLLM venv's Python), alternating round by round so that both see the same machine;
the medians of the rounds are compared. The server it starts runs on one CPU and the clients on
another: on a small host a client's own CPU use would otherwise slow down the CPU-bound server and
favour the lighter client. Prints both numbers and their ratio for output tok/s and
TTFT p50 (also TPOT and ITL p50 for information); exits 1 when output tok/s or TTFT p50 differ by
more than 10 %.

    python benchmarks/check_accuracy.py            # starts a CPU vLLM with the tiny model (~1 min)
    TEXTGEN_VLLM_URL=http://127.0.0.1:8000 python benchmarks/check_accuracy.py   # reuse a server
    ACCURACY_ROUNDS=5 ACCURACY_CONCURRENCY=8 ACCURACY_REQUESTS=64 ACCURACY_OUTPUT_LEN=64
    ACCURACY_PROMPT_TOKENS=160 (defaults; ~370 tokens of the tiny model's tokenizer)

Each round also reads vLLM's own TTFT histogram (vllm:time_to_first_token_seconds) around each
client's run and prints how far each client's mean TTFT lies above the server's: the server's view
of the same requests, to tell which client adds latency. Measured on the 2-core test host: with
very short prompts (TTFT ~15 ms) `vllm bench serve`'s aiohttp client reads the first token 2-5 ms
later than generation_check does (both compared with the server's own TTFT), which alone is more
than 10 % of such a TTFT; with ~370-token prompts TTFT is dominated by the server's work again.

The machine must not be saturated by other work: on a shared CPU host the server's own speed swings
more than 10 % from one round to the next, and the script then says FAIL with the rounds printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "testbed"))

import host_vllm  # noqa: E402

MODEL_DIR = host_vllm.MODEL_DIR
SERVED = host_vllm.SERVED_NAME
TOLERANCE = 0.10


def cpus() -> tuple[int | None, int | None]:
    """(client CPU, server CPU): on a small host a client that burns CPU would otherwise slow down
    the CPU-bound server it measures, and the lighter client would look faster."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < 2:
        return None, None
    return avail[0], avail[-1]


def _server_priority(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with contextlib.suppress(OSError):
        os.nice(-10)


# ----- inner part: runs in the vLLM venv, both clients in one process ----------------------------


def inner(url: str, prompts_file: str, rounds: int, concurrency: int, requests: int, output_len: int) -> None:
    import argparse
    import io

    sys.path.insert(0, str(ROOT / ".build" / "collections"))
    # Both clients share this process. On a busy shared host a client that waits for the CPU reads
    # tokens late; a higher priority (when allowed) keeps the clients' own scheduling out of the numbers.
    with contextlib.suppress(OSError):
        os.nice(-10)
    from ansible_collections.selfhost.textgen.plugins.module_utils._loadgen import (
        LoadConfig,
        load_prompts,
        run_load,
    )
    from vllm.benchmarks import serve as vbench

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older vLLM
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef]

    result_dir = tempfile.mkdtemp(prefix="accuracy-")
    parser = FlexibleArgumentParser()
    vbench.add_cli_args(parser)
    prompts = load_prompts(prompts_file)

    def get_samples(args: argparse.Namespace, tokenizer: object) -> list:
        # vLLM's CustomDataset reads the same JSON Lines file with pandas, an optional dependency
        # (vllm[bench]) that the test bed's venv lacks: build the same records (in file order, as
        # --disable-shuffle does) without it.
        from vllm.benchmarks.datasets import SampleRequest

        return [
            SampleRequest(
                prompt=p,
                prompt_len=len(tokenizer(p).input_ids),  # type: ignore[operator]
                expected_output_len=args.custom_output_len,
                request_id=str(i),
            )
            for i, p in enumerate(prompts[: args.num_prompts])
        ]

    vbench.get_samples = get_samples

    def server_sums() -> dict[str, float]:
        """vLLM's own TTFT and E2E histograms (sum, count): the server's view of the same requests."""
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        sums: dict[str, float] = {}
        for line in text.splitlines():
            for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
                for kind in ("sum", "count"):
                    if line.startswith(f"vllm:{name}_{kind}"):
                        sums[f"{name}_{kind}"] = sums.get(f"{name}_{kind}", 0.0) + float(line.split()[-1])
        return sums

    def with_server_view(fn: object) -> dict:
        before = server_sums()
        res = fn()  # type: ignore[operator]
        after = server_sums()
        n = after["time_to_first_token_seconds_count"] - before["time_to_first_token_seconds_count"]
        s = after["time_to_first_token_seconds_sum"] - before["time_to_first_token_seconds_sum"]
        res["server_ttft_mean"] = s / n * 1000 if n else float("nan")
        return res

    def run_vllm(i: int) -> dict:
        name = f"bench-{i}.json"
        args = parser.parse_args(
            [
                "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
                "--model", str(MODEL_DIR), "--served-model-name", SERVED,
                "--dataset-name", "custom", "--dataset-path", prompts_file, "--disable-shuffle",
                "--skip-chat-template", "--custom-output-len", str(output_len),
                "--num-prompts", str(requests), "--max-concurrency", str(concurrency),
                "--ignore-eos", "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
                "--metric-percentiles", "50,99",
                "--save-result", "--result-dir", result_dir, "--result-filename", name,
            ]
        )  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            vbench.main(args)
        r = json.loads(Path(result_dir, name).read_text())
        return {
            "completed": r["completed"],
            "output_tok_s": r["output_throughput"],
            "ttft_mean": r["mean_ttft_ms"],
            "ttft_p50": r["median_ttft_ms"],
            "tpot_p50": r["median_tpot_ms"],
            "itl_p50": r["median_itl_ms"],
        }

    def run_ours() -> dict:
        r = run_load(
            LoadConfig(
                url=url, api="openai", model=SERVED, prompts=prompts, num_requests=requests,
                concurrency=concurrency, max_new_tokens=output_len, warmup_requests=1, server_metrics=False,
            )
        )  # fmt: skip
        m = r["metrics"]
        if r["failure"] or m["failed"]:
            raise SystemExit(f"generation_check failed: {r['failure']} {r['errors']}")
        return {
            "completed": m["completed"],
            "output_tok_s": m["output_token_throughput"],
            "ttft_mean": m["ttft_ms"]["mean"],
            "ttft_p50": m["ttft_ms"]["p50"],
            "tpot_p50": m["tpot_ms"]["p50"],
            "itl_p50": m["itl_ms"]["p50"],
        }

    # one round each that is not counted: the first run of a client in a process pays for imports,
    # the tokenizer and the server's first batches of that shape
    run_vllm(-1)
    run_ours()
    ours, theirs = [], []
    for i in range(rounds):
        # alternate who goes first, so that neither always inherits the other's warm caches
        order = (
            (("vllm", run_vllm), ("ours", run_ours))
            if i % 2 == 0
            else (("ours", run_ours), ("vllm", run_vllm))
        )
        for who, fn in order:
            res = with_server_view(lambda fn=fn, who=who, i=i: fn(i) if who == "vllm" else fn())
            (theirs if who == "vllm" else ours).append(res)
            print(
                f"round {i + 1} {who:5s} completed {res['completed']:3d}  "
                f"output {res['output_tok_s']:8.1f} tok/s  TTFT p50 {res['ttft_p50']:7.2f} ms  "
                f"TPOT p50 {res['tpot_p50']:6.2f} ms  ITL p50 {res['itl_p50']:6.2f} ms  "
                f"TTFT mean {res['ttft_mean']:6.2f} ms (server's own {res['server_ttft_mean']:6.2f})",
                flush=True,
            )
    print()
    print(
        f"{'metric (median of rounds)':28s} {'vllm bench serve':>17s} {'generation_check':>17s} {'ratio':>7s}"
    )
    failed = []
    for key, label, gated in (
        ("output_tok_s", "output tok/s", True),
        ("ttft_p50", "TTFT p50 ms", True),
        ("tpot_p50", "TPOT p50 ms", False),
        ("itl_p50", "ITL p50 ms", False),
    ):
        a = statistics.median(r[key] for r in theirs)
        b = statistics.median(r[key] for r in ours)
        ratio = b / a if a else float("nan")
        flag = ""
        if gated:
            ok = abs(ratio - 1) <= TOLERANCE
            flag = "ok" if ok else f"OUTSIDE +-{TOLERANCE:.0%}"
            if not ok:
                failed.append(label)
        print(f"{label:28s} {a:17.2f} {b:17.2f} {ratio:7.3f} {flag}")
    for name, runs in (("vllm bench serve", theirs), ("generation_check", ours)):
        gap = statistics.median(r["ttft_mean"] - r["server_ttft_mean"] for r in runs)
        print(f"{name}: mean TTFT minus the server's own mean TTFT (median of rounds): {gap:+.2f} ms")
    print()
    if failed:
        print("FAIL: " + ", ".join(failed) + f" differ by more than {TOLERANCE:.0%}")
        raise SystemExit(1)
    print(f"PASS: output tok/s and TTFT p50 agree with vllm bench serve within {TOLERANCE:.0%}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        url, prompts_file, rounds, conc, n, out_len = sys.argv[2:8]
        inner(url, prompts_file, int(rounds), int(conc), int(n), int(out_len))
        return
    rounds = int(os.environ.get("ACCURACY_ROUNDS", "5"))
    concurrency = int(os.environ.get("ACCURACY_CONCURRENCY", "8"))
    requests = int(os.environ.get("ACCURACY_REQUESTS", "64"))
    output_len = int(os.environ.get("ACCURACY_OUTPUT_LEN", "64"))
    prompt_tokens = int(os.environ.get("ACCURACY_PROMPT_TOKENS", "160"))
    venv = host_vllm.venv()
    client_cpu, server_cpu = cpus()
    with tempfile.TemporaryDirectory(prefix="check-accuracy-") as tmp:
        work = Path(tmp)
        proc = None
        url = os.environ.get("TEXTGEN_VLLM_URL", "").rstrip("/")
        if not url:
            try:
                proc, url = host_vllm.start(
                    work, timeout_s=300, preexec_fn=lambda: _server_priority(server_cpu)
                )
            except host_vllm.VllmStartError as e:
                sys.exit(str(e))
            if server_cpu is not None:
                print(f"vLLM pinned to CPU {server_cpu}, both clients to CPU {client_cpu}")
        else:
            client_cpu = None  # a server we did not start: no pinning
        try:
            sys.path.insert(0, str(ROOT / ".build" / "collections"))
            from ansible_collections.selfhost.textgen.plugins.module_utils._loadgen import generate_prompts

            prompts_file = work / "prompts.jsonl"
            prompts_file.write_text(
                "".join(json.dumps({"prompt": p}) + "\n" for p in generate_prompts(requests, prompt_tokens))
            )
            print(
                f"server {url} (tiny model, CPU), {requests} requests, concurrency {concurrency}, "
                f"output {output_len} tokens (ignore_eos), prompts of ~{prompt_tokens} tokens, "
                f"{rounds} rounds"
            )
            env = dict(os.environ, PYTHONWARNINGS="ignore", VLLM_LOGGING_LEVEL="ERROR")
            rc = subprocess.run(
                [
                    f"{venv}/bin/python", __file__, "--inner", url, str(prompts_file), str(rounds),
                    str(concurrency), str(requests), str(output_len),
                ],
                env=env,
                check=False,
                preexec_fn=None if client_cpu is None else (lambda: os.sched_setaffinity(0, {client_cpu})),
            ).returncode  # fmt: skip
        finally:
            if proc is not None:
                host_vllm.stop(proc)
    sys.exit(rc)


if __name__ == "__main__":
    main()
