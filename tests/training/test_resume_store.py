"""The checkpoint store without TensorFlow: atomic pairs of files, the newest good one found again,
damaged ones set aside with a warning, and a directory of another run refused before TF starts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.__main__ import main
from training.checkpoints.store import FORMAT, CheckpointStore, Manifest

FINGERPRINT = {"model": "cnn", "global_batch_size": 128, "seed": 42}


def arrays(step: int) -> list[np.ndarray]:
    return [np.full((3, 4), step, np.float32), np.arange(5, dtype=np.float32) * step, np.array(step)]


def save(store: CheckpointStore, step: int, steps_per_epoch: int = 4) -> None:
    manifest = Manifest(step, step // steps_per_epoch, step % steps_per_epoch, dict(FINGERPRINT))
    store.save(manifest, ["a", "b", "iterations"], arrays(step))


def restore(store: CheckpointStore) -> tuple[int | None, list[str]]:
    warnings: list[str] = []
    restored = store.restore_latest(warnings.append)
    if restored is None:
        return None, warnings
    step = restored.manifest.global_step
    for got, want in zip(restored.arrays, arrays(step), strict=True):
        np.testing.assert_array_equal(got, want)
    return step, warnings


def test_round_trip_keeps_the_newest_three(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in (2, 4, 6, 8, 10):
        save(store, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"ckpt-{s:08d}.{ext}" for s in (6, 8, 10) for ext in ("json", "npz")
    ]
    assert restore(store) == (10, [])
    manifest = json.loads((tmp_path / "ckpt-00000010.json").read_text())
    assert manifest["format"] == FORMAT and manifest["fingerprint"] == FINGERPRINT
    assert manifest["variables"][0] == ["a", [3, 4]] and len(manifest["sha256"]) == 64


def test_arrays_without_a_manifest_are_never_loaded(tmp_path):
    """A kill between the npz's rename and the manifest's leaves an orphan: the older one is used."""
    store = CheckpointStore(tmp_path)
    save(store, 4)
    save(store, 8)
    (tmp_path / "ckpt-00000008.json").unlink()
    (tmp_path / ".ckpt-00000012.npz.tmp").write_bytes(b"PK\x03\x04half")  # a temp file mid-write
    assert restore(store) == (4, [])
    save(store, 6)
    assert not (tmp_path / "ckpt-00000008.npz").exists()  # orphan removed
    assert not (tmp_path / ".ckpt-00000012.npz.tmp").exists()  # stale temp file removed


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: _truncate(d / "ckpt-00000008.npz"), "truncated?"),
        (lambda d: _flip_byte(d / "ckpt-00000008.npz"), "does not match its checksum"),
        (lambda d: (d / "ckpt-00000008.json").write_text('{"format": "gpudiag-chec'), "not JSON"),
        (lambda d: (d / "ckpt-00000008.json").write_text("[]"), "not a gpudiag-checkpoint/1 manifest"),
        (lambda d: _edit_manifest(d, global_step=-3), "negative position"),
        (lambda d: _edit_manifest(d, variables="x"), "bad field"),
        (lambda d: (d / "ckpt-00000008.npz").unlink(), "cannot read ckpt-00000008.npz"),
    ],
)
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, reason):
    store = CheckpointStore(tmp_path)
    save(store, 4)
    save(store, 8)
    damage(tmp_path)
    step, warnings = restore(store)
    assert step == 4
    assert len(warnings) == 1 and reason in warnings[0] and "using" in warnings[0]
    assert (tmp_path / "ckpt-00000008.json.corrupt").exists()
    assert restore(store) == (4, [])  # set aside: no warning the second time


def test_nothing_usable_starts_fresh_with_a_warning(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 4)
    _truncate(tmp_path / "ckpt-00000004.npz")
    step, warnings = restore(store)
    assert step is None
    assert "starting from scratch" in warnings[-1]
    assert restore(CheckpointStore(tmp_path / "missing")) == (None, [])


def test_dry_run_says_what_it_would_resume(capsys, tmp_path):
    store = CheckpointStore(tmp_path)
    manifest = Manifest(
        40,
        2,
        0,
        {
            "model": "cnn",
            "optimizer": "sgd",
            "mixed_precision": False,
            "global_batch_size": 128,
            "seed": 42,
            "data": "synthetic",
            "examples": 4096,
            "steps_per_epoch": 20,
        },
    )
    store.save(manifest, ["a"], [np.zeros(2, np.float32)])
    args = ["--dry-run", "--checkpoint-dir", str(tmp_path), "--steps-per-epoch", "20"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"will resume from {tmp_path}/ckpt-00000040 (after epoch 2, global step 40)" in out
    assert main([*args, "--global-batch-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "holds a different run (global_batch_size 128 there, 64 here)" in err
    assert "use another --checkpoint-dir" in err
    # --auto-batch-size resumes with the checkpoint's batch: the same command works
    assert main([*args, "--global-batch-size", "64", "--auto-batch-size"]) == 0
    assert "global batch 128" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--save-freq", "often"], "--save-freq must be 'epoch' or a positive number of steps"),
        (["--save-freq", "0"], "--save-freq must be 'epoch'"),
        (["--checkpoint-dir", "{file}"], "exists and is not a folder"),
        (["--checkpoint-dir", "{file}/sub"], "is not a folder"),
    ],
)
def test_bad_checkpoint_flags_exit_2(capsys, tmp_path, args, message):
    file = tmp_path / "f"
    file.write_text("x")
    assert main(["--dry-run", *(a.format(file=file) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(directory, **changes):
    path = directory / "ckpt-00000008.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
