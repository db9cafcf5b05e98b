"""Interconnect checks: `p2p` (peer access and topology between the selected GPUs) and `pcie` (links
running below their maximum generation or width).
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from diagnostics.checks.base import Context, Finding, gpu_list, passed, see, skip, warn

# nvidia-smi topo -m words for NVML's common-ancestor levels.
_TOPOLOGY_WORDS = {
    "nvlink": "NVLink",
    "internal": "the same board",
    "single": "one PCIe switch (PIX)",
    "multiple": "several PCIe switches (PXB)",
    "hostbridge": "the CPU's PCIe host bridge (PHB)",
    "node": "host bridges within one NUMA node (NODE)",
    "system": "the link between CPU sockets (SYS)",
}
P2P_REMEDY = (
    "if NCCL all-reduce hangs or is slow: export NCCL_P2P_DISABLE=1, or train with "
    "--cross-device-ops hierarchical (or reduce-to-one) instead of NCCL"
)


def p2p(ctx: Context) -> list[Finding]:
    """Peer access and topology between the selected GPUs (NVLink, PCIe switch, host bridge, sockets)."""
    selected = ctx.selected
    if len(selected) < 2:
        return [skip("fewer than 2 GPUs selected: no GPU-to-GPU traffic")]
    inv = ctx.inventory
    if inv is None or inv.links is None:
        return [skip("no link information in this inventory (snapshot without links)")]
    pairs, broken, unknown = [], [], []
    for a, b in combinations(selected, 2):
        link = inv.link(a.index, b.index)
        if link is None:
            unknown.append(f"{a.index}-{b.index}")
            continue
        via = _TOPOLOGY_WORDS.get(link.topology or "", "an unknown path")
        if link.topology == "nvlink" and link.nvlink_count:
            via = f"{link.nvlink_count} NVLink(s)"
        pairs.append(f"GPU {a.index}-{b.index} via {via}")
        if link.p2p_read != "ok":
            broken.append(f"GPU {a.index}-{b.index} ({link.p2p_read or 'unknown'})")
    geforce = [g for g in selected if g.is_geforce]
    ids = tuple(g.index for g in selected)
    findings = []
    if broken:
        findings.append(
            warn(
                f"no peer-to-peer access between {', '.join(broken)}: all-reduce goes through host memory; "
                + "; ".join(pairs),
                f"{P2P_REMEDY} {see('nccl-hangs')}",
                gpus=ids,
            )
        )
    elif geforce:
        findings.append(
            warn(
                f"{gpu_list(geforce)} are GeForce cards: peer access is reported but often broken on them, "
                "and NCCL can hang; " + "; ".join(pairs),
                f"{P2P_REMEDY} {see('nccl-hangs')}",
                gpus=tuple(g.index for g in geforce),
            )
        )
    if unknown:
        findings.append(skip(f"no link recorded for GPU pair(s) {', '.join(unknown)}", gpus=ids))
    if not findings or all(f.status == "skip" for f in findings):
        findings.insert(0, passed("peer access between all selected GPUs: " + _grouped(pairs), gpus=ids))
    return findings


def _grouped(pairs: list[str]) -> str:
    """ "GPU 0-1 via NVLink; GPU 0-2 via NVLink" -> "2 pairs via NVLink" once there are many pairs."""
    if len(pairs) <= 3:
        return "; ".join(pairs)
    counts = Counter(p.split(" via ", 1)[1] for p in pairs)
    return "; ".join(f"{n} pair(s) via {via}" for via, n in counts.items())


def pcie(ctx: Context) -> list[Finding]:
    """PCIe links below their maximum generation or width (an x8 link in an x16 slot)."""
    gpus = [g for g in ctx.in_scope if g.pcie is not None]
    if not gpus:
        return [skip("no PCIe link information")]
    findings, fine, idle_notes = [], [], []
    for gpu in gpus:
        link = gpu.pcie
        assert link is not None
        narrow = (
            link.width_current is not None
            and link.width_max is not None
            and link.width_current < link.width_max
        )
        slow = link.gen_current is not None and link.gen_max is not None and link.gen_current < link.gen_max
        now = f"gen {link.gen_current} x{link.width_current}"
        best = f"gen {link.gen_max} x{link.width_max}"
        if narrow:
            findings.append(
                warn(
                    f"{gpu.label()} runs at {now}, below its {best}: host transfers and all-reduce "
                    "without P2P are "
                    "slower",
                    "reseat the card in a full x16 slot, check risers and the BIOS lane split "
                    "(bifurcation), and "
                    f"that no M.2 drive shares the slot's lanes {see('pcie-links')}",
                    gpus=(gpu.index,),
                )
            )
        elif slow and gpu.utilization_gpu_pct:
            findings.append(
                warn(
                    f"{gpu.label()} runs at {now} under load, below its {best}",
                    "set the slot to its full generation in the BIOS and check the riser "
                    f"{see('pcie-links')}",
                    gpus=(gpu.index,),
                )
            )
        elif slow:
            # GPUs drop the link generation when idle to save power: normal, unless it stays under load.
            idle_notes.append(f"GPU {gpu.index} {now} while idle (max {best}; normal power saving)")
        else:
            fine.append(f"GPU {gpu.index} {now}")
    if not findings:
        findings.append(passed("; ".join(fine + idle_notes), gpus=tuple(g.index for g in gpus)))
    return findings
