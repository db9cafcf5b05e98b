"""The summary of a training run: what `python -m training` prints and --summary-json writes.

One dataclass of the run's facts (`RunSummary`), its fields in the order the JSON file keeps, and
the one function that fills it from a finished run (`build_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import keras
import tensorflow as tf

from training.devices.setup import DeviceSetup
from training.inputs.data import Examples
from training.loop.learning_rate import rate_plan
from training.loop.state import RunState
from training.settings.config import TrainConfig


@dataclass(frozen=True)
class RunSummary:
    """What a run reports, in the order --summary-json writes it. `history` holds each epoch's
    logs; rates are None where every step was a warm-up step; GPU figures None on CPU replicas."""

    model: str
    data: str
    examples: int
    examples_dropped: int
    device_kind: str
    devices: list[str]
    replicas: int
    cross_device_ops: str
    global_batch_size: int
    per_replica_batch_size: int
    epochs: int
    steps_per_epoch: int
    steps: int
    steps_this_run: int
    resumed_from: str | None
    checkpoint_dir: str | None
    last_checkpoint: str | None
    warmup_steps: int
    optimizer: str
    learning_rate: float
    base_learning_rate: float
    scale_learning_rate: str
    reference_batch_size: int
    warmup_epochs: float
    warmup_learning_rate_steps: int
    seed: int
    mixed_precision: bool
    dtype_policy: str
    jit_compile: bool
    steps_per_execution: str
    stopped_early: bool
    final_loss: float | None
    final_accuracy: float | None
    validation_data: str | None
    validation_examples: int | None
    final_val_loss: float | None
    final_val_accuracy: float | None
    history: list[dict[str, float]]
    samples_per_sec: float | None
    samples_per_sec_per_replica: float | None
    throughput_steps: int  # the steps samples_per_sec is measured over: not warm-up, not profiled
    setup_seconds: float
    first_call_seconds: float | None
    first_call_steps: int | None
    train_seconds: float
    validation_seconds: float
    wall_seconds: float
    tensorflow_version: str
    keras_version: str
    workers: int
    cluster: dict[str, Any] | None
    worker_devices: Any
    peak_memory_bytes: dict[str, int] | None
    gpu_usage: dict[str, dict[str, Any]] | None  # training.app.usage: per NVML index, sampled while training
    # uneven utilisation: the least busy GPU and its likely cause (training.app.usage.least_busy)
    least_busy_gpu: dict[str, Any] | None
    bottleneck: dict[str, Any] | None  # training.app.bottleneck: where the step time goes
    profile: dict[str, Any] | None  # --profile-steps: the steps, the trace folder, how to view it
    # several workers: each one's solo forward and backward pass, the slowest and its ratio to the
    # fastest (training.app.workers_speed); None on one machine
    workers_speed: dict[str, Any] | None
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        """The --summary-json object, keys in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def build_summary(
    config: TrainConfig,
    setup: DeviceSetup,
    examples: Examples,
    result: RunState,
    *,
    validation: Examples | None = None,
    global_batch_size: int,
    per_replica_batch_size: int,
    steps_per_epoch: int,
    setup_seconds: float,
    wall_seconds: float,
    steps_per_execution: str = "1",
    first_call: tuple[int, float] | None = None,
    gpu_usage: dict[str, dict[str, Any]] | None = None,
    least_busy_gpu: dict[str, Any] | None = None,
    bottleneck: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    workers_speed: dict[str, Any] | None = None,
) -> RunSummary:
    final = result.history[-1] if result.history else {}
    rate = result.meter.samples_per_sec
    plan = setup.plan
    return RunSummary(
        model=config.model,
        data=examples.source,
        examples=len(examples),
        examples_dropped=examples.dropped,
        device_kind=plan.kind,
        devices=plan.describe(),
        replicas=setup.num_replicas,
        cross_device_ops=setup.cross_device_ops,
        global_batch_size=global_batch_size,
        per_replica_batch_size=per_replica_batch_size,
        epochs=len(result.history),
        steps_per_epoch=steps_per_epoch,
        steps=result.global_step,
        steps_this_run=result.steps,
        resumed_from=result.resumed_from,
        checkpoint_dir=config.checkpoint_dir,
        last_checkpoint=result.last_checkpoint,
        warmup_steps=config.warmup_steps,
        **_learning(config, steps_per_epoch),
        seed=config.seed,
        mixed_precision=config.mixed_precision,
        dtype_policy=keras.config.dtype_policy().name,  # what --mixed-precision set, as Keras has it
        jit_compile=config.jit_compile,
        steps_per_execution=steps_per_execution,
        stopped_early=result.stopped_early,
        final_loss=final.get("loss"),
        final_accuracy=final.get("accuracy"),
        validation_data=validation.source if validation is not None else None,
        validation_examples=len(validation) if validation is not None else None,
        final_val_loss=final.get("val_loss"),
        final_val_accuracy=final.get("val_accuracy"),
        history=result.history,
        samples_per_sec=rate,
        samples_per_sec_per_replica=rate / setup.num_replicas if rate else None,
        throughput_steps=result.meter.measured_steps,
        setup_seconds=setup_seconds,
        # the first traced call (tracing, XLA or PTX compiling, its steps) apart from the steady
        # state that samples_per_sec measures
        first_call_seconds=first_call[1] if first_call else None,
        first_call_steps=first_call[0] if first_call else None,
        train_seconds=result.train_seconds,
        validation_seconds=result.validation_seconds,
        wall_seconds=wall_seconds,
        **_environment(setup),
        gpu_usage=gpu_usage,
        least_busy_gpu=least_busy_gpu,
        bottleneck=bottleneck,
        profile=profile,
        workers_speed=workers_speed,
        warnings=list(setup.warnings),
    )


def _learning(config: TrainConfig, steps_per_epoch: int) -> dict[str, Any]:
    """The optimizer and its rate as training ran them (after scaling and warm-up)."""
    learning = rate_plan(config)
    return {
        "optimizer": config.optimizer,
        "learning_rate": learning.target,
        "base_learning_rate": learning.base,
        "scale_learning_rate": learning.rule,
        "reference_batch_size": learning.reference_batch_size,
        "warmup_epochs": learning.warmup_epochs,
        "warmup_learning_rate_steps": learning.warmup_steps(steps_per_epoch),
    }


def _environment(setup: DeviceSetup) -> dict[str, Any]:
    """The software, the cluster and the devices' memory the run had."""
    return {
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "workers": setup.cluster.num_workers if setup.cluster else 1,
        "cluster": setup.cluster.to_dict() if setup.cluster else None,
        "worker_devices": setup.workers,
        "peak_memory_bytes": peak_memory(setup),
    }


def peak_memory(setup: DeviceSetup) -> dict[str, int] | None:
    """Each GPU's peak memory held by TensorFlow in this process (its allocator's high-water mark),
    by logical device; None on CPU replicas, where TensorFlow does not track it."""
    if setup.plan.kind != "gpu":
        return None
    found: dict[str, int] = {}
    for device in tf.config.list_logical_devices("GPU"):
        try:
            found[device.name] = int(tf.config.experimental.get_memory_info(device.name)["peak"])
        except (ValueError, tf.errors.OpError):
            continue  # a device TensorFlow keeps no figures for: left out, not guessed
    return found or None
