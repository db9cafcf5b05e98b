"""The knowledge tables: every row has a source, lookups by compute capability, version and GPU name."""

from __future__ import annotations

import dataclasses

from diagnostics import knowledge
from diagnostics.knowledge import Peak, peak_for


def test_every_row_has_a_source():
    rows = [*knowledge.ARCHITECTURES, *knowledge.KNOWN_BAD] + [p for _, p in knowledge._PEAKS]
    assert all(row.source for row in rows)


def test_blackwell_needs_cuda_12_8_and_driver_570():
    arch = knowledge.architecture_for("12.0")
    assert arch is not None and arch.min_cuda == "12.8" and arch.min_driver_linux.startswith("570")


def test_known_bad_nccl_only_on_cc_12():
    assert knowledge.known_bad("nccl", "2.25.1", 12) is not None
    assert knowledge.known_bad("nccl", "2.25.1", 8) is None
    assert knowledge.known_bad("nccl", "2.26.2", 12) is None
    assert knowledge.known_bad("nccl", None, 12) is None


def test_version_compare():
    assert knowledge.version_at_least("570.86.15", "570.26") is True
    assert knowledge.version_at_least("550.127.05", "570.26") is False
    assert knowledge.version_at_least(None, "570") is None


def test_peak_for_nvml_names():
    assert peak_for("NVIDIA A100-SXM4-80GB").model == "A100 SXM4 80GB"  # type: ignore[union-attr]
    assert peak_for("NVIDIA H100 80GB HBM3").model == "H100 SXM"  # type: ignore[union-attr]
    assert peak_for("NVIDIA H100 PCIe").model == "H100 PCIe"  # type: ignore[union-attr]
    assert peak_for("NVIDIA L4").model == "L4"  # type: ignore[union-attr]
    assert peak_for("NVIDIA L40S").model == "L40S"  # type: ignore[union-attr]
    assert peak_for("NVIDIA GeForce RTX 4090").model == "GeForce RTX 4090"  # type: ignore[union-attr]
    assert peak_for("Some Future GPU") is None


def test_peak_link_is_nvlink_else_pcie_and_frozen():
    rtx = peak_for("NVIDIA GeForce RTX 5090")
    a100 = peak_for("NVIDIA A100-SXM4-80GB")
    assert rtx is not None and rtx.link_gbps == rtx.pcie_gbps
    assert a100 is not None and a100.link_gbps == a100.nvlink_gbps == 600.0
    assert "link_gbps" in dataclasses.asdict(a100)
    assert dataclasses.is_dataclass(Peak) and Peak.__dataclass_params__.frozen  # type: ignore[attr-defined]
