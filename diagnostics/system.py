"""The machine facts behind NCCL hangs, outside the GPUs: /dev/shm size, container or not, the IOMMU
mode, PCIe bridges with ACS redirection between the GPUs, network and InfiniBand device names.

`read_system` collects them from the live machine (no root needed except for ACS, which then stays
None); the parsers under it are pure functions of text, tested on real samples
(tests/fixtures/system/). The `SystemFacts` dataclass is the snapshot's `system` object
(docs/inventory.schema.json), so the checks judge a replayed snapshot exactly like the live machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IOMMU_MODES = ("off", "passthrough", "on", "unknown")
# `lspci -vvv` reads every device's config space; on a large server that is well under a second, and
# `gpudiag check` must stay fast, so a slower run is abandoned (ACS then stays unknown).
LSPCI_TIMEOUT_S = 1.0
# cgroup paths that container runtimes give their processes (cgroup v1; v2 shows "0::/" and says nothing).
_CONTAINER_CGROUPS = ("docker", "kubepods", "containerd", "libpod", "lxc")
_BDF = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_DEVICE_LINE = re.compile(r"^((?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s")


@dataclass(frozen=True)
class AcsBridge:
    """A PCIe bridge above one or more GPUs whose ACS control redirects peer requests upstream."""

    address: str  # "0000:00:03.5"
    gpus: tuple[int, ...]  # NVML indices of the GPUs below it
    acs_ctl: str  # lspci's ACSCtl flags, e.g. "SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ ..."


@dataclass(frozen=True)
class SystemFacts:
    """The snapshot's `system` object; None in a field means it could not be read there."""

    shm_bytes: int | None = None
    in_container: bool | None = None
    iommu: str = "unknown"  # one of IOMMU_MODES
    acs_bridges: tuple[AcsBridge, ...] | None = None  # None: not readable (needs root and lspci)
    net_interfaces: tuple[str, ...] | None = None
    ib_devices: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "shm_bytes": self.shm_bytes,
            "in_container": self.in_container,
            "iommu": self.iommu,
            "acs_bridges": None
            if self.acs_bridges is None
            else [
                {"address": b.address, "gpus": list(b.gpus), "acs_ctl": b.acs_ctl} for b in self.acs_bridges
            ],
            "net_interfaces": None if self.net_interfaces is None else list(self.net_interfaces),
            "ib_devices": None if self.ib_devices is None else list(self.ib_devices),
        }


def system_from_dict(data: Mapping[str, Any]) -> SystemFacts:
    """The snapshot's `system` object; ValueError names the field that is wrong."""
    shm = data.get("shm_bytes")
    if shm is not None and (not isinstance(shm, int) or isinstance(shm, bool) or shm < 0):
        raise ValueError("shm_bytes must be a byte count")
    container = data.get("in_container")
    if container is not None and not isinstance(container, bool):
        raise ValueError("in_container must be true/false")
    iommu = data.get("iommu") or "unknown"
    if iommu not in IOMMU_MODES:
        raise ValueError(f"iommu must be one of {', '.join(IOMMU_MODES)}, got {iommu!r}")
    bridges = None
    if data.get("acs_bridges") is not None:
        bridges = tuple(_bridge(raw) for raw in _list(data, "acs_bridges"))
    return SystemFacts(
        shm_bytes=shm,
        in_container=container,
        iommu=iommu,
        acs_bridges=bridges,
        net_interfaces=_names(data, "net_interfaces"),
        ib_devices=_names(data, "ib_devices"),
    )


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list")
    return value


def _names(data: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    if data.get(key) is None:
        return None
    names = _list(data, key)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{key} must be a list of names")
    return tuple(names)


def _bridge(raw: Any) -> AcsBridge:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("address"), str):
        raise ValueError("acs_bridges entries need an address")
    gpus = raw.get("gpus") or []
    if not isinstance(gpus, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in gpus):
        raise ValueError("acs_bridges[].gpus must be GPU indices")
    return AcsBridge(raw["address"], tuple(gpus), str(raw.get("acs_ctl") or ""))


# -- pure parsers ------------------------------------------------------------------------------


def iommu_from_cmdline(cmdline: str) -> str | None:
    """What a kernel command line says of the IOMMU: "off", "passthrough", "on", or None (nothing).

    Each of iommu=, intel_iommu= and amd_iommu= keeps its last on/off word (intel_iommu=igfx_off is
    an option, not "off"); then off beats passthrough (iommu=pt, iommu.passthrough=1), which beats on.
    """
    decided: dict[str, str] = {}
    for token in cmdline.split():
        key, sep, value = token.partition("=")
        if not sep:
            continue
        options = set(value.lower().split(","))
        if key in ("iommu", "intel_iommu", "amd_iommu"):
            if "off" in options:
                decided[key] = "off"
            elif "pt" in options:
                decided[key] = "passthrough"
            elif options & {"on", "force", "nopt", "force_isolation"}:
                decided[key] = "on"
        elif key == "iommu.passthrough":
            decided[key] = "passthrough" if value.lower() in ("1", "y", "on") else "on"
    return next((word for word in ("off", "passthrough", "on") if word in decided.values()), None)


def iommu_mode(cmdline_word: str | None, iommu_units: list[str] | None, group_types: list[str]) -> str:
    """The IOMMU mode from the kernel's own view where it gives one, else from the command line.

    `iommu_units`: the names in /sys/class/iommu (None where that folder is missing); `group_types`:
    /sys/bus/pci/devices/<gpu>/iommu_group/type of the GPUs ("identity" is passthrough).
    """
    if group_types:
        return "passthrough" if all(t == "identity" for t in group_types) else "on"
    if iommu_units:
        return "passthrough" if cmdline_word == "passthrough" else "on"
    if iommu_units is not None or cmdline_word == "off":
        return "off"  # the kernel registered no IOMMU
    return "unknown"


def normalize_bus_id(bus_id: str) -> str | None:
    """ "00000000:01:00.0" (NVML) or "01:00.0" (lspci) -> "0000:01:00.0" (sysfs); None if not one."""
    match = _BDF.match(bus_id.strip())
    if match is None:
        return None
    domain, bus, device, function = match.groups()
    return f"{int(domain or '0', 16):04x}:{bus.lower()}:{device.lower()}.{function}"


def parse_lspci_acs(text: str) -> dict[str, str | None]:
    """Each device of `lspci -vvv` output -> its ACSCtl flags ("" without ACS, None where lspci could
    not read the capabilities: "<access denied>" without root)."""
    found: dict[str, str | None] = {}
    current: str | None = None
    for line in text.splitlines():
        device = _DEVICE_LINE.match(line)
        if device is not None:
            current = normalize_bus_id(device.group(1))
            if current is not None:
                found[current] = ""
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("Capabilities: <access denied>"):
            found[current] = None
        elif stripped.startswith("ACSCtl:"):
            found[current] = " ".join(stripped.split()[1:])
    return found


def redirects(acs_ctl: str) -> bool:
    """ACS request or completion redirection on: peer-to-peer requests go up to the root complex."""
    flags = acs_ctl.split()
    return "ReqRedir+" in flags or "CmpltRedir+" in flags


def upstream_bridges(device_path: str) -> list[str]:
    """The bridges above a device, root port first, from its resolved sysfs path
    (/sys/devices/pci0000:00/0000:00:03.1/0000:01:00.0/0000:02:00.0 -> the first two)."""
    addresses = [normalize_bus_id(part) for part in device_path.split("/")]
    return [a for a in addresses if a is not None][:-1]


def acs_bridges(
    chains: Mapping[int, list[str]], acs: Mapping[str, str | None]
) -> tuple[AcsBridge, ...] | None:
    """The bridges above the GPUs (`chains`: GPU index -> its upstream bridges) whose ACS redirects;
    None where lspci could not read one of them."""
    below: dict[str, list[int]] = {}
    for index, chain in sorted(chains.items()):
        for bridge in chain:
            below.setdefault(bridge, []).append(index)
    if any(acs.get(bridge, "") is None for bridge in below):
        return None
    return tuple(
        AcsBridge(bridge, tuple(gpus), acs[bridge] or "")
        for bridge, gpus in sorted(below.items())
        if redirects(acs.get(bridge) or "")
    )


def looks_like_container(dockerenv: bool, containerenv: bool, cgroup_text: str) -> bool:
    """Docker's /.dockerenv, Podman's /run/.containerenv, or a runtime's name in /proc/1/cgroup."""
    return dockerenv or containerenv or any(name in cgroup_text for name in _CONTAINER_CGROUPS)


# -- the live machine ----------------------------------------------------------------------------


def _run_lspci() -> str | None:
    """`lspci -D -vvv`, or None: not installed, not root (it could not read ACS), slow or failing."""
    lspci = shutil.which("lspci")
    if lspci is None or os.geteuid() != 0:
        return None
    try:
        done = subprocess.run(
            [lspci, "-D", "-vvv"], capture_output=True, text=True, timeout=LSPCI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _listdir(path: Path) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def read_system(
    gpu_bus_ids: Mapping[int, str],
    root: Path = Path("/"),
    lspci: Callable[[], str | None] = _run_lspci,
) -> SystemFacts:
    """The facts of the machine under `root` for the GPUs `gpu_bus_ids` (NVML index -> PCI bus id).

    ACS is looked at only with 2+ GPUs (peer traffic needs two), through `lspci`, which needs root.
    """
    try:
        stat = os.statvfs(root / "dev" / "shm")
        shm: int | None = stat.f_frsize * stat.f_blocks
    except OSError:
        shm = None
    devices = root / "sys" / "bus" / "pci" / "devices"
    sysfs_ids = {i: normalize_bus_id(b) for i, b in gpu_bus_ids.items()}
    group_types = [
        t.strip()
        for b in sysfs_ids.values()
        if b and (t := _read(devices / b / "iommu_group" / "type")) is not None
    ]
    cmdline = _read(root / "proc" / "cmdline") or ""
    bridges = None
    if len(gpu_bus_ids) >= 2:
        text = lspci()
        chains = {i: upstream_bridges(os.path.realpath(devices / b)) for i, b in sysfs_ids.items() if b}
        bridges = None if text is None else acs_bridges(chains, parse_lspci_acs(text))
    return SystemFacts(
        shm_bytes=shm,
        in_container=looks_like_container(
            (root / ".dockerenv").exists(),
            (root / "run" / ".containerenv").exists(),
            _read(root / "proc" / "1" / "cgroup") or "",
        ),
        iommu=iommu_mode(
            iommu_from_cmdline(cmdline), _listdir(root / "sys" / "class" / "iommu"), group_types
        ),
        acs_bridges=bridges,
        net_interfaces=_tuple(_listdir(root / "sys" / "class" / "net")),
        ib_devices=tuple(_listdir(root / "sys" / "class" / "infiniband") or ()),
    )


def _tuple(names: list[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)
