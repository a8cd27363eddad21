"""Shared fixtures for integration tests: a real CPU vLLM server with the tiny model, on this host.

The server is started once per test session (about 50 s) from the venv that
tests/testbed/host-vllm.sh installs from the wheelhouse. Set TEXTGEN_VLLM_URL to reuse a server
that is already running (development only; CI always starts its own).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))

import host_vllm


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return host_vllm.tiny_model()


@pytest.fixture(scope="session")
def vllm_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real vLLM OpenAI server serving the tiny model as `tiny`."""
    if os.environ.get("TEXTGEN_VLLM_URL"):
        yield os.environ["TEXTGEN_VLLM_URL"].rstrip("/")
        return
    try:
        proc, url = host_vllm.start(tmp_path_factory.mktemp("vllm"), tiny_model_dir)
    except host_vllm.VllmStartError as e:
        pytest.fail(str(e))
    yield url
    host_vllm.stop(proc)
