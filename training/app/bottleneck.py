"""Where a run's step time goes: the summary's bottleneck line, from measurements taken at the end
of the same run (`measure`), judged by fixed rules (`judge`) into one verdict with its shares and
the remedy that fits.

What is measured, after training, on the run's own strategy and data:
- input: the training pipeline's own rate (a fresh iterator of the same dataset and global batch,
  iterated alone for a bounded time), against the training rate: the headroom;
- communication: one all-reduce of the model's gradient size (training.loop.allreduce, the
  benchmark worker's timer), against the step time; only with 2+ replicas;
- compute: the rest of the step, and its fraction of the GPUs' datasheet peak where both the GPU
  model and the model's FLOPs are known.

`judge` and `describe` are pure (no TensorFlow: tests/training/test_bottleneck.py); `measure`
imports TensorFlow when called.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from training.inputs.streaming import unrecorded

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
# The input measurement's time: a small share of the training time, within fixed bounds.
INPUT_SHARE_OF_TRAINING = 0.02
INPUT_MIN_SECONDS, INPUT_MAX_SECONDS = 0.1, 2.0
# timed: 3 calls of 2 chained all-reduces, after the call that traces. A chain of 2 halves the
# host's per-call cost in the figure; longer chains cost more to trace than a run should pay
# (2 CPU replicas: tracing 1, 2, 4 took 0.29, 0.20, 0.42 s)
ALLREDUCE_CALLS, ALLREDUCE_UNROLL = 3, 2


@dataclass(frozen=True)
class Measurements:
    """What `judge` works from: the run's rate and what was timed after it."""

    samples_per_sec: float | None  # training, steady state (the summary's)
    global_batch_size: int
    replicas: int
    input_samples_per_sec: float | None  # the pipeline alone; None where not measured
    allreduce_seconds: float | None  # one all-reduce of the gradients; None with 1 replica
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
        parts.append("all-reduce not timed across workers")
    else:
        compute = f"compute {found['shares']['compute'] * 100:.0f}%"
        if found.get("fraction_of_peak") is not None:
            compute += f" ({found['fraction_of_peak'] * 100:.0f}% of peak)"
        parts.append(compute)
    return f"{found['verdict']} ({', '.join(parts)}): {found['remedy']} (see {found['see']})"


def input_budget(train_seconds: float) -> float:
    """Seconds the input measurement may take: a small share of training, within fixed bounds."""
    return min(max(INPUT_SHARE_OF_TRAINING * train_seconds, INPUT_MIN_SECONDS), INPUT_MAX_SECONDS)


# -- measuring (TensorFlow) ---------------------------------------------------------------------


def measure(trainer: Any, samples_per_sec: float | None, train_seconds: float) -> Bottleneck | None:
    """Time the input pipeline alone and one all-reduce of the gradients on `trainer`'s strategy,
    and judge. Every worker of a run must call it (the all-reduce is a collective); it does not
    move the run's own input stream."""
    if not samples_per_sec:
        return None
    from training.inputs.models import estimate_flops_per_sample

    started = time.perf_counter()
    variables = trainer.model.trainable_variables
    gradient_bytes = sum(int(math.prod(v.shape)) * 4 for v in variables)  # as float32, as timed
    input_rate = pipeline_rate(trainer, input_budget(train_seconds))
    allreduce = None
    if trainer.num_replicas > 1:
        from training.loop.allreduce import seconds_per_allreduce

        allreduce = seconds_per_allreduce(
            trainer.strategy, gradient_bytes, calls=ALLREDUCE_CALLS, unroll=ALLREDUCE_UNROLL
        )
    return judge(
        Measurements(
            samples_per_sec=samples_per_sec,
            global_batch_size=trainer.global_batch_size,
            replicas=trainer.num_replicas,
            input_samples_per_sec=input_rate,
            allreduce_seconds=allreduce,
            gradient_bytes=gradient_bytes,
            flops_per_sample=estimate_flops_per_sample(trainer.model) or None,
            peak_flops=peak_flops(trainer.setup, trainer.config.mixed_precision),
            measure_seconds=time.perf_counter() - started,
        )
    )


def pipeline_rate(trainer: Any, budget: float) -> float | None:
    """Samples per second of a fresh iterator of the run's training dataset, on the host alone:
    its first batch (the pipeline filling up) is not counted, then batches until `budget` seconds
    have passed (at least two, but never past 3 x `budget`)."""
    from training.inputs import data as data_mod

    with unrecorded():
        dataset = data_mod.make_dataset(trainer.examples, trainer.global_batch_size, trainer.config.seed)
    iterator = iter(dataset)
    next(iterator)
    started = time.perf_counter()
    batches, elapsed = 0, 0.0
    while elapsed < budget or (batches < 2 and elapsed < 3 * budget):
        next(iterator)
        batches += 1
        elapsed = time.perf_counter() - started
    if elapsed <= 0:
        return None
    # a streamed batch on each of W workers is W steps' worth (each step takes 1/W of every
    # worker's stream): the cluster's pipelines together make W times this worker's rate
    workers = getattr(trainer.examples, "workers", 1)
    return batches * trainer.global_batch_size * workers / elapsed


def peak_flops(setup: Any, mixed_precision: bool) -> float | None:
    """The datasheet FLOP/s of the run's GPUs together (FP16 tensor cores with --mixed-precision,
    else FP32), from gpudiag's table; None on CPU replicas or where a GPU's model is not in it."""
    from diagnostics.knowledge import peak_for

    if setup.plan.kind != "gpu" or not setup.plan.gpus:
        return None
    total = 0.0
    for gpu in setup.plan.gpus:
        peak = peak_for(gpu.name)
        tflops = None if peak is None else (peak.fp16_tensor_tflops if mixed_precision else peak.fp32_tflops)
        if tflops is None:
            return None
        total += tflops * 1e12
    # the training rate is the whole cluster's: its workers hold GPUs like this one's
    return total * (setup.cluster.num_workers if setup.cluster else 1)
