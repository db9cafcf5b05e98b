"""Training data: a learnable synthetic default and `.npz` files (arrays `x`, `y`), in memory
(`Examples`); image folders (one subfolder per class) and TFRecord files, streamed from disk
(training.inputs.streaming); filtering of bad examples; batching with the global batch,
prefetching and distribution through the strategy.

`open_source` is what a run trains on (a `DataSource`: either kind); `load` reads a data set
whole (the old way for image folders, kept for the benchmark worker and the measurements).
Loading and validation are NumPy only; TensorFlow is needed only to build the tf.data pipeline.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import UserError
from training.inputs import streaming, tfrecord

if TYPE_CHECKING:
    import tensorflow as tf

SYNTHETIC_SHAPE = (32, 32, 3)
SYNTHETIC_CLASSES = 10
SYNTHETIC_EXAMPLES = 4096
IMAGE_SIZE = (64, 64)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


class DataError(UserError):
    """Data that cannot be used as given (a user error: one line, exit 2)."""


@dataclass(frozen=True)
class Examples:
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    source: str
    dropped: int = 0
    drop_detail: str = ""
    class_names: tuple[str, ...] = ()  # an image folder's class folders, in label order

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def synthetic(
    seed: int,
    num_examples: int = SYNTHETIC_EXAMPLES,
    shape: tuple[int, ...] = SYNTHETIC_SHAPE,
    num_classes: int = SYNTHETIC_CLASSES,
) -> Examples:
    """Noisy copies of one fixed random pattern per class, labelled by the nearest pattern.

    The label is a fixed function of the input (the best-matching class pattern), so a model can
    learn it: loss falls and accuracy climbs well above chance within two short epochs.
    """
    patterns = np.random.default_rng(1234).normal(size=(num_classes, *shape)).astype(np.float32)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, num_classes, size=num_examples)
    x = 0.5 * patterns[drawn] + rng.normal(size=(num_examples, *shape)).astype(np.float32)
    flat = x.reshape(num_examples, -1)
    y = np.argmax(flat @ patterns.reshape(num_classes, -1).T, axis=1).astype(np.int32)
    return Examples(x.astype(np.float32), y, num_classes, f"synthetic ({num_examples} examples)")


# what a run trains and evaluates on: in memory (synthetic, .npz) or streamed (images, TFRecords)
DataSource = Examples | streaming.Streamed


def open_source(
    path: str | None, seed: int, image_size: int = IMAGE_SIZE[0], flag: str = "--data"
) -> DataSource:
    """The data named by --data: .npz and synthetic in memory, image folders and TFRecords
    listed (and TFRecords counted) here, before TensorFlow, and streamed while training."""
    if path is not None and tfrecord.looks_like_tfrecords(path):
        return streaming.open_tfrecords(path, flag, image_size)
    if path is not None and Path(path).is_dir():
        return streaming.list_image_folder(Path(path), flag, image_size)
    return load(path, seed, flag=flag)


def load(
    path: str | None,
    seed: int,
    num_classes: int | None = None,
    flag: str = "--data",
    image_size: tuple[int, int] = IMAGE_SIZE,
) -> Examples:
    """Load and filter the data named by --data (None: synthetic) whole; `flag` names it in errors."""
    if path is None:
        return synthetic(seed)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{flag} {path}: no such file or folder")
    if p.is_dir():
        x, y, names = _load_image_folder(p, flag, image_size)
        return filter_examples(x, y, len(names), f"image folder {path}", flag, class_names=names)
    if p.suffix != ".npz":
        raise DataError(f"{flag} {path}: expected a .npz file or an image folder (one subfolder per class)")
    x, y, classes = _load_npz(p, num_classes, flag)
    return filter_examples(x, y, classes, f"{path}", flag)


def _load_npz(path: Path, num_classes: int | None, flag: str) -> tuple[np.ndarray, np.ndarray, int]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{flag} {path}: missing array {missing[0]!r} (a .npz needs arrays 'x' and 'y'; "
                    f"found {', '.join(archive.files) or 'none'})"
                )
            x, y = archive["x"], archive["y"]
            if num_classes is None and "num_classes" in archive.files:
                num_classes = int(archive["num_classes"])
    except DataError:
        raise
    except PermissionError:
        raise DataError(f"{flag} {path}: permission denied") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{flag} {path}: not a readable .npz file ({exc})") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if x.ndim < 2 or y.ndim != 1:
        raise DataError(
            f"{flag} {path}: x must be (examples, features...) and y (examples,), "
            f"got x{tuple(x.shape)} and y{tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{flag} {path}: x has {x.shape[0]} examples but y has {y.shape[0]}")
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise DataError(f"{flag} {path}: x and y must be numeric, got {x.dtype} and {y.dtype}")
    if num_classes is None:
        valid = y[np.isfinite(y) & (y >= 0)] if np.issubdtype(y.dtype, np.floating) else y[y >= 0]
        num_classes = int(valid.max()) + 1 if valid.size else 0
    if num_classes < 2:
        raise DataError(f"{flag} {path}: need labels of at least 2 classes, found {num_classes}")
    return x, y, num_classes


def filter_examples(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    source: str,
    flag: str = "--data",
    class_names: tuple[str, ...] = (),
) -> Examples:
    """Drop examples with non-finite features or labels outside [0, num_classes), and say how many."""
    x = np.asarray(x, dtype=np.float32)
    finite_x = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    y_float = np.asarray(y, dtype=np.float64)
    good_label = (
        np.isfinite(y_float) & (y_float >= 0) & (y_float < num_classes) & (y_float == np.round(y_float))
    )
    keep = finite_x & good_label
    dropped = int((~keep).sum())
    detail = ""
    if dropped:
        detail = (
            f"dropped {dropped} of {len(x)} examples: {int((~finite_x).sum())} with non-finite features, "
            f"{int((~good_label).sum())} with labels outside [0, {num_classes})"
        )
    if not keep.any():
        raise DataError(f"{flag} {source}: no usable examples left ({detail})")
    labels = y_float[keep].astype(np.int32)
    return Examples(x[keep], labels, num_classes, source, dropped, detail, tuple(class_names))


def _load_image_folder(
    folder: Path, flag: str, size: tuple[int, int] = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(f"{flag} {folder}: an image folder needs one subfolder per class (at least 2)")
    from PIL import Image, UnidentifiedImageError  # Pillow comes with Keras/matplotlib

    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    rgb = img.convert("RGB").resize(size[::-1])
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"{flag} {folder}: cannot read image {file}: {exc}") from None
            images.append(np.asarray(rgb, dtype=np.float32) / 255.0)
            labels.append(label)
    if not images:
        raise DataError(
            f"{flag} {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int32), tuple(classes)


def make_dataset(
    examples: DataSource, global_batch_size: int, seed: int, skip_batches: int = 0
) -> tf.data.Dataset:
    """An endless, shuffled stream of global batches (epochs are counted in steps).

    `skip_batches` starts the stream where a run that trained that many steps left it, so a run
    resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen (the
    shuffle is seeded, and batch k is elements [k*B, (k+1)*B) of the shuffled, repeated stream).

    Every batch is full, whatever --steps-per-epoch asks: the stream is repeated before it is
    batched, so a batch that reaches the end of the data goes on into the next pass, and no replica
    ever gets a partial or empty share (see make_eval_dataset for why that matters).
    """
    import tensorflow as tf

    if isinstance(examples, streaming.Streamed):
        return examples.training_dataset(global_batch_size, seed, skip_batches)
    if len(examples) < global_batch_size:
        raise DataError(
            f"{examples.source}: {len(examples)} examples are fewer than one global batch of "
            f"{global_batch_size}: lower --global-batch-size"
        )
    # Shuffle the examples' indices, not the examples: the shuffle buffer then holds integers and
    # each batch is one gather from the arrays, instead of copying every example through the
    # buffer one by one. tf.data's seeded shuffle permutes by position alone, so the batches are
    # the same as shuffling (x, y) pairs with this seed (tests/training/test_data.py compares them): older
    # checkpoints resume onto the same stream.
    x, y = tf.constant(examples.x), tf.constant(examples.y)
    ds = tf.data.Dataset.range(len(examples))
    ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat()
    if skip_batches:
        # skipping indices before batching avoids assembling batches only to drop them
        ds = ds.skip(skip_batches * global_batch_size)
    ds = ds.batch(global_batch_size, drop_remainder=True)
    ds = ds.map(lambda i: (tf.gather(x, i), tf.gather(y, i)), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # same seed, same batches: runs are comparable
    # On several workers each builds this same stream and keeps its part of every global batch:
    # each example of a global batch is seen once. (There are no files to shard by: the examples,
    # image folders included, are in memory.) One machine: no effect.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_padding(num_examples: int, global_batch_size: int) -> int:
    """How many weightless examples fill the last global batch of an evaluation (0 if it is full)."""
    return -num_examples % global_batch_size


def make_eval_dataset(examples: DataSource, global_batch_size: int) -> tf.data.Dataset:
    """Every example once, in order, in full global batches of (x, y, weight): weight 1.0 for the
    examples, 0.0 for the copies that pad the last batch to full size.

    Why pad: a partial last batch, split across the replicas, leaves some with fewer examples and
    some with none, and what a kernel does with a zero-sized batch differs between machines (a
    convolution on one CPU fails with "input depth must be evenly divisible by filter depth"). The
    global batch is a multiple of the replicas (checked before TensorFlow starts), so full batches
    give every replica the same, non-empty share. The padding is copies of the first examples,
    inputs the model can take, and the evaluation counts only examples of weight 1 (see
    training/loop/evaluate.py): the figures are those of the examples alone.
    """
    import tensorflow as tf

    if isinstance(examples, streaming.Streamed):
        return examples.eval_dataset(global_batch_size)  # the same padding, streamed
    count = len(examples)
    real = tf.data.Dataset.from_tensor_slices((examples.x, examples.y, np.ones(count, np.float32)))
    pad = eval_padding(count, global_batch_size)
    if pad:
        index = np.arange(pad) % count  # fewer examples than the padding: copies of copies
        filler = (examples.x[index], examples.y[index], np.zeros(pad, np.float32))
        real = real.concatenate(tf.data.Dataset.from_tensor_slices(filler))
    # drop_remainder drops nothing (the padding made the count a multiple of the batch); it gives
    # the batch a static size, so the evaluation step is traced once
    ds = real.batch(global_batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def distribute(strategy: Any, dataset: tf.data.Dataset) -> Any:
    """Split each global batch evenly across the replicas."""
    return strategy.experimental_distribute_dataset(dataset)
