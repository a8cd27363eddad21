# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parse NVIDIA driver state: ``nvidia-smi``, ``/proc/driver/nvidia/version`` and PCI sysfs.

Standard library only (this runs on the managed host). Used by the ``gpu_facts`` module and
unit-tested on real captures in ``tests/unit/fixtures/nvidia/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this file also runs on Python 3.8 targets
    from collections.abc import Callable, Sequence

    Runner = Callable[[Sequence[str]], tuple[int, str, str]]

NVIDIA_PCI_VENDOR = "0x10de"
# PCI base classes: 0x03 display controller (GPUs: 0x0300 VGA, 0x0302 3D); NVSwitch is 0x0680 (bridge, other).
_PCI_CLASS_DISPLAY = "0x03"
_PCI_CLASS_NVSWITCH = "0x0680"
# The oldest Turing PCI device id (TU102). Every NVIDIA GPU from Turing on has an id >= this one; the open
# kernel modules support Turing and newer only.
TURING_FIRST_DEVICE_ID = 0x1E00

QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "memory.total",
    "memory.used",
    "compute_cap",
    "persistence_mode",
    "mig.mode.current",
)

_NA = {"", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]", "unknown error"}


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value.lower() in _NA else value


def _to_int(value: str | None) -> int | None:
    value = _clean(value)
    if value is None:
        return None
    match = re.match(r"^(\d+)", value)
    return int(match.group(1)) if match else None


def _enabled(value: str | None) -> bool | None:
    value = _clean(value)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("enabled", "on", "yes"):
        return True
    if lowered in ("disabled", "off", "no"):
        return False
    return None


def _mode(value: str | None) -> str | None:
    flag = _enabled(value)
    if flag is None:
        return None
    return "enabled" if flag else "disabled"


def query_gpu_command(nvidia_smi: str, fields: Sequence[str] = QUERY_FIELDS) -> list[str]:
    """The ``nvidia-smi --query-gpu`` command line that ``parse_query_gpu`` reads."""
    return [nvidia_smi, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]


def parse_query_gpu(text: str, fields: Sequence[str] = QUERY_FIELDS) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`` output.

    Returns one dict per GPU with the keys of the ``gpu_facts`` ``gpus`` list.
    Raises ValueError on a line with the wrong number of columns.
    """
    gpus: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # GPU names contain no commas; nvidia-smi separates columns with ", ".
        cols = [c.strip() for c in line.split(",")]
        if len(cols) != len(fields):
            raise ValueError(
                f"nvidia-smi --query-gpu line {lineno} has {len(cols)} columns, "
                f"expected {len(fields)}: {line!r}"
            )
        row = {field: cols[pos] for pos, field in enumerate(fields)}
        gpus.append(
            {
                "index": _to_int(row.get("index")),
                "uuid": _clean(row.get("uuid")),
                "name": _clean(row.get("name")),
                "pci_bus_id": _clean(row.get("pci.bus_id")),
                "memory_total_mib": _to_int(row.get("memory.total")),
                "memory_used_mib": _to_int(row.get("memory.used")),
                "compute_capability": _clean(row.get("compute_cap")),
                "mig_mode": _mode(row.get("mig.mode.current")),
                "persistence_mode": _enabled(row.get("persistence_mode")),
            }
        )
    return gpus


def _text(node: ET.Element | None, path: str) -> str | None:
    if node is None:
        return None
    found = node.find(path)
    if found is None or found.text is None:
        return None
    return _clean(found.text)


def parse_smi_xml(text: str) -> dict[str, Any]:
    """Parse ``nvidia-smi -q -x``: driver and CUDA versions, and per-GPU details keyed by UUID.

    Raises ValueError when the text is not an ``nvidia_smi_log`` document.
    """
    # The document names a DTD that is not shipped with it; ElementTree never fetches external entities.
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"nvidia-smi -q -x returned invalid XML: {exc}") from exc
    if root.tag != "nvidia_smi_log":
        raise ValueError(f"nvidia-smi -q -x returned <{root.tag}>, expected <nvidia_smi_log>")
    gpus: list[dict[str, Any]] = []
    for gpu in root.findall("gpu"):
        mig_devices = gpu.find("mig_devices")
        gpus.append(
            {
                "uuid": _text(gpu, "uuid"),
                "name": _text(gpu, "product_name"),
                "pci_bus_id": _text(gpu, "pci/pci_bus_id") or _clean(gpu.get("id")),
                "minor_number": _to_int(_text(gpu, "minor_number")),
                "memory_total_mib": _to_int(_text(gpu, "fb_memory_usage/total")),
                "memory_used_mib": _to_int(_text(gpu, "fb_memory_usage/used")),
                "mig_mode": _mode(_text(gpu, "mig_mode/current_mig")),
                "mig_devices": len(mig_devices.findall("mig_device")) if mig_devices is not None else 0,
                "persistence_mode": _enabled(_text(gpu, "persistence_mode")),
                "fabric_state": _text(gpu, "fabric/state"),
            }
        )
    return {
        "driver_version": _text(root, "driver_version"),
        "cuda_version": _text(root, "cuda_version"),
        "gpus": gpus,
    }


_PROC_VERSION_RE = re.compile(
    r"NVRM version:\s+NVIDIA UNIX\s+(?P<open>Open\s+)?(?:Kernel Module for\s+)?(?P<arch>\S+)?"
    r"(?:\s+Kernel Module)?\s+(?P<version>\d+\.\d+(?:\.\d+)?)"
)


def parse_proc_version(text: str) -> dict[str, str | None]:
    """Parse ``/proc/driver/nvidia/version``: the loaded kernel module's version and kind.

    Open:        ``NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ...``
    Proprietary: ``NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Tue ...``
    """
    for line in text.splitlines():
        if not line.startswith("NVRM version:"):
            continue
        match = _PROC_VERSION_RE.search(line)
        if not match:
            break
        return {
            "driver_version": match.group("version"),
            "kernel_module": "open" if match.group("open") else "proprietary",
        }
    return {"driver_version": None, "kernel_module": None}


def driver_branch(version: str | None) -> str | None:
    """``580.159.04`` -> ``580``."""
    if not version:
        return None
    match = re.match(r"^(\d+)\.", version)
    return match.group(1) if match else None


def explain_smi_failure(rc: int, stdout: str, stderr: str) -> str:
    """A one-line reason for a failed ``nvidia-smi`` run, naming the likely cause."""
    output = " ".join((stderr + "\n" + stdout).split())
    lowered = output.lower()
    if "version mismatch" in lowered:
        return (
            "nvidia-smi: driver/library version mismatch: the loaded kernel module differs from the "
            "installed user-space libraries (reboot required to load the new module)"
        )
    if "couldn't communicate with the nvidia driver" in lowered or "driver not loaded" in lowered:
        return (
            "nvidia-smi cannot communicate with the NVIDIA driver: the kernel module is not loaded "
            "(reboot required after installing the driver, or the module failed to build/load)"
        )
    if "no devices were found" in lowered:
        return "nvidia-smi: the NVIDIA driver is loaded but found no GPU"
    if "insufficient permissions" in lowered:
        return "nvidia-smi: insufficient permissions to access the GPU device files"
    if "failed to initialize nvml" in lowered:
        detail = output[output.lower().index("failed to initialize nvml") :][:120]
        return (
            f"nvidia-smi: {detail}: the NVIDIA kernel module is not loaded or its device files are missing "
            "(reboot required after installing the driver?)"
        )
    first = output[:300] if output else "no output"
    return f"nvidia-smi failed with exit code {rc}: {first}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def scan_pci(sysfs_root: str = "/sys") -> list[dict[str, Any]]:
    """NVIDIA PCI functions from ``<sysfs_root>/bus/pci/devices``: address, device id, class and kind."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    devices: list[dict[str, Any]] = []
    for name in names:
        vendor = (_read(os.path.join(base, name, "vendor")) or "").strip().lower()
        if vendor != NVIDIA_PCI_VENDOR:
            continue
        device = (_read(os.path.join(base, name, "device")) or "").strip().lower()
        pci_class = (_read(os.path.join(base, name, "class")) or "").strip().lower()
        if pci_class.startswith(_PCI_CLASS_DISPLAY):
            kind = "gpu"
        elif pci_class.startswith(_PCI_CLASS_NVSWITCH):
            kind = "nvswitch"
        else:
            kind = "other"  # audio, USB-C and similar functions of the same card
        devices.append({"address": name, "device_id": device, "class": pci_class, "kind": kind})
    return devices


def supports_open_modules(pci_devices: Sequence[dict[str, Any]]) -> bool:
    """True when every NVIDIA GPU on the PCI bus is Turing or newer (or there is none)."""
    for dev in pci_devices:
        if dev.get("kind") != "gpu":
            continue
        try:
            if int(str(dev.get("device_id")), 16) < TURING_FIRST_DEVICE_ID:
                return False
        except ValueError:
            continue
    return True


def has_nvswitch(pci_devices: Sequence[dict[str, Any]], dev_root: str = "/dev") -> bool:
    """NVSwitch present: an NVSwitch PCI function, or the nvswitch device node the driver creates."""
    if any(dev.get("kind") == "nvswitch" for dev in pci_devices):
        return True
    return os.path.exists(os.path.join(dev_root, "nvidia-nvswitchctl"))


def empty_facts(reason: str) -> dict[str, Any]:
    return {
        "present": False,
        "reason": reason,
        "driver_version": None,
        "driver_branch": None,
        "cuda_version": None,
        "kernel_module": None,
        "count": 0,
        "gpus": [],
        "nvswitch": False,
    }


_MERGED_KEYS = ("name", "pci_bus_id", "memory_total_mib", "memory_used_mib", "mig_mode", "persistence_mode")


def _merge_gpus(query: list[dict[str, Any]], xml_gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The query rows, completed by the XML details of the same UUID where the query said N/A."""
    by_uuid = {g["uuid"]: g for g in xml_gpus if g.get("uuid")}
    merged = []
    for row in query:
        detail = by_uuid.get(row.get("uuid"), {})
        for key in _MERGED_KEYS:
            if row.get(key) is None and detail.get(key) is not None:
                row[key] = detail[key]
        merged.append(row)
    return sorted(merged, key=lambda g: (g["index"] is None, g["index"]))


def gather(
    run: Runner,
    nvidia_smi: str | None,
    proc_root: str = "/proc",
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Collect the ``gpu`` facts and the NVIDIA PCI functions.

    ``run`` executes an argument list and returns (rc, stdout, stderr); ``nvidia_smi`` is the path of
    the binary or None when it is not installed. Never raises for a host without a driver or GPU: the
    facts then say ``present: false`` and why.
    """
    pci = scan_pci(sysfs_root)
    pci_gpus = [d for d in pci if d["kind"] == "gpu"]
    nvswitch = has_nvswitch(pci, dev_root)
    proc_text = _read(os.path.join(proc_root, "driver", "nvidia", "version"))
    proc = parse_proc_version(proc_text) if proc_text else {"driver_version": None, "kernel_module": None}

    def absent(reason: str) -> dict[str, Any]:
        facts = empty_facts(reason)
        facts["driver_version"] = proc["driver_version"]
        facts["driver_branch"] = driver_branch(proc["driver_version"])
        facts["kernel_module"] = proc["kernel_module"]
        facts["nvswitch"] = nvswitch
        return facts

    if nvidia_smi is None:
        if proc["driver_version"]:
            reason = (
                f"the NVIDIA kernel module {proc['driver_version']} is loaded but nvidia-smi is not "
                "installed (install the driver's utilities package)"
            )
        elif pci_gpus:
            reason = (
                f"{len(pci_gpus)} NVIDIA GPU(s) on the PCI bus but no NVIDIA driver: nvidia-smi not found "
                "and /proc/driver/nvidia/version absent"
            )
        else:
            reason = "no NVIDIA GPU: none on the PCI bus and nvidia-smi not found"
        return absent(reason), pci

    rc, out, err = run(query_gpu_command(nvidia_smi))
    fields: Sequence[str] = QUERY_FIELDS
    if rc != 0 and "compute_cap" in (out + err) and "valid field" in (out + err).lower():
        # Drivers older than 510 do not know the compute_cap field.
        fields = tuple(f for f in QUERY_FIELDS if f != "compute_cap")
        rc, out, err = run(query_gpu_command(nvidia_smi, fields))
    if rc != 0:
        reason = explain_smi_failure(rc, out, err)
        if not pci_gpus and os.path.isdir(os.path.join(sysfs_root, "bus", "pci", "devices")):
            reason = f"no NVIDIA GPU on the PCI bus ({reason})"
        return absent(reason), pci
    try:
        gpus = parse_query_gpu(out, fields)
    except ValueError as exc:
        return absent(f"cannot parse nvidia-smi output: {exc}"), pci
    for gpu in gpus:
        gpu.setdefault("compute_capability", None)

    xml: dict[str, Any] = {"driver_version": None, "cuda_version": None, "gpus": []}
    xrc, xout, _xerr = run([nvidia_smi, "-q", "-x"])
    if xrc == 0:
        # On a parse error the CSV query has already answered; the CUDA version stays unknown.
        with contextlib.suppress(ValueError):
            xml = parse_smi_xml(xout)
    gpus = _merge_gpus(gpus, xml["gpus"])
    if not gpus:
        return absent("nvidia-smi lists no GPU"), pci

    version = xml["driver_version"] or proc["driver_version"]
    facts = {
        "present": True,
        "reason": None,
        "driver_version": version,
        "driver_branch": driver_branch(version),
        "cuda_version": xml["cuda_version"],
        "kernel_module": proc["kernel_module"],
        "count": len(gpus),
        "gpus": gpus,
        "nvswitch": nvswitch,
    }
    return facts, pci
