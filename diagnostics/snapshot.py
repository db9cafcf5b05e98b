"""`gpudiag snapshot`: the live machine as a whole bug report (GPUs, software, GPU-related environment,
OS), written even where NVML cannot be read: then the NVML error is what the report records, and
that is the report people most need.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from diagnostics.inventory import Inventory
from diagnostics.stack import Stack, read_stack
from diagnostics.system import read_system

# The variables that change which GPUs a run sees and how it uses them.
ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "XLA_FLAGS", "LD_LIBRARY_PATH")
ENV_PREFIXES = ("NCCL_", "TF_", "CUDA_", "NVIDIA_")
# Never recorded, whatever its prefix: a bug report is shared.
_PRIVATE = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL")
# Terraform shares TensorFlow's TF_ prefix; its variables (TF_VAR_* may hold secrets) are not ours.
_TERRAFORM = ("TF_VAR_", "TF_CLI_", "TF_LOG", "TF_WORKSPACE", "TF_DATA_DIR", "TF_PLUGIN_", "TF_REGISTRY_",
              "TF_INPUT", "TF_IN_AUTOMATION", "TF_STATE")  # fmt: skip


def gpu_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The GPU-related variables of `env` (default: this process's), sorted by name."""
    env = os.environ if env is None else env
    return {
        name: value
        for name, value in sorted(env.items())
        if (name in ENV_NAMES or name.startswith(ENV_PREFIXES))
        and not name.startswith(_TERRAFORM)
        and not any(p in name.upper() for p in _PRIVATE)
    }


def take_snapshot(
    read_live: Callable[[], Inventory] | None = None,
    stack: Stack | None = None,
    env: Mapping[str, str] | None = None,
) -> Inventory:
    """This machine now. Never raises for a missing driver: the inventory then has no GPUs and says why."""
    from diagnostics.nvml import NvmlUnavailable, read_inventory

    try:
        inventory = (read_live or read_inventory)()
    except NvmlUnavailable as exc:
        inventory = Inventory(
            driver_version=None,
            cuda_driver_version=None,
            captured_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            host=socket.gethostname(),
            nvml_error=str(exc),
            system=read_system({}),  # no GPUs to place, but shm, container and IOMMU still tell
        )
    software = dataclasses.replace(stack or read_stack(env=env), os=platform.platform())
    return dataclasses.replace(inventory, software=software, environment=gpu_environment(env))
