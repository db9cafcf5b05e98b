"""The suite's one way in and out of files: atomic writes for everything it saves (snapshots,
summaries, reports, models, checkpoints) and JSON reading with one-line errors for everything it is
handed (snapshots, benchmark results).

An atomic write goes to a temporary file beside the target, is flushed to disk, renamed over the
target, then the folder is flushed: a kill at any moment leaves either the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, it becomes `path`.

    Writers that need a file name (np.savez, model.save) write to the yielded path. `suffix` lets
    them see the extension they expect (".keras", ".npz").
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
    tmp = Path(name)
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(folder)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def fsync_folder(folder: str | Path) -> None:
    """Make renames in `folder` durable; best effort (not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path: str | Path, error: type[Exception], kind: str) -> Any:
    """Parse `path`; missing, a folder, unreadable or not JSON raises `error("<path>: ...")`."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a directory, not {kind}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{where}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
