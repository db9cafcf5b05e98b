"""TFRecord files of `tf.train.Example`s, read without TensorFlow: which files `--data` names, the
feature keys of the first record, and the record count and largest label of each file (one pass,
cached by the files' names, sizes and mtimes).

The keys are those of TensorFlow's ImageNet conversion scripts (tensorflow/models
research/inception/inception/data/build_image_data.py, `_convert_to_example`), which
tf_cnn_benchmarks and tensorflow/models read: `image/encoded` (JPEG or PNG bytes) and
`image/class/label` (int64). The record framing (length, masked CRC, data, masked CRC) and the
protobuf wire format are read by hand, so that all this happens before TensorFlow is imported.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
CACHE_ENV = "GPUDIAG_CACHE_DIR"
_LENGTH_AND_CRC = 12  # uint64 length, uint32 masked CRC of the length
_DATA_CRC = 4


class TFRecordError(UserError):
    """TFRecord data that cannot be used as given (one line, exit 2)."""


@dataclass(frozen=True)
class FileCount:
    records: int
    max_label: int  # -1: no labels
    negative_labels: int  # records whose label is below 0 (dropped)


def looks_like_tfrecords(path: str) -> bool:
    """A glob, a .tfrecord file, or a folder whose files are TFRecords (not class folders)."""
    if glob.has_magic(path):
        return True
    p = Path(path)
    if p.is_file():
        return p.suffix != ".npz" and _is_tfrecord(p)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
        return bool(files) and not any(f.is_dir() for f in p.iterdir()) and _is_tfrecord(sorted(files)[0])
    return False


def _is_tfrecord(path: Path) -> bool:
    """Whether the file starts like a TFRecord: a plausible first length fitting the file."""
    try:
        with path.open("rb") as f:
            head = f.read(_LENGTH_AND_CRC)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < _LENGTH_AND_CRC:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return _LENGTH_AND_CRC + length + _DATA_CRC <= size


def list_files(path: str, flag: str) -> tuple[str, ...]:
    """The TFRecord files named by a glob or a folder, sorted (every worker lists the same)."""
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
        if not files:
            raise TFRecordError(f"{flag} {path}: no files match")
        return tuple(files)
    p = Path(path)
    if p.is_dir():
        return tuple(sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith(".")))
    return (str(p),)


def records(path: str) -> list[bytes]:
    """Every record of one file (tests and the key check read a few; the count streams)."""
    return list(_iter_records(path))


def _iter_records(path: str, limit: int | None = None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        read = 0
        while limit is None or read < limit:
            head = f.read(_LENGTH_AND_CRC)
            if not head:
                return
            if len(head) < _LENGTH_AND_CRC:
                raise TFRecordError(f"{path}: truncated TFRecord (a record's header is cut short)")
            (length,) = struct.unpack("<Q", head[:8])
            body = f.read(length + _DATA_CRC)
            if len(body) < length + _DATA_CRC:
                raise TFRecordError(f"{path}: truncated TFRecord (record {read} is cut short)")
            read += 1
            yield body[:length]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield number, wire, buf[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def features(record: bytes) -> dict[str, bytes]:
    """A serialized tf.train.Example's features: key -> its serialized tf.train.Feature."""
    found: dict[str, bytes] = {}
    for number, _wire, features_msg in _fields(record):
        if number != 1:  # Example.features
            continue
        for entry_number, _w, entry in _fields(features_msg):
            if entry_number != 1:  # Features.feature (a map entry)
                continue
            key, value = "", b""
            for n, _w2, v in _fields(entry):
                if n == 1:
                    key = v.decode("utf-8", "replace")
                elif n == 2:
                    value = v
            found[key] = value
    return found


def int64_values(feature: bytes) -> list[int]:
    """The values of a serialized Feature's int64_list (packed or not), as signed integers."""
    values: list[int] = []
    for number, _wire, int64_list in _fields(feature):
        if number != 3:  # Feature.int64_list
            continue
        for n, wire, v in _fields(int64_list):
            if n != 1:
                continue
            raw = [v] if wire == 0 else _packed(v)
            values.extend(x - (1 << 64) if x >= 1 << 63 else x for x in raw)
    return values


def _packed(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        out.append(value)
    return out


def check_keys(files: tuple[str, ...], flag: str, shown: str) -> None:
    """The first record of the first file must hold the image and label keys; else one line."""
    try:
        first = next(iter(_iter_records(files[0], limit=1)), None)
        keys = sorted(features(first)) if first is not None else []
    except (OSError, ValueError, IndexError) as exc:
        raise TFRecordError(
            f"{flag} {shown}: {files[0]} is not a TFRecord of tf.train.Example ({exc})"
        ) from None
    if first is None:
        raise TFRecordError(f"{flag} {shown}: {files[0]} holds no records")
    missing = [k for k in (IMAGE_KEY, LABEL_KEY) if k not in keys]
    if missing:
        raise TFRecordError(
            f"{flag} {shown}: records need features {IMAGE_KEY!r} and {LABEL_KEY!r} (the ImageNet "
            f"conversion scripts' keys); {files[0]} has {', '.join(keys) or 'none'}"
        )


def count_file(path: str) -> FileCount:
    """One pass over a file: its records, the largest label and the negative labels."""
    count, max_label, negative = 0, -1, 0
    try:
        for record in _iter_records(path):
            count += 1
            labels = int64_values(features(record).get(LABEL_KEY, b""))
            if labels:
                max_label = max(max_label, labels[0])
                negative += labels[0] < 0
    except (ValueError, IndexError) as exc:
        raise TFRecordError(f"{path}: record {count} is not a tf.train.Example ({exc})") from None
    return FileCount(count, max_label, negative)


def cache_path() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpudiag"
    )
    return Path(base) / "tfrecord_counts.json"


def count_files(files: tuple[str, ...]) -> list[FileCount]:
    """Each file's count, from the cache where its name, size and mtime are unchanged; counted
    (one pass) and cached otherwise. A cache that cannot be read or written only costs a pass."""
    cache_file = cache_path()
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    counts, changed = [], False
    for name in files:
        stat = os.stat(name)
        key = f"{os.path.abspath(name)}|{stat.st_size}|{stat.st_mtime_ns}"
        hit = cache.get(key)
        if isinstance(hit, list) and len(hit) == 3:
            counts.append(FileCount(*(int(v) for v in hit)))
            continue
        found = count_file(name)
        cache[key] = [found.records, found.max_label, found.negative_labels]
        counts.append(found)
        changed = True
    if changed:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only home: the next run counts again
    return counts
