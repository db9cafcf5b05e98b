"""Numbered, self-checking training checkpoints: written atomically, the newest good one found again.

Layout of --checkpoint-dir DIR, one pair of files per checkpoint:

    ckpt-00000120.npz    model weights and optimizer variables, in order (arrays v0, v1, ...)
    ckpt-00000120.json   the manifest: where training stands, the run's fingerprint, the npz's
                         size and sha256, each variable's name and shape

Both files go through a temporary file and a rename, the npz first and the manifest last, so a
kill at any moment leaves either a complete checkpoint or one without a manifest, which is never
loaded. A checkpoint whose npz does not match its manifest (truncated, corrupted, edited) is set
aside as *.corrupt and the previous one is used, with a warning; with none left, training starts
fresh. The newest KEEP checkpoints are kept.

NumPy only: `peek()` runs before TensorFlow is imported, so a mismatched --checkpoint-dir costs a
fraction of a second and exits 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.files import replacing, write_text
from training.inputs import user_model
from training.loop.faults import Faults
from training.settings.config import TrainConfig

FORMAT = "gpudiag-checkpoint/1"
KEEP = 3
_NAME = re.compile(r"^ckpt-(\d{8,})\.json$")


class CheckpointError(UserError):
    """A checkpoint directory that cannot be used for this run (a user error: one line, exit 2)."""


class CorruptCheckpoint(Exception):
    """One checkpoint is unreadable; the caller falls back to an older one."""


@dataclass
class Manifest:
    """Where training stands in a checkpoint, and what run it belongs to."""

    global_step: int  # steps trained in all, over all epochs
    epoch: int  # epochs completed
    step_in_epoch: int  # steps done in the unfinished epoch (0 at an epoch boundary)
    fingerprint: dict[str, Any]
    sha256: str = ""
    size_bytes: int = 0
    variables: list[tuple[str, list[int]]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    # running sums of the unfinished epoch, so its logged loss and accuracy continue where they were
    loss_sum: float = 0.0
    correct_sum: float = 0.0
    seen: int = 0
    replicas: int = 1
    stopped_early: bool = False
    created: float = 0.0
    format: str = FORMAT

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and type-check; anything wrong is a CorruptCheckpoint."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"manifest is not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptCheckpoint(f"manifest is not a {FORMAT} manifest")
        try:
            manifest = cls(
                global_step=_typed(data, "global_step", int),
                epoch=_typed(data, "epoch", int),
                step_in_epoch=_typed(data, "step_in_epoch", int),
                fingerprint=_typed(data, "fingerprint", dict),
                sha256=_typed(data, "sha256", str),
                size_bytes=_typed(data, "size_bytes", int),
                variables=[(str(n), [int(d) for d in s]) for n, s in _typed(data, "variables", list)],
                history=[dict(h) for h in _typed(data, "history", list)],
                loss_sum=float(_typed(data, "loss_sum", (int, float))),
                correct_sum=float(_typed(data, "correct_sum", (int, float))),
                seen=_typed(data, "seen", int),
                replicas=_typed(data, "replicas", int),
                stopped_early=_typed(data, "stopped_early", bool),
                created=float(_typed(data, "created", (int, float))),
            )
        except (TypeError, ValueError) as exc:
            raise CorruptCheckpoint(f"manifest has a bad field ({exc})") from None
        if min(manifest.global_step, manifest.epoch, manifest.step_in_epoch, manifest.seen) < 0:
            raise CorruptCheckpoint("manifest has a negative position")
        return manifest

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def where(self) -> str:
        at = (
            f"after epoch {self.epoch}"
            if not self.step_in_epoch
            else (f"epoch {self.epoch + 1}, step {self.step_in_epoch}")
        )
        return f"{at}, global step {self.global_step}"


def _typed(data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds in (int, (int, float))):
        raise TypeError(f"{key}={value!r}")
    return value


@dataclass
class Checkpoint:
    """A checkpoint on disk whose manifest parsed; `load()` checks and reads its arrays."""

    manifest_path: Path
    manifest: Manifest

    @property
    def npz_path(self) -> Path:
        return self.manifest_path.with_suffix(".npz")

    @property
    def name(self) -> str:
        return str(self.manifest_path.with_suffix(""))

    def load(self) -> list[np.ndarray]:
        """The arrays, after checking size, sha256, count and shapes against the manifest."""
        m = self.manifest
        try:
            blob = self.npz_path.read_bytes()
        except OSError as exc:
            raise CorruptCheckpoint(f"cannot read {self.npz_path.name}: {exc.strerror or exc}") from None
        if len(blob) != m.size_bytes:
            raise CorruptCheckpoint(
                f"{self.npz_path.name} has {len(blob)} bytes, the manifest says {m.size_bytes} (truncated?)"
            )
        if hashlib.sha256(blob).hexdigest() != m.sha256:
            raise CorruptCheckpoint(f"{self.npz_path.name} does not match its checksum (corrupted)")
        try:
            with np.load(self.npz_path, allow_pickle=False) as archive:
                arrays = [archive[f"v{i}"] for i in range(len(m.variables))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptCheckpoint(f"{self.npz_path.name} is not readable ({exc})") from None
        for (var_name, shape), array in zip(m.variables, arrays, strict=True):
            if list(array.shape) != shape:
                raise CorruptCheckpoint(f"{var_name} has shape {array.shape}, the manifest says {shape}")
        return arrays


@dataclass
class Restored:
    checkpoint: Checkpoint
    arrays: list[np.ndarray]

    @property
    def manifest(self) -> Manifest:
        return self.checkpoint.manifest


def describe_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """None when the fingerprints agree; otherwise which settings differ, saved vs now."""
    keys = sorted(set(saved) | set(current))

    def value(settings: Mapping[str, Any], key: str) -> str:
        return repr(settings[key]) if key in settings else "not set"

    diffs = [
        f"{k} {value(saved, k)} there, {value(current, k)} here"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    return "; ".join(diffs) or None


class CheckpointStore:
    """The checkpoints of one run in one directory."""

    def __init__(self, directory: str | Path, keep: int = KEEP, faults: Faults | None = None) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.faults = faults

    # -- finding -------------------------------------------------------------------------------

    def manifests(self) -> list[Path]:
        """Manifest files, newest (highest global step) first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)  # type: ignore[union-attr]

    def _read(self, path: Path) -> Checkpoint:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise CorruptCheckpoint(f"cannot read the manifest: {reason}") from None
        return Checkpoint(path, Manifest.from_json(text))

    def peek(self) -> Checkpoint | None:
        """The newest checkpoint whose manifest parses, without reading its arrays (no TensorFlow)."""
        for path in self.manifests():
            with contextlib.suppress(CorruptCheckpoint):
                return self._read(path)
        return None

    def restore_latest(self, warn: Callable[[str], None]) -> Restored | None:
        """The newest checkpoint that checks out. Bad ones are set aside as *.corrupt, with a warning."""
        bad: list[str] = []
        for path in self.manifests():
            try:
                checkpoint = self._read(path)
                restored = Restored(checkpoint, checkpoint.load())
            except CorruptCheckpoint as exc:
                bad.append(f"{path.with_suffix('')}: {exc}")
                self._set_aside(path)
                continue
            for line in bad:
                warn(f"checkpoint {line}: set aside as *.corrupt, using {checkpoint.name} instead")
            return restored
        for line in bad:
            warn(f"checkpoint {line}: set aside as *.corrupt")
        if bad:
            warn(f"no usable checkpoint in {self.directory}: starting from scratch")
        return None

    def _set_aside(self, manifest_path: Path) -> None:
        for path in (manifest_path, manifest_path.with_suffix(".npz")):
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".corrupt"))

    # -- writing -------------------------------------------------------------------------------

    def save(self, manifest: Manifest, names: Sequence[str], arrays: Sequence[np.ndarray]) -> Checkpoint:
        """Write the arrays, then the manifest (each atomically), then drop old checkpoints."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = f"ckpt-{manifest.global_step:08d}"
        npz_path = self.directory / f"{stem}.npz"
        manifest_path = self.directory / f"{stem}.json"
        # a manifest left from an earlier attempt at this step must not vouch for the new npz
        manifest_path.unlink(missing_ok=True)
        with replacing(npz_path, suffix=".npz.tmp") as tmp:
            with open(tmp, "wb") as handle:
                payload: dict[str, Any] = {f"v{i}": np.asarray(a) for i, a in enumerate(arrays)}
                np.savez(handle, **payload)
                handle.flush()
                if self.faults is not None:
                    self.faults.during_checkpoint_write(tmp)
            digest, size = _sha256(tmp)
        manifest.sha256, manifest.size_bytes = digest, size
        manifest.variables = [(n, [int(d) for d in np.shape(a)]) for n, a in zip(names, arrays, strict=True)]
        manifest.created = time.time()
        write_text(manifest_path, manifest.to_json())
        self.prune()
        return Checkpoint(manifest_path, manifest)

    def prune(self) -> None:
        """Keep the newest `keep` checkpoints; remove older ones, orphaned arrays and temp files."""
        manifests = self.manifests()
        for old in manifests[self.keep :]:
            # manifest first: an interrupted removal leaves an orphan npz, which is never loaded
            old.unlink(missing_ok=True)
            old.with_suffix(".npz").unlink(missing_ok=True)
        kept = {p.with_suffix(".npz").name for p in manifests[: self.keep]}
        for path in self.directory.iterdir():
            orphan = path.name.startswith("ckpt-") and path.suffix == ".npz" and path.name not in kept
            stale_tmp = path.name.startswith(".ckpt-") and path.name.endswith(".tmp")
            if orphan or stale_tmp:
                path.unlink(missing_ok=True)


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fingerprint(config: TrainConfig, num_examples: int, steps_per_epoch: int) -> dict[str, Any]:
    """The settings a checkpoint can only be resumed under: they fix the weights' shapes, the
    optimizer's variables, which batch comes next and how the rate moves from step to step. The
    base learning rate and the number of epochs are left out on purpose: lowering the rate after a
    NaN, or training longer, are resumes too. So is --validation-data: it changes what is reported,
    not what is trained.

    `num_examples` counts the training examples (after --validation-split). The settings added
    since the first checkpoints (split, scaling, warm-up) are recorded only where they are used,
    so that a checkpoint written without them still resumes."""
    found: dict[str, Any] = {
        "model": config.model,
        "optimizer": config.optimizer,
        "mixed_precision": config.mixed_precision,
        "global_batch_size": config.global_batch_size,
        "seed": config.seed,
        "data": config.data or "synthetic",
        "examples": int(num_examples),
        "steps_per_epoch": int(steps_per_epoch),
    }
    if config.validation_split is not None:
        found["validation_split"] = config.validation_split
    if config.scale_learning_rate != "none":
        found["scale_learning_rate"] = config.scale_learning_rate
        found["reference_batch_size"] = config.reference_batch_size
    if config.warmup_epochs > 0:
        found["warmup_epochs"] = config.warmup_epochs
    if config.accumulate_steps != 1:  # the same update in other float rounding: resumed under one K
        found["accumulate_steps"] = config.accumulate_steps
    # a user's model: its source file, or a saved model's architecture (user_model.model_digest)
    digest = user_model.model_digest(config.model)
    if digest is not None:
        found["model_sha256"] = digest
    return found
