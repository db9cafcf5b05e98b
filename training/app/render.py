"""What the trainer prints: the device plan before training, the summary table after it, and the
results of `python -m training evaluate`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from training.app.usage import describe as describe_usage
from training.app.usage import describe_gpus
from training.devices.setup import DevicePlan
from training.loop.learning_rate import rate_plan
from training.settings.batch import batch_advice
from training.settings.config import TrainConfig

if TYPE_CHECKING:  # summary.py imports TensorFlow; the plan is printed before it starts
    from training.app.summary import RunSummary


def print_plan(
    config: TrainConfig, plan: DevicePlan, out: Any = None, steps_per_epoch: int | None = None
) -> None:
    """Devices, batch, model, data, validation and the learning rate in use (with its warm-up in
    steps where `steps_per_epoch` is known)."""
    out = out or sys.stdout
    print_devices(config, plan, out)
    print(f"model {config.model}, data {config.data or 'synthetic'}, {config.epochs} epoch(s)", file=out)
    after_each = "evaluated after each epoch"
    if config.validation_split is not None:
        held_out = f"{config.validation_split * 100:g}%"
        print(f"validation: {held_out} of the data held out, {after_each}", file=out)
    elif config.validation_data:
        print(f"validation: {config.validation_data}, {after_each}", file=out)
    print(f"optimizer {config.optimizer}, {rate_plan(config).describe(steps_per_epoch)}", file=out)


def print_devices(config: TrainConfig, plan: DevicePlan, out: Any = None) -> None:
    """The replicas, their devices and how the global batch splits over them."""
    out = out or sys.stdout
    per_replica = config.global_batch_size // plan.num_replicas
    print(
        f"plan: {plan.num_replicas} replica(s) on {'GPUs' if plan.kind == 'gpu' else 'the CPU'}, "
        f"MirroredStrategy, cross-device ops {config.cross_device_ops}",
        file=out,
    )
    for line in plan.describe():
        print(f"  {line}", file=out)
    if plan.selection is not None:
        print(f"GPUs ({config.selection.mode} mode):", file=out)
        for line in plan.selection.explain():
            print(f"  {line}", file=out)
        for note in plan.selection.notes:
            print(f"  note: {note}", file=out)
    print(
        f"global batch {config.global_batch_size} = {per_replica} per replica x {plan.num_replicas}", file=out
    )
    advice = batch_advice(config.global_batch_size, len(plan.gpus)) if plan.kind == "gpu" else None
    if advice:
        print(f"  note: {advice}", file=out)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def print_summary(run: RunSummary, out: Any = None) -> None:
    out = out or sys.stdout
    summary = run.as_dict()
    from tabulate import tabulate

    keys = [
        "model",
        "data",
        "device_kind",
        "replicas",
        "global_batch_size",
        "per_replica_batch_size",
        "epochs",
        "steps",
        "final_loss",
        "final_accuracy",
        "final_val_loss",
        "final_val_accuracy",
        "learning_rate",
        "samples_per_sec",
        "samples_per_sec_per_replica",
        "train_seconds",
        "wall_seconds",
    ]
    rows = [(k, _fmt(summary[k])) for k in keys]
    if summary["samples_per_sec"] is None:
        rows[keys.index("samples_per_sec")] = (
            "samples_per_sec",
            f"n/a: every step was a warm-up step (--warmup-steps {summary['warmup_steps']})",
        )
    if summary["validation_data"] is None:
        rows = [row for row in rows if not row[0].startswith("final_val_")]
    else:
        at = next(i for i, row in enumerate(rows) if row[0] == "final_val_loss")
        rows.insert(at, ("validation", summary["validation_data"]))
    rows.insert(3, ("devices", "\n".join(summary["devices"])))
    if summary.get("gpu_usage"):
        rows.append(("gpu_usage", describe_gpus(summary["gpu_usage"])))
    print(tabulate(rows, tablefmt="simple"), file=out)
    found = summary.get("bottleneck")
    if found:  # one line after the table: too long for a cell
        from common.bottleneck import describe

        print(f"bottleneck: {describe(found)}", file=out)
    uneven = describe_usage(summary.get("least_busy_gpu"))
    if uneven:
        print(f"least busy GPU: {uneven}", file=out)
    from training.app.workers_speed import describe as describe_speed

    slow = describe_speed(summary.get("workers_speed"))
    if slow:
        print(f"slowest worker: {slow}", file=out)


def print_evaluation(summary: dict[str, Any], out: Any = None) -> None:
    """The results of `python -m training evaluate`."""
    out = out or sys.stdout
    from tabulate import tabulate

    keys = ["model_path", "data", "examples", "replicas", "global_batch_size", "loss", "accuracy"]
    rows = [(k, _fmt(summary[k])) for k in keys]
    rows.insert(4, ("devices", "\n".join(summary["devices"])))
    print(tabulate(rows, tablefmt="simple"), file=out)
