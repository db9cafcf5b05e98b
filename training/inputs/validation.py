"""Validation data: a fraction held out of the training data (--validation-split) or a data set of
its own (--validation-data), checked before TensorFlow starts (bad input: one line, exit 2).

The held-out examples are chosen by a permutation seeded with --seed, before the training
pipeline shuffles what is left, so the same command holds out the same examples every time (and
a resumed run trains on the same ones). A random choice rather than the last fraction, as Keras'
`validation_split` takes: an image folder is read class by class, so its last fraction would be
the last classes only. Evaluation itself, under the strategy, is training/evaluate.py.

A streamed source (image folder, TFRecords) is split the same way by example id: image files by
their position in the listing, TFRecord records by their position in the files (the count is known
before TensorFlow); each side streams only its ids.

NumPy only.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from training.inputs import data, streaming
from training.settings.config import ConfigError, TrainConfig


def split_sizes(num_examples: int, fraction: float, global_batch_size: int) -> tuple[int, int]:
    """(training, validation) example counts; each side must hold one global batch at least."""
    held_out = round(num_examples * fraction)
    kept = num_examples - held_out
    if min(held_out, kept) < global_batch_size:
        raise ConfigError(
            f"--validation-split {fraction:g} of {num_examples} examples leaves {kept} for training and "
            f"{held_out} for validation: each side needs one global batch ({global_batch_size}) at least; "
            "change the fraction or lower --global-batch-size"
        )
    return kept, held_out


def training_size(config: TrainConfig, num_examples: int) -> int:
    """How many examples training sees of `num_examples` loaded."""
    if config.validation_split is None:
        return num_examples
    return split_sizes(num_examples, config.validation_split, config.global_batch_size)[0]


def split(
    examples: data.DataSource, fraction: float, seed: int, global_batch_size: int
) -> tuple[data.DataSource, data.DataSource]:
    """(training, validation): a seeded random choice of examples held out, both in data order."""
    _kept, held_out = split_sizes(len(examples), fraction, global_batch_size)
    # a stream of its own, so that the choice does not depend on how the data were generated
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(examples))
    validation_index, training_index = np.sort(order[:held_out]), np.sort(order[held_out:])
    percent = f"{fraction * 100:g}%"
    held_source = f"{percent} of {examples.source} held out ({held_out} examples)"
    if isinstance(examples, streaming.Streamed):
        return _split_streamed(examples, training_index, validation_index, held_source)

    def part(index: np.ndarray, source: str, dropped: int = 0, detail: str = "") -> data.Examples:
        x, y = examples.x[index], examples.y[index]
        return data.Examples(x, y, examples.num_classes, source, dropped, detail, examples.class_names)

    return (
        part(training_index, examples.source, examples.dropped, examples.drop_detail),
        part(validation_index, held_source),
    )


def _split_streamed(
    source: streaming.Streamed, training_index: np.ndarray, validation_index: np.ndarray, held_source: str
) -> tuple[streaming.Streamed, streaming.Streamed]:
    def part(index: np.ndarray, name: str, dropped: int = 0, detail: str = "") -> streaming.Streamed:
        if source.kind == "images":  # one file per example: each side lists its own files
            files = tuple(np.asarray(source.files)[index])
            return replace(
                source,
                files=files,
                labels=source.labels[index],
                ids=source.ids[index],
                source=name,
                dropped=dropped,
                drop_detail=detail,
            )
        return replace(source, ids=source.ids[index], source=name, dropped=dropped, drop_detail=detail)

    return (
        part(training_index, source.source, source.dropped, source.drop_detail),
        part(validation_index, held_source),
    )


def check_matches(training: data.DataSource | None, validation: data.DataSource, path: str) -> None:
    """Validation data must fit the model the training data builds: same input shape, no labels
    beyond the training classes, and for image folders the same class folders (they give the labels)."""
    shape: tuple[int, ...]
    names: tuple[str, ...]
    if training is None:  # --dry-run on synthetic data: its shape and classes are known
        shape, classes, names = data.SYNTHETIC_SHAPE, data.SYNTHETIC_CLASSES, ()
    else:
        shape, classes, names = training.input_shape, training.num_classes, training.class_names
    if validation.input_shape != tuple(shape):
        raise ConfigError(
            f"--validation-data {path}: examples of shape {validation.input_shape}, but the training data's "
            f"are {tuple(shape)}"
        )
    if names and validation.class_names and validation.class_names != names:
        raise ConfigError(
            f"--validation-data {path}: classes {', '.join(validation.class_names)}, but the training data's "
            f"are {', '.join(names)}"
        )
    if validation.num_classes > classes:
        raise ConfigError(
            f"--validation-data {path}: {validation.num_classes} classes, but the training data has {classes}"
        )


def prepare(
    config: TrainConfig, examples: data.DataSource | None
) -> tuple[data.DataSource | None, data.DataSource | None]:
    """(training, validation) as the config asks; `examples` is None for --dry-run on synthetic
    data, which is checked by its known size and shape without generating it."""
    if config.validation_split is not None:
        if examples is None:
            split_sizes(data.SYNTHETIC_EXAMPLES, config.validation_split, config.global_batch_size)
            return None, None
        return split(examples, config.validation_split, config.seed, config.global_batch_size)
    if config.validation_data:
        validation = data.open_source(
            config.validation_data, config.seed, config.image_size, flag="--validation-data"
        )
        check_matches(examples, validation, config.validation_data)
        return examples, validation
    return examples, None
