"""Where a training step's time goes, judged by one set of rules: the `Measurements` of a run
(its rate; the input pipeline alone; one all-reduce of the gradients; FLOPs and peak where known)
in, one `Bottleneck` out (verdict `input`, `communication`, `compute` or `balanced`, the shares, the
remedy). Pure, so that the trainer's summary (training/app/bottleneck.py measures a run and calls
`judge`) and the sweep's report (reports/analysis.py: `case_bottlenecks` judges each case from the
sweep's rows) say the same thing for the same figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

VERDICTS = ("input", "communication", "compute", "balanced")
# The pipeline alone must outrun training by 20%: below that it cannot keep a prefetch buffer
# full, and the devices wait on it (the figure; tf.data's guide says the same in words).
INPUT_BOUND_HEADROOM = 1.2
# Below 2x the pipeline is not the limit yet, but a slower disk or a busier host makes it one.
INPUT_CLOSE_HEADROOM = 2.0
# An all-reduce as long as 40% of the step: more than any overlap with the backward pass hides.
COMMUNICATION_BOUND_SHARE = 0.4
# From 20% it is a real part of the step, though not the largest.
COMMUNICATION_CLOSE_SHARE = 0.2
SEE = "TROUBLESHOOTING.md#why-is-it-slow"
REMEDIES = {
    "input": (
        "feed faster: parallel decode and prefetch (tf.data AUTOTUNE), cache decoded data that "
        "fits in memory, TFRecord shards instead of many small files, or a smaller --image-size"
    ),
    "communication": (
        "all-reduce less often per sample: a larger per-GPU batch, --accumulate-steps, another "
        "--cross-device-ops; check NVLink/P2P with gpudiag check"
    ),
    "compute": "the devices are the limit: --mixed-precision and --jit-compile (XLA) make each step cheaper",
    "balanced": "no one part dominates: the shares say which to work on first",
}


@dataclass(frozen=True)
class Measurements:
    """What `judge` works from: the training rate and what was timed beside it."""

    samples_per_sec: float | None  # training, steady state (the summary's, or a sweep case's median)
    global_batch_size: int
    replicas: int
    input_samples_per_sec: float | None  # the pipeline alone; None where not measured
    allreduce_seconds: float | None  # one all-reduce of the gradients; None with 1 replica or not timed
    gradient_bytes: int
    flops_per_sample: float | None = None  # training FLOPs (forward and backward)
    peak_flops: float | None = None  # all the run's GPUs together; None on CPUs or unknown GPUs
    measure_seconds: float = 0.0  # what measuring cost


@dataclass(frozen=True)
class Bottleneck:
    """The summary's "bottleneck" object. Shares are fractions of one training step: `input` is how
    much of it the pipeline needs to make one batch (it runs beside the step, under prefetch, so it
    costs time only near 1); `communication` (the all-reduce) and `compute` (the rest) split the step."""

    verdict: str
    shares: dict[str, float]
    remedy: str
    see: str
    step_seconds: float
    input_headroom: float | None
    input_samples_per_sec: float | None
    allreduce_seconds: float | None
    gradient_bytes: int
    fraction_of_peak: float | None
    measure_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(m: Measurements) -> Bottleneck | None:
    """The verdict and its shares; None where the run has no training rate (all warm-up)."""
    if not m.samples_per_sec or m.samples_per_sec <= 0:
        return None
    step = m.global_batch_size / m.samples_per_sec
    headroom = m.input_samples_per_sec / m.samples_per_sec if m.input_samples_per_sec else None
    # several replicas whose all-reduce was not timed: their split of the step is not known
    unknown = m.replicas > 1 and m.allreduce_seconds is None
    communication = min(1.0, m.allreduce_seconds / step) if m.allreduce_seconds and m.replicas > 1 else 0.0
    shares = {
        "input": min(1.0, 1.0 / headroom) if headroom else None,
        "communication": None if unknown else communication,
        "compute": None if unknown else 1.0 - communication,
    }
    if headroom is not None and headroom < INPUT_BOUND_HEADROOM:
        verdict = "input"
    elif unknown:  # only the input can be judged: not input-bound; no claim on the rest
        verdict = "balanced"
    elif communication >= COMMUNICATION_BOUND_SHARE:
        verdict = "communication"
    elif communication >= COMMUNICATION_CLOSE_SHARE or (headroom or math.inf) < INPUT_CLOSE_HEADROOM:
        verdict = "balanced"
    else:
        verdict = "compute"
    peak = None
    if m.flops_per_sample and m.peak_flops:
        peak = m.samples_per_sec * m.flops_per_sample / m.peak_flops
    return Bottleneck(
        verdict=verdict,
        shares={k: round(v, 4) for k, v in shares.items() if v is not None},
        remedy=REMEDIES[verdict],
        see=SEE,
        step_seconds=step,
        input_headroom=headroom,
        input_samples_per_sec=m.input_samples_per_sec,
        allreduce_seconds=m.allreduce_seconds,
        gradient_bytes=m.gradient_bytes,
        fraction_of_peak=peak,
        measure_seconds=m.measure_seconds,
    )


def describe(found: dict[str, Any]) -> str:
    """The summary's text line from the --summary-json object: verdict, figures, remedy."""
    parts = []
    if found.get("input_headroom") is not None:
        parts.append(f"input pipeline {found['input_headroom']:.2f}x the training rate")
    if found.get("allreduce_seconds") is not None:
        parts.append(f"all-reduce {found['shares']['communication'] * 100:.0f}% of a step")
    if found["shares"].get("compute") is None:
        parts.append("all-reduce not timed")
    else:
        compute = f"compute {found['shares']['compute'] * 100:.0f}%"
        if found.get("fraction_of_peak") is not None:
            compute += f" ({found['fraction_of_peak'] * 100:.0f}% of peak)"
        parts.append(compute)
    return f"{found['verdict']} ({', '.join(parts)}): {found['remedy']} (see {found['see']})"
