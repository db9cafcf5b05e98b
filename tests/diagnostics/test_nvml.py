"""The NVML adapter (the only code that touches pynvml) against a fake `pynvml` module: unsupported
fields become None, errors midway drop only what failed, and a missing library is NvmlUnavailable.
Everything above the adapter is tested on Inventory objects instead (test_checks_*)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from diagnostics import nvml
from diagnostics.nvml import NO_DRIVER, NvmlUnavailable, read_inventory


def fake_pynvml(devices: list[dict], fail: dict[str, str] | None = None, init_error: str | None = None):
    """A pynvml stand-in; `fail` maps a function name to the NVMLError_* class name it raises."""
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    for name in ("NotSupported", "LibraryNotFound", "DriverNotLoaded", "GpuIsLost", "Unknown"):
        setattr(m, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
    m.NVMLError = NVMLError
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    m.NVML_VOLATILE_ECC = 0
    m.NVML_NVLINK_MAX_LINKS = 2
    fail = fail or {}

    def fn(name, impl):
        def call(*args):
            if name in fail:
                raise getattr(m, fail[name])()
            return impl(*args)

        setattr(m, name, call)

    def init():
        if init_error:
            raise getattr(m, init_error)()

    fn("nvmlInit", init)
    fn("nvmlShutdown", lambda: None)
    fn("nvmlSystemGetDriverVersion", lambda: "570.86.15")
    fn("nvmlSystemGetCudaDriverVersion", lambda: 12080)
    fn("nvmlDeviceGetCount", lambda: len(devices))
    fn("nvmlDeviceGetHandleByIndex", lambda i: devices[i])
    fn("nvmlDeviceGetName", lambda h: h["name"])
    fn("nvmlDeviceGetUUID", lambda h: f"GPU-{h['i']}")
    fn("nvmlDeviceGetPciInfo", lambda h: SimpleNamespace(busId=f"00000000:0{h['i']}:00.0".encode()))
    fn("nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(total=24 * 1024**3, used=1024**3))
    fn("nvmlDeviceGetCudaComputeCapability", lambda h: (8, 9))
    fn("nvmlDeviceGetAttributes", lambda h: SimpleNamespace(multiprocessorCount=128))
    fn("nvmlDeviceGetDisplayActive", lambda h: h.get("display", 0))
    fn("nvmlDeviceGetDisplayMode", lambda h: h.get("display", 0))
    fn("nvmlDeviceGetTemperature", lambda h, s: 50)
    fn("nvmlDeviceGetPowerUsage", lambda h: 100_000)
    fn("nvmlDeviceGetEnforcedPowerLimit", lambda h: 450_000)
    fn("nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=40, memory=10))
    fn("nvmlDeviceGetCurrPcieLinkGeneration", lambda h: 4)
    fn("nvmlDeviceGetMaxPcieLinkGeneration", lambda h: 4)
    fn("nvmlDeviceGetCurrPcieLinkWidth", lambda h: 8)
    fn("nvmlDeviceGetMaxPcieLinkWidth", lambda h: 16)
    fn("nvmlDeviceGetTotalEccErrors", lambda h, a, b: 0)
    fn("nvmlDeviceGetCurrentClocksEventReasons", lambda h: 0x4 | 0x40)
    fn("nvmlDeviceGetClockInfo", lambda h, clock: {1: 2235, 0: 2235}[clock])  # NVML_CLOCK_SM is 1
    fn("nvmlDeviceGetMaxClockInfo", lambda h, clock: {1: 2790, 0: 2790}[clock])
    fn("nvmlDeviceGetComputeRunningProcesses", lambda h: [SimpleNamespace(pid=42, usedGpuMemory=2 * 1024**3)])
    fn("nvmlDeviceGetGraphicsRunningProcesses", lambda h: [])
    fn("nvmlSystemGetProcessName", lambda pid: b"python3")
    fn("nvmlDeviceGetP2PStatus", lambda a, b, i: 0)
    fn("nvmlDeviceGetTopologyCommonAncestor", lambda a, b: 30)
    fn("nvmlDeviceGetNvLinkState", lambda h, link: (_ for _ in ()).throw(m.NVMLError_NotSupported()))
    fn("nvmlDeviceGetNvLinkRemotePciInfo", lambda h, link: None)
    return m


@pytest.fixture
def install(monkeypatch):
    def put(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    return put


def test_supported_fields_are_read(install):
    install(
        fake_pynvml(
            [
                {"i": 0, "name": b"NVIDIA GeForce RTX 4090", "display": 1},
                {"i": 1, "name": "NVIDIA GeForce RTX 4090"},
            ]
        )
    )
    inv = read_inventory()
    assert inv.driver_version == "570.86.15" and inv.cuda_driver_version == "12.8"
    g0 = inv.gpus[0]
    assert (
        g0.name == "NVIDIA GeForce RTX 4090" and g0.compute_capability == "8.9" and g0.display_active is True
    )
    assert (
        g0.memory_total_mib == 24576 and g0.power_draw_w == 100.0 and g0.pcie and g0.pcie.width_current == 8
    )
    assert g0.clocks_event_reasons == ("sw_power_cap", "hw_thermal_slowdown")
    assert g0.processes and g0.processes[0].name == "python3" and g0.processes[0].used_memory_mib == 2048
    assert inv.links and inv.links[0].p2p_read == "ok" and inv.links[0].topology == "hostbridge"
    assert inv.links[0].nvlink_count is None


def test_unsupported_fields_become_none(install):
    ns = "NVMLError_NotSupported"
    install(
        fake_pynvml(
            [{"i": 0, "name": "Tesla T4"}],
            fail={
                "nvmlDeviceGetPowerUsage": ns,
                "nvmlDeviceGetTotalEccErrors": ns,
                "nvmlDeviceGetDisplayActive": ns,
                "nvmlDeviceGetComputeRunningProcesses": ns,
                "nvmlDeviceGetGraphicsRunningProcesses": ns,
                "nvmlDeviceGetCurrentClocksEventReasons": ns,
                "nvmlDeviceGetTemperature": ns,
            },
        )
    )
    gpu = read_inventory().gpus[0]
    assert gpu.power_draw_w is None and gpu.ecc_uncorrected_volatile is None and gpu.display_active is None
    assert gpu.processes is None and gpu.clocks_event_reasons is None and gpu.temperature_c is None


def test_errors_midway_drop_only_the_failing_gpu(install):
    """A GPU that falls off the bus mid-read (GpuIsLost on its handle) is skipped; the rest are reported."""
    m = fake_pynvml([{"i": 0, "name": "A"}, {"i": 1, "name": "B"}, {"i": 2, "name": "C"}])
    lost = m.NVMLError_GpuIsLost
    original = m.nvmlDeviceGetHandleByIndex

    def handle(i):
        if i == 1:
            raise lost()
        return original(i)

    m.nvmlDeviceGetHandleByIndex = handle
    install(m)
    inv = read_inventory()
    assert [g.index for g in inv.gpus] == [0, 2]
    assert inv.links is not None and [lk.gpus for lk in inv.links] == [(0, 2)]


def test_library_not_found_is_nvml_unavailable(install):
    install(fake_pynvml([], init_error="NVMLError_LibraryNotFound"))
    with pytest.raises(NvmlUnavailable, match=NO_DRIVER):
        read_inventory()


def test_other_init_errors_are_named(install):
    install(fake_pynvml([], init_error="NVMLError_Unknown"))
    with pytest.raises(NvmlUnavailable, match="did not initialise"):
        read_inventory()


def test_count_failing_midway_is_nvml_unavailable(install):
    install(fake_pynvml([], fail={"nvmlDeviceGetCount": "NVMLError_Unknown"}))
    with pytest.raises(NvmlUnavailable, match="could not count"):
        read_inventory()


def test_checks_run_on_the_adapter_output(install):
    """The adapter's Inventory feeds the checks: the fake x8 link and throttling show up."""
    from diag_support import OFFICIAL_STACK

    from diagnostics.checks import make_context, run_checks
    from diagnostics.selection import SelectionOptions

    install(
        fake_pynvml(
            [{"i": 0, "name": "NVIDIA GeForce RTX 4090"}, {"i": 1, "name": "NVIDIA GeForce RTX 4090"}]
        )
    )
    ctx = make_context(SelectionOptions(), env={}, stack=OFFICIAL_STACK)
    found = {(f.check, f.status) for f in run_checks(ctx)}
    assert ("pcie", "warn") in found and ("health", "warn") in found and ("memory", "warn") in found
    assert nvml.NO_DRIVER not in str(found)


def test_nvlink_through_nvswitch_is_decided_by_p2p_status(install):
    """DGX H100: every NVLink ends at an NVSwitch, never at the peer GPU; P2P status with the NVLink
    index says the pair talks over NVLink, and all of the GPU's active links carry that traffic."""
    m = fake_pynvml([{"i": 0, "name": "NVIDIA H100 80GB HBM3"}, {"i": 1, "name": "NVIDIA H100 80GB HBM3"}])
    m.NVML_NVLINK_MAX_LINKS = 4
    m.nvmlDeviceGetNvLinkState = lambda h, link: 1
    m.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, link: SimpleNamespace(
        busId=b"00000000:E5:00.0"
    )  # a switch
    m.nvmlDeviceGetP2PStatus = lambda a, b, index: 0 if index in (0, 2) else 5
    install(m)
    link = read_inventory().links[0]  # type: ignore[index]
    assert link.topology == "nvlink" and link.nvlink_count == 4 and link.p2p_read == "ok"


def test_nvlink_hardware_without_nvlink_p2p_is_not_nvlink(install):
    m = fake_pynvml([{"i": 0, "name": "A"}, {"i": 1, "name": "B"}])
    m.nvmlDeviceGetNvLinkState = lambda h, link: 0  # links present, none active
    m.nvmlDeviceGetP2PStatus = lambda a, b, index: 0 if index == 0 else 5
    install(m)
    link = read_inventory().links[0]  # type: ignore[index]
    assert link.topology == "hostbridge" and link.nvlink_count == 0


def test_memory_info_v2_is_used_where_the_library_has_it(install):
    """v1 counts the driver's reserved memory as used on drivers >= 515; v2 does not."""
    m = fake_pynvml([{"i": 0, "name": "NVIDIA GeForce RTX 4090"}])
    m.nvmlMemory_v2 = 0x2000028

    def memory(h, version=None):
        used = 2 * 1024**2 if version == m.nvmlMemory_v2 else 600 * 1024**2
        return SimpleNamespace(total=24 * 1024**3, used=used)

    m.nvmlDeviceGetMemoryInfo = memory
    install(m)
    assert read_inventory().gpus[0].memory_used_mib == 2


def test_mig_mode_and_instances_are_read(install):
    m = fake_pynvml([{"i": 0, "name": "NVIDIA A100-SXM4-80GB"}, {"i": 1, "name": "NVIDIA A100-SXM4-80GB"}])
    m.nvmlDeviceGetMigMode = lambda h: (1, 1) if h["i"] == 0 else (0, 0)
    m.nvmlDeviceGetMaxMigDeviceCount = lambda h: 3
    instances = {0: {"mig": "MIG-11111111-aaaa"}, 2: {"mig": "MIG-22222222-bbbb"}}

    def by_index(h, i):
        if i not in instances:
            raise m.NVMLError_NotSupported()
        return instances[i]

    m.nvmlDeviceGetMigDeviceHandleByIndex = by_index
    original_uuid = m.nvmlDeviceGetUUID
    m.nvmlDeviceGetUUID = lambda h: h["mig"] if "mig" in h else original_uuid(h)
    install(m)
    g0, g1 = read_inventory().gpus
    assert g0.mig_enabled is True and g0.mig_devices == ("MIG-11111111-aaaa", "MIG-22222222-bbbb")
    assert g1.mig_enabled is False and g1.mig_devices is None


def test_an_unreadable_compute_capability_comes_from_the_name(install):
    install(
        fake_pynvml(
            [{"i": 0, "name": "Tesla K80"}, {"i": 1, "name": "Some Future GPU"}],
            fail={"nvmlDeviceGetCudaComputeCapability": "NVMLError_NotSupported"},
        )
    )
    assert [g.compute_capability for g in read_inventory().gpus] == ["3.7", None]


def test_sm_clocks_are_read_and_unsupported_ones_are_none(install):
    """Current and maximum SM clock (NVML_CLOCK_SM); NotSupported, or a library without the call, is None."""
    install(fake_pynvml([{"i": 0, "name": "NVIDIA GeForce RTX 4090"}]))
    gpu = read_inventory(include_system=False).gpus[0]
    assert (gpu.sm_clock_mhz, gpu.sm_clock_max_mhz) == (2235, 2790)
    install(
        fake_pynvml(
            [{"i": 0, "name": "Tesla K80"}], fail={"nvmlDeviceGetClockInfo": "NVMLError_NotSupported"}
        )
    )
    assert read_inventory(include_system=False).gpus[0].sm_clock_mhz is None
    old = fake_pynvml([{"i": 0, "name": "Tesla K80"}])
    del old.nvmlDeviceGetMaxClockInfo
    install(old)
    assert read_inventory(include_system=False).gpus[0].sm_clock_max_mhz is None


def test_system_facts_come_with_a_full_read_only(install, monkeypatch):
    """A full read (links) records the system facts for the GPUs' bus ids; the trainer's quick read
    (no links) does not pay for them."""
    seen = []

    def fake_read_system(bus_ids):
        seen.append(dict(bus_ids))
        return nvml.system.SystemFacts(iommu="off")

    monkeypatch.setattr(nvml.system, "read_system", fake_read_system)
    install(fake_pynvml([{"i": 0, "name": "A"}, {"i": 1, "name": "B"}]))
    assert read_inventory().system == nvml.system.SystemFacts(iommu="off")
    assert seen == [{0: "00000000:00:00.0", 1: "00000000:01:00.0"}]
    assert read_inventory(include_links=False).system is None and len(seen) == 1
