"""The nvidia_driver role's package plan and files, rendered by ansible-playbook for each distro, source,
branch and kernel: what the role would install, hold and write where a container cannot go (a host with a
distribution kernel or a GPU, NVIDIA's CUDA repository, a mirror).

The role's own vars/main.yml and templates are loaded; only the outputs of the commands the role runs
(`apt-cache policy`, `apt-get indextargets`, `dpkg-query`, gpu_facts) are given: real captures from the
Molecule targets (fixtures/nvidia/apt/) and, for NVIDIA's repository, hand-written answers in apt's format.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
APT = Path(__file__).resolve().parent / "fixtures" / "nvidia" / "apt"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

NOBLE = {
    "distribution": "Ubuntu",
    "distribution_release": "noble",
    "distribution_version": "24.04",
    "distribution_major_version": "24",
    "os_family": "Debian",
    "architecture": "x86_64",
    "kernel": "6.8.0-151-generic",
}
BOOKWORM = {
    "distribution": "Debian",
    "distribution_release": "bookworm",
    "distribution_version": "12.12",
    "distribution_major_version": "12",
    "os_family": "Debian",
    "architecture": "x86_64",
    "kernel": "6.1.0-50-amd64",
}
H100_PCI = [{"address": "0000:00:06.0", "device_id": "0x2330", "class": "0x030200", "kind": "gpu"}]
NO_GPU = {"present": False, "driver_branch": None, "kernel_module": None, "nvswitch": False}


def dpkg(*lines: str) -> str:
    """`dpkg-query -W -f '${Package} ${db:Status-Want} ${db:Status-Status}\\n'` output."""
    base = ["base-files install installed", "python3 install installed"]
    return "\n".join(base + list(lines)) + "\n"


def policy(candidates: dict[str, str]) -> str:
    """`apt-cache policy` output for packages with a candidate, in apt's format (for NVIDIA's repository)."""
    out = []
    for name, version in candidates.items():
        out += [
            f"{name}:",
            "  Installed: (none)",
            f"  Candidate: {version}",
            "  Version table:",
            f"     {version} 500",
            "        500 https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64  "
            "Packages",
        ]
    return "\n".join(out) + "\n"


def render(
    tmp_path: Path,
    role: str,
    facts: dict,
    variables: dict,
    expressions: dict[str, str],
    templates: dict[str, str] | None = None,
    set_facts: dict[str, str] | None = None,
) -> dict:
    """Load ROLE's defaults and vars, set FACTS and VARIABLES, evaluate EXPRESSIONS and render TEMPLATES.

    SET_FACTS are set_fact tasks run first, as the role runs them (values may be templates).
    Returns {name: value} for the expressions and {template: text} under "files".
    """
    templates = templates or {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out.json"
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [
                str(ROOT / "roles" / role / "defaults" / "main.yml"),
                str(ROOT / "roles" / role / "vars" / "main.yml"),
            ],
            "tasks": [
                {
                    "name": "Facts of the host under test",
                    "ansible.builtin.set_fact": {**facts, "cacheable": True},
                },
                *[
                    {"name": f"Set {k}", "ansible.builtin.set_fact": {k: v}}
                    for k, v in (set_facts or {}).items()
                ],
                *[
                    {
                        "name": f"Render {name}",
                        "ansible.builtin.template": {
                            "src": str(ROOT / "roles" / role / "templates" / name),
                            "dest": str(tmp_path / name),
                            "mode": "0644",
                        },
                    }
                    for name in templates
                ],
                {
                    "name": "Write the expressions",
                    "ansible.builtin.copy": {
                        "content": "{{ "
                        + "{"
                        + ", ".join(f"{k!r}: ({v})" for k, v in expressions.items())
                        + "} | to_json }}",
                        "dest": str(out),
                        "mode": "0644",
                    },
                },
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "extra.json").write_text(json.dumps(variables))
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_FACT_CACHING="memory",
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'extra.json'}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    result["files"] = {name: (tmp_path / name).read_text() for name in templates}
    return result


def driver_vars(facts_gpu: dict | None = None, pci: list | None = None, **kw) -> dict:
    """The role's registered results: gpu_facts, dpkg-query, apt-get indextargets, apt-cache policy."""
    gpu = {**NO_GPU, **(facts_gpu or {})}
    return {
        "_nvidia_driver_facts": {"gpu": gpu, "pci_devices": pci or []},
        "_nvidia_driver_nvswitch": gpu["nvswitch"],
        **kw,
    }


PLAN = {
    "plan": "_nvidia_driver_plan_apt",
    "query": "_nvidia_driver_query",
    "kmod": "_nvidia_driver_kmod_wanted | trim",
    "flavours": "_nvidia_driver_kernel_flavours",
    "archives": "_nvidia_driver_archives",
    "repo_url": "_nvidia_driver_repo_url",
    "keyring_url": "_nvidia_driver_keyring_url",
    "keyring_list": "_nvidia_driver_keyring_list_file",
}


def plan(tmp_path, facts, templates=None, **variables):
    kmod = variables.pop("_kmod", None)
    variables.setdefault("_nvidia_driver_dpkg", {"stdout": dpkg()})
    # detect.yml sets the module kind from _nvidia_driver_kmod_wanted; tests may force it.
    kind = {"_nvidia_driver_kmod": kmod or "{{ _nvidia_driver_kmod_wanted | trim }}"}
    return render(tmp_path, "nvidia_driver", facts, variables, PLAN, templates, set_facts=kind)


# --- Ubuntu 24.04, distribution packages (real apt answers) ----------------------------------------


def test_ubuntu_prebuilt_signed_modules_for_ubuntu_kernel(tmp_path):
    r = plan(
        tmp_path,
        NOBLE,
        templates={"nvidia-components.sources.j2": ""},
        **driver_vars(pci=H100_PCI),
        _nvidia_driver_dpkg={
            "stdout": dpkg(
                "linux-image-generic install installed", "linux-image-6.8.0-151-generic install installed"
            )
        },
        _nvidia_driver_policy={"stdout": (APT / "noble-policy.txt").read_text()},
        _nvidia_driver_indextargets={"stdout": (APT / "noble-indextargets.txt").read_text()},
    )
    assert r["kmod"] == "open"
    assert r["flavours"] == ["generic"]
    p = r["plan"]
    assert p["errors"] == []
    assert p["packages"] == [
        "nvidia-headless-no-dkms-580-server-open",
        "nvidia-utils-580-server",
        "linux-modules-nvidia-580-server-open-6.8.0-151-generic",
    ]
    assert p["kernel_metas"] == ["linux-modules-nvidia-580-server-open-generic"]
    assert p["headers"] == []
    assert p["signed"] is True and p["dkms"] is False
    assert p["version"] == "580.178.04-0ubuntu0.24.04.1"
    assert "linux-modules-nvidia-580-server-6.8.0-151-generic" in r["query"]  # both kinds asked for
    assert r["archives"] == {"http://archive.ubuntu.com/ubuntu": ["noble", "noble-updates"]}
    assert r["files"]["nvidia-components.sources.j2"].endswith(
        "\nTypes: deb\nURIs: http://archive.ubuntu.com/ubuntu\nSuites: noble noble-updates\n"
        "Components: restricted multiverse\n"
    )


def test_ubuntu_custom_kernel_uses_dkms(tmp_path):
    """A kernel Ubuntu has no prebuilt modules for (a container on a CI host, a custom kernel): DKMS."""
    r = plan(
        tmp_path,
        {**NOBLE, "kernel": "6.18.44-fc-v669"},
        **driver_vars(),
        _nvidia_driver_policy={"stdout": (APT / "noble-policy.txt").read_text()},
    )
    p = r["plan"]
    assert p["errors"] == []
    assert p["packages"] == [
        "nvidia-headless-no-dkms-580-server-open",
        "nvidia-utils-580-server",
        "nvidia-dkms-580-server-open",
    ]
    assert p["headers"] == []  # linux-headers-6.18.44-fc-v669 does not exist
    assert p["signed"] is False and p["dkms"] is True


def test_ubuntu_proprietary_on_request(tmp_path):
    r = plan(
        tmp_path,
        NOBLE,
        _kmod="proprietary",
        **driver_vars(pci=H100_PCI),
        nvidia_driver_kernel_module="proprietary",
        _nvidia_driver_policy={"stdout": (APT / "noble-policy.txt").read_text()},
    )
    assert r["plan"]["packages"] == [
        "nvidia-headless-no-dkms-580-server",
        "nvidia-utils-580-server",
        "linux-modules-nvidia-580-server-6.8.0-151-generic",
    ]


def test_ubuntu_other_branch_and_missing_branch(tmp_path):
    policy_text = (APT / "noble-policy.txt").read_text()
    r = plan(
        tmp_path,
        NOBLE,
        **driver_vars(),
        nvidia_driver_branch="570",
        _nvidia_driver_policy={"stdout": policy_text},
    )
    assert r["plan"]["errors"] == []
    assert r["plan"]["packages"][0] == "nvidia-headless-no-dkms-570-server-open"
    r = plan(
        tmp_path,
        NOBLE,
        **driver_vars(),
        nvidia_driver_branch="999",
        _nvidia_driver_policy={"stdout": policy_text},
    )
    assert r["plan"]["errors"][0] == (
        "nvidia-headless-no-dkms-999-server-open is not in the configured repositories: "
        "the distribution does not ship branch 999 (nvidia_driver_branch)"
    )


def test_ubuntu_transitional_branch_is_refused(tmp_path):
    """Ubuntu 24.04's 570-server packages only pull in 580 (real `apt-cache show` answers)."""
    policy_text = (APT / "noble-policy.txt").read_text()
    r = plan(
        tmp_path,
        NOBLE,
        **driver_vars(),
        nvidia_driver_branch="570",
        _nvidia_driver_policy={"stdout": policy_text},
        _nvidia_driver_utils_show={"stdout": (APT / "noble-show-utils-570.txt").read_text()},
    )
    assert r["plan"]["errors"] == [
        "Ubuntu no longer ships branch 570: nvidia-utils-570-server is a transitional package to "
        "nvidia-utils-580-server; set nvidia_driver_branch to a branch Ubuntu ships "
        '(nvidia_driver_branch: "580" or newer)'
    ]
    r = plan(
        tmp_path,
        NOBLE,
        **driver_vars(),
        _nvidia_driver_policy={"stdout": policy_text},
        _nvidia_driver_utils_show={"stdout": (APT / "noble-show-utils-580.txt").read_text()},
    )
    assert r["plan"]["errors"] == []


def test_ubuntu_nvswitch_adds_fabricmanager(tmp_path):
    r = plan(
        tmp_path,
        NOBLE,
        **driver_vars({"nvswitch": True}, pci=H100_PCI),
        _nvidia_driver_policy={"stdout": (APT / "noble-policy.txt").read_text()},
    )
    assert r["plan"]["packages"][-2:] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]


def test_pre_turing_gpu_gets_proprietary_modules(tmp_path):
    v100 = [{"address": "0000:00:05.0", "device_id": "0x1db4", "class": "0x030200", "kind": "gpu"}]
    r = plan(tmp_path, NOBLE, **driver_vars(pci=v100), _nvidia_driver_policy={"stdout": ""})
    assert r["kmod"] == "proprietary"


def test_auto_keeps_the_loaded_kind_of_the_wanted_branch(tmp_path):
    loaded = {"present": True, "driver_branch": "580", "kernel_module": "proprietary"}
    r = plan(tmp_path, NOBLE, **driver_vars(loaded, pci=H100_PCI), _nvidia_driver_policy={"stdout": ""})
    assert r["kmod"] == "proprietary"


# --- Debian 12, distribution packages (real apt answers) -------------------------------------------


def test_debian_branch_535_proprietary_dkms(tmp_path):
    r = plan(
        tmp_path,
        BOOKWORM,
        templates={"nvidia-components.sources.j2": ""},
        _kmod="proprietary",
        **driver_vars(),
        nvidia_driver_branch="535",
        _nvidia_driver_dpkg={"stdout": dpkg("linux-image-amd64 install installed")},
        _nvidia_driver_policy={"stdout": (APT / "bookworm-policy.txt").read_text()},
        _nvidia_driver_indextargets={"stdout": (APT / "bookworm-indextargets.txt").read_text()},
    )
    p = r["plan"]
    assert p["errors"] == []
    assert p["packages"] == ["nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced"]
    assert p["headers"] == ["linux-headers-6.1.0-50-amd64", "linux-headers-amd64"]
    assert p["dkms"] is True and p["signed"] is False
    assert "nvidia-open-kernel-dkms" in r["query"]
    assert "Components: contrib non-free non-free-firmware\n" in r["files"]["nvidia-components.sources.j2"]
    assert (
        "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        in r["files"]["nvidia-components.sources.j2"]
    )


def test_debian_wrong_branch_names_the_shipped_one(tmp_path):
    r = plan(
        tmp_path,
        BOOKWORM,
        _kmod="proprietary",
        **driver_vars(),
        _nvidia_driver_policy={"stdout": (APT / "bookworm-policy.txt").read_text()},
    )
    assert r["plan"]["errors"] == [
        "Debian bookworm ships driver branch 535 (535.261.03-1), not nvidia_driver_branch 580: "
        'set nvidia_driver_branch: "535" or nvidia_driver_source: cuda_repo'
    ]


def test_debian_open_modules_from_contrib(tmp_path):
    """Debian 12 has the open modules of branch 535 in contrib: auto chooses them for Turing and newer."""
    r = plan(
        tmp_path,
        BOOKWORM,
        **driver_vars(pci=H100_PCI),
        nvidia_driver_branch="535",
        _nvidia_driver_policy={"stdout": (APT / "bookworm-policy.txt").read_text()},
    )
    assert r["kmod"] == "open"
    assert r["plan"]["errors"] == []
    assert r["plan"]["packages"] == [
        "nvidia-open-kernel-dkms",
        "nvidia-smi",
        "libcuda1",
        "nvidia-persistenced",
    ]


def test_debian_open_modules_missing_is_an_error_when_asked_for(tmp_path):
    text = (APT / "bookworm-policy.txt").read_text()
    start = text.index("nvidia-open-kernel-dkms:")
    end = text.index("nvidia-smi:")
    r = plan(
        tmp_path,
        BOOKWORM,
        _kmod="open",
        **driver_vars(),
        nvidia_driver_branch="535",
        _nvidia_driver_policy={"stdout": text[:start] + text[end:]},
    )
    assert r["plan"]["errors"] == [
        "nvidia-open-kernel-dkms is not in the configured repositories (Debian bookworm contrib/non-free)"
    ]


def test_debian_nvswitch_needs_nvidia_repository(tmp_path):
    r = plan(
        tmp_path,
        BOOKWORM,
        _kmod="proprietary",
        **driver_vars({"nvswitch": True}),
        nvidia_driver_branch="535",
        _nvidia_driver_policy={"stdout": (APT / "bookworm-policy.txt").read_text()},
    )
    assert "ships no nvidia-fabricmanager: use nvidia_driver_source: cuda_repo" in r["plan"]["errors"][0]


# --- NVIDIA's CUDA repository and mirrors (hand-written apt answers: the repository is not reachable) --


REPO_580 = {
    "nvidia-driver-pinning-580": "580.95.05-1",
    "nvidia-open": "580.95.05-1",
    "cuda-drivers": "580.95.05-1",
    "nvidia-fabricmanager": "580.95.05-1",
    "linux-headers-6.8.0-151-generic": "6.8.0-151.151",
}


@pytest.mark.parametrize(
    ("facts", "distro", "arch"),
    [
        (NOBLE, "ubuntu2404", "x86_64"),
        ({**NOBLE, "distribution_version": "22.04", "distribution_release": "jammy"}, "ubuntu2204", "x86_64"),
        ({**NOBLE, "architecture": "aarch64"}, "ubuntu2404", "sbsa"),
        (BOOKWORM, "debian12", "x86_64"),
    ],
)
def test_cuda_repo_urls_and_source_file(tmp_path, facts, distro, arch):
    r = plan(
        tmp_path,
        facts,
        templates={"cuda.sources.j2": ""},
        **driver_vars(pci=H100_PCI),
        nvidia_driver_source="cuda_repo",
        _nvidia_driver_policy={"stdout": policy(REPO_580)},
    )
    base = f"https://developer.download.nvidia.com/compute/cuda/repos/{distro}/{arch}/"
    assert r["repo_url"] == base
    assert r["keyring_url"] == base + "cuda-keyring_1.1-1_all.deb"
    assert r["keyring_list"] == f"/etc/apt/sources.list.d/cuda-{distro}-{arch}.list"
    text = r["files"]["cuda.sources.j2"]
    assert (
        f"\nTypes: deb\nURIs: {base}\nSuites: /\nSigned-By: /usr/share/keyrings/cuda-archive-keyring.gpg\n"
        in text
    )
    p = r["plan"]
    assert p["packages"] == ["nvidia-open"]
    assert p["pin_package"] == "nvidia-driver-pinning-580"
    assert p["dkms"] is True and p["signed"] is False
    for name in ("nvidia-driver-pinning-580", "nvidia-open", "cuda-drivers", "nvidia-fabricmanager-580"):
        assert name in r["query"]


def test_cuda_repo_proprietary_and_fabricmanager(tmp_path):
    r = plan(
        tmp_path,
        NOBLE,
        _kmod="proprietary",
        **driver_vars({"nvswitch": True}, pci=H100_PCI),
        nvidia_driver_source="cuda_repo",
        nvidia_driver_kernel_module="proprietary",
        _nvidia_driver_policy={"stdout": policy({**REPO_580, "nvidia-fabricmanager-580": "580.95.05-1"})},
    )
    assert r["plan"]["packages"] == ["cuda-drivers", "nvidia-fabricmanager-580"]
    assert r["plan"]["headers"] == ["linux-headers-6.8.0-151-generic"]


def test_cuda_repo_without_pinning_package_renders_pin_file(tmp_path):
    """Branches older than the pinning packages: the role writes its own apt preferences."""
    answers = {k: v.replace("580.95.05", "570.195.03") for k, v in REPO_580.items() if "pinning" not in k}
    r = plan(
        tmp_path,
        NOBLE,
        templates={"nvidia-driver-pin.pref.j2": ""},
        **driver_vars(pci=H100_PCI),
        nvidia_driver_source="cuda_repo",
        nvidia_driver_branch="570",
        _nvidia_driver_policy={"stdout": policy(answers)},
    )
    assert r["plan"]["pin_package"] == ""
    text = r["files"]["nvidia-driver-pin.pref.j2"]
    stanzas = [s for s in text.split("\n\n") if "Pin:" in s]
    assert len(stanzas) == 2
    first = dict(line.split(": ", 1) for line in stanzas[0].splitlines() if not line.startswith("#"))
    second = dict(line.split(": ", 1) for line in stanzas[1].splitlines() if not line.startswith("#"))
    assert first["Pin"] == "version 570.*" and first["Pin-Priority"] == "1000"
    assert second["Pin"] == "version *" and second["Pin-Priority"] == "-1"
    packages = first["Package"].split()
    assert packages == second["Package"].split()
    for pkg in (
        "nvidia-open",
        "cuda-drivers",
        "libnvidia-compute*",
        "nvidia-dkms-*",
        "nvidia-fabricmanager*",
    ):
        assert pkg in packages
    # The container toolkit (libnvidia-container*, nvidia-container-toolkit) has its own versions: not pinned.
    for other in ("libnvidia-container1", "libnvidia-container-tools", "nvidia-container-toolkit"):
        assert not any(fnmatch.fnmatchcase(other, p) for p in packages), other
    for driver_lib in (
        "libnvidia-compute-570",
        "libnvidia-gl-570",
        "libnvidia-cfg1-570",
        "libnvidia-nscq-570",
    ):
        assert any(fnmatch.fnmatchcase(driver_lib, p) for p in packages), driver_lib


def test_cuda_repo_missing_package(tmp_path):
    r = plan(
        tmp_path,
        NOBLE,
        **driver_vars(),
        nvidia_driver_source="cuda_repo",
        _nvidia_driver_policy={"stdout": ""},
    )
    assert r["plan"]["errors"] == [
        "nvidia-open is not in https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/ "
        "(nvidia_driver_source: cuda_repo)"
    ]


def test_mirror_url(tmp_path):
    r = plan(
        tmp_path,
        BOOKWORM,
        templates={"cuda.sources.j2": ""},
        **driver_vars(),
        nvidia_driver_source="mirror",
        nvidia_driver_mirror_url="http://mirror.example.internal/nvidia/cuda/repos/",
        _nvidia_driver_policy={"stdout": policy(REPO_580)},
    )
    assert r["repo_url"] == "http://mirror.example.internal/nvidia/cuda/repos/debian12/x86_64/"
    assert (
        r["keyring_url"]
        == "http://mirror.example.internal/nvidia/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb"
    )
    assert (
        "URIs: http://mirror.example.internal/nvidia/cuda/repos/debian12/x86_64/\n"
        in r["files"]["cuda.sources.j2"]
    )


# --- held packages ---------------------------------------------------------------------------------


def test_branch_change_releases_old_holds(tmp_path):
    r = render(
        tmp_path,
        "nvidia_driver",
        NOBLE,
        {
            **driver_vars(),
            "_nvidia_driver_dpkg": {
                "stdout": dpkg(
                    "nvidia-headless-no-dkms-570-server-open hold installed",
                    "nvidia-utils-570-server hold installed",
                    "nvidia-dkms-570-server-open hold installed",
                    "libnvidia-container1 hold installed",
                    "nvidia-firmware-570-server-570.211.01 install installed",
                    "vim hold installed",
                    "nvidia-utils-580-server install installed",
                )
            },
            "_nvidia_driver_policy": {"stdout": (APT / "noble-policy.txt").read_text()},
        },
        {
            "stale": "_nvidia_driver_stale_holds",
            "held": "_nvidia_driver_held",
            "replaced": "_nvidia_driver_old_branch_packages",
            "old": "_nvidia_driver_old_branches",
        },
        set_facts={"_nvidia_driver_kmod": "open", "_nvidia_driver_plan": "{{ _nvidia_driver_plan_apt }}"},
    )
    assert r["old"] == ["570"], r
    # What apt's conflicts may leave behind (here everything, as nothing ran): the old branch only.
    assert r["replaced"] == [
        "nvidia-headless-no-dkms-570-server-open",
        "nvidia-utils-570-server",
        "nvidia-dkms-570-server-open",
        "nvidia-firmware-570-server-570.211.01",
    ], r
    # Only NVIDIA driver packages outside the new plan; the admin's own holds stay.
    assert sorted(r["stale"]) == [
        "nvidia-dkms-570-server-open",
        "nvidia-headless-no-dkms-570-server-open",
        "nvidia-utils-570-server",
    ]


# --- "do nothing when the wanted branch is loaded and held" ----------------------------------------

LOADED_580 = {"present": True, "driver_branch": "580", "kernel_module": "open"}


@pytest.mark.parametrize(
    ("gpu", "held", "kernel_module", "settled"),
    [
        (LOADED_580, ["nvidia-utils-580-server hold installed"], "auto", True),
        (LOADED_580, ["nvidia-utils-580-server hold installed"], "open", True),
        (LOADED_580, ["nvidia-utils-580-server hold installed"], "proprietary", False),  # wrong kind loaded
        (LOADED_580, ["nvidia-utils-580-server install installed"], "auto", False),  # not held
        (LOADED_580, ["libnvidia-container1 hold installed"], "auto", False),  # not a driver package
        ({**LOADED_580, "driver_branch": "570"}, ["nvidia-utils-570-server hold installed"], "auto", False),
        (NO_GPU, ["nvidia-utils-580-server hold installed"], "auto", False),
    ],
)
def test_settled(tmp_path, gpu, held, kernel_module, settled):
    r = render(
        tmp_path,
        "nvidia_driver",
        NOBLE,
        {
            **driver_vars(gpu, pci=H100_PCI),
            "nvidia_driver_kernel_module": kernel_module,
            "_nvidia_driver_dpkg": {"stdout": dpkg(*held)},
        },
        {"settled": "_nvidia_driver_is_settled | bool"},
        set_facts={
            "_nvidia_driver_kmod": "{{ _nvidia_driver_kmod_wanted | trim }}",
            "_nvidia_driver_loaded_ok": "{{ _nvidia_driver_loaded_wanted }}",
        },
    )
    assert r["settled"] is settled
