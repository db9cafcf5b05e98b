"""What Keras 3's `model.fit` needs of a MultiWorkerMirroredStrategy, and the callback that backs a
multi-worker `fit` up from the chief alone.

Keras 3.15's TensorFlow trainer calls `strategy.reduce` in two ways that MultiWorkerMirroredStrategy
(MWMS) rejects, so `model.fit` fails under it before or at its first step:
- `_maybe_symbolic_build` reduces the first batch, a tuple `(x, y)`, in one call: MWMS's
  `reduce_to` takes one value, not a structure ("Attempt to convert a value (PerReplica ...) with an
  unsupported type to a Tensor");
- `reduce_per_replica` reduces each step's outputs with `reduce("MEAN", v, axis=0)`, also for the
  scalar loss, which has no axis 0 ("Invalid reduction dimension 0 for input with 0 dimensions").
(keras/src/backend/tensorflow/trainer.py; MirroredStrategy on one machine takes both.)
`fit_ready` gives the strategy object a `reduce` that takes both: each value of a structure in
turn, and a rank-0 value over the replicas alone. `training.setup_device_strategy()` applies it to
the MWMS it builds; with it the seed guide's idiom (`strategy.scope()`, `model.fit`) trains across
workers (tests/e2e/test_api_backup.py).

TensorFlow and Keras are imported when this module is: `training` loads it on first use.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def fit_ready(strategy: Any) -> Any:
    """`strategy` with a `reduce` Keras 3's `fit` can use (see the module's docstring); returns it.
    Changes only that object, once."""
    if getattr(strategy, "_gpudiag_fit_ready", False):
        return strategy
    plain = strategy.reduce

    def reduce(reduce_op: Any, value: Any, axis: int | None = None) -> Any:
        def one(v: Any) -> Any:
            local = strategy.experimental_local_results(v)[0]
            rank = getattr(getattr(local, "shape", None), "rank", None)
            return plain(reduce_op, v, axis if axis is not None and rank else None)

        return tf.nest.map_structure(one, value)

    strategy.reduce = reduce
    strategy._gpudiag_fit_ready = True
    return strategy


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` for a run across workers: every worker restores from
    `backup_dir` (storage all workers see) when `fit` starts, so all resume from the same epoch and
    weights; only the chief (`setup.is_chief`) writes and, at the end, deletes the backup. Keras's
    own callback writes from every worker to the same files. On one machine it is Keras's.

    `saves` counts the backups this process wrote (0 on every worker but the chief)."""

    def __init__(self, backup_dir: str, setup: Any = None, **kwargs: Any) -> None:
        super().__init__(str(backup_dir), **kwargs)
        self.writes = setup is None or bool(setup.is_chief)
        self.saves = 0

    def _save_model(self) -> None:
        if self.writes:
            super()._save_model()
            self.saves += 1

    def on_train_end(self, logs: Any = None) -> None:
        if self.writes:
            super().on_train_end(logs)
