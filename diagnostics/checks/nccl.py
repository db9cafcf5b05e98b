"""Why NCCL would hang or crawl before training starts: `pcie-acs` (ACS redirection or a translating
IOMMU on the path between GPUs), `shm` (a container's small /dev/shm), `nccl-env` (NCCL_* variables
that point nowhere or switch off NVLink) and `clocks` (a GPU whose SM clock lags under load). They
judge the snapshot's `system` facts, so a replay shows what the recorded machine would.
"""

from __future__ import annotations

from itertools import combinations

from diagnostics.checks.base import Context, Finding, fail, passed, see, skip, warn
from diagnostics.monitor import throttling
from diagnostics.system import SystemFacts

# Policy thresholds, not measured limits. NCCL's shared-memory transport allocates its buffers in
# /dev/shm; Docker's default of 64 MiB is too small for 2+ GPUs (NVIDIA's container guides ask
# for --shm-size=1g or --ipc=host), so under 1 GiB warns.
SHM_MIN_BYTES = 1024**3
# A GPU this busy should be running near its top SM clock; below this fraction of it, it sets the pace
# of every synchronous all-reduce (a 91 °C card losing a fifth of its clock holds all others back).
BUSY_PCT = 50.0
SLOW_CLOCK_FRACTION = 0.85
_PREDATES = (
    "this snapshot predates the system facts (schema version 1 or 2): take a new one with `gpudiag snapshot`"
)
_ACS_COMMAND = "sudo lspci -vvv | grep -E '^[0-9a-f]|ACSCtl'"
_IOMMU_COMMAND = "cat /proc/cmdline; ls /sys/class/iommu; cat /sys/kernel/iommu_groups/*/type"


def _system(ctx: Context) -> SystemFacts | Finding:
    if ctx.inventory is None or ctx.inventory.system is None:
        return skip(_PREDATES if ctx.inventory is not None else "no inventory: nothing to judge")
    return ctx.inventory.system


def _p2p_disabled(env: dict[str, str]) -> bool:
    """NCCL_P2P_DISABLE=1, or NCCL_P2P_LEVEL=LOC (0): NCCL never uses peer-to-peer."""
    disable = env.get("NCCL_P2P_DISABLE", "").strip()
    return disable not in ("", "0") or env.get("NCCL_P2P_LEVEL", "").strip().upper() in ("LOC", "0")


def acs_iommu(ctx: Context) -> list[Finding]:
    """ACS redirection or a translating IOMMU between the selected GPUs (peer traffic via the CPU)."""
    selected = ctx.selected
    if len(selected) < 2:
        return [skip("fewer than 2 GPUs selected: no GPU-to-GPU traffic")]
    facts = _system(ctx)
    if isinstance(facts, Finding):
        return [facts]
    inv = ctx.inventory
    assert inv is not None
    pairs = list(combinations(selected, 2))
    links = [inv.link(a.index, b.index) for a, b in pairs]
    if links and all(lk is not None and lk.topology == "nvlink" for lk in links):
        return [passed("every selected pair talks over NVLink: ACS and the IOMMU do not touch that traffic")]
    ids = {g.index for g in selected}
    p2p_off = _p2p_disabled(dict(ctx.env))
    # A hang needs NCCL to try P2P over PCIe; with it switched off, the cost is speed, not a hang.
    judge = warn if p2p_off or inv.links is None else fail
    costs = (
        "NCCL_P2P_DISABLE is set, so NCCL goes through host memory (safe, slower)"
        if p2p_off
        else ("NCCL's first all-reduce can hang or run far below the link's speed")
    )
    findings: list[Finding] = []
    if facts.acs_bridges is None:
        findings.append(
            skip(
                f"ACS on the PCIe bridges between the GPUs is unknown (reading it needs root): "
                f"run `{_ACS_COMMAND}`; a bridge with ReqRedir+ or CmpltRedir+ is the problem"
            )
        )
    else:
        between = [b for b in facts.acs_bridges if ids & set(b.gpus) and ids - set(b.gpus)]
        if between:
            named = ", ".join(f"{b.address} (above GPU {', '.join(map(str, b.gpus))})" for b in between)
            fix = "; ".join(f"sudo setpci -s {b.address} ECAP_ACS+6.w=0000" for b in between)
            findings.append(
                judge(
                    f"ACS redirection is on at PCIe bridge(s) {named}: peer-to-peer traffic between the GPUs "
                    f"is sent up to the root complex; {costs}",
                    "disable ACS in the BIOS (often 'ACS Enable' or 'PCIe ACS'), "
                    f"or until the next boot: {fix}; "
                    f"as the fallback, export NCCL_P2P_DISABLE=1 {see('nccl-hangs')}",
                    gpus=tuple(sorted(ids)),
                )
            )
    if facts.iommu == "on":
        findings.append(
            judge(
                f"the IOMMU translates device memory access (on, not passthrough) with {len(selected)} GPUs: "
                f"peer-to-peer traffic goes through it; {costs}",
                "boot with iommu=pt (add it to GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub, "
                "reboot), or turn the IOMMU off in the BIOS; as the fallback, export NCCL_P2P_DISABLE=1 "
                f"{see('nccl-hangs')}",
                gpus=tuple(sorted(ids)),
            )
        )
    elif facts.iommu == "unknown":
        findings.append(skip(f"the IOMMU mode is unknown here: run `{_IOMMU_COMMAND}`"))
    if not any(f.status in ("warn", "fail") for f in findings):
        acs = "ACS not read" if facts.acs_bridges is None else "no ACS redirection between the selected GPUs"
        findings.insert(0, passed(f"IOMMU {facts.iommu}; {acs}", gpus=tuple(sorted(ids))))
    return findings


def shm(ctx: Context) -> list[Finding]:
    """/dev/shm big enough for NCCL's shared-memory transport in a container."""
    facts = _system(ctx)
    if isinstance(facts, Finding):
        return [facts]
    size = "unknown size" if facts.shm_bytes is None else f"{facts.shm_bytes / 1024**2:,.0f} MiB"
    if facts.in_container is not True:
        return [passed(f"not in a container (/dev/shm: {size})")]
    if len(ctx.selected) < 2:
        return [skip(f"fewer than 2 GPUs selected: NCCL needs no shared memory (/dev/shm: {size})")]
    if facts.shm_bytes is None:
        return [skip("/dev/shm could not be measured in this container")]
    if facts.shm_bytes < SHM_MIN_BYTES:
        return [
            warn(
                f"/dev/shm is {size} in this container: NCCL's shared-memory transport between the "
                f"{len(ctx.selected)} GPUs runs out of it and fails ('unhandled system error', "
                "'Bus error') or crashes",
                "start the container with --shm-size=1g (or --ipc=host); in Kubernetes mount an emptyDir "
                f"with medium: Memory at /dev/shm {see('containers')}",
                gpus=tuple(g.index for g in ctx.selected),
            )
        ]
    return [passed(f"/dev/shm is {size} in this container")]


def _names_match(spec: str, present: tuple[str, ...]) -> bool:
    """NCCL's interface lists: "eth,ib" (prefixes), "=eth0" (exact names), "^docker,lo" (all but);
    an IB device may carry ":port"."""
    exact = spec.startswith("=") or spec.startswith("^=")
    exclude = spec.startswith("^")
    wanted = [w.split(":")[0] for w in spec.lstrip("^=").split(",") if w]

    def hit(name: str) -> bool:
        return any(name == w if exact else name.startswith(w) for w in wanted)

    return any(not hit(n) for n in present) if exclude else any(hit(n) for n in present)


def nccl_env(ctx: Context) -> list[Finding]:
    """NCCL_* variables that name absent interfaces, switch off NVLink, or leave a hang silent."""
    facts = _system(ctx)
    if isinstance(facts, Finding):
        return [facts]
    env = dict(ctx.env)
    ids = tuple(g.index for g in ctx.selected)
    findings: list[Finding] = []
    many = len(ctx.selected) >= 2
    ifname = env.get("NCCL_SOCKET_IFNAME", "").strip()
    if ifname and facts.net_interfaces is not None and not _names_match(ifname, facts.net_interfaces):
        findings.append(
            (fail if many else warn)(
                f"NCCL_SOCKET_IFNAME={ifname!r} names no interface here "
                f"({', '.join(facts.net_interfaces) or 'none'}): NCCL cannot set up its connections "
                "and stops with 'no socket interface found', or waits forever",
                f"unset NCCL_SOCKET_IFNAME, or set it to one of the interfaces listed {see('nccl-hangs')}",
                gpus=ids,
            )
        )
    hca = env.get("NCCL_IB_HCA", "").strip()
    if hca and facts.ib_devices is not None and not _names_match(hca, facts.ib_devices):
        findings.append(
            warn(
                f"NCCL_IB_HCA={hca!r} names no InfiniBand device here "
                f"({', '.join(facts.ib_devices) or 'none'}): "
                "NCCL falls back to TCP sockets between machines, many times slower",
                f"unset NCCL_IB_HCA, or name a device from `ls /sys/class/infiniband` {see('nccl-hangs')}",
                gpus=ids,
            )
        )
    inv = ctx.inventory
    nvlinked = [
        f"{a.index}-{b.index}"
        for a, b in combinations(ctx.selected, 2)
        if inv is not None and (lk := inv.link(a.index, b.index)) is not None and lk.topology == "nvlink"
    ]
    if nvlinked and _p2p_disabled(env):
        setting = ", ".join(f"{k}={env[k]}" for k in ("NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL") if k in env)
        findings.append(
            warn(
                f"{setting} on GPUs joined by NVLink (pairs {', '.join(nvlinked)}): all-reduce goes "
                "through host memory instead of NVLink, several times slower. Slow on purpose?",
                f"unset it unless it works around a hang you have seen on this machine {see('nccl-hangs')}",
                gpus=ids,
            )
        )
    if findings:
        return findings
    set_names = sorted(k for k in env if k.startswith("NCCL_"))
    note = ", ".join(set_names) if set_names else "no NCCL_* variables set"
    if many and "NCCL_DEBUG" not in env:
        note += (
            "; NCCL_DEBUG is unset: if the first all-reduce hangs, NCCL_DEBUG=INFO says where "
            "(it costs only log lines)"
        )
    return [passed(note, gpus=ids)]


def clocks(ctx: Context) -> list[Finding]:
    """SM clocks well below their maximum on a busy GPU (it sets the pace of every all-reduce)."""
    gpus = [g for g in ctx.in_scope if g.sm_clock_mhz is not None and g.sm_clock_max_mhz]
    if not gpus:
        return [skip("no SM clock readings (an older snapshot, or the driver does not report them)")]
    findings, fine = [], []
    for gpu in gpus:
        assert gpu.sm_clock_mhz is not None and gpu.sm_clock_max_mhz
        now = f"{gpu.sm_clock_mhz} of {gpu.sm_clock_max_mhz} MHz"
        busy = gpu.utilization_gpu_pct is not None and gpu.utilization_gpu_pct >= BUSY_PCT
        if busy and gpu.sm_clock_mhz < SLOW_CLOCK_FRACTION * gpu.sm_clock_max_mhz:
            reasons = throttling(gpu.clocks_event_reasons)
            why = f" ({', '.join(reasons)})" if reasons else ""
            findings.append(
                warn(
                    f"{gpu.label()} runs its SM clock at {now} while {gpu.utilization_gpu_pct:g}% busy{why}: "
                    "every synchronous step waits for it",
                    "cool it (airflow, fan curve, spacing), check the power limit "
                    "(nvidia-smi -q -d POWER,CLOCK) and that no clock cap is set (nvidia-smi -rgc) "
                    f"{see('hot-or-throttling-gpus')}",
                    gpus=(gpu.index,),
                )
            )
        else:
            fine.append(f"GPU {gpu.index} {now}" + ("" if busy else " (idle)"))
    if not findings:
        findings.append(passed("; ".join(fine), gpus=tuple(g.index for g in gpus)))
    return findings
