"""Resuming a run: the one check that a checkpoint was written by a run with the same settings
(`check_fingerprint`: a different run is bad input, exit 2), that check before TensorFlow starts
(`check_before_start`), and putting the newest good checkpoint back into a trainer, with the run's
state as it was (`resume_latest`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from training.checkpoints.store import (
    CheckpointError,
    CheckpointStore,
    describe_mismatch,
    fingerprint,
)
from training.devices.setup import DevicePlan
from training.inputs.validation import training_size
from training.loop.state import RunState
from training.settings.batch import splits_evenly
from training.settings.config import TrainConfig, resolve_steps_per_epoch


class Resumable(Protocol):
    """What resume_latest needs of a trainer (training.loop.trainer.Trainer)."""

    @property
    def num_replicas(self) -> int: ...

    def restore(self, names: Sequence[str], arrays: Sequence[np.ndarray], source: str) -> None: ...

    def seek(self, global_step: int) -> None: ...

    def new_state(self) -> RunState: ...


def check_fingerprint(saved: Mapping[str, Any], current: Mapping[str, Any], checkpoint_dir: Any) -> None:
    """Refuse to resume a checkpoint written under settings that change what training means."""
    diff = describe_mismatch(saved, current)
    if diff:
        raise CheckpointError(
            f"--checkpoint-dir {checkpoint_dir} holds a different run ({diff}): "
            "resume with the same settings, or use another --checkpoint-dir"
        )


def check_before_start(
    config: TrainConfig, plan: DevicePlan, examples: Any
) -> tuple[TrainConfig, str | None]:
    """Refuse (CheckpointError: exit 2) a --checkpoint-dir that holds another run, before TensorFlow.

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
        if batch > 0 and splits_evenly(batch, plan.num_replicas):
            config = replace(config, global_batch_size=batch)
    if examples is not None:  # the training examples, after any --validation-split
        num_examples = len(examples)
    else:  # --dry-run on synthetic data: its size is known without generating it
        from training.inputs.data import SYNTHETIC_EXAMPLES

        num_examples = training_size(config, SYNTHETIC_EXAMPLES)
    current = fingerprint(config, num_examples, resolve_steps_per_epoch(config, num_examples))
    check_fingerprint(saved, current, config.checkpoint_dir)
    return config, f"{found.name} ({found.manifest.where()})"


def resume_latest(
    store: CheckpointStore,
    trainer: Resumable,
    current: dict[str, Any],
    epochs: int,
    notify: Callable[[str], None],
) -> RunState | None:
    """Load the newest good checkpoint in `store` into `trainer` and say so through `notify`.

    Returns the run's state where fit picks up, or None (no usable checkpoint: train from the start). Raises
    CheckpointError for a checkpoint of a different run or model.
    """
    restored = store.restore_latest(notify)
    if restored is None:
        return None
    check_fingerprint(restored.manifest.fingerprint, current, store.directory)
    manifest = restored.manifest
    trainer.restore([n for n, _ in manifest.variables], restored.arrays, restored.checkpoint.name)
    trainer.seek(manifest.global_step)
    start = RunState.resume(trainer.new_state().meter, manifest, restored.checkpoint.name)
    replicas = trainer.num_replicas
    note = ""
    if manifest.replicas != replicas:
        note = f" (written on {manifest.replicas} replicas, now {replicas})"
    notify(f"resuming from checkpoint {start.resumed_from} ({manifest.where()}){note}")
    if manifest.stopped_early or manifest.epoch >= epochs:
        notify(f"that checkpoint ends the run: nothing left to train for --epochs {epochs}")
    return start
