"""The system facts behind NCCL hangs: the pure parsers on real samples (tests/fixtures/system/, sources in
its README.md) and `read_system` on a fake machine root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diagnostics.system import (
    AcsBridge,
    SystemFacts,
    acs_bridges,
    iommu_from_cmdline,
    iommu_mode,
    looks_like_container,
    normalize_bus_id,
    parse_lspci_acs,
    read_system,
    redirects,
    system_from_dict,
    upstream_bridges,
)

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "system"


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("cmdline-rccl-1129-iommu-pt.txt", "passthrough"),
        ("cmdline-pve-intel-vgpu-3-intel-on-pt.txt", "passthrough"),
        ("cmdline-qubes-3849-intel-on.txt", "on"),
        ("cmdline-clr-boot-manager-123-igfx-off.txt", None),
        ("cmdline-firecracker-build-machine.txt", None),
        ("cmdline-handwritten-amd-iommu-off.txt", "off"),
    ],
)
def test_kernel_command_lines_say_what_they_say_of_the_iommu(sample, expected):
    """iommu=pt is passthrough even after intel_iommu=on; igfx_off is an option, not "off"."""
    assert iommu_from_cmdline((SAMPLES / sample).read_text()) == expected


def test_later_words_of_one_parameter_win_and_off_beats_passthrough():
    assert iommu_from_cmdline("intel_iommu=off intel_iommu=on") == "on"
    assert iommu_from_cmdline("iommu=pt amd_iommu=off") == "off"
    assert iommu_from_cmdline("amd_iommu=force_isolation iommu=pt") == "passthrough"
    assert iommu_from_cmdline("iommu.passthrough=0") == "on"


def test_the_kernels_own_view_beats_the_command_line():
    """GPU IOMMU groups of type identity are passthrough whatever the command line; no registered
    IOMMU is off; nothing readable is unknown."""
    assert iommu_mode(None, ["ivhd0"], ["identity", "identity"]) == "passthrough"
    assert iommu_mode("passthrough", ["dmar0"], ["DMA-FQ"]) == "on"
    assert iommu_mode("passthrough", ["dmar0"], []) == "passthrough"
    assert iommu_mode(None, ["dmar0"], []) == "on"
    assert iommu_mode("on", [], []) == "off"
    assert iommu_mode("off", None, []) == "off"
    assert iommu_mode(None, None, []) == "unknown"


def test_acs_redirection_is_read_from_a_root_lspci_of_an_epyc_board():
    """ROMED8-2T: the GPP bridge 00:03.5 redirects (ReqRedir+ CmpltRedir+); 00:07.1 only validates
    sources (SrcValid+), which redirects nothing; bridges without ACS read as ""."""
    acs = parse_lspci_acs((SAMPLES / "lspci-vvnn-romed8-2t-excerpt.txt").read_text())
    assert (
        acs["0000:00:03.5"]
        == "SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
    )
    assert redirects(acs["0000:00:03.5"] or "") and not redirects(acs["0000:00:07.1"] or "")
    assert acs["0000:00:04.0"] == ""


def test_lspci_without_root_reads_as_not_readable():
    """A normal user's lspci -vvv prints "Capabilities: <access denied>": ACS is unknown, not off."""
    acs = parse_lspci_acs((SAMPLES / "lspci-vvv-haswell-e-no-root.txt").read_text())
    assert acs["0000:00:01.0"] is None and acs["0000:ff:1f.2"] == ""
    assert acs_bridges({0: ["0000:00:01.0"], 1: ["0000:00:02.0"]}, acs) is None


def test_only_redirecting_bridges_above_the_gpus_are_kept():
    acs = parse_lspci_acs((SAMPLES / "lspci-vvnn-romed8-2t-excerpt.txt").read_text())
    found = acs_bridges({0: ["0000:00:03.5"], 1: ["0000:00:07.1"]}, acs)
    assert found == (AcsBridge("0000:00:03.5", (0,), acs["0000:00:03.5"] or ""),)


def test_bus_ids_and_sysfs_paths_normalise_to_sysfs_addresses():
    assert normalize_bus_id("00000000:0B:00.0") == "0000:0b:00.0"
    assert normalize_bus_id("41:00.0") == "0000:41:00.0" and normalize_bus_id("eth0") is None
    path = "/sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0/0000:42:00.0"
    assert upstream_bridges(path) == ["0000:40:01.1", "0000:41:00.0"]


def test_containers_are_told_by_their_marks():
    assert looks_like_container(True, False, "")
    assert looks_like_container(False, False, "12:pids:/kubepods/burstable/pod1/abc\n")
    assert not looks_like_container(False, False, "0::/init.scope\n")


def test_read_system_on_a_fake_root(tmp_path):
    """A container root with Docker's mark, intel_iommu=on and a registered IOMMU, two GPUs behind
    bridges, and no lspci output (no root): ACS stays None, the rest is read."""
    (tmp_path / ".dockerenv").touch()
    (tmp_path / "dev" / "shm").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cmdline").write_text("BOOT_IMAGE=/vmlinuz ro intel_iommu=on\n")
    for name in ("sys/class/iommu/dmar0", "sys/class/net/eth0", "sys/class/net/lo"):
        (tmp_path / name).mkdir(parents=True)
    facts = read_system({0: "00000000:41:00.0", 1: "00000000:61:00.0"}, root=tmp_path, lspci=lambda: None)
    assert facts.in_container is True and facts.iommu == "on" and facts.acs_bridges is None
    assert facts.net_interfaces == ("eth0", "lo") and facts.ib_devices == ()
    assert facts.shm_bytes == os.statvfs(tmp_path).f_frsize * os.statvfs(tmp_path).f_blocks


def test_read_system_places_acs_bridges_above_the_gpus(tmp_path):
    """GPU sysfs links resolve to their bridge chain; lspci's redirecting bridge is kept with its GPU."""
    devices = tmp_path / "sys" / "bus" / "pci" / "devices"
    devices.mkdir(parents=True)
    for bridge, gpu in (("0000:00:03.5", "0000:01:00.0"), ("0000:00:07.1", "0000:02:00.0")):
        target = tmp_path / "sys" / "devices" / "pci0000:00" / bridge / gpu
        target.mkdir(parents=True)
        (devices / gpu).symlink_to(target)
    text = (SAMPLES / "lspci-vvnn-romed8-2t-excerpt.txt").read_text()
    facts = read_system({0: "00000000:01:00.0", 1: "00000000:02:00.0"}, root=tmp_path, lspci=lambda: text)
    assert facts.acs_bridges is not None and [(b.address, b.gpus) for b in facts.acs_bridges] == [
        ("0000:00:03.5", (0,))
    ]
    assert facts.iommu == "unknown" and facts.in_container is False


def test_system_facts_round_trip_and_bad_fields_are_named():
    facts = SystemFacts(1024, True, "on", (AcsBridge("0000:00:03.5", (0, 1), "ReqRedir+"),), ("eth0",), ())
    assert system_from_dict(facts.to_dict()) == facts
    with pytest.raises(ValueError, match="iommu"):
        system_from_dict({"iommu": "maybe"})
    with pytest.raises(ValueError, match="shm_bytes"):
        system_from_dict({"shm_bytes": "64m"})
