"""A CUDA_VISIBLE_DEVICES set before a run (by Slurm, Kubernetes, docker or the user), read against an
inventory: which GPUs it lets a run use. NVML and nvidia-smi ignore the variable, so the selection
applies it itself: gpudiag and the trainer choose within it and never beyond.

CUDA's rules: a comma-separated list of GPU indices, GPU UUIDs (or unique prefixes, "GPU-8f2c"), or
MIG instance UUIDs ("MIG-...", or the older "MIG-GPU-<uuid>/<gi>/<ci>"); an empty value hides every
GPU; the first entry CUDA cannot use ends the list (it and everything after it are ignored).
Indices are read as nvidia-smi's (PCI bus order), which is what schedulers mean; with
CUDA_DEVICE_ORDER unset CUDA numbers GPUs fastest first, which differs on a machine with mixed
models, so `positional` says when the value relies on indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from diagnostics.inventory import Gpu


@dataclass(frozen=True)
class VisibleDevices:
    value: str
    indices: tuple[int, ...]  # nvidia-smi indices of the GPUs it lets a run use, in its order
    ignored: tuple[str, ...] = ()  # the first entry that names no GPU here, and every one after it
    mig: tuple[str, ...] = ()  # MIG instance entries (a known parent GPU is in `indices` too)
    positional: bool = False  # some entries are indices, not UUIDs

    def allows(self, index: int) -> bool:
        return index in self.indices

    def describe(self) -> str:
        """One line for the plan, `gpudiag list` and `check`."""
        head = f"CUDA_VISIBLE_DEVICES={self.value!r} was set before this run"
        if not self.value.strip():
            return f"{head}: it is empty, so no GPU may be used"
        if not self.indices:
            return f"{head} and names no GPU of this machine, so no GPU may be used"
        allowed = ", ".join(f"GPU {i}" for i in self.indices)
        line = f"{head}: choosing only among {allowed}"
        if self.ignored:
            ignored = ", ".join(map(repr, self.ignored))
            line += f" (CUDA ignores {ignored}: an entry that names no GPU here ends the list)"
        return line

    def reason(self) -> str:
        """Why a GPU outside it is left out, ending with what to do (as every selection reason does)."""
        return (
            f"not in CUDA_VISIBLE_DEVICES={self.value!r} (set before this run, e.g. by the scheduler): "
            "ask the scheduler for this GPU, or unset CUDA_VISIBLE_DEVICES"
        )


def read_visible(value: str | None, gpus: Sequence[Gpu]) -> VisibleDevices | None:
    """None when the variable is unset (every GPU may be used)."""
    if value is None:
        return None
    indices: list[int] = []
    mig: list[str] = []
    positional = False
    entries = [e.strip() for e in value.split(",")]
    for position, entry in enumerate(entries):
        if not entry:
            continue
        found: int | None = None
        if entry.lstrip("-").isdigit():
            positional = True
            number = int(entry)
            found = number if any(g.index == number for g in gpus) else None
        elif entry.upper().startswith("MIG-"):
            mig.append(entry)
            found = _mig_parent(entry, gpus)
            if found is None:
                continue  # an instance this inventory cannot map to its GPU: it limits, names none
        elif entry.upper().startswith("GPU-"):
            matches = [g.index for g in gpus if g.uuid and g.uuid.lower().startswith(entry.lower())]
            found = matches[0] if len(matches) == 1 else None
        if found is None:
            return VisibleDevices(value, tuple(indices), tuple(entries[position:]), tuple(mig), positional)
        if found not in indices:
            indices.append(found)
    return VisibleDevices(value, tuple(indices), (), tuple(mig), positional)


def _mig_parent(entry: str, gpus: Sequence[Gpu]) -> int | None:
    text = entry.lower()
    if text.startswith("mig-gpu-"):  # MIG-GPU-<parent uuid>/<gi>/<ci> (drivers before R470)
        parent = text[len("mig-") :].split("/", 1)[0]
        return next((g.index for g in gpus if g.uuid and g.uuid.lower() == parent), None)
    return next(
        (g.index for g in gpus for m in g.mig_devices or () if m.lower().startswith(text)),
        None,
    )
