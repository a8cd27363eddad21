#!/usr/bin/python
# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Report NVIDIA GPUs and the loaded NVIDIA driver
version_added: "0.1.0"
description:
  - Runs C(nvidia-smi) (found on E(PATH), or in C(/usr/local/nvidia/bin)) and reads
    C(/proc/driver/nvidia/version) and the PCI devices in C(/sys/bus/pci/devices).
  - Returns the GPUs, the driver version and branch, the CUDA version the driver supports, and the
    kind of kernel module loaded (open or proprietary).
  - A host without a GPU, without a driver, or with a driver that does not answer is not an error
    for this module. It returns RV(gpu.present=false) with the reason in RV(gpu.reason).
  - Sets the fact C(textgen_gpu) to the same value as RV(gpu).
author:
  - selfhost.textgen maintainers (@selfhost)
options:
  nvidia_smi:
    description:
      - Path of the C(nvidia-smi) binary. By default it is looked up on E(PATH) and in
        C(/usr/local/nvidia/bin).
    type: path
  timeout:
    description:
      - Seconds each C(nvidia-smi) call may run before it is stopped (a GPU that fell off the bus can
        make it hang). A timeout is reported as RV(gpu.present=false) with the reason.
      - Needs the C(timeout) command from coreutils; without it the call runs unbounded.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: The module only reads; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  facts:
    support: full
    description: Sets the fact C(textgen_gpu).
notes:
  - Unit-tested on real captures of an H100 host with driver 580.159.04 (open kernel module), and on
    multi-GPU and MIG variants derived from them.
seealso:
  - name: nvidia-smi documentation
    description: The C(nvidia-smi) query interface the module uses.
    link: https://docs.nvidia.com/deploy/nvidia-smi/index.html
"""

EXAMPLES = r"""
- name: Read the GPU facts
  selfhost.textgen.gpu_facts:
  register: gpu_info

- name: Require at least two GPUs with compute capability 8.0 or newer
  ansible.builtin.assert:
    that:
      - textgen_gpu.present
      - textgen_gpu.count >= 2
      - textgen_gpu.gpus | map(attribute='compute_capability') | map('float') | min >= 8.0
    fail_msg: "{{ textgen_gpu.reason | default('not enough GPUs', true) }}"

- name: Show why there is no GPU
  ansible.builtin.debug:
    msg: "{{ gpu_info.gpu.reason }}"
  when: not gpu_info.gpu.present
"""

RETURN = r"""
gpu:
  description: The GPUs and the driver. Also set as the fact C(textgen_gpu).
  returned: always
  type: dict
  contains:
    present:
      description: At least one GPU answers through a working driver.
      type: bool
      sample: true
    reason:
      description: Why RV(gpu.present) is false (no GPU on the PCI bus, no driver, module not loaded,
        driver/library version mismatch, ...); null when a GPU is present.
      type: str
      sample: "no NVIDIA GPU: none on the PCI bus and nvidia-smi not found"
    driver_version:
      description: The driver version, from C(nvidia-smi), else from the loaded kernel module; null when none.
      type: str
      sample: "580.159.04"
    driver_branch:
      description: The driver branch (the major version).
      type: str
      sample: "580"
    cuda_version:
      description: The highest CUDA version the driver supports (not the toolkit's).
      type: str
      sample: "13.0"
    kernel_module:
      description: The loaded kernel module, C(open) or C(proprietary); null when none is loaded.
      type: str
      sample: open
    count:
      description: The number of GPUs.
      type: int
      sample: 1
    gpus:
      description: One entry per GPU, ordered by index.
      type: list
      elements: dict
      contains:
        index:
          description: The C(nvidia-smi) index.
          type: int
          sample: 0
        uuid:
          description: The GPU UUID.
          type: str
          sample: GPU-e618c5b6-2d0a-7bf0-9603-6ab8ded29587
        name:
          description: The product name.
          type: str
          sample: NVIDIA H100 80GB HBM3
        pci_bus_id:
          description: The PCI bus id as C(nvidia-smi) writes it.
          type: str
          sample: "00000000:00:06.0"
        memory_total_mib:
          description: Total framebuffer memory in MiB.
          type: int
          sample: 81559
        memory_used_mib:
          description: Used framebuffer memory in MiB.
          type: int
          sample: 0
        compute_capability:
          description: The CUDA compute capability; null with drivers older than 510.
          type: str
          sample: "9.0"
        mig_mode:
          description: The current MIG mode, C(enabled) or C(disabled); null for GPUs without MIG.
          type: str
          sample: disabled
        persistence_mode:
          description: Whether persistence mode is on; null where not reported.
          type: bool
          sample: true
    nvswitch:
      description: An NVSwitch is present (PCI function or C(/dev/nvidia-nvswitchctl)); such hosts need
        nvidia-fabricmanager.
      type: bool
      sample: false
pci_devices:
  description: The NVIDIA PCI functions found in sysfs, whatever the driver state.
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: The PCI address.
      type: str
      sample: "0000:00:06.0"
    device_id:
      description: The PCI device id.
      type: str
      sample: "0x2330"
    class:
      description: The PCI class code.
      type: str
      sample: "0x030200"
    kind:
      description: C(gpu), C(nvswitch) or C(other).
      type: str
      sample: gpu
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhost.textgen.plugins.module_utils._nvidia_smi import gather


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "nvidia_smi": {"type": "path"},
            "timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    if module.params["timeout"] < 1:
        module.fail_json(msg=f"timeout must be at least 1 second, got {module.params['timeout']}")

    nvidia_smi = module.params["nvidia_smi"]
    if nvidia_smi is None:
        nvidia_smi = module.get_bin_path("nvidia-smi", opt_dirs=["/usr/local/nvidia/bin"])
    elif not (os.path.isfile(nvidia_smi) and os.access(nvidia_smi, os.X_OK)):
        module.fail_json(msg=f"nvidia_smi: {nvidia_smi} is not an executable file")
    timeout_bin = module.get_bin_path("timeout")

    def run(args: list[str]) -> tuple[int, str, str]:
        argv = [timeout_bin, str(module.params["timeout"]), *args] if timeout_bin else list(args)
        rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
        if timeout_bin and rc == 124:
            return rc, "", f"nvidia-smi did not answer within {module.params['timeout']} s (timed out)"
        return rc, out, err

    gpu, pci = gather(run, nvidia_smi)
    module.exit_json(changed=False, gpu=gpu, pci_devices=pci, ansible_facts={"textgen_gpu": gpu})


if __name__ == "__main__":
    main()
