"""Software-stack checks: `tensorflow` (installed, version, CUDA build, Keras), `cuda-version` (the
driver supports TensorFlow's CUDA) and `nccl` (no known-bad NCCL for the selected GPUs).
"""

from __future__ import annotations

from diagnostics import knowledge
from diagnostics.checks.base import Context, Finding, fail, passed, see, skip, warn
from diagnostics.stack import CUDA_WHEELS

PIP_CUDA = "pip install 'tensorflow[and-cuda]==2.21.*'"


def tensorflow(ctx: Context) -> list[Finding]:
    """TensorFlow installed, its version, whether it is a CUDA build, and the Keras version."""
    st = ctx.stack
    if st.tensorflow is None:
        return [
            fail(
                "TensorFlow is not installed in this Python environment",
                f"{PIP_CUDA} (or install gpudiag with its dependencies: pip install 'gpudiag[gpu]')",
            )
        ]
    keras = f"Keras {st.keras}" if st.keras else "Keras not installed"
    dist = "" if st.tensorflow_distribution in (None, "tensorflow") else f" ({st.tensorflow_distribution})"
    build = st.tf_build
    if build is None:
        return [
            warn(
                f"TensorFlow {st.tensorflow}{dist}, {keras}; build facts unknown: {st.tf_build_error}",
                f"reinstall TensorFlow: {PIP_CUDA}",
            )
        ]
    if build.is_cuda_build:
        caps = ", ".join(build.compute_capabilities) or "unknown architectures"
        what = f"CUDA {build.cuda_version} build, cuDNN {build.cudnn_version}, kernels for {caps}"
    else:
        what = "CPU-only build"
    message = f"TensorFlow {st.tensorflow}{dist} ({what}), {keras}"
    if st.system_libraries:
        found = ", ".join(f"{name} {version}" for name, version in sorted(st.system_libraries.items()))
        message += f"; system-wide: {found}"
    if ctx.stack_origin == "replaying":
        message += " (this machine's software: the inventory records none)"
    elif ctx.stack_origin == "recorded":
        message += " (as recorded in the inventory)"
    has_gpus = bool(ctx.gpus)
    if not build.is_cuda_build and has_gpus:
        return [
            fail(
                f"{message}: it cannot use the GPUs",
                f"pip uninstall {st.tensorflow_distribution or 'tensorflow'} && {PIP_CUDA}",
            )
        ]
    major = (knowledge.parse_version(st.keras) or (0,))[0]
    if st.keras is None or major < 3:
        return [warn(f"{message}: TensorFlow 2.16+ needs Keras 3", "pip install 'keras>=3.15,<4'")]
    # NVIDIA's containers install CUDA and cuDNN system-wide, not as wheels: either will do.
    missing = [w for w in CUDA_WHEELS if not st.provides(w)]
    cuda_major = (build.cuda_version or "12").split(".")[0]
    if build.is_cuda_build and has_gpus and missing:
        return [
            warn(
                f"{message}; the CUDA libraries it loads are neither pip-installed nor found by the "
                f"loader ({', '.join(missing)}): without CUDA {build.cuda_version} and cuDNN "
                f"{build.cudnn_version}, TensorFlow finds no GPU",
                f"{PIP_CUDA}, or put a system CUDA {cuda_major} and cuDNN {build.cudnn_version} on the "
                f"loader's path (LD_LIBRARY_PATH) {see('containers')}",
            )
        ]
    return [passed(message)]


def cuda_version(ctx: Context) -> list[Finding]:
    """The driver supports the CUDA version TensorFlow was built with."""
    build = ctx.stack.tf_build
    inv = ctx.inventory
    if build is None or not build.is_cuda_build or not build.cuda_version:
        return [skip("no CUDA build of TensorFlow to compare against")]
    if inv is None or inv.driver_version is None or not inv.cuda_driver_version:
        return [skip("no driver: nothing to compare TensorFlow's CUDA with")]
    tf_cuda = knowledge.parse_version(build.cuda_version) or (0,)
    drv = knowledge.parse_version(inv.cuda_driver_version) or (0,)
    need_driver = knowledge.min_driver_for_cuda(build.cuda_version)
    upgrade = (
        f"upgrade the NVIDIA driver to one that supports CUDA {tf_cuda[0]}.{tf_cuda[1]}"
        + (f" (driver >= {need_driver})" if need_driver else "")
        + f" {see('driver-and-cuda-versions')}"
    )
    head = (
        f"driver supports CUDA {inv.cuda_driver_version}, TensorFlow was built with CUDA {build.cuda_version}"
    )
    if drv[:2] >= tf_cuda[:2]:
        return [passed(head)]
    if drv[0] != tf_cuda[0]:
        return [fail(f"{head}: a CUDA {tf_cuda[0]} program cannot run on this driver", upgrade)]
    # Minor-version compatibility: native kernels run, PTX from the newer toolkit cannot be compiled.
    return [
        warn(
            f"{head}: native kernels run under CUDA minor-version compatibility, but the driver "
            f"cannot JIT-compile TensorFlow's PTX, so any GPU without native kernels fails",
            upgrade,
        )
    ]


def nccl(ctx: Context) -> list[Finding]:
    """The installed NCCL against known-bad versions for the selected GPUs."""
    selected = ctx.selected
    version = ctx.stack.nccl_version
    where = {"pip": "", "system": " (system-wide)", "none": ""}[ctx.stack.nccl_origin]
    if len(selected) < 2:
        return [
            skip(
                f"NCCL {version or 'not installed'}{where}; fewer than 2 GPUs selected, "
                "so no all-reduce between GPUs"
            )
        ]
    if version is None:
        return [
            warn(
                "NCCL is neither pip-installed (nvidia-nccl-cu12) nor found by the loader: "
                "MirroredStrategy's default NCCL all-reduce needs it",
                f"{PIP_CUDA}, or train with --cross-device-ops hierarchical {see('nccl-hangs')}",
            )
        ]
    findings = []
    hits: dict[str, list[int]] = {}
    rows = {}
    for gpu in selected:
        cc = gpu.compute_capability_tuple
        row = knowledge.known_bad("nccl", version, cc[0]) if cc is not None else None
        if row:
            hits.setdefault(row.problem, []).append(gpu.index)
            rows[row.problem] = row
    for problem, indices in hits.items():
        row = rows[problem]
        names = ", ".join(g.label() for g in selected if g.index in indices)
        upgrade = (
            f"pip install 'nvidia-nccl-cu12>={row.fixed_in}'"
            if ctx.stack.nccl_origin == "pip"
            else f"install NCCL {row.fixed_in} or newer system-wide (a newer container release)"
        )
        findings.append(
            fail(
                f"NCCL {version}{where} on {names}: {problem}",
                f"{upgrade} (source: {row.source}); until then "
                f"--cross-device-ops hierarchical avoids NCCL {see('nccl-hangs')}",
                gpus=tuple(indices),
            )
        )
    return findings or [passed(f"NCCL {version}{where}: no known problem with the selected GPUs")]
