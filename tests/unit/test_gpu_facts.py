"""gpu_facts parsing, on the real H100 captures and on variants derived from them (fixtures/nvidia/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))

import _nvidia_smi as smi  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "nvidia"
REAL = FIX / "h100-driver580-ubuntu2404"
MULTI = FIX / "h100x8-nvswitch"
MIG = FIX / "h100-mig"
# The --query-gpu fields of the real capture, in order, read from the command in its README.
CAPTURE_FIELDS = re.search(r"--query-gpu=([a-z_.,]+) ", (REAL / "README.md").read_text()).group(1).split(",")


def _project(csv_text: str, wanted: list[str]) -> str:
    """The capture's CSV rows reduced to the wanted fields, as nvidia-smi would print them."""
    lines = []
    for line in csv_text.splitlines():
        cols = [c.strip() for c in line.split(",")]
        row = dict(zip(CAPTURE_FIELDS, cols, strict=True))
        lines.append(", ".join(row[f] for f in wanted))
    return "\n".join(lines) + "\n"


class FakeSmi:
    """Answers nvidia-smi command lines from a capture directory (stands in for the GPU this host lacks)."""

    def __init__(self, capture: Path, xml_dir: Path | None = None, no_compute_cap: bool = False) -> None:
        self.capture = capture
        self.xml_dir = xml_dir or capture
        self.no_compute_cap = no_compute_cap
        self.calls: list[list[str]] = []

    def __call__(self, args):
        args = list(args)
        self.calls.append(args)
        if args[1:] == ["-q", "-x"]:
            return 0, (self.xml_dir / "nvidia-smi-q.xml").read_text(), ""
        query = next(a for a in args if a.startswith("--query-gpu="))
        fields = query.split("=", 1)[1].split(",")
        if self.no_compute_cap and "compute_cap" in fields:
            return 2, 'Field "compute_cap" is not a valid field to query.\n\n', ""
        return 0, _project((self.capture / "query-gpu.csv").read_text(), fields), ""


def _sysfs(tmp_path: Path, devices: list[tuple[str, str, str, str]]) -> Path:
    """A /sys/bus/pci/devices tree with (address, vendor, device, class) entries."""
    root = tmp_path / "sys"
    for address, vendor, device, pci_class in devices:
        d = root / "bus" / "pci" / "devices" / address
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
        (d / "class").write_text(pci_class + "\n")
    return root


def _proc(tmp_path: Path, text: str | None) -> Path:
    root = tmp_path / "proc"
    (root / "driver" / "nvidia").mkdir(parents=True)
    if text is not None:
        (root / "driver" / "nvidia" / "version").write_text(text)
    return root


H100_PCI = [
    ("0000:00:00.0", "0x8086", "0x1237", "0x060000"),
    ("0000:00:06.0", "0x10de", "0x2330", "0x030200"),
]
EXPECTED_H100 = {
    "index": 0,
    "uuid": "GPU-e618c5b6-2d0a-7bf0-9603-6ab8ded29587",
    "name": "NVIDIA H100 80GB HBM3",
    "pci_bus_id": "00000000:00:06.0",
    "memory_total_mib": 81559,
    "memory_used_mib": 0,
    "compute_capability": "9.0",
    "mig_mode": "disabled",
    "persistence_mode": True,
}
GPU_KEYS = {
    "present",
    "reason",
    "driver_version",
    "driver_branch",
    "cuda_version",
    "kernel_module",
    "count",
    "gpus",
    "nvswitch",
}


# --- the parsers, on the real captures -------------------------------------------------------------


def test_query_gpu_real_capture():
    gpus = smi.parse_query_gpu((REAL / "query-gpu.csv").read_text(), CAPTURE_FIELDS)
    assert gpus == [EXPECTED_H100]


def test_query_gpu_wrong_column_count_is_an_error():
    with pytest.raises(ValueError, match="has 3 columns, expected 9"):
        smi.parse_query_gpu("0, GPU-x, H100\n")


def test_query_gpu_not_available_values_become_none():
    line = "0, GPU-x, Tesla T4, 00000000:00:04.0, 15360, [N/A], 7.5, Disabled, [N/A]\n"
    (gpu,) = smi.parse_query_gpu(line)
    assert gpu["memory_used_mib"] is None
    assert gpu["mig_mode"] is None
    assert gpu["persistence_mode"] is False
    assert gpu["compute_capability"] == "7.5"


def test_xml_real_capture():
    data = smi.parse_smi_xml((REAL / "nvidia-smi-q.xml").read_text())
    assert data["driver_version"] == "580.159.04"
    assert data["cuda_version"] == "13.0"
    (gpu,) = data["gpus"]
    assert gpu["uuid"] == EXPECTED_H100["uuid"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["pci_bus_id"] == "00000000:00:06.0"
    assert gpu["memory_total_mib"] == 81559
    assert gpu["memory_used_mib"] == 0
    assert gpu["mig_mode"] == "disabled"
    assert gpu["mig_devices"] == 0
    assert gpu["persistence_mode"] is True
    assert gpu["fabric_state"] is None


def test_xml_errors():
    with pytest.raises(ValueError, match="invalid XML"):
        smi.parse_smi_xml("NVIDIA-SMI has failed")
    with pytest.raises(ValueError, match="expected <nvidia_smi_log>"):
        smi.parse_smi_xml("<other/>")


def test_proc_version_open_real_capture():
    assert smi.parse_proc_version((REAL / "proc-version.txt").read_text()) == {
        "driver_version": "580.159.04",
        "kernel_module": "open",
    }


def test_proc_version_proprietary():
    # The proprietary module's first line (format of the 535 branch on Debian 12).
    text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Wed Jul 30 17:37:23 UTC 2025\n"
    assert smi.parse_proc_version(text) == {"driver_version": "535.261.03", "kernel_module": "proprietary"}


def test_proc_version_unknown():
    assert smi.parse_proc_version("garbage\n") == {"driver_version": None, "kernel_module": None}


@pytest.mark.parametrize(
    ("version", "branch"), [("580.159.04", "580"), ("535.261.03", "535"), ("470.82", "470"), (None, None)]
)
def test_driver_branch(version, branch):
    assert smi.driver_branch(version) == branch


def test_header_capture_agrees_with_query():
    """The human-readable header capture names the same driver and CUDA version the XML does."""
    header = (REAL / "nvidia-smi.txt").read_text()
    xml = smi.parse_smi_xml((REAL / "nvidia-smi-q.xml").read_text())
    assert f"Driver Version: {xml['driver_version']}" in header
    assert f"CUDA Version: {xml['cuda_version']}" in header


# --- gather(): the whole module logic --------------------------------------------------------------


def test_gather_real_h100(tmp_path):
    fake = FakeSmi(REAL)
    gpu, pci = smi.gather(
        fake,
        "/usr/bin/nvidia-smi",
        proc_root=str(_proc(tmp_path, (REAL / "proc-version.txt").read_text())),
        sysfs_root=str(_sysfs(tmp_path, H100_PCI)),
        dev_root=str(tmp_path),
    )
    assert set(gpu) == GPU_KEYS
    assert gpu == {
        "present": True,
        "reason": None,
        "driver_version": "580.159.04",
        "driver_branch": "580",
        "cuda_version": "13.0",
        "kernel_module": "open",
        "count": 1,
        "gpus": [EXPECTED_H100],
        "nvswitch": False,
    }
    assert set(gpu["gpus"][0]) == set(EXPECTED_H100)
    assert pci == [{"address": "0000:00:06.0", "device_id": "0x2330", "class": "0x030200", "kind": "gpu"}]
    assert fake.calls[0] == smi.query_gpu_command("/usr/bin/nvidia-smi")
    assert fake.calls[1] == ["/usr/bin/nvidia-smi", "-q", "-x"]


def test_gather_eight_gpus_with_nvswitch(tmp_path):
    pci = [(f"0000:{b.lower()}:00.0", "0x10de", "0x2330", "0x030200") for b in ("18", "2a", "3a", "5d")]
    pci += [(f"0000:0{n}:00.0", "0x10de", "0x22a3", "0x068000") for n in range(5, 9)]
    gpu, devices = smi.gather(
        FakeSmi(MULTI),
        "/usr/bin/nvidia-smi",
        proc_root=str(_proc(tmp_path, (REAL / "proc-version.txt").read_text())),
        sysfs_root=str(_sysfs(tmp_path, pci)),
        dev_root=str(tmp_path),
    )
    assert gpu["present"] is True
    assert gpu["count"] == 8
    assert [g["index"] for g in gpu["gpus"]] == list(range(8))
    assert len({g["uuid"] for g in gpu["gpus"]}) == 8
    assert gpu["gpus"][2]["memory_used_mib"] == 70123
    assert gpu["gpus"][7]["pci_bus_id"] == "00000000:DB:00.0"
    assert gpu["nvswitch"] is True
    assert sorted({d["kind"] for d in devices}) == ["gpu", "nvswitch"]


def test_gather_orders_gpus_by_index(tmp_path):
    """nvidia-smi may print rows in any order (CUDA_DEVICE_ORDER); the facts list them by index."""

    class Reversed(FakeSmi):
        def __call__(self, args):
            rc, out, err = super().__call__(args)
            if any(a.startswith("--query-gpu=") for a in args):
                out = "\n".join(reversed(out.splitlines())) + "\n"
            return rc, out, err

    gpu = smi.gather(Reversed(MULTI), "nvidia-smi", proc_root=str(tmp_path), sysfs_root=str(tmp_path))[0]
    assert [g["index"] for g in gpu["gpus"]] == list(range(8))


def test_gather_nvswitch_device_node(tmp_path):
    (tmp_path / "nvidia-nvswitchctl").write_text("")
    gpu = smi.gather(FakeSmi(REAL), "nvidia-smi", proc_root=str(tmp_path), dev_root=str(tmp_path))[0]
    assert gpu["nvswitch"] is True


def test_gather_mig(tmp_path):
    gpu = smi.gather(FakeSmi(MIG), "nvidia-smi", proc_root=str(tmp_path), sysfs_root=str(tmp_path))[0]
    assert gpu["count"] == 1
    assert gpu["gpus"][0]["mig_mode"] == "enabled"
    assert gpu["gpus"][0]["memory_used_mib"] == 26
    xml = smi.parse_smi_xml((MIG / "nvidia-smi-q.xml").read_text())
    assert xml["gpus"][0]["mig_devices"] == 2


def test_gather_old_driver_without_compute_cap(tmp_path):
    fake = FakeSmi(REAL, no_compute_cap=True)
    gpu = smi.gather(fake, "nvidia-smi", proc_root=str(tmp_path), sysfs_root=str(tmp_path))[0]
    assert gpu["present"] is True
    assert gpu["gpus"][0]["compute_capability"] is None
    assert gpu["gpus"][0]["memory_total_mib"] == 81559
    assert len([c for c in fake.calls if any(a.startswith("--query-gpu") for a in c)]) == 2


def test_gather_xml_missing_keeps_query_answer(tmp_path):
    def run(args):
        if args[1:] == ["-q", "-x"]:
            return 0, "not xml", ""
        return FakeSmi(REAL)(args)

    gpu = smi.gather(run, "nvidia-smi", proc_root=str(tmp_path), sysfs_root=str(tmp_path))[0]
    assert gpu["present"] is True
    assert gpu["cuda_version"] is None
    assert gpu["driver_version"] is None  # neither XML nor /proc told it


# --- no GPU, no driver, broken driver: present false and why, never an exception --------------------


def _absent(tmp_path, run, nvidia_smi, pci=(), proc_text=None):
    gpu = smi.gather(
        run,
        nvidia_smi,
        proc_root=str(_proc(tmp_path, proc_text)),
        sysfs_root=str(_sysfs(tmp_path, list(pci))),
        dev_root=str(tmp_path),
    )[0]
    assert set(gpu) == GPU_KEYS
    assert gpu["present"] is False
    assert gpu["count"] == 0
    assert gpu["gpus"] == []
    return gpu


def _never(args):
    raise AssertionError(f"nothing should run, got {args}")


def test_no_gpu_no_driver(tmp_path):
    gpu = _absent(tmp_path, _never, None)
    assert gpu["reason"] == "no NVIDIA GPU: none on the PCI bus and nvidia-smi not found"
    assert gpu["driver_version"] is None
    assert gpu["kernel_module"] is None


def test_gpu_without_driver(tmp_path):
    gpu = _absent(tmp_path, _never, None, pci=H100_PCI)
    assert gpu["reason"].startswith("1 NVIDIA GPU(s) on the PCI bus but no NVIDIA driver")


def test_module_loaded_without_utilities(tmp_path):
    gpu = _absent(tmp_path, _never, None, pci=H100_PCI, proc_text=(REAL / "proc-version.txt").read_text())
    assert "kernel module 580.159.04 is loaded but nvidia-smi is not installed" in gpu["reason"]
    assert gpu["driver_version"] == "580.159.04"
    assert gpu["driver_branch"] == "580"
    assert gpu["kernel_module"] == "open"


@pytest.mark.parametrize(
    ("rc", "output", "expected"),
    [
        (
            9,
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that "
            "the latest NVIDIA driver is installed and running.\n\n",
            "kernel module is not loaded (reboot required",
        ),
        (
            18,
            "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.178\n",
            "version mismatch",
        ),
        (6, "No devices were found\n", "driver is loaded but found no GPU"),
        (4, "Failed to initialize NVML: Insufficient Permissions\n", "insufficient permissions"),
        (
            255,
            "Failed to initialize NVML: Unknown Error\n",
            "Failed to initialize NVML: Unknown Error: the NVIDIA",
        ),
        (124, "", "exit code 124"),
    ],
)
def test_driver_failures(tmp_path, rc, output, expected):
    gpu = _absent(tmp_path, lambda args: (rc, output, ""), "/usr/bin/nvidia-smi", pci=H100_PCI)
    assert expected in gpu["reason"]


def test_driver_installed_without_gpu(tmp_path):
    """A CI container or image build: the driver packages are there, no GPU and no module."""
    msg = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    gpu = _absent(tmp_path, lambda args: (9, msg, ""), "/usr/bin/nvidia-smi", pci=H100_PCI[:1])
    assert gpu["reason"].startswith("no NVIDIA GPU on the PCI bus (nvidia-smi cannot communicate")


def test_empty_query_output(tmp_path):
    gpu = _absent(tmp_path, lambda args: (0, "", ""), "nvidia-smi")
    assert gpu["reason"] == "nvidia-smi lists no GPU"


def test_garbled_query_output(tmp_path):
    gpu = _absent(tmp_path, lambda args: (0, "0, oops\n", ""), "nvidia-smi")
    assert gpu["reason"].startswith("cannot parse nvidia-smi output")


# --- PCI helpers ------------------------------------------------------------------------------------


def test_scan_pci_missing_sysfs(tmp_path):
    assert smi.scan_pci(str(tmp_path / "nothing")) == []


@pytest.mark.parametrize(
    ("device_id", "open_ok"),
    [("0x2330", True), ("0x1eb8", True), ("0x1e02", True), ("0x1db4", False), ("0x15f8", False)],
)
def test_supports_open_modules(device_id, open_ok):
    # 0x2330 H100, 0x1eb8 T4 (Turing), 0x1e02 TITAN RTX, 0x1db4 V100 (Volta), 0x15f8 P100 (Pascal)
    devices = [{"kind": "gpu", "device_id": device_id}, {"kind": "other", "device_id": "0x0001"}]
    assert smi.supports_open_modules(devices) is open_ok


def test_derived_fixtures_up_to_date():
    assert subprocess.run([sys.executable, str(FIX / "derive.py"), "--check"], check=False).returncode == 0


# --- the module itself, run by Ansible on this host ----------------------------------------------


def _run_module(args: str, env_path: str | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
    )
    if env_path is not None:
        env["PATH"] = env_path
    ansible = Path(sys.executable).parent / "ansible"
    proc = subprocess.run(
        [str(ansible), "localhost", "-c", "local", "-m", "selfhost.textgen.gpu_facts", "-a", args, "--check"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    data = json.loads(proc.stdout)
    return data["plays"][0]["tasks"][0]["hosts"]["localhost"]


needs_collection = pytest.mark.skipif(
    not (ROOT / ".build" / "collections" / "ansible_collections" / "selfhost" / "textgen").exists(),
    reason="run `make collection` first",
)


@needs_collection
def test_module_on_this_host_without_gpu():
    """This development host has no GPU and no driver: the module says so, in check mode, unchanged."""
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this host has an NVIDIA driver")
    result = _run_module("", env_path="/usr/bin:/bin")
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["gpu"]["present"] is False
    assert result["gpu"]["reason"] == "no NVIDIA GPU: none on the PCI bus and nvidia-smi not found"
    assert result["ansible_facts"]["textgen_gpu"] == result["gpu"]


@needs_collection
def test_module_with_capture_replaying_nvidia_smi(tmp_path):
    """The real module, with a stand-in nvidia-smi that replays the H100 captures (no GPU here)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_gpu_facts as t\n"
        "if sys.argv[1] == '-q':\n"
        "    sys.stdout.write((t.REAL / 'nvidia-smi-q.xml').read_text())\n"
        "else:\n"
        "    fields = sys.argv[1].split('=', 1)[1].split(',')\n"
        "    sys.stdout.write(t._project((t.REAL / 'query-gpu.csv').read_text(), fields))\n"
    )
    fake.chmod(0o755)
    result = _run_module(f"nvidia_smi={fake}")
    assert result.get("failed") is not True, result
    gpu = result["gpu"]
    assert gpu["present"] is True
    assert gpu["driver_version"] == "580.159.04"
    assert gpu["cuda_version"] == "13.0"
    assert gpu["gpus"] == [EXPECTED_H100]


@needs_collection
def test_module_rejects_missing_binary(tmp_path):
    result = _run_module(f"nvidia_smi={tmp_path}/nope")
    assert result["failed"] is True
    assert "is not an executable file" in result["msg"]
