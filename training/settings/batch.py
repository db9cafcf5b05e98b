"""The global batch and its split: the one rule that it divides evenly over the replicas (and, with
--accumulate-steps, into equal micro-batches on each), and the plan's advice on its size. No
TensorFlow here.
"""

from __future__ import annotations

from training.settings.table import ConfigError


def nearest_valid_batches(global_batch_size: int, replicas: int) -> list[int]:
    below = global_batch_size - global_batch_size % replicas
    above = below + replicas
    return [b for b in (below, above) if b > 0]


# The seed guide's global batch per GPU count (1 GPU 64-128, 2 GPUs 128-256, 4 GPUs 256-512): 64 to
# 128 examples per GPU keep a GPU busy; fewer leave it waiting on the all-reduce and the host.
ADVISED_PER_GPU = (64, 128)


def batch_advice(global_batch_size: int, gpus: int) -> str | None:
    """What the plan says when the per-GPU batch is small for the GPU count, or None."""
    low, high = ADVISED_PER_GPU
    if gpus < 1 or global_batch_size // gpus >= low:
        return None
    return (
        f"{global_batch_size // gpus} examples per GPU is small for {gpus} GPU(s) (the guide: "
        f"{low * gpus}-{high * gpus} global, {low}-{high} per GPU): try --global-batch-size {low * gpus} "
        "(with --scale-learning-rate linear, the learning rate follows it)"
    )


def splits_evenly(global_batch_size: int, replicas: int) -> bool:
    """The rule: every replica takes the same share of the global batch."""
    return replicas > 0 and global_batch_size % replicas == 0


def per_replica_batch(global_batch_size: int, replicas: int, accumulate_steps: int = 1) -> int:
    """Each replica's share of the global batch; a ConfigError (exit 2) naming the nearest batches
    that split evenly where it does not, over the replicas and, with --accumulate-steps K, into K
    equal micro-batches on each replica."""
    parts = replicas * accumulate_steps
    if not splits_evenly(global_batch_size, parts):
        options = " or ".join(str(b) for b in nearest_valid_batches(global_batch_size, parts))
        over = f"{replicas} replicas"
        if accumulate_steps > 1:
            over += f" x {accumulate_steps} micro-batches (--accumulate-steps)"
        raise ConfigError(
            f"--global-batch-size {global_batch_size} does not split evenly over {over}: "
            f"use a multiple of {parts}, e.g. {options}"
        )
    return global_batch_size // replicas
