"""Resuming a run: before TensorFlow starts, is there a checkpoint in --checkpoint-dir, and was it
written by a run with the same settings? (A different run is bad input: one line, exit 2.)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from training.checkpoint import CheckpointError, CheckpointStore, describe_mismatch, fingerprint
from training.config import TrainConfig, resolve_steps_per_epoch
from training.devices import DevicePlan


def check_before_start(
    config: TrainConfig, plan: DevicePlan, examples: Any
) -> tuple[TrainConfig, str | None]:
    """Refuse (CheckpointError: exit 2) a --checkpoint-dir that holds another run.

    Returns the config (with --auto-batch-size, the checkpoint's batch: the same command resumes)
    and a description of the checkpoint a run would resume from, or None.
    """
    if not config.checkpoint_dir:
        return config, None
    found = CheckpointStore(config.checkpoint_dir).peek()
    if found is None:
        return config, None
    saved = found.manifest.fingerprint
    if config.auto_batch_size and isinstance(saved.get("global_batch_size"), int):
        batch = saved["global_batch_size"]
        if batch > 0 and batch % plan.num_replicas == 0:
            config = replace(config, global_batch_size=batch)
    if examples is not None:
        num_examples = len(examples)
    else:  # --dry-run on synthetic data: its size is known without generating it
        from training.data import SYNTHETIC_EXAMPLES

        num_examples = SYNTHETIC_EXAMPLES
    current = fingerprint(config, num_examples, resolve_steps_per_epoch(config, num_examples))
    diff = describe_mismatch(saved, current)
    if diff:
        raise CheckpointError(
            f"--checkpoint-dir {config.checkpoint_dir} holds a different run ({diff}): "
            "resume with the same settings, or use another --checkpoint-dir"
        )
    return config, f"{found.name} ({found.manifest.where()})"
