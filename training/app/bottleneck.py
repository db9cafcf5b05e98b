"""Where a run's step time goes: the summary's bottleneck line, from measurements taken at the end
of the same run (`measure`), judged by the rules the sweep's report uses too (common/bottleneck.py:
`judge`, `describe`) into one verdict with its shares and the remedy that fits.

What is measured, after training, on the run's own strategy and data:
- input: the training pipeline's own rate (a fresh iterator of the same dataset and global batch,
  iterated alone for a bounded time), against the training rate: the headroom;
- communication: one all-reduce of the model's gradient size (training.loop.allreduce, the
  benchmark worker's timer), against the step time; only with 2+ replicas;
- compute: the rest of the step, and its fraction of the GPUs' datasheet peak where both the GPU
  model and the model's FLOPs are known.

`input_budget` is pure (tests/training/test_bottleneck.py); `measure` imports TensorFlow when called.
"""

from __future__ import annotations

import math
import time
from typing import Any

from common.bottleneck import Bottleneck, Measurements, judge
from training.inputs.streaming import unrecorded

# The input measurement's time: a small share of the training time, within fixed bounds.
INPUT_SHARE_OF_TRAINING = 0.02
INPUT_MIN_SECONDS, INPUT_MAX_SECONDS = 0.1, 2.0
# timed: 3 calls of 2 chained all-reduces, after the call that traces. A chain of 2 halves the
# host's per-call cost in the figure; longer chains cost more to trace than a run should pay
# (2 CPU replicas: tracing 1, 2, 4 took 0.29, 0.20, 0.42 s)
ALLREDUCE_CALLS, ALLREDUCE_UNROLL = 3, 2


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
