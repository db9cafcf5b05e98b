"""The sweep's benchmark cases: which (device count, batch per device) configurations the weak and
strong series need, every case in the order the workers run them, and all-reduces per round.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweep_options import SweepOptions

from reports.results import format_bytes
from training.worker_client import ALLREDUCE_UNROLL

BENCHMARKS = ("train", "input", "allreduce")
# Large messages run fewer chained all-reduces per round: at most this many bytes per round.
ALLREDUCE_BYTES_PER_ROUND = 2**30


@dataclass(frozen=True)
class Case:
    benchmark: str  # train | input | allreduce
    gpus: int
    batch_per_gpu: int | None = None
    nbytes: int | None = None

    @property
    def id(self) -> str:
        what = f"b{self.batch_per_gpu}" if self.nbytes is None else format_bytes(self.nbytes).replace(" ", "")
        return f"{self.gpus}dev-{what}"


def training_configs(options: SweepOptions) -> list[tuple[int, int]]:
    """(devices, batch per device) for the weak and/or strong series, each configuration once.

    Strong scaling keeps the global batch = batch x the smallest count; counts it does not divide
    evenly are left out (and the report's strong series skips them).
    """
    base = min(options.gpu_counts)
    configs: set[tuple[int, int]] = set()
    for batch in options.batch_sizes:
        for n in options.gpu_counts:
            if options.scaling in ("weak", "both"):
                configs.add((n, batch))
            total = batch * base
            if options.scaling in ("strong", "both") and total % n == 0:
                configs.add((n, total // n))
    return sorted(configs)


def plan_cases(options: SweepOptions) -> list[Case]:
    """Every benchmark, grouped by device count so each count's worker starts once."""
    configs = training_configs(options)
    cases = []
    for n in options.gpu_counts:
        batches = [b for m, b in configs if m == n]
        cases += [Case("train", n, b) for b in batches]
        cases += [Case("input", n, b) for b in batches]
        if n > 1:  # one replica has nothing to all-reduce with
            cases += [Case("allreduce", n, nbytes=s) for s in options.allreduce_bytes]
    return cases


def allreduce_iters(options: SweepOptions, nbytes: int) -> int:
    """All-reduces per round: --allreduce-iters, fewer for large messages (a whole number of the
    worker's traced calls of ALLREDUCE_UNROLL where there is more than one call)."""
    iters = max(1, min(options.allreduce_iters, ALLREDUCE_BYTES_PER_ROUND // nbytes))
    return iters - iters % ALLREDUCE_UNROLL if iters > ALLREDUCE_UNROLL else iters
