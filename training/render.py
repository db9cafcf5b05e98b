"""What the trainer prints: the device plan before training, the summary table after it."""

from __future__ import annotations

import sys
from typing import Any

from training.config import TrainConfig, batch_advice
from training.devices import DevicePlan


def print_plan(config: TrainConfig, plan: DevicePlan, out: Any = None) -> None:
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
    print(f"model {config.model}, data {config.data or 'synthetic'}, {config.epochs} epoch(s)", file=out)


def print_summary(summary: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    from tabulate import tabulate

    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return str(v)

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
        "samples_per_sec",
        "samples_per_sec_per_replica",
        "train_seconds",
        "wall_seconds",
    ]
    rows = [(k, fmt(summary[k])) for k in keys]
    if summary["samples_per_sec"] is None:
        rows[keys.index("samples_per_sec")] = (
            "samples_per_sec",
            f"n/a: every step was a warm-up step (--warmup-steps {summary['warmup_steps']})",
        )
    rows.insert(3, ("devices", "\n".join(summary["devices"])))
    print(tabulate(rows, tablefmt="simple"), file=out)
