"""A timed all-reduce on a strategy's replicas: chained all-reduces of one float32 message, the one
timer that the benchmark worker (`AllreduceWork`) and the training summary's bottleneck line
(training.app.bottleneck) both use, so that their figures mean the same thing.

TensorFlow is imported when a `ChainedAllreduce` is built, not by importing this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# all-reduces chained in one traced call: the host's per-call cost is shared by several, as the
# gradients' all-reduce inside a training step does not pay it on its own
UNROLL = 4


@dataclass
class ChainedAllreduce:
    """`unroll` all-reduces of a float32 message of `nbytes` per replica, one after another in one
    traced call. Building it traces nothing; the first `run` traces (time it apart)."""

    strategy: Any
    nbytes: int
    unroll: int = UNROLL
    _values: Any = field(init=False, repr=False)
    _step: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import tensorflow as tf

        strategy, unroll = self.strategy, self.unroll
        # zeros: the sum stays finite however many times it is chained
        self._values = strategy.experimental_distribute_values_from_function(
            lambda _ctx: tf.zeros([self.elements], tf.float32)
        )

        def replica_fn(x: Any) -> Any:
            ctx = tf.distribute.get_replica_context()
            # placed on the replica's device first: under MultiWorkerMirroredStrategy an all-reduce
            # of the traced function's input itself has no device and fails ("destinations can not
            # be empty"); the copy costs one element-wise op per call, not per all-reduce
            x = tf.identity(x)
            for _ in range(unroll):  # chained, so the all-reduces run one after another
                x = ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)
            return x

        self._step = tf.function(lambda v: strategy.run(replica_fn, args=(v,)))

    @property
    def elements(self) -> int:
        return max(1, self.nbytes // 4)

    def run(self, calls: int) -> float:
        """`calls` traced calls (calls x unroll all-reduces), each taking the one before as input so
        that they run in turn, then one sync; returns the seconds they took."""
        started = time.perf_counter()
        out = self._values
        for _ in range(calls):
            out = self._step(out)
        for value in self.strategy.experimental_local_results(out):
            float(value[0])  # one element per replica: the sync copies nothing else back
        return time.perf_counter() - started


def seconds_per_allreduce(strategy: Any, nbytes: int, calls: int = 3, unroll: int = UNROLL) -> float:
    """One all-reduce of `nbytes` per replica, timed: a first call traces (not counted), then
    `calls` x `unroll` chained all-reduces. Every replica, and on several workers every worker,
    must call it with the same arguments: the all-reduces are collectives that pair up."""
    chained = ChainedAllreduce(strategy, nbytes, unroll)
    chained.run(1)
    return chained.run(calls) / (calls * unroll)
