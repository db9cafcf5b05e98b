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


def test_the_architectures_the_official_wheels_cannot_build_for_say_so():
    """needs_source_build marks exactly the rows whose first CUDA is newer than the official
    TensorFlow 2.21 wheels' CUDA 12.5.1; the checks read it, not a compute capability bound."""
    wheel_cuda = "12.5.1"
    for arch in knowledge.ARCHITECTURES:
        newer = knowledge.version_at_least(wheel_cuda, arch.min_cuda) is False
        assert arch.needs_source_build == newer, arch.name
        assert arch.guide_section == ("rtx-5090-and-blackwell" if newer else "driver-and-cuda-versions")
    blackwell = knowledge.architecture_for("10.0")
    assert blackwell is not None and (blackwell.family, blackwell.min_driver_major) == ("Blackwell", "570")


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


def test_compute_capability_from_product_names_kepler_to_blackwell():
    """nvidia-smi dumps have no compute capability: the product name gives it, every row with a source."""
    names = {
        "Tesla K80": "3.7",
        "Tesla K40m": "3.5",
        "Tesla M10": "5.0",
        "Tesla M60": "5.2",
        "GeForce GTX 1070": "6.1",
        "Tesla P100-PCIE-16GB": "6.0",
        "Quadro P400": "6.1",
        "Tesla V100-SXM2-16GB": "7.0",
        "Tesla T4": "7.5",
        "NVIDIA GeForce GTX 1660 Ti": "7.5",
        "Quadro RTX 6000": "7.5",
        "NVIDIA A100-SXM4-80GB": "8.0",
        "NVIDIA A10G": "8.6",
        "NVIDIA RTX A6000": "8.6",
        "NVIDIA GeForce RTX 3060 Laptop GPU": "8.6",
        "NVIDIA GeForce RTX 4090": "8.9",
        "NVIDIA RTX 4000 SFF Ada Generation": "8.9",
        "NVIDIA L40S": "8.9",
        "NVIDIA H100 80GB HBM3": "9.0",
        "NVIDIA H200": "9.0",
        "NVIDIA B200": "10.0",
        "NVIDIA GeForce RTX 5090": "12.0",
        "NVIDIA RTX PRO 6000 Blackwell Workstation Edition": "12.0",
    }
    assert {name: knowledge.compute_capability_for_name(name) for name in names} == names
    assert knowledge.compute_capability_for_name("Graphics Device") is None
    assert all(source for _, _, source in knowledge._MODELS)
    assert all(knowledge.architecture_for(cc) is not None for cc in names.values())


def test_lowest_build_capability():
    assert knowledge.lowest_build_capability(("sm_60", "sm_70", "compute_90")) == (6, 0)
    assert knowledge.lowest_build_capability(("compute_90", "sm_100a")) == (9, 0)
    assert knowledge.lowest_build_capability(()) is None
