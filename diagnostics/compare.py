"""`gpudiag compare A.json B.json ...`: what differs between the nodes of a multi-worker run, from the
snapshots `gpudiag snapshot` wrote on each, and what each difference does to training.

Every difference has an effect:
- "breaks": the run fails or hangs (different TensorFlow, Keras or NCCL; a different number of GPUs,
  so a different replica count, which the trainer refuses);
- "slows": it runs at the pace of the weakest node (GPU model, smallest GPU memory, architecture);
- "differs": it usually runs, but one node's bugs are not the others' (driver, its CUDA version,
  cuDNN, a patch release of TensorFlow or Keras): worth aligning before hunting a problem.

GPUs are counted and compared as the trainer selects them on each node (default selection flags, or
the ones given), within the CUDA_VISIBLE_DEVICES recorded in the snapshot. A value a snapshot does
not record (an nvidia-smi dump records no software) is left out of that comparison, and said so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import UserError
from diagnostics.inventory import Gpu, Inventory, load_inventory
from diagnostics.selection import Limits, SelectionOptions

EFFECTS = ("breaks", "slows", "differs")
# Cards of one model can report a few MiB apart (board and firmware revisions): not a difference.
MEMORY_TOLERANCE = 0.01


class CompareError(UserError):
    """Input `gpudiag compare` cannot use: one line, exit 2."""


@dataclass(frozen=True)
class Node:
    """One snapshot, as the trainer would use it."""

    file: str
    inventory: Inventory
    gpus: tuple[Gpu, ...]  # the GPUs the trainer selects there


@dataclass(frozen=True)
class Difference:
    what: str  # a stable id: "tensorflow", "gpu-count", ...
    label: str  # "TensorFlow version"
    effect: str  # one of EFFECTS
    values: dict[str, str]  # file -> value, for every file that records it
    why: str

    def line(self) -> str:
        groups: dict[str, list[str]] = {}
        for file, value in self.values.items():
            groups.setdefault(value, []).append(file)
        where = "; ".join(f"{value} in {', '.join(files)}" for value, files in groups.items())
        return f"{self.effect.upper():<8} {self.label}: {where}: {self.why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "label": self.label,
            "effect": self.effect,
            "values": self.values,
            "why": self.why,
        }


@dataclass(frozen=True)
class Comparison:
    nodes: tuple[Node, ...]
    differences: tuple[Difference, ...]
    not_compared: tuple[str, ...]  # what some snapshot does not record, one line each

    @property
    def breaks(self) -> bool:
        return any(d.effect == "breaks" for d in self.differences)

    def counts(self) -> dict[str, int]:
        return {effect: sum(d.effect == effect for d in self.differences) for effect in EFFECTS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": [{"file": n.file, "host": n.inventory.host, "gpus": len(n.gpus)} for n in self.nodes],
            "differences": [d.to_dict() for d in self.differences],
            "not_compared": list(self.not_compared),
            "summary": self.counts(),
        }

    def render(self) -> str:
        names = ", ".join(f"{n.file} ({n.inventory.host or 'unknown host'})" for n in self.nodes)
        lines = [f"gpudiag compare: {len(self.nodes)} snapshots: {names}"]
        lines += [d.line() for d in self.differences]
        lines += [f"note: {text}" for text in self.not_compared]
        counts = self.counts()
        if not self.differences:
            lines.append("no difference between the nodes that matters to multi-worker training")
        else:
            tally = ", ".join(f"{counts[e]} {e}" for e in EFFECTS if counts[e])
            verdict = (
                "fix the differences that break training before starting the workers"
                if self.breaks
                else "the nodes can train together"
            )
            lines.append(f"{len(self.differences)} difference(s): {tally}. {verdict}")
        return "\n".join(lines)


def load_nodes(paths: Sequence[str], args: SelectionOptions | None = None) -> list[Node]:
    """Each snapshot and the GPUs the trainer selects in it; any unusable file is one UserError."""
    if len(paths) < 2:
        raise CompareError(
            f"compare needs at least two snapshots, got {len(paths)}: run `gpudiag snapshot -o NODE.json` "
            "on each node, then `gpudiag compare *.json`"
        )
    args = args or SelectionOptions()
    nodes = []
    for path in paths:
        inventory = load_inventory(path)
        selection = args.select(inventory, Limits.of(inventory.environment, inventory.software))
        nodes.append(Node(path, inventory, selection.selected))
    return nodes


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _software(
    what: str,
    label: str,
    get: Callable[[Any], str | None],
    effect: str,
    why: str,
    patch_why: str | None = None,
) -> Callable[[Sequence[Node]], Difference | None]:
    """A software version compared across the nodes that record it: a difference has `effect`, except
    that one only a patch release apart merely differs, where `patch_why` says why."""

    def compare(nodes: Sequence[Node]) -> Difference | None:
        values = {
            n.file: value
            for n in nodes
            if n.inventory.software is not None and (value := get(n.inventory.software)) is not None
        }
        if len(set(values.values())) < 2:
            return None
        if patch_why is not None and len({_minor(v) for v in values.values()}) == 1:
            return Difference(what, label, "differs", values, patch_why)
        return Difference(what, label, effect, values, why)

    return compare


def _driver(nodes: Sequence[Node]) -> Difference | None:
    values = {n.file: n.inventory.driver_version or "none" for n in nodes}
    if len(set(values.values())) < 2:
        return None
    if "none" in values.values():
        why = "a node without a driver has no GPU to train on (`gpudiag check` on it says why)"
        return Difference("driver", "NVIDIA driver", "breaks", values, why)
    why = "usually works, but each driver has its own bugs and supported CUDA: align them before debugging"
    return Difference("driver", "NVIDIA driver", "differs", values, why)


def _cuda_driver(nodes: Sequence[Node]) -> Difference | None:
    values = {n.file: v for n in nodes if (v := n.inventory.cuda_driver_version) is not None}
    if len(set(values.values())) < 2:
        return None
    why = (
        "the newest CUDA each driver supports; one below TensorFlow's CUDA build cannot use its GPUs "
        "(`gpudiag check --inventory FILE` on each)"
    )
    return Difference("cuda-driver", "CUDA version of the driver", "differs", values, why)


def _gpu_count(nodes: Sequence[Node]) -> Difference | None:
    if len({len(n.gpus) for n in nodes}) < 2:
        return None
    # "1 of 2": a node whose other GPU the trainer leaves out (a display GPU, CUDA_VISIBLE_DEVICES)
    values = {
        n.file: f"{len(n.gpus)}"
        + (f" of {len(n.inventory.gpus)}" if len(n.inventory.gpus) != len(n.gpus) else "")
        for n in nodes
    }
    why = (
        "every worker must have the same number of replicas (the trainer refuses otherwise); select the "
        "same number on each (--device-mode custom --custom-gpus ...)"
    )
    return Difference("gpu-count", "GPUs the trainer selects", "breaks", values, why)


def _describe(gpus: Sequence[Gpu], key: Callable[[Gpu], str]) -> str:
    """The kinds of GPU a node trains on ("A + B" when mixed); how many is the count's comparison."""
    return " + ".join(sorted({key(gpu) for gpu in gpus}))


def _gpu_model(nodes: Sequence[Node]) -> Difference | None:
    values = {n.file: _describe(n.gpus, lambda g: g.name) for n in nodes if n.gpus}
    if len(set(values.values())) < 2:
        return None
    why = "each step waits for the slowest GPU, so the slowest node sets the pace for all"
    return Difference("gpu-model", "GPU model", "slows", values, why)


def _gpu_memory(nodes: Sequence[Node]) -> Difference | None:
    smallest = {n.file: min(g.memory_total_mib for g in n.gpus) for n in nodes if n.gpus}
    if len(smallest) < 2 or max(smallest.values()) <= min(smallest.values()) * (1 + MEMORY_TOLERANCE):
        return None
    values = {file: f"{mib / 1024:.1f} GB" for file, mib in smallest.items()}
    why = (
        "every replica runs the same batch size, so the smallest GPU limits the batch on every node "
        "(a batch sized for the larger ones runs out of memory there)"
    )
    return Difference("gpu-memory", "smallest GPU memory", "slows", values, why)


def _compute_capability(nodes: Sequence[Node]) -> Difference | None:
    values = {n.file: _describe(n.gpus, lambda g: g.compute_capability or "unknown") for n in nodes if n.gpus}
    if len(set(values.values())) < 2:
        return None
    why = (
        "different GPU architectures: kernels and mixed-precision speed differ, so the slower one sets "
        "the pace (and its results differ in the last bits)"
    )
    return Difference("compute-capability", "compute capability", "slows", values, why)


_SAME_TF = "every worker must run the same TensorFlow: collective ops and checkpoints differ between releases"
_SAME_KERAS = "every worker must run the same Keras: models and optimizers build different variables"
_PATCH = "a different patch release: usually compatible, but align it before debugging a failure"
COMPARISONS: tuple[Callable[[Sequence[Node]], Difference | None], ...] = (
    _software("tensorflow", "TensorFlow version", lambda s: s.tensorflow, "breaks", _SAME_TF, _PATCH),
    _software("keras", "Keras version", lambda s: s.keras, "breaks", _SAME_KERAS, _PATCH),
    _software(
        "nccl",
        "NCCL version",
        lambda s: s.nccl_version,
        "breaks",
        "all ranks must load the same NCCL: a mismatch is unsupported and can fail or hang at the first "
        "all-reduce",
    ),
    _software(
        "cudnn",
        "cuDNN version",
        lambda s: s.cudnn or s.system_libraries.get("cudnn"),
        "differs",
        "different kernels: speed and the last bits of results differ between nodes",
    ),
    _driver,
    _cuda_driver,
    _gpu_count,
    _gpu_model,
    _gpu_memory,
    _compute_capability,
)


def compare(nodes: Sequence[Node]) -> Comparison:
    differences = [d for check in COMPARISONS if (d := check(nodes)) is not None]
    order = {effect: i for i, effect in enumerate(EFFECTS)}
    differences.sort(key=lambda d: order[d.effect])  # what breaks first; stable within an effect
    not_compared = [
        f"{n.file} records no software: its TensorFlow, Keras, NCCL and cuDNN were not compared"
        for n in nodes
        if n.inventory.software is None
    ]
    return Comparison(tuple(nodes), tuple(differences), tuple(not_compared))
