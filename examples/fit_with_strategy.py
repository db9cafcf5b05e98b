"""Train a small Keras model with `model.fit` on every usable GPU of this machine, chosen as
`python -m training` chooses them, and measure its throughput.

    python examples/fit_with_strategy.py            # the GPUs that `gpudiag list` selects
    python examples/fit_with_strategy.py 2          # 2 CPU replicas (a machine without GPUs)
    CPU_REPLICAS=2 python examples/fit_with_strategy.py

Run from the repository root or with the suite installed (`pip install -e .`).
"""

from __future__ import annotations

import os
import sys

import training


def main(argv: list[str]) -> None:
    count = argv[1] if len(argv) > 1 else os.environ.get("CPU_REPLICAS")
    # First, before anything runs a TensorFlow operation: choose the devices, build the strategy.
    setup = training.setup_device_strategy(cpu_replicas=int(count) if count else None)

    import keras
    import numpy as np
    import tensorflow as tf

    per_replica_batch = 32
    global_batch = per_replica_batch * setup.num_replicas  # each replica gets 32 examples a step
    setup.print_plan(global_batch)

    rng = np.random.default_rng(0)
    features = rng.normal(size=(640, 20)).astype("float32")
    labels = (features[:, :10].sum(axis=1) > 0).astype("int32")

    with setup.strategy.scope():
        dataset = tf.data.Dataset.from_tensor_slices((features, labels))
        dataset = dataset.shuffle(640, seed=0).batch(global_batch, drop_remainder=True).cache().repeat()
        model = keras.Sequential(
            [keras.Input((20,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(2)]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )

    throughput = training.ThroughputCallback(global_batch)
    # shuffle=False: the dataset shuffles itself (Keras warns that it ignores shuffle=True here)
    model.fit(dataset, epochs=2, steps_per_epoch=40, callbacks=[throughput], verbose=2, shuffle=False)

    # The numbers are there for your own records, too.
    low, high = throughput.interval or (float("nan"), float("nan"))
    print(
        f"replicas={setup.num_replicas} samples_per_sec={throughput.samples_per_sec:.1f} "
        f"per_replica={throughput.samples_per_sec_per_replica:.1f} interval=({low:.1f}, {high:.1f})"
    )


if __name__ == "__main__":
    main(sys.argv)
