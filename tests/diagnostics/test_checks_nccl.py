"""The checks for why NCCL would hang or crawl (pcie-acs, shm, nccl-env, clocks), on recorded snapshots."""

from __future__ import annotations

import dataclasses

from diag_support import FIXTURES, OFFICIAL_STACK, ctx_for, run_one, statuses

from diagnostics.checks import make_context, registry
from diagnostics.inventory import load_inventory
from diagnostics.selection import SelectionOptions

ACS = "inv-v3-2x5880-acs-iommu.json"
CONTAINER = "inv-v3-container-4xa100-small-shm.json"
HOT = "inv-v3-hot-throttling-clocks.json"
NEW_CHECKS = ("pcie-acs", "clocks", "shm", "nccl-env")


def _with_system(fixture: str, env: dict[str, str] | None = None, **changes: object):
    """A context from `fixture` with its system facts changed, as a live read would give it."""
    inventory = load_inventory(FIXTURES / fixture)
    assert inventory.system is not None
    inventory = dataclasses.replace(inventory, system=dataclasses.replace(inventory.system, **changes))
    return make_context(SelectionOptions(), env=env or {}, stack=OFFICIAL_STACK, read_live=lambda: inventory)


def test_the_new_checks_are_registered_with_one_line_titles():
    known = dict(registry())
    assert all(check_id in known for check_id in NEW_CHECKS)


def test_an_older_snapshot_skips_each_new_check_and_says_it_predates_them():
    ctx = ctx_for("inv-geforce-p2p-reported.json")
    for check_id in ("pcie-acs", "shm", "nccl-env"):
        findings = run_one(check_id, ctx)
        assert statuses(findings) == ["skip"] and "predates" in findings[0].message


def test_acs_redirection_and_a_translating_iommu_fail_with_p2p_over_pcie():
    """2x RTX 5880 Ada (NVIDIA/nccl#2079): both bridges are named, with setpci for each and iommu=pt."""
    findings = run_one("pcie-acs", ctx_for(ACS))
    assert statuses(findings) == ["fail", "fail"]
    acs, iommu = findings
    assert "0000:40:01.1 (above GPU 0)" in acs.message and "0000:60:01.1" in acs.message
    assert "setpci -s 0000:40:01.1 ECAP_ACS+6.w=0000" in acs.remedy and "NCCL_P2P_DISABLE=1" in acs.remedy
    assert "iommu=pt" in iommu.remedy and "TROUBLESHOOTING.md#nccl-hangs" in iommu.remedy


def test_with_p2p_disabled_acs_only_warns():
    findings = run_one("pcie-acs", ctx_for(ACS, env={"NCCL_P2P_DISABLE": "1"}))
    assert statuses(findings) == ["warn", "warn"] and "host memory" in findings[0].message


def test_a_bridge_above_both_gpus_is_not_between_them():
    """ACS on a port above every selected GPU is not on their peer path: with the IOMMU off, a pass."""
    both = (dataclasses.replace(load_inventory(FIXTURES / ACS).system.acs_bridges[0], gpus=(0, 1)),)  # type: ignore[union-attr]
    findings = run_one("pcie-acs", _with_system(ACS, iommu="off", acs_bridges=both))
    assert statuses(findings) == ["pass"] and "no ACS redirection" in findings[0].message


def test_unknown_acs_and_iommu_say_the_exact_commands():
    findings = run_one("pcie-acs", _with_system(ACS, iommu="unknown", acs_bridges=None))
    assert statuses(findings) == ["pass", "skip", "skip"]
    assert "sudo lspci -vvv" in findings[1].message and "cat /proc/cmdline" in findings[2].message


def test_nvlinked_gpus_pass_whatever_acs_says():
    findings = run_one("pcie-acs", ctx_for(CONTAINER))
    assert statuses(findings) == ["pass"] and "NVLink" in findings[0].message


def test_a_containers_64_mib_shm_warns_with_the_docker_flags():
    findings = run_one("shm", ctx_for(CONTAINER))
    assert statuses(findings) == ["warn"] and "64 MiB" in findings[0].message
    assert "--shm-size=1g" in findings[0].remedy and "--ipc=host" in findings[0].remedy


def test_shm_is_fine_outside_a_container_or_when_large():
    assert statuses(run_one("shm", ctx_for(ACS))) == ["pass"]
    assert statuses(run_one("shm", _with_system(CONTAINER, shm_bytes=1024**3))) == ["pass"]


def test_nccl_variables_that_point_nowhere_or_switch_off_nvlink():
    """ib0 on a machine with eth0 fails; an absent HCA and P2P off on NVLinked GPUs warn."""
    recorded = make_context(SelectionOptions(), str(FIXTURES / CONTAINER), stack=OFFICIAL_STACK)
    findings = run_one("nccl-env", recorded)  # judged on the environment the snapshot recorded
    assert statuses(findings) == ["fail", "warn", "warn"]
    ifname, hca, p2p = findings
    assert "NCCL_SOCKET_IFNAME='ib0'" in ifname.message and "eth0, lo" in ifname.message
    assert "mlx5_0" in hca.message and "TCP sockets" in hca.message
    assert "NCCL_P2P_DISABLE=1" in p2p.message and "Slow on purpose?" in p2p.message


def test_interface_lists_follow_nccls_prefix_exact_and_exclude_forms():
    """NCCL_SOCKET_IFNAME: "eth" is a prefix, "=eth0" exact, "^docker,lo" everything but those."""
    for spec in ("eth", "=eth0", "^docker,lo", "en,eth"):
        ctx = _with_system(CONTAINER, env={"NCCL_SOCKET_IFNAME": spec})
        assert statuses(run_one("nccl-env", ctx)) == ["pass"], spec
    ctx = _with_system(CONTAINER, env={"NCCL_SOCKET_IFNAME": "=eth"})
    assert statuses(run_one("nccl-env", ctx)) == ["fail"]


def test_no_nccl_variables_pass_with_the_debug_hint():
    findings = run_one("nccl-env", _with_system(ACS))
    assert statuses(findings) == ["pass"] and "NCCL_DEBUG=INFO" in findings[0].message


def test_a_busy_gpu_with_a_lagging_sm_clock_is_named():
    """91 °C, 1125 of 1410 MHz at 97% busy: the GPU that sets the pace, with its throttle reasons."""
    findings = run_one("clocks", ctx_for(HOT))
    assert statuses(findings) == ["warn"] and findings[0].gpus == (1,)
    assert "1125 of 1410 MHz" in findings[0].message and "thermal slowdown" in findings[0].message


def test_clocks_skip_without_readings_and_pass_when_idle():
    assert statuses(run_one("clocks", ctx_for("inv-hot-throttling.json"))) == ["skip"]
    findings = run_one("clocks", ctx_for(ACS))
    assert statuses(findings) == ["pass"] and "(idle)" in findings[0].message
