"""Per-GPU checks: `compute-capability`, `display`, `memory`, `selection` and `device-order`.

They all read the same Selection the trainer computes (diagnostics.selection.select_gpus), so what
gpudiag reports and what `python -m training` does cannot differ.
"""

from __future__ import annotations

from collections import Counter

from diagnostics import knowledge
from diagnostics.checks.base import Context, Finding, fail, gpu_list, passed, see, skip, warn
from diagnostics.inventory import Gpu
from diagnostics.knowledge import code_for
from diagnostics.selection import TF_MIN_MULTIPROCESSORS, memory_reason

# for an architecture whose CUDA no official TensorFlow wheel has (knowledge: needs_source_build)
SOURCE_BUILD_REMEDY = (
    "use a TensorFlow build with sm_{sm} kernels (built from source with CUDA {arch.min_cuda}+ and "
    "compute capability {cc} in HERMETIC_CUDA_COMPUTE_CAPABILITIES) or NVIDIA's TensorFlow container "
    "with {arch.family} support; keep XLA off (no --jit-compile, no TF_XLA_FLAGS=--tf_xla_auto_jit); "
    "CUDA {arch.min_cuda} or newer and NVIDIA driver {arch.min_driver_major} or newer"
)


def compute_capability(ctx: Context) -> list[Finding]:
    """Each selected GPU's compute capability against the kernels TensorFlow was built with."""
    build = ctx.stack.tf_build
    unknown = [g for g in ctx.in_scope if g.compute_capability is None]
    gpus = [g for g in ctx.in_scope if g.compute_capability is not None]
    unknown_note = [
        skip(
            f"{gpu_list(unknown)}: compute capability unknown (an nvidia-smi dump does not list it and "
            "gpudiag's table of product names does not know this name), so whether TensorFlow has "
            "kernels for it cannot be told",
            gpus=tuple(g.index for g in unknown),
        )
    ]
    if not gpus:
        return unknown_note if unknown else [skip("no GPU to check")]
    if build is None or not build.is_cuda_build or not build.compute_capabilities:
        return [skip("TensorFlow's CUDA build facts are not available")]
    caps = ", ".join(build.compute_capabilities)
    driver_cuda_ok = knowledge.version_at_least(
        ctx.inventory.cuda_driver_version if ctx.inventory else None,
        ".".join((build.cuda_version or "0").split(".")[:2]),
    )
    findings, native = [], []
    for gpu in gpus:
        assert gpu.compute_capability is not None
        kind, code = code_for(gpu.compute_capability, build.compute_capabilities)
        arch = knowledge.architecture_for(gpu.compute_capability)
        arch_name = arch.name if arch else "unknown architecture"
        if kind == "native":
            native.append(f"{gpu.label()}: {gpu.compute_capability} runs {code}")
            continue
        if kind == "none":
            findings.append(
                fail(
                    f"{gpu.label()} has compute capability {gpu.compute_capability} ({arch_name}); "
                    "TensorFlow "
                    f"{ctx.stack.tensorflow} has no kernels or PTX it can use (built for {caps})",
                    "use a TensorFlow version built for this GPU, or leave it out with --device-mode custom "
                    f"{see('driver-and-cuda-versions')}",
                    gpus=(gpu.index,),
                )
            )
            continue
        findings.append(_ptx_only(ctx, gpu, code, caps, driver_cuda_ok))
    if native:
        findings.insert(
            0,
            passed(
                "; ".join(native),
                gpus=tuple(
                    g.index
                    for g in gpus
                    if code_for(g.compute_capability or "0.0", build.compute_capabilities)[0] == "native"
                ),
            ),
        )
    return findings + (unknown_note if unknown else [])


def _ptx_only(ctx: Context, gpu: Gpu, code: str | None, caps: str, driver_cuda_ok: bool | None) -> Finding:
    """A GPU TensorFlow's build has only PTX for: a warning, or a failure where the driver cannot
    JIT-compile it."""
    assert gpu.compute_capability is not None
    arch = knowledge.architecture_for(gpu.compute_capability)
    sm = gpu.compute_capability.replace(".", "")
    driver_ok = True
    if arch and ctx.inventory is not None:
        driver_ok = (
            knowledge.version_at_least(ctx.inventory.driver_version, arch.min_driver_linux) is not False
        )
    why = (
        f"{gpu.label()} has compute capability {gpu.compute_capability} "
        f"({arch.name if arch else 'unknown architecture'}), and TensorFlow "
        f"{ctx.stack.tensorflow} has no native kernels for it (built for {caps}): only {code} PTX, "
        "which the driver JIT-compiles at start: minutes at each start unless CUDA_CACHE_MAXSIZE is "
        "raised so the compiled kernels stay cached (or it fails with CUDA_ERROR_INVALID_PTX)"
    )
    if int(gpu.compute_capability.split(".")[0]) > knowledge.XLA_MAX_NATIVE_CC_MAJOR:
        why += f", and XLA's bundled ptxas cannot target sm_{sm} (XLA/jit_compile fails)"
    remedy = (
        SOURCE_BUILD_REMEDY.format(sm=sm, cc=gpu.compute_capability, arch=arch)
        if arch is not None and arch.needs_source_build
        else f"use a TensorFlow build with sm_{sm} kernels; expect a slow first start"
    ) + "; meanwhile export CUDA_CACHE_MAXSIZE=4294967296 so the JIT runs once"
    remedy += " " + see(arch.guide_section if arch is not None else "driver-and-cuda-versions")
    if not driver_ok or driver_cuda_ok is False:
        return fail(
            f"{why}; this driver cannot JIT it (too old for the GPU or for TensorFlow's CUDA)",
            remedy,
            gpus=(gpu.index,),
        )
    return warn(why, remedy, gpus=(gpu.index,))


def display(ctx: Context) -> list[Finding]:
    """GPUs that drive a display: excluded by default, or included with --include-display-gpus."""
    if not ctx.gpus:
        return [skip("no GPU to check")]
    shown = [g for g in ctx.gpus if g.display_active]
    if not shown:
        if all(g.display_active is None for g in ctx.gpus):
            return [skip("the driver does not report which GPU drives a display")]
        return [passed("no GPU drives a display")]
    selected = {g.index for g in ctx.selected}
    used = [g for g in shown if g.index in selected]
    idle = [g for g in shown if g.index not in selected]
    findings = []
    if idle:
        findings.append(
            passed(
                f"{gpu_list(idle)} drives a display and is left out (--include-display-gpus would use it)",
                gpus=tuple(g.index for g in idle),
            )
        )
    if used:
        findings.append(
            warn(
                f"{gpu_list(used)} drives a display and is selected: the desktop takes its memory and time, "
                "so it runs slower than the others and sets the pace, and the display watchdog "
                "can kill long kernels",
                "leave it out (drop --include-display-gpus / --custom-gpus it), or plug the monitor into "
                f"another card or the integrated graphics {see('uneven-gpu-usage')}",
                gpus=tuple(g.index for g in used),
            )
        )
    return findings


def _in_use(gpu: Gpu) -> str:
    procs = [p for p in gpu.processes or () if p.type == "compute"]
    named = ", ".join(
        f"{p.name or 'unknown'} (pid {p.pid}"
        + (f", {p.used_memory_mib / 1024:.1f} GiB)" if p.used_memory_mib is not None else ")")
        for p in procs
    )
    return named


def memory(ctx: Context) -> list[Finding]:
    """Selected GPUs below the memory minimum, and memory other processes already hold."""
    if not ctx.selected:
        return [skip("no GPU selected")]
    findings = []
    for gpu in ctx.selected:
        small = memory_reason(gpu, ctx.args.min_memory_gb)
        if small:
            findings.append(
                warn(
                    f"{gpu.label()} is selected but has {small.split(':')[0]}",
                    f"lower the global batch size, or choose GPUs with more memory {see('out-of-memory')}",
                    gpus=(gpu.index,),
                )
            )
        others = _in_use(gpu)
        used = gpu.memory_used_mib
        total = gpu.memory_total_mib or 1
        if others:
            findings.append(
                warn(
                    f"{gpu.label()}: {(used or 0) / 1024:.1f} of {total / 1024:.1f} GiB already in "
                    f"use by {others}",
                    "stop those processes (nvidia-smi shows them; kill PID), or pick other GPUs with "
                    f"--device-mode custom --custom-gpus {see('out-of-memory')}",
                    gpus=(gpu.index,),
                )
            )
        elif used is not None and used > 0.1 * total and not gpu.display_active:
            # Processes in other containers are invisible to NVML here; their memory is not.
            findings.append(
                warn(
                    f"{gpu.label()}: {used / 1024:.1f} of {total / 1024:.1f} GiB in use by "
                    "processes NVML cannot "
                    "name (another container or user?)",
                    f"find and stop them (nvidia-smi on the host), or pick other GPUs {see('out-of-memory')}",
                    gpus=(gpu.index,),
                )
            )
    if findings:
        return findings
    free = ", ".join(
        f"GPU {g.index} {g.memory_total_gb:.1f} GB"
        + (f" ({g.memory_used_mib} MiB in use)" if g.memory_used_mib else "")
        for g in ctx.selected
    )
    return [
        passed(f"{free}; minimum {ctx.args.min_memory_gb:g} GB", gpus=tuple(g.index for g in ctx.selected))
    ]


def _flags(reasons: list[str]) -> list[str]:
    """The 'what to do' halves of selection reasons ("... : use --include-display-gpus")."""
    hints = []
    for reason in reasons:
        hint = reason.rsplit(": ", 1)[-1]
        if hint not in hints:
            hints.append(hint)
    return hints


def _section(reasons: list[str]) -> str:
    """The guide's section for the reasons nothing was selected."""
    text = " ".join(reasons)
    if "CUDA_VISIBLE_DEVICES" in text:
        return "scheduler-assigned-gpus"
    if "MIG mode" in text or "the lowest TensorFlow" in text:
        return "old-and-mig-gpus"
    return "strategy-not-working"


def selection(ctx: Context) -> list[Finding]:
    """Which GPUs the trainer would use; nothing selected, or mixed models, is reported."""
    sel = ctx.selection
    if sel is None or not ctx.gpus:
        return [skip("no GPU to select: the trainer would fall back to the CPU")]
    bound = "".join(f"; {note}" for note in sel.notes)
    if not sel.selected:
        reasons = [r for c in sel.choices for r in c.reasons]
        return [
            fail(
                "no GPU selected (the trainer would fall back to the CPU): "
                + " | ".join(sel.explain())
                + bound,
                "; ".join(_flags(reasons)) + f" {see(_section(reasons))}",
                gpus=tuple(g.index for g in ctx.gpus),
            )
        ]
    findings = []
    models = Counter(g.name for g in sel.selected)
    ids = tuple(g.index for g in sel.selected)
    if len(models) > 1:
        mix = ", ".join(f"{n} x {name}" for name, n in models.items())
        findings.append(
            warn(
                f"different GPU models selected ({mix}): synchronous training waits for the "
                "slowest at every step",
                "select one model with --device-mode custom --custom-gpus ID ..., or accept the "
                "slowest card's "
                f"pace {see('uneven-gpu-usage')}",
                gpus=ids,
            )
        )
    for warning in sel.warnings:
        findings.append(
            warn(
                warning,
                f"drop that GPU from --custom-gpus if this is not intended {see('strategy-not-working')}",
                gpus=ids,
            )
        )
    excluded = [c for c in sel.choices if not c.selected]
    note = (
        ""
        if not excluded
        else "; left out: " + " | ".join(f"GPU {c.gpu.index}: {'; '.join(c.reasons)}" for c in excluded)
    )
    if not findings:
        findings.append(
            passed(
                f"--device-mode {sel.mode}: {len(sel.selected)} GPU(s) selected "
                f"({gpu_list(sel.selected)}){note}{bound}",
                gpus=ids,
            )
        )
    return findings


def device_order(ctx: Context) -> list[Finding]:
    """CUDA's GPU numbering against nvidia-smi's, and GPUs TensorFlow ignores."""
    if not ctx.gpus:
        return [skip("no GPU to check")]
    env = ctx.env
    findings = []
    order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    mixed = len({(g.name, g.compute_capability) for g in ctx.gpus}) > 1
    trainer_note = (
        "the trainer sets CUDA_DEVICE_ORDER=PCI_BUS_ID and narrows CUDA_VISIBLE_DEVICES to its GPUs by "
        "UUID itself, never beyond what it was set to"
    )
    if order != "PCI_BUS_ID" and mixed:
        findings.append(
            warn(
                f"CUDA_DEVICE_ORDER is {order}, and the GPUs differ: CUDA numbers them fastest first, so "
                f"TensorFlow's /gpu:N is not nvidia-smi's GPU N in other programs ({trainer_note})",
                f"export CUDA_DEVICE_ORDER=PCI_BUS_ID {see('gpu-numbering')}",
            )
        )
    if visible is not None:
        findings.extend(_visible_devices(ctx, visible, order == "PCI_BUS_ID" or not mixed, trainer_note))
    limit = TF_MIN_MULTIPROCESSORS
    if env.get("TF_MIN_GPU_MULTIPROCESSOR_COUNT", "").isdigit():
        limit = int(env["TF_MIN_GPU_MULTIPROCESSOR_COUNT"])
    small = [g for g in ctx.gpus if g.multiprocessor_count is not None and g.multiprocessor_count < limit]
    if small:
        findings.append(
            warn(
                f"TensorFlow ignores {gpu_list(small)} (fewer than {limit} multiprocessors) and "
                "numbers the other "
                "GPUs without it, so its /gpu:N differs from nvidia-smi's numbering",
                "select GPUs by nvidia-smi index with gpudiag/the trainer (they map by PCI bus id), or set "
                f"TF_MIN_GPU_MULTIPROCESSOR_COUNT to include it {see('gpu-numbering')}",
                gpus=tuple(g.index for g in small),
            )
        )
    if not findings:
        how = "CUDA_DEVICE_ORDER=PCI_BUS_ID" if order == "PCI_BUS_ID" else "all GPUs are the same model"
        findings.append(passed(f"CUDA numbers the GPUs as nvidia-smi does ({how})"))
    return findings


def _visible_devices(ctx: Context, visible: str, positions_match: bool, trainer_note: str) -> list[Finding]:
    """What CUDA_VISIBLE_DEVICES shows to programs that do not set it themselves."""
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    shown: list[int] = []
    for entry in entries:
        if entry.lstrip("-").isdigit():
            if int(entry) < 0:
                break  # CUDA ignores everything from the first invalid entry on
            if not positions_match:
                return [
                    warn(
                        f"CUDA_VISIBLE_DEVICES={visible!r} uses positions in CUDA's fastest-first "
                        "order, which "
                        f"differ from nvidia-smi's indices on this machine ({trainer_note})",
                        "list GPUs by UUID (nvidia-smi -L), or export CUDA_DEVICE_ORDER=PCI_BUS_ID "
                        + see("gpu-numbering"),
                    )
                ]
            shown.append(int(entry))
        else:
            gpu = next((g for g in ctx.gpus if g.uuid and g.uuid.startswith(entry)), None)
            if gpu is not None:
                shown.append(gpu.index)
    hidden = [g for g in ctx.in_scope if g.index not in shown]
    if not hidden:
        return []
    what = "every GPU" if not shown else gpu_list(hidden)
    return [
        warn(
            f"CUDA_VISIBLE_DEVICES={visible!r} hides {what} from programs that do not set it themselves "
            f"({trainer_note})",
            f"unset CUDA_VISIBLE_DEVICES, or list the GPUs by UUID (nvidia-smi -L) {see('gpu-numbering')}",
            gpus=tuple(g.index for g in hidden),
        )
    ]
