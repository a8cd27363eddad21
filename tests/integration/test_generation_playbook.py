"""playbooks/benchmark.yml over a group: the real vLLM, a synthetic TGI-format stream, and a dead host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation_servers import ServerProcess
from test_generation_check import ROOT, port


@pytest.mark.parametrize("serial", ["true", "false"])
def test_benchmark_playbook_table_json_and_html(vllm_url, tmp_path, serial):
    dead = port()
    with ServerProcess(port(), "--ttft", "0.05", "--interval", "0.005") as srv:
        inventory = {
            "bench": {
                "hosts": {
                    "vllm-direct": {
                        "benchmark_url": vllm_url,
                        "benchmark_api": "openai",
                        "benchmark_cost_per_hour": 2.5,
                    },
                    "synthetic-tgi": {"benchmark_url": srv.url, "benchmark_api": "tgi"},
                    "dead-host": {"benchmark_url": f"http://127.0.0.1:{dead}"},
                },
                "vars": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "benchmark_num_requests": 12,
                    "benchmark_concurrency": 4,
                    "benchmark_max_new_tokens": 16,
                    "benchmark_prompt_tokens": 32,
                    "benchmark_timeout_s": 120,
                },
            }
        }
        inv = tmp_path / "inventory.json"
        inv.write_text(json.dumps(inventory))
        report = tmp_path / "report"
        env = dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
            ANSIBLE_LOCALHOST_WARNING="0",
            ANSIBLE_NOCOLOR="1",
        )
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i", str(inv),
                str(ROOT / "playbooks" / "benchmark.yml"),
                "-e", "benchmark_group=bench",
                "-e", f"benchmark_serial={serial}",
                "-e", f"benchmark_report_dir={report}",
                "-e", f"ansible_python_interpreter={sys.executable}",
            ],
            capture_output=True, text=True, env=env, timeout=600, check=False,
        )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # one table for all hosts
    assert re.search(r'"host +output tok/s +TTFT p50 +TTFT p99 +TPOT p50 +errors +\$/M tok"', out)
    assert re.search(r'"vllm-direct +[0-9.]+ +[0-9.]+ ms +[0-9.]+ ms +[0-9.]+ ms +0 +[0-9.]+"', out), out
    assert re.search(r'"synthetic-tgi +[0-9.]+ +[0-9.]+ ms +[0-9.]+ ms +[0-9.]+ ms +0 +-"', out), out
    assert re.search(r'"dead-host +- +- +- +- +FAILED +-"', out), out
    assert f"dead-host: http://127.0.0.1:{dead} is unreachable" in out

    data = json.loads((report / "benchmark.json").read_text())
    rows = {row["host"]: row for row in data["hosts"]}
    assert set(rows) == {"vllm-direct", "synthetic-tgi", "dead-host"}
    assert rows["vllm-direct"]["ok"] and rows["synthetic-tgi"]["ok"] and not rows["dead-host"]["ok"]
    assert rows["vllm-direct"]["metrics"]["completed"] == 12
    assert rows["vllm-direct"]["metrics"]["cost_per_million_output_tokens"] > 0
    assert rows["synthetic-tgi"]["metrics"]["total_output_tokens"] == 12 * 16
    assert rows["dead-host"]["metrics"] is None
    assert len(rows["synthetic-tgi"]["distributions"]["ttft_ms"]) == 101

    html = (report / "benchmark.html").read_text()
    assert html.count("<svg") == 8  # 4 distributions for each host that answered
    assert html.count("<polyline") == 8
    for external in ("<script", "<link", "src=", "href=", "url(", "@import"):  # no external assets
        assert external not in html
    assert "dead-host" in html and "unreachable" in html
