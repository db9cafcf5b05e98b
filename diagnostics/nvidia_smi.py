"""`nvidia-smi -q -x` dumps as inventories: the XML a user pastes into a bug report, turned into the
snapshot format (a dict that `diagnostics.inventory` reads like any snapshot file).

Read with the standard library's XML parser, which never fetches the DTD the dump names, so every
DTD version reads the same way (v9 to v13, Linux and Windows, with or without an XML declaration).
Elements moved between versions (clocks_throttle_reasons -> clocks_event_reasons, power_readings ->
gpu_power_readings, display_mode -> display_attached), so each field is looked up under every name
it has had. A value nvidia-smi could not read ("N/A", "[N/A]", "Requested functionality has been
deprecated", "Not Found", ...) or a missing element becomes None; nothing in a dump crashes the
reader. The dump has no compute capability: it comes from the product name (knowledge.py).
"""

from __future__ import annotations

import re
import time
from typing import Any
from xml.etree import ElementTree

from diagnostics import knowledge

# The snapshot version this module writes (diagnostics.inventory.SCHEMA_ID).
SCHEMA_ID = "gpudiag-inventory/2"
# nvidia-smi's names for clock slowdown reasons that make a card slower than it could be, in the
# snapshot's words (the same as diagnostics.nvml reads from NVML's bit mask).
_CLOCK_REASONS = (
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


class NotAnNvidiaSmiDump(ValueError):
    """XML that cannot be read as `nvidia-smi -q -x` output; the message is one line, without the path."""


def looks_like_xml(data: bytes) -> bool:
    """True for a document whose first non-blank character is "<" (the JSON snapshots start with "{")."""
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def to_snapshot(data: bytes) -> dict[str, Any]:
    """The snapshot dict (gpudiag-inventory/2) for the bytes of an `nvidia-smi -q -x` dump."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise NotAnNvidiaSmiDump(f"not a readable XML document ({exc})") from None
    if root.tag != "nvidia_smi_log":
        raise NotAnNvidiaSmiDump(
            f"XML, but not `nvidia-smi -q -x` output (its root element is <{root.tag}>, not <nvidia_smi_log>)"
        )
    gpus = [_gpu(position, element) for position, element in enumerate(root.findall("gpu"))]
    if not gpus:
        raise NotAnNvidiaSmiDump("an nvidia-smi dump that lists no GPU: nothing to check or plan")
    return {
        "schema": SCHEMA_ID,
        "captured_at": _timestamp(_text(root, "timestamp")),
        "host": None,  # nvidia-smi does not print it
        "origin": f"nvidia-smi -q -x ({_doctype(data) or 'no DTD named'})",
        "driver_version": _text(root, "driver_version"),
        "cuda_driver_version": _text(root, "cuda_version"),
        "gpus": gpus,
        "links": None,  # the XML has no peer-to-peer or topology information
    }


def _gpu(position: int, g: ElementTree.Element) -> dict[str, Any]:
    # The GPU's index is its position: nvidia-smi lists GPUs in its own numbering (PCI bus order),
    # and minor_number (the /dev/nvidiaN node) can differ from it.
    name = _text(g, "product_name")
    processes = g.find("processes")
    return {
        "index": position,
        "name": name or "unknown GPU",
        "uuid": _text(g, "uuid") or "",
        "pci_bus_id": _text(g, "pci/pci_bus_id") or g.get("id") or "",
        "memory_total_mib": _int(_text(g, "fb_memory_usage/total")) or 0,
        "memory_used_mib": _int(_text(g, "fb_memory_usage/used")),
        "compute_capability": knowledge.compute_capability_for_name(name),
        "multiprocessor_count": None,  # not in the XML
        "display_active": _enabled(_text(g, "display_active")),
        # v13 deprecated display_mode ("is a monitor connected") in favour of display_attached
        "display_mode": _enabled(_text(g, "display_attached") or _text(g, "display_mode")),
        "temperature_c": _number(_text(g, "temperature/gpu_temp")),
        "power_draw_w": _number(
            _first(
                g,
                "gpu_power_readings/power_draw",
                "gpu_power_readings/instant_power_draw",
                "gpu_power_readings/average_power_draw",
                "power_readings/power_draw",
            )
        ),
        "power_limit_w": _number(
            _first(
                g,
                "gpu_power_readings/current_power_limit",
                "gpu_power_readings/enforced_power_limit",
                "power_readings/enforced_power_limit",
                "power_readings/power_limit",
            )
        ),
        "utilization_gpu_pct": _number(_text(g, "utilization/gpu_util")),
        "pcie": _pcie(g),
        "ecc_uncorrected_volatile": _ecc_uncorrected(g.find("ecc_errors/volatile")),
        "clocks_event_reasons": _clock_reasons(g),
        "processes": None if processes is None else [_process(p) for p in processes.findall("process_info")],
        "mig_enabled": _enabled(_text(g, "mig_mode/current_mig")),
        "mig_devices": None,  # the XML lists MIG instances without their UUIDs
    }


def _pcie(g: ElementTree.Element) -> dict[str, int | None] | None:
    link = g.find("pci/pci_gpu_link_info")
    if link is None:
        return None
    return {
        "gen_current": _int(_text(link, "pcie_gen/current_link_gen")),
        "gen_max": _int(_text(link, "pcie_gen/max_link_gen")),
        "width_current": _int(_text(link, "link_widths/current_link_width")),
        "width_max": _int(_text(link, "link_widths/max_link_width")),
    }


def _ecc_uncorrected(volatile: ElementTree.Element | None) -> int | None:
    """Uncorrected ECC errors since the driver loaded, in every layout nvidia-smi has used: totals by
    bit width (<= v11), by memory kind (v12: sram/dram_uncorrectable) or by detection (v13)."""
    if volatile is None:
        return None
    paths = (
        "double_bit/total",
        "sram_uncorrectable",
        "dram_uncorrectable",
        "sram_uncorrectable_parity",
        "sram_uncorrectable_secded",
    )
    counts = [n for path in paths if (n := _int(_text(volatile, path))) is not None]
    return sum(counts) if counts else None


def _clock_reasons(g: ElementTree.Element) -> list[str] | None:
    for block, prefix in (
        ("clocks_event_reasons", "clocks_event_reason_"),
        ("clocks_throttle_reasons", "clocks_throttle_reason_"),
    ):
        element = g.find(block)
        if element is not None:
            active = {child.tag.removeprefix(prefix) for child in element if _value(child.text) == "Active"}
            return [reason for reason in _CLOCK_REASONS if reason in active]
    return None


def _process(p: ElementTree.Element) -> dict[str, Any]:
    # "C" compute, "G" graphics, "C+G" both: on Windows every desktop application is C+G (a browser,
    # the shell), so only a pure compute process counts as one that holds memory for computing.
    kind = (_text(p, "type") or "C").upper()
    return {
        "pid": _int(_text(p, "pid")) or 0,
        "name": _text(p, "process_name"),
        "used_memory_mib": _int(_text(p, "used_memory")),
        "type": "compute" if kind == "C" else "graphics",
    }


# -- values ------------------------------------------------------------------------------------------

# What nvidia-smi prints where it has no value; compared case-insensitively.
_NO_VALUE = (
    "n/a",
    "[n/a]",
    "not found",
    "none",
    "unknown error",
    "requested functionality has been deprecated",
    "not supported",
    "[not supported]",
    "unknown",
    "insufficient permissions",
)


def _value(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return None if not text or text.lower() in _NO_VALUE or text.lower().startswith("[") else text


def _text(element: ElementTree.Element, path: str) -> str | None:
    found = element.find(path)
    return None if found is None else _value(found.text)


def _first(element: ElementTree.Element, *paths: str) -> str | None:
    return next((v for p in paths if (v := _text(element, p)) is not None), None)


def _number(text: str | None) -> float | None:
    """ "33.4 %" -> 33.4; "139.62 W" -> 139.62; "31 C" -> 31.0."""
    match = _NUMBER.match(text or "")
    return float(match.group()) if match else None


def _int(text: str | None) -> int | None:
    """ "11441 MiB" -> 11441; "16x" -> 16; anything without a leading number -> None."""
    number = _number(text)
    return None if number is None or number < 0 else int(number)


def _enabled(text: str | None) -> bool | None:
    if text is None:
        return None
    return {"enabled": True, "yes": True, "disabled": False, "no": False}.get(text.lower())


def _timestamp(text: str | None) -> str | None:
    """ "Tue Dec  3 05:27:00 2019" -> "2019-12-03T05:27:00" (the dump's local time; no zone is given)."""
    if text is None:
        return None
    try:
        return time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y")
        )
    except ValueError:
        return None


def _doctype(data: bytes) -> str | None:
    match = re.search(rb'<!DOCTYPE\s+nvidia_smi_log\s+SYSTEM\s+"([^"]+)"', data[:512])
    return match.group(1).decode("ascii", "replace") if match else None
