"""The GPU inventory: Gpu / Link / Inventory dataclasses and the snapshot format (gpudiag-inventory/3,
docs/inventory.schema.json; versions 1 and 2 still read).

Everything that reasons about GPUs (selection, checks, the trainer's plan) works on these objects,
so a recorded snapshot of another machine replays exactly like the live one. A snapshot also carries
the software and GPU-related environment of the machine it was taken on, the system facts behind
NCCL hangs (diagnostics.system), and why NVML could not be read there, if it could not: a whole bug
report. `load_inventory` also reads `nvidia-smi -q -x`
dumps (diagnostics.nvidia_smi), recognised by their content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from common import files
from common.errors import UserError
from diagnostics.stack import Stack, stack_from_dict
from diagnostics.system import SystemFacts, system_from_dict

SCHEMA_ID = "gpudiag-inventory/3"
# Every version this reader accepts. Version 2 added software, environment, nvml_error, origin, MIG
# mode, and allows a null compute capability (an nvidia-smi dump of a GPU gpudiag does not know).
# Version 3 added `system` (shm, container, IOMMU, ACS, network names) and the SM clocks.
READABLE_SCHEMAS = ("gpudiag-inventory/1", "gpudiag-inventory/2", SCHEMA_ID)

Megabytes = int


class InventoryError(UserError):
    """An inventory file that cannot be used: says which file and which field."""


@dataclass(frozen=True)
class Pcie:
    gen_current: int | None = None
    gen_max: int | None = None
    width_current: int | None = None
    width_max: int | None = None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str | None = None
    used_memory_mib: Megabytes | None = None
    type: str = "compute"


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML sees it. ``index`` is the NVML index (PCI bus order, as nvidia-smi)."""

    index: int
    name: str
    uuid: str
    pci_bus_id: str
    memory_total_mib: Megabytes
    compute_capability: str | None  # "8.6"; None when neither NVML nor the product name tells
    display_active: bool | None
    memory_used_mib: Megabytes | None = None
    multiprocessor_count: int | None = None
    display_mode: bool | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    utilization_gpu_pct: float | None = None
    pcie: Pcie | None = None
    ecc_uncorrected_volatile: int | None = None
    clocks_event_reasons: tuple[str, ...] | None = None
    processes: tuple[GpuProcess, ...] | None = None
    mig_enabled: bool | None = None  # MIG mode on (nvidia-smi "MIG M.": Enabled)
    mig_devices: tuple[str, ...] | None = None  # the MIG instances' UUIDs ("MIG-...") where known
    sm_clock_mhz: int | None = None  # nvidia-smi clocks.sm
    sm_clock_max_mhz: int | None = None  # nvidia-smi clocks.max.sm

    @property
    def memory_total_gb(self) -> float:
        """Memory in the GB that cards are sold in, which are binary: an "8 GB" card has 8192 MiB."""
        return self.memory_total_mib / 1024

    @property
    def compute_capability_tuple(self) -> tuple[int, int] | None:
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def is_geforce(self) -> bool:
        """Consumer cards: NVIDIA disables peer-to-peer access on most of them."""
        name = self.name.lower()
        return "geforce" in name or "titan" in name

    def label(self) -> str:
        return f"GPU {self.index} ({self.name})"


@dataclass(frozen=True)
class Link:
    """What connects one unordered pair of GPUs (NVML indices)."""

    gpus: tuple[int, int]
    p2p_read: str | None = None
    topology: str | None = None
    nvlink_count: int | None = None


@dataclass(frozen=True)
class Inventory:
    driver_version: str | None
    cuda_driver_version: str | None
    gpus: tuple[Gpu, ...] = ()
    links: tuple[Link, ...] | None = None
    captured_at: str | None = None
    host: str | None = None
    source: str = field(default="live", compare=False)
    software: Stack | None = None  # what was installed where the snapshot was taken
    environment: dict[str, str] | None = None  # its GPU-related variables (CUDA_VISIBLE_DEVICES, NCCL_*...)
    nvml_error: str | None = None  # why NVML could not be read there (then there are no GPUs)
    origin: str | None = None  # e.g. "nvidia-smi -q -x (nvsmi_device_v12.dtd)" for a converted dump
    system: SystemFacts | None = None  # None: a version 1/2 snapshot, or a dump, that predates it

    def gpu(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus if g.index == index), None)

    def link(self, a: int, b: int) -> Link | None:
        pair = {a, b}
        return next((lk for lk in self.links or () if set(lk.gpus) == pair), None)

    # -- the snapshot format -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA_ID,
            "captured_at": self.captured_at,
            "host": self.host,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "gpus": [_gpu_to_dict(g) for g in self.gpus],
            "links": None
            if self.links is None
            else [{**asdict(lk), "gpus": list(lk.gpus)} for lk in self.links],
            "origin": self.origin,
            "nvml_error": self.nvml_error,
            "software": None if self.software is None else self.software.to_dict(),
            "environment": self.environment,
            "system": None if self.system is None else self.system.to_dict(),
        }
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Inventory:
        return _parse_inventory(data, source)

    def write(self, path: str | Path) -> None:
        files.write_text(path, self.to_json())


def load_inventory(path: str | Path) -> Inventory:
    """Read a snapshot file or an `nvidia-smi -q -x` dump (told apart by their content); any problem
    is one InventoryError naming the file (and the field)."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InventoryError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise InventoryError(f"{where}: is a directory, not an inventory file") from None
    except OSError as exc:
        raise InventoryError(f"{where}: cannot read: {exc.strerror or exc}") from None
    from diagnostics import nvidia_smi  # only a dump needs the XML reader

    if nvidia_smi.looks_like_xml(data):
        try:
            return _parse_inventory(nvidia_smi.to_snapshot(data), where)
        except nvidia_smi.NotAnNvidiaSmiDump as exc:
            raise InventoryError(f"{where}: {exc}") from None
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InventoryError(
            f"{where}: neither a JSON snapshot nor an nvidia-smi XML dump (not UTF-8 text)"
        ) from None
    except json.JSONDecodeError as exc:
        raise InventoryError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return _parse_inventory(parsed, where)


# -- parsing ---------------------------------------------------------------------------------

_MISSING = object()


class _Reader:
    """Typed access to one JSON object, with errors that name the file and the field's path."""

    def __init__(self, data: Any, source: str, path: str) -> None:
        if not isinstance(data, Mapping):
            raise InventoryError(f"{source}: {path or 'top level'} must be an object")
        self.data, self.source, self.path = data, source, path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kinds: tuple[type, ...], required: bool = False) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING or (value is None and required):
            if required:
                raise InventoryError(f"{self.source}: missing required field '{self._name(key)}'")
            return None
        if value is None:
            return None
        # bool is an int in Python; JSON true is not a number
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            expected = " or ".join(_JSON_NAMES[k] for k in kinds)
            raise InventoryError(
                f"{self.source}: field '{self._name(key)}' must be {expected}, got {json.dumps(value)[:40]}"
            )
        return value

    def child(self, value: Any, path: str) -> _Reader:
        return _Reader(value, self.source, path)


_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "an object",
}


def _parse_inventory(data: Any, source: str) -> Inventory:
    top = _Reader(data, source, "")
    schema = top.get("schema", (str,), required=True)
    if schema not in READABLE_SCHEMAS:
        raise InventoryError(f"{source}: field 'schema' is {schema!r}, expected {SCHEMA_ID!r}")
    for key in ("driver_version", "cuda_driver_version"):
        if key not in data:
            raise InventoryError(f"{source}: missing required field '{key}'")
    gpus_raw = top.get("gpus", (list,), required=True)
    gpus = tuple(_parse_gpu(top.child(raw, f"gpus[{i}]")) for i, raw in enumerate(gpus_raw))
    seen: set[int] = set()
    for gpu in gpus:
        if gpu.index in seen:
            raise InventoryError(f"{source}: two GPUs have index {gpu.index}")
        seen.add(gpu.index)
    links_raw = top.get("links", (list,))
    links = None
    if links_raw is not None:
        links = tuple(_parse_link(top.child(raw, f"links[{i}]")) for i, raw in enumerate(links_raw))
    software = None
    if top.get("software", (dict,)) is not None:
        try:
            software = stack_from_dict(data["software"])
        except ValueError as exc:
            raise InventoryError(f"{source}: field 'software': {exc}") from None
    environment = top.get("environment", (dict,))
    if environment is not None and not all(isinstance(v, str) for v in environment.values()):
        raise InventoryError(f"{source}: field 'environment' must map variable names to strings")
    system = None
    if top.get("system", (dict,)) is not None:
        try:
            system = system_from_dict(data["system"])
        except ValueError as exc:
            raise InventoryError(f"{source}: field 'system': {exc}") from None
    return Inventory(
        driver_version=top.get("driver_version", (str,)),
        cuda_driver_version=top.get("cuda_driver_version", (str,)),
        gpus=tuple(sorted(gpus, key=lambda g: g.index)),
        links=links,
        captured_at=top.get("captured_at", (str,)),
        host=top.get("host", (str,)),
        source=source,
        software=software,
        environment=None if environment is None else {str(k): v for k, v in environment.items()},
        nvml_error=top.get("nvml_error", (str,)),
        origin=top.get("origin", (str,)),
        system=system,
    )


def _parse_gpu(r: _Reader) -> Gpu:
    index = r.get("index", (int,), required=True)
    if index < 0:
        raise InventoryError(f"{r.source}: field '{r.path}.index' must be >= 0")
    if "compute_capability" not in r.data:
        raise InventoryError(f"{r.source}: missing required field '{r.path}.compute_capability'")
    cc = r.get("compute_capability", (str,))
    parts = cc.split(".") if cc is not None else ["0", "0"]  # None: not known; "" is not a version
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InventoryError(
            f"{r.source}: field '{r.path}.compute_capability' must look like \"8.6\", got {cc!r}"
        )
    memory_total = r.get("memory_total_mib", (int,), required=True)
    if memory_total < 0:
        raise InventoryError(f"{r.source}: field '{r.path}.memory_total_mib' must be >= 0")
    if "display_active" not in r.data:
        raise InventoryError(f"{r.source}: missing required field '{r.path}.display_active'")
    pcie_raw = r.get("pcie", (dict,))
    pcie = None
    if pcie_raw is not None:
        pr = r.child(pcie_raw, f"{r.path}.pcie")
        pcie = Pcie(**{f.name: pr.get(f.name, (int,)) for f in fields(Pcie)})
    reasons = r.get("clocks_event_reasons", (list,))
    procs_raw = r.get("processes", (list,))
    processes = None
    if procs_raw is not None:
        processes = tuple(
            _parse_process(r.child(p, f"{r.path}.processes[{i}]")) for i, p in enumerate(procs_raw)
        )
    number = (int, float)
    mig_devices = r.get("mig_devices", (list,))
    if mig_devices is not None and not all(isinstance(m, str) for m in mig_devices):
        raise InventoryError(f"{r.source}: field '{r.path}.mig_devices' must be a list of MIG UUIDs")
    return Gpu(
        index=index,
        name=r.get("name", (str,), required=True),
        uuid=r.get("uuid", (str,), required=True),
        pci_bus_id=r.get("pci_bus_id", (str,), required=True),
        memory_total_mib=memory_total,
        compute_capability=cc,
        display_active=r.get("display_active", (bool,)),
        memory_used_mib=r.get("memory_used_mib", (int,)),
        multiprocessor_count=r.get("multiprocessor_count", (int,)),
        display_mode=r.get("display_mode", (bool,)),
        temperature_c=r.get("temperature_c", number),
        power_draw_w=r.get("power_draw_w", number),
        power_limit_w=r.get("power_limit_w", number),
        utilization_gpu_pct=r.get("utilization_gpu_pct", number),
        pcie=pcie,
        ecc_uncorrected_volatile=r.get("ecc_uncorrected_volatile", (int,)),
        clocks_event_reasons=None if reasons is None else tuple(str(x) for x in reasons),
        processes=processes,
        mig_enabled=r.get("mig_enabled", (bool,)),
        mig_devices=None if mig_devices is None else tuple(mig_devices),
        sm_clock_mhz=r.get("sm_clock_mhz", (int,)),
        sm_clock_max_mhz=r.get("sm_clock_max_mhz", (int,)),
    )


def _parse_process(r: _Reader) -> GpuProcess:
    kind = r.get("type", (str,)) or "compute"
    if kind not in ("compute", "graphics"):
        raise InventoryError(f"{r.source}: field '{r.path}.type' must be compute or graphics")
    return GpuProcess(
        pid=r.get("pid", (int,), required=True),
        name=r.get("name", (str,)),
        used_memory_mib=r.get("used_memory_mib", (int,)),
        type=kind,
    )


def _parse_link(r: _Reader) -> Link:
    pair = r.get("gpus", (list,), required=True)
    if len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
        raise InventoryError(f"{r.source}: field '{r.path}.gpus' must be two GPU indices")
    return Link(
        gpus=(pair[0], pair[1]),
        p2p_read=r.get("p2p_read", (str,)),
        topology=r.get("topology", (str,)),
        nvlink_count=r.get("nvlink_count", (int,)),
    )


def _gpu_to_dict(gpu: Gpu) -> dict[str, Any]:
    data = asdict(gpu)
    if gpu.clocks_event_reasons is not None:
        data["clocks_event_reasons"] = list(gpu.clocks_event_reasons)
    if gpu.processes is not None:
        data["processes"] = [asdict(p) for p in gpu.processes]
    if gpu.mig_devices is not None:
        data["mig_devices"] = list(gpu.mig_devices)
    return data
