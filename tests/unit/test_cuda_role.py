"""The cuda role, rendered (NVIDIA's repository is not reachable from CI): packages, repository file, profile
script, and the driver compatibility check run for real on this GPU-less host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from test_nvidia_driver_plan import ANSIBLE_PLAYBOOK, BOOKWORM, NOBLE, ROOT, render

EXPR = {
    "packages": "_cuda_packages",
    "held": "_cuda_held",
    "repo_url": "_cuda_repo_url",
    "keyring_url": "_cuda_keyring_url",
    "home": "_cuda_home",
}


def test_toolkit_only_by_default(tmp_path):
    r = render(tmp_path, "cuda", NOBLE, {}, EXPR, {"cuda.sources.j2": "", "cuda.sh.j2": ""})
    assert r["packages"] == ["cuda-toolkit-13-0"]
    assert r["held"] == []
    assert r["repo_url"] == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/"
    assert r["keyring_url"] == r["repo_url"] + "cuda-keyring_1.1-1_all.deb"
    assert r["home"] == "/usr/local/cuda-13.0"


def test_cudnn_and_nccl(tmp_path):
    r = render(
        tmp_path, "cuda", BOOKWORM, {"cuda_version": "12.8", "cuda_cudnn": True, "cuda_nccl": True}, EXPR
    )
    assert r["packages"] == [
        "cuda-toolkit-12-8",
        "libcudnn9-cuda-12",
        "libcudnn9-dev-cuda-12",
        "libnccl2=*+cuda12.8",
        "libnccl-dev=*+cuda12.8",
    ]
    assert r["held"] == ["libcudnn9-cuda-12", "libcudnn9-dev-cuda-12", "libnccl2", "libnccl-dev"]
    assert r["repo_url"].endswith("/debian12/x86_64/")


def test_package_names_match_the_gpu_host(tmp_path):
    """The names the role installs are those NVIDIA's repository installed on the real H100 host."""
    dpkg = (ROOT / "tests/unit/fixtures/nvidia/h100-driver580-ubuntu2404/dpkg.txt").read_text()
    installed = {line.split()[1] for line in dpkg.splitlines() if line[:2] in ("ii", "hi")}
    held = {line.split()[1] for line in dpkg.splitlines() if line.startswith("hi")}
    r = render(tmp_path, "cuda", NOBLE, {"cuda_cudnn": True, "cuda_nccl": True}, EXPR)
    names = {p.split("=")[0] for p in r["packages"]}
    # cuda-toolkit-13-0 is a metapackage; the host has its parts (cuda-nvcc-13-0, cuda-libraries-13-0, ...).
    assert names - {"cuda-toolkit-13-0"} <= installed
    assert set(r["held"]) - {"libcudnn9-dev-cuda-13"} <= held
    assert "cuda-toolkit-13-0-config-common" in installed


def test_same_repository_file_as_nvidia_driver(tmp_path):
    cuda = render(tmp_path / "c", "cuda", NOBLE, {}, {}, {"cuda.sources.j2": ""})
    driver = render(tmp_path / "d", "nvidia_driver", NOBLE, {}, {}, {"cuda.sources.j2": ""})
    assert cuda["files"]["cuda.sources.j2"] == driver["files"]["cuda.sources.j2"]
    mirror = {"cuda_repo_url": "http://mirror.internal/cuda/repos"}
    cuda = render(tmp_path / "cm", "cuda", NOBLE, mirror, {}, {"cuda.sources.j2": ""})
    driver = render(
        tmp_path / "dm",
        "nvidia_driver",
        NOBLE,
        {"nvidia_driver_source": "mirror", "nvidia_driver_mirror_url": "http://mirror.internal/cuda/repos"},
        {},
        {"cuda.sources.j2": ""},
    )
    assert cuda["files"]["cuda.sources.j2"] == driver["files"]["cuda.sources.j2"]
    assert "URIs: http://mirror.internal/cuda/repos/ubuntu2404/x86_64/\n" in cuda["files"]["cuda.sources.j2"]


def test_profile_script_sets_paths_once(tmp_path):
    r = render(tmp_path, "cuda", NOBLE, {"cuda_version": "12.8"}, {}, {"cuda.sh.j2": ""})
    script = tmp_path / "cuda.sh"
    script.write_text(r["files"]["cuda.sh.j2"])
    out = subprocess.run(
        ["sh", "-c", f'. {script}; . {script}; echo "$CUDA_HOME|$PATH|$LD_LIBRARY_PATH"'],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "/usr/local/cuda-12.8|/usr/local/cuda-12.8/bin:/usr/bin:/bin|/usr/local/cuda-12.8/lib64"


def _preflight(tmp_path: Path, variables: dict) -> subprocess.CompletedProcess:
    """The role's real preflight (gpu_facts on this host, which has no GPU) with VARIABLES."""
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": True,
            "gather_subset": ["min"],
            "tasks": [
                {
                    "name": "Preflight",
                    "ansible.builtin.include_role": {
                        "name": "selfhost.textgen.cuda",
                        "tasks_from": "preflight",
                    },
                    "vars": {"cuda_enabled": True, **variables},
                }
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_NOCOLOR="1",
    )
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(tmp_path / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


needs_gpu_less_host = pytest.mark.skipif(
    Path("/proc/driver/nvidia/version").exists()
    or not (ROOT / ".build/collections/ansible_collections/selfhost/textgen").exists(),
    reason="needs a host without NVIDIA driver and the collection link (make collection)",
)


@needs_gpu_less_host
def test_driver_too_old_fails_naming_both_versions(tmp_path):
    proc = _preflight(tmp_path, {"cuda_version": "13.0", "cuda_driver_branch": "535"})
    assert proc.returncode == 2, proc.stdout
    text = " ".join(proc.stdout.split())
    assert (
        "CUDA 13.0 needs a newer driver: driver branch 535 supports CUDA up to 12.2 (cuda_driver_branch)"
        in text
    )


@needs_gpu_less_host
def test_driver_branch_supports_cuda(tmp_path):
    proc = _preflight(tmp_path, {"cuda_version": "12.8", "cuda_driver_branch": "580"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "failed=0" in proc.stdout


@needs_gpu_less_host
def test_no_driver_and_no_branch(tmp_path):
    proc = _preflight(tmp_path, {"cuda_version": "13.0"})
    assert proc.returncode == 2
    text = " ".join(proc.stdout.split())
    assert "No NVIDIA driver answers on this host" in text
    assert "set cuda_driver_branch to the branch the host will run" in text


@needs_gpu_less_host
def test_bad_version_named(tmp_path):
    proc = _preflight(tmp_path, {"cuda_version": "13", "cuda_driver_branch": "580"})
    assert proc.returncode == 2
    assert 'cuda_version must be X.Y like "13.0" (got "13")' in " ".join(proc.stdout.split())
