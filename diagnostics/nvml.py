"""The live machine through NVML (package nvidia-ml-py): the ONLY module that imports `pynvml`.

`read_inventory()` returns an `Inventory`; everything else in the suite works on that object.
A query a card does not support becomes None (null in a snapshot), never an exception; a missing
driver becomes one `NvmlUnavailable` error that callers turn into a message.

NVLink between two GPUs is decided by nvmlDeviceGetP2PStatus with the NVLink index, which also sees
links through NVSwitch (DGX H100: every link's remote end is a switch, not the peer GPU); memory
comes from nvmlDeviceGetMemoryInfo v2 where the library has it (v1 counts the driver's reserved
memory as used on drivers >= 515). A full read (with links) also records the system facts behind
NCCL hangs (diagnostics.system), which need the GPUs' PCI addresses.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

from diagnostics import knowledge, system
from diagnostics.inventory import Gpu, GpuProcess, Inventory, Link, Pcie

T = TypeVar("T")

NO_DRIVER = "no NVIDIA driver found: NVML library not loaded"

# nvmlDeviceGetP2PStatus results, in the snapshot's words.
_P2P_STATUS = {
    0: "ok",
    1: "chipset_not_supported",
    2: "gpu_not_supported",
    3: "topology_not_supported",
    4: "disabled_by_regkey",
    5: "not_supported",
    6: "unknown",
}
# nvmlDeviceGetTopologyCommonAncestor levels (nvidia-smi topo -m: PIX, PXB, PHB, NODE, SYS).
_TOPOLOGY = {0: "internal", 10: "single", 20: "multiple", 30: "hostbridge", 40: "node", 50: "system"}
# nvmlClocksEventReason* bits that mean the card runs slower than it could.
_CLOCK_EVENT_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
}
_P2P_CAPS_INDEX_READ = 0  # pynvml.NVML_P2P_CAPS_INDEX_READ is the tuple (0,) by a typo
_P2P_CAPS_INDEX_NVLINK = 2  # nvmlGpuP2PCapsIndex_enum: READ 0, WRITE 1, NVLINK 2
_MIG_ENABLE = 1  # NVML_DEVICE_MIG_ENABLE
_CLOCK_SM = 1  # NVML_CLOCK_SM (nvmlClockType_t: GRAPHICS 0, SM 1, MEM 2, VIDEO 3)
_MIB = 1024**2


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used: no driver, no library, or the driver refused to initialise."""


def _pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:  # the dependency is declared; this is a broken install
        raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc}): pip install nvidia-ml-py") from None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Session:
    """One nvmlInit..nvmlShutdown; `opt` turns an unsupported or failing query into None."""

    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml

    def __enter__(self) -> _Session:
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            lib_missing = getattr(self.nvml, "NVMLError_LibraryNotFound", ())
            not_loaded = getattr(self.nvml, "NVMLError_DriverNotLoaded", ())
            if isinstance(exc, (lib_missing, not_loaded)):
                raise NvmlUnavailable(NO_DRIVER) from None
            raise NvmlUnavailable(f"NVIDIA driver did not initialise (NVML: {exc})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()

    def opt(self, query: Callable[[], T]) -> T | None:
        try:
            return query()
        except self.nvml.NVMLError:
            return None


def read_inventory(
    include_links: bool = True, include_processes: bool = True, include_system: bool | None = None
) -> Inventory:
    """Snapshot the live machine. Raises NvmlUnavailable when there is no usable driver.

    `include_system` defaults to `include_links`: both describe the paths between GPUs, and the quick
    reads that skip links (the trainer's, the sweep's) skip the system facts too.
    """
    nvml = _pynvml()
    with _Session(nvml) as s:
        driver = s.opt(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        cuda = s.opt(nvml.nvmlSystemGetCudaDriverVersion)
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not count GPUs: {exc}") from None
        handles = []
        gpus = []
        for index in range(count):
            handle = s.opt(partial(nvml.nvmlDeviceGetHandleByIndex, index))
            if handle is None:
                continue  # a GPU that fell off the bus; the rest are still worth reporting
            gpus.append(_read_gpu(s, index, handle, include_processes))
            handles.append((index, handle))
        links = _read_links(s, handles, gpus) if include_links else None
    wanted = include_links if include_system is None else include_system
    facts = system.read_system({g.index: g.pci_bus_id for g in gpus}) if wanted else None
    return Inventory(
        driver_version=driver,
        cuda_driver_version=None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
        gpus=tuple(gpus),
        links=links,
        captured_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        host=socket.gethostname(),
        source="live",
        system=facts,
    )


def _memory(s: _Session, h: Any) -> Any:
    """nvmlDeviceGetMemoryInfo v2 (used excludes the driver's reservation), else v1."""
    n = s.nvml
    v2 = getattr(n, "nvmlMemory_v2", None)
    if v2 is not None:
        memory = s.opt(lambda: n.nvmlDeviceGetMemoryInfo(h, version=v2))
        if memory is not None:
            return memory
    return s.opt(lambda: n.nvmlDeviceGetMemoryInfo(h))


def _mig(s: _Session, h: Any) -> tuple[bool | None, tuple[str, ...] | None]:
    """MIG mode (current) and, when it is on, the UUIDs of the MIG instances."""
    n = s.nvml
    if not hasattr(n, "nvmlDeviceGetMigMode"):  # nvidia-ml-py older than MIG
        return None, None
    modes = s.opt(lambda: n.nvmlDeviceGetMigMode(h))
    if modes is None:
        return None, None
    enabled = modes[0] == _MIG_ENABLE
    if not enabled:
        return False, None
    uuids = []
    for i in range(s.opt(lambda: n.nvmlDeviceGetMaxMigDeviceCount(h)) or 0):
        mig = s.opt(partial(n.nvmlDeviceGetMigDeviceHandleByIndex, h, i))
        uuid = _opt_text(s, partial(n.nvmlDeviceGetUUID, mig)) if mig is not None else None
        if uuid:
            uuids.append(uuid)
    return True, tuple(uuids)


def _read_gpu(s: _Session, index: int, h: Any, include_processes: bool) -> Gpu:
    n = s.nvml
    memory = _memory(s, h)
    cc = s.opt(lambda: n.nvmlDeviceGetCudaComputeCapability(h))
    pci = s.opt(lambda: n.nvmlDeviceGetPciInfo(h))
    power_mw = s.opt(lambda: n.nvmlDeviceGetPowerUsage(h))
    limit_mw = s.opt(lambda: n.nvmlDeviceGetEnforcedPowerLimit(h))
    utilization = s.opt(lambda: n.nvmlDeviceGetUtilizationRates(h))
    attributes = s.opt(lambda: n.nvmlDeviceGetAttributes(h))
    name = s.opt(lambda: _text(n.nvmlDeviceGetName(h))) or "unknown GPU"
    mig_enabled, mig_devices = _mig(s, h)
    return Gpu(
        index=index,
        name=name,
        uuid=s.opt(lambda: _text(n.nvmlDeviceGetUUID(h))) or "",
        pci_bus_id=_text(pci.busId) if pci is not None else "",
        memory_total_mib=int(memory.total) // _MIB if memory is not None else 0,
        memory_used_mib=int(memory.used) // _MIB if memory is not None else None,
        compute_capability=f"{cc[0]}.{cc[1]}"
        if cc is not None
        else knowledge.compute_capability_for_name(name),
        multiprocessor_count=getattr(attributes, "multiprocessorCount", None),
        display_active=_feature(s.opt(lambda: n.nvmlDeviceGetDisplayActive(h))),
        display_mode=_feature(s.opt(lambda: n.nvmlDeviceGetDisplayMode(h))),
        temperature_c=s.opt(lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
        power_draw_w=power_mw / 1000 if power_mw is not None else None,
        power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
        utilization_gpu_pct=getattr(utilization, "gpu", None),
        pcie=Pcie(
            gen_current=s.opt(lambda: n.nvmlDeviceGetCurrPcieLinkGeneration(h)),
            gen_max=s.opt(lambda: n.nvmlDeviceGetMaxPcieLinkGeneration(h)),
            width_current=s.opt(lambda: n.nvmlDeviceGetCurrPcieLinkWidth(h)),
            width_max=s.opt(lambda: n.nvmlDeviceGetMaxPcieLinkWidth(h)),
        ),
        ecc_uncorrected_volatile=s.opt(
            lambda: n.nvmlDeviceGetTotalEccErrors(
                h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC
            )
        ),
        clocks_event_reasons=_clock_reasons(s, h),
        processes=_processes(s, h) if include_processes else None,
        mig_enabled=mig_enabled,
        mig_devices=mig_devices,
        sm_clock_mhz=_sm_clock(s, h, "nvmlDeviceGetClockInfo"),
        sm_clock_max_mhz=_sm_clock(s, h, "nvmlDeviceGetMaxClockInfo"),
    )


def _opt_text(s: _Session, query: Callable[[], Any]) -> str | None:
    value = s.opt(query)
    return None if value is None else _text(value)


def _feature(value: int | None) -> bool | None:
    return None if value is None else bool(value)  # NVML_FEATURE_ENABLED == 1


def _sm_clock(s: _Session, h: Any, query_name: str) -> int | None:
    """The SM clock in MHz, current (nvmlDeviceGetClockInfo) or maximum (...GetMaxClockInfo)."""
    query = getattr(s.nvml, query_name, None)
    return None if query is None else s.opt(lambda: int(query(h, _CLOCK_SM)))


def _clock_reasons(s: _Session, h: Any) -> tuple[str, ...] | None:
    n = s.nvml
    query = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        n, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    if query is None:
        return None
    mask = s.opt(lambda: query(h))
    if mask is None:
        return None
    return tuple(name for bit, name in _CLOCK_EVENT_REASONS.items() if mask & bit)


def _processes(s: _Session, h: Any) -> tuple[GpuProcess, ...] | None:
    n = s.nvml
    found: list[GpuProcess] = []
    any_supported = False
    for kind, query in (
        ("compute", n.nvmlDeviceGetComputeRunningProcesses),
        ("graphics", n.nvmlDeviceGetGraphicsRunningProcesses),
    ):
        procs = s.opt(partial(query, h))
        if procs is None:
            continue
        any_supported = True
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            found.append(
                GpuProcess(
                    pid=int(p.pid),
                    name=_opt_text(s, partial(n.nvmlSystemGetProcessName, p.pid)),
                    # NVML reports "not available" (e.g. under WDDM or in containers) as None or 2^64-1
                    used_memory_mib=int(used) // _MIB if used is not None and used < 2**63 else None,
                    type=kind,
                )
            )
    return tuple(found) if any_supported else None


def _read_links(s: _Session, handles: list[tuple[int, Any]], gpus: list[Gpu]) -> tuple[Link, ...]:
    n = s.nvml
    bus_ids = {g.index: g.pci_bus_id.lower() for g in gpus}
    links = []
    for a_pos, (a, ha) in enumerate(handles):
        for b, hb in handles[a_pos + 1 :]:
            status = s.opt(partial(n.nvmlDeviceGetP2PStatus, ha, hb, _P2P_CAPS_INDEX_READ))
            level = s.opt(partial(n.nvmlDeviceGetTopologyCommonAncestor, ha, hb))
            over_nvlink = s.opt(partial(n.nvmlDeviceGetP2PStatus, ha, hb, _P2P_CAPS_INDEX_NVLINK)) == 0
            # None: the GPU has no NVLink at all, whatever the P2P query said
            nvlinks = _nvlink_count(s, ha, bus_ids.get(b, ""), over_nvlink)
            topology = "nvlink" if nvlinks else _TOPOLOGY.get(level) if level is not None else None
            links.append(
                Link(
                    gpus=(a, b),
                    p2p_read=_P2P_STATUS.get(status, "unknown") if status is not None else None,
                    topology=topology,
                    nvlink_count=nvlinks,
                )
            )
    return tuple(links)


def _nvlink_count(s: _Session, handle: Any, peer_bus_id: str, over_nvlink: bool = False) -> int | None:
    """Active NVLinks from `handle` to the GPU at `peer_bus_id`; None if NVLink is not supported.

    Through NVSwitch no link ends at the peer (each ends at a switch): where NVML reports NVLink P2P
    to the peer, every active link of `handle` carries its traffic, so all of them count.
    """
    n = s.nvml
    count = active = 0
    supported = False
    for link in range(getattr(n, "NVML_NVLINK_MAX_LINKS", 18)):
        state = s.opt(partial(n.nvmlDeviceGetNvLinkState, handle, link))
        if state is None:
            continue
        supported = True
        if not state:
            continue
        active += 1
        remote = s.opt(partial(n.nvmlDeviceGetNvLinkRemotePciInfo, handle, link))
        if remote is not None and _same_bus(_text(remote.busId), peer_bus_id):
            count += 1
    if not supported:
        return None
    return count or (active if over_nvlink else 0)


def _same_bus(a: str, b: str) -> bool:
    """PCI bus ids compare equal whatever the domain width ("0000:01:00.0" vs "00000000:01:00.0")."""

    def norm(bus: str) -> tuple[int, str]:
        domain, _, rest = bus.lower().partition(":")
        return (int(domain, 16), rest) if rest and domain else (0, bus.lower())

    return norm(a) == norm(b)
