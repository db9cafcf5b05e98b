"""What a sweep ran on, for the report: host, CPU, GPUs, driver, TensorFlow/Keras/NCCL versions
(read without importing TensorFlow), and when this process started; and the GPU details that
pytest-benchmark's own machine info gains (`machine_info`, for --benchmark-json files).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

from training.devices.setup import DevicePlan


def process_started_at() -> float | None:
    """time.time() when this process started (Linux /proc), so pytest's own start-up is counted."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields_after_name = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        started_ticks = int(fields_after_name[19])  # field 22 of proc(5), counted after pid and name
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def cpu_description() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} logical cores"


# what identifies a GPU and stays put between runs: pytest-benchmark warns when two compared runs'
# machine info differ, so temperature, memory in use, clocks, power draw and processes stay out
MACHINE_GPU_FIELDS = (
    "index",
    "name",
    "uuid",
    "pci_bus_id",
    "memory_total_mib",
    "compute_capability",
    "multiprocessor_count",
    "power_limit_w",
    "display_active",
    "mig_enabled",
)


def _software() -> dict[str, Any]:
    try:  # read-only metadata: a problem in it must not stop a run
        from diagnostics.stack import read_stack

        stack = read_stack()
    except Exception as exc:
        return {"stack_error": f"{type(exc).__name__}: {exc}"}
    build = getattr(stack, "tf_build", None)
    return {
        "tensorflow": getattr(stack, "tensorflow", None),
        "keras": getattr(stack, "keras", None),
        "nccl": getattr(stack, "nccl", None),
        "tf_build": (
            f"CUDA {build.cuda_version}, cuDNN {build.cudnn_version}"
            if build is not None and build.is_cuda_build
            else "CPU-only build"
            if build is not None
            else None
        ),
    }


def machine_info(plan: DevicePlan) -> dict[str, Any]:
    """GPU details for pytest-benchmark's machine_info, from the plan's NVML inventory (no TensorFlow):
    every GPU's stable fields (MACHINE_GPU_FIELDS), PCIe generation and width, the driver, the
    software stack, and which devices the benchmarks ran on."""
    inventory = plan.inventory
    gpus = []
    for gpu in inventory.gpus if inventory else ():
        entry: dict[str, Any] = {name: getattr(gpu, name) for name in MACHINE_GPU_FIELDS}
        if gpu.pcie is not None:
            entry["pcie"] = f"gen {gpu.pcie.gen_max} x{gpu.pcie.width_max}"
        gpus.append(entry)
    return {
        "gpus": gpus,
        "nvidia_driver": inventory.driver_version if inventory else None,
        "cuda_driver": inventory.cuda_driver_version if inventory else None,
        "nvml_error": inventory.nvml_error
        if inventory
        else (plan.fallback_reason or "NVML could not be read (no NVIDIA driver?)"),
        "benchmark_devices": plan.describe(),
        "benchmark_device_kind": plan.kind,
        **_software(),
    }


def environment(plan: DevicePlan) -> dict[str, Any]:
    inventory = plan.inventory
    env: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_description(),
        "driver_version": inventory.driver_version if inventory else None,
        "cuda_driver_version": inventory.cuda_driver_version if inventory else None,
        "gpus": [{k: v for k, v in g.items() if k != "processes"} for g in inventory.to_dict()["gpus"]]
        if inventory
        else [],
        "selected_gpu_names": [g.name for g in plan.gpus],
    }
    env.update(_software())
    return env
