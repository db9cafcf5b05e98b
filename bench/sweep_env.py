"""What a sweep ran on, for the report: host, CPU, GPUs, driver, TensorFlow/Keras/NCCL versions
(read without importing TensorFlow), and when this process started.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

from training.devices import DevicePlan


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
    try:  # the stack module is read-only metadata; a problem in it must not stop a sweep
        from diagnostics.stack import read_stack

        stack = read_stack()
        build = getattr(stack, "tf_build", None)
        env.update(
            {
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
        )
    except Exception as exc:
        env["stack_error"] = f"{type(exc).__name__}: {exc}"
    return env
