"""Data larger than memory, streamed through tf.data: image folders (one subfolder per class, read
file by file) and TFRecord files of tf.train.Example (training.inputs.tfrecord).

Listing, the header check of each image, the key check and the record count (one pass, cached)
happen before TensorFlow. The streams are built like the in-memory one (training.inputs.data): a
seeded shuffle of positions (image files) or of files and records (TFRecords), repeated, the
resume skip counted in examples before anything is decoded, decoded in parallel, batched by the
global batch with drop_remainder, prefetched. Only a batch in flight and the prefetch buffer are
ever decoded, so memory does not grow with the data.

Several workers: each takes every W-th file when there are at least as many files as workers (what
AutoShardPolicy.FILE does, done here by hand because image files are not read by a dataset
tf.data's FILE policy recognises, and because the resume skip must know each worker's share);
with fewer files every worker reads them all and keeps every W-th example of the same seeded
stream (data sharding). Either way no two workers see the same example in an epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import UserError
from diagnostics.cluster import ClusterTask
from training.inputs import tfrecord

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
# test hook: a folder where each worker writes the example ids of every training batch it builds
SEEN_IDS_ENV = "GPUDIAG_SEEN_IDS"
_RECORD_SHUFFLE = 1024  # serialized records, not decoded images: small in memory
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


class StreamError(UserError):
    """Streamed data that cannot be used as given (one line, exit 2)."""


@dataclass(frozen=True, eq=False)
class Streamed:
    """A data set read from files as it trains: the metadata the run needs, and its two streams."""

    kind: str  # "images" or "tfrecord"
    files: tuple[str, ...]  # image files, or TFRecord shards
    labels: np.ndarray  # images: each file's label; TFRecords: empty
    ids: np.ndarray  # images: each file's example id; TFRecords: the ids kept (all, or a split's)
    record_counts: tuple[int, ...]  # TFRecords: records per file
    num_classes: int
    source: str
    image_size: int
    dropped: int = 0
    drop_detail: str = ""
    class_names: tuple[str, ...] = ()
    workers: int = 1
    worker_index: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def sharded_by_file(self) -> bool:
        return self.workers > 1 and len(self.files) >= self.workers

    def sharding_note(self) -> str | None:
        """The one line for several workers and too few files to shard by file."""
        if self.workers <= 1 or self.sharded_by_file:
            return None
        return (
            f"{self.source}: {len(self.files)} file(s) for {self.workers} workers: every worker reads every "
            f"file and keeps 1/{self.workers} of the examples (data sharding); split the data into at "
            f"least {self.workers} files to shard by file"
        )

    # -- the streams ----------------------------------------------------------------------------

    def training_dataset(self, global_batch_size: int, seed: int, skip_batches: int = 0) -> tf.data.Dataset:
        import tensorflow as tf

        if len(self) < global_batch_size:
            raise StreamError(
                f"{self.source}: {len(self)} examples are fewer than one global batch of "
                f"{global_batch_size}: lower --global-batch-size"
            )
        # each worker consumes global/W examples of its own stream per step (the strategy splits
        # each batch over all replicas); one worker: the whole batch
        per_step = global_batch_size // self.workers
        ds = self._examples_stream(seed)  # (kind-specific element, id), endless
        if self.workers > 1 and not self.sharded_by_file:
            index, workers = self.worker_index, self.workers
            ds = ds.enumerate().filter(lambda i, _e: i % workers == index).map(lambda _i, e: e)
        if skip_batches:
            ds = ds.skip(skip_batches * per_step)  # before decoding: a resume decodes nothing twice
        ds = ds.map(self._decoder(), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors()  # a file that passed the header check but does not decode
        record_to = os.environ.get(SEEN_IDS_ENV)
        if not record_to:
            ds = ds.map(lambda x, y, _i: (x, y))
        ds = ds.batch(global_batch_size, drop_remainder=True)
        if record_to:
            ds = _record_ids(ds, record_to)
        options = tf.data.Options()
        options.deterministic = True
        # the sharding is done above, by hand: the strategy must not shard again
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, global_batch_size: int) -> tf.data.Dataset:
        """Every example once, in order, as (x, y, 1.0), then weight-0 copies of the first one up
        to full batches (see data.make_eval_dataset for why): ceil(count / batch) batches, also if
        a file fails to decode (more padding then; the figures are the decoded examples')."""
        import tensorflow as tf

        decode = self._decoder()
        real = self._ordered_stream().map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        real = real.ignore_errors()
        ones = real.map(lambda x, y, _i: (x, y, tf.constant(1.0)))
        filler = real.take(1).map(lambda x, y, _i: (x, y, tf.constant(0.0))).repeat()
        batches = -(-len(self) // global_batch_size)
        ds = ones.concatenate(filler).take(batches * global_batch_size)
        ds = ds.batch(global_batch_size, drop_remainder=True)
        options = tf.data.Options()
        options.deterministic = True
        # every worker builds the same padded stream and keeps its part of every batch
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    # -- the parts ------------------------------------------------------------------------------

    def _my_files(self) -> np.ndarray:
        positions = np.arange(len(self.files))
        return positions[self.worker_index :: self.workers] if self.sharded_by_file else positions

    def _examples_stream(self, seed: int) -> tf.data.Dataset:
        import tensorflow as tf

        if self.kind == "images":
            mine = self._my_files()
            paths, labels, ids = (
                tf.constant(a[mine]) for a in (np.asarray(self.files), self.labels, self.ids)
            )
            ds = tf.data.Dataset.range(len(mine)).shuffle(len(mine), seed=seed, reshuffle_each_iteration=True)
            return ds.repeat().map(lambda i: ((paths[i], labels[i]), ids[i]))
        files = self._file_table(self._my_files())
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.shuffle(len(files[0]), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            self._records_of,
            cycle_length=min(8, len(files[0])),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        # repeated after the record shuffle: an epoch is every record once, as in memory
        return ds.shuffle(_RECORD_SHUFFLE, seed=seed + 1, reshuffle_each_iteration=True).repeat()

    def _ordered_stream(self) -> tf.data.Dataset:
        import tensorflow as tf

        if self.kind == "images":
            table = (np.asarray(self.files), self.labels, self.ids)
            return tf.data.Dataset.from_tensor_slices(table).map(lambda p, y, i: ((p, y), i))
        files = self._file_table(np.arange(len(self.files)))
        return tf.data.Dataset.from_tensor_slices(files).flat_map(self._records_of)

    def _file_table(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.concatenate([[0], np.cumsum(self.record_counts)])[:-1].astype(np.int64)
        return np.asarray(self.files)[positions], offsets[positions]

    def _records_of(self, path: Any, offset: Any) -> tf.data.Dataset:
        """A file's records as (record, id), the ids this source does not keep left out."""
        import tensorflow as tf

        total = int(sum(self.record_counts))
        keep = np.zeros(total, bool)
        keep[self.ids] = True
        kept = tf.constant(keep)
        ds = tf.data.TFRecordDataset(path).enumerate().map(lambda j, rec: (rec, offset + j))
        if len(self) < total:  # a --validation-split: each side keeps its ids
            ds = ds.filter(lambda _rec, i: tf.gather(kept, i))
        return ds

    def _decoder(self) -> Any:
        """(element, id) -> (image in [0, 1] of image_size, label, id)."""
        import tensorflow as tf

        size = [self.image_size, self.image_size]

        def image(encoded: tf.Tensor) -> tf.Tensor:
            pixels = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return tf.image.resize(tf.cast(pixels, tf.float32) / 255.0, size)

        if self.kind == "images":
            return lambda element, i: (image(tf.io.read_file(element[0])), element[1], i)
        spec = {
            tfrecord.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
            tfrecord.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        }

        def parse(record: tf.Tensor, i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            parsed = tf.io.parse_single_example(record, spec)
            return image(parsed[tfrecord.IMAGE_KEY]), tf.cast(parsed[tfrecord.LABEL_KEY], tf.int32), i

        return parse


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Build pipelines without the test-only recording of batches (GPUDIAG_SEEN_IDS): for the
    measurements after a run (the bottleneck line, the workers' speed), whose batches are not the
    run's and would read as trained twice."""
    saved = os.environ.pop(SEEN_IDS_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[SEEN_IDS_ENV] = saved


def _record_ids(ds: tf.data.Dataset, folder: str) -> tf.data.Dataset:
    """Tests only (GPUDIAG_SEEN_IDS): append "batch id id ..." for each batch built to a file of
    this process's, for the proof that workers see disjoint examples. Batches built ahead
    (prefetch) are written too: a test reads the batch numbers it trained. On W workers a batch
    here is W steps' worth (each step takes global/W of this worker's stream)."""
    import tensorflow as tf

    out = Path(folder) / f"ids-{os.getpid()}.txt"

    def write(batch: Any, ids: Any) -> np.int64:
        with out.open("a") as f:
            f.write(f"{int(batch)} {' '.join(str(int(i)) for i in ids.numpy())}\n")
        return np.int64(0)

    def record(batch: tf.Tensor, element: Any) -> Any:
        x, y, ids = element
        written = tf.py_function(write, [batch, ids], tf.int64)
        written.set_shape([])  # a py_function's result has no known shape: y keeps its own
        # depend on the write, so that it is not pruned from the map function
        return x, y + tf.cast(written, y.dtype)

    return ds.enumerate().map(record)


def list_image_folder(folder: Path, flag: str, image_size: int) -> Streamed:
    """One listing of the class folders; files whose first bytes are no image format's are
    skipped and counted (the only failures counted: see the README)."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise StreamError(f"{flag} {folder}: an image folder needs one subfolder per class (at least 2)")
    files: list[str] = []
    labels: list[int] = []
    bad: list[str] = []
    for label, name in enumerate(classes):
        for entry in sorted(os.scandir(folder / name), key=lambda e: e.name):
            if not entry.is_file() or Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if _looks_like_image(entry.path):
                files.append(entry.path)
                labels.append(label)
            else:
                bad.append(entry.name)
    if not files:
        raise StreamError(
            f"{flag} {folder}: no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders"
        )
    detail = ""
    if bad:
        detail = f"skipped {len(bad)} of {len(files) + len(bad)} files that are not images (e.g. {bad[0]})"
    return Streamed(
        "images",
        tuple(files),
        np.asarray(labels, np.int32),
        np.arange(len(files), dtype=np.int64),
        (),
        len(classes),
        f"image folder {folder}",
        image_size,
        len(bad),
        detail,
        tuple(classes),
    )


def _looks_like_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return any(head.startswith(sig) for sig in _SIGNATURES)


def open_tfrecords(path: str, flag: str, image_size: int) -> Streamed:
    """The files, their keys (first record) and counts (one pass, cached)."""
    files = tfrecord.list_files(path, flag)
    if not files:
        raise StreamError(f"{flag} {path}: no TFRecord files")
    tfrecord.check_keys(files, flag, path)
    counts = tfrecord.count_files(files)
    total = sum(c.records for c in counts)
    classes = max(c.max_label for c in counts) + 1
    negative = sum(c.negative_labels for c in counts)
    if negative:
        raise StreamError(f"{flag} {path}: {negative} of {total} records have a label below 0")
    if classes < 2:
        raise StreamError(f"{flag} {path}: need labels of at least 2 classes, found {max(classes, 0)}")
    return Streamed(
        "tfrecord",
        files,
        np.zeros(0, np.int32),
        np.arange(total, dtype=np.int64),
        tuple(c.records for c in counts),
        classes,
        f"TFRecords {path} ({len(files)} files)",
        image_size,
    )


def this_workers_share(examples: Any, cluster: ClusterTask | None) -> Any:
    """A streamed source as this worker of `cluster` reads it: its own files, or its share of the
    examples (`sharding_note` says which); anything else, or on one machine, as it is."""
    if cluster is None or not isinstance(examples, Streamed):
        return examples
    position = 0  # this worker's place in TensorFlow's order (chief first, then workers)
    for job, addresses in cluster.jobs.items():
        if job == cluster.task_type:
            position += cluster.task_index
            break
        position += len(addresses)
    return dataclasses.replace(examples, workers=cluster.num_workers, worker_index=position)
