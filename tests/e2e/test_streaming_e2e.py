"""Streamed data in real training processes (CPU replicas, MirroredStrategy and two local workers
under MultiWorkerMirroredStrategy): TFRecords written as TensorFlow's ImageNet script writes them
(tests/fixtures/tfrecord) trained, validated and evaluated; an image folder several times larger
decoded than the process's peak memory, with an undecodable file; workers that see disjoint
examples; a kill mid-epoch resumed to the same weights. The runs of a test go side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import FIXTURES, child_env, finish, start_child

from training.checkpoints.store import CheckpointStore

pytestmark = pytest.mark.slow

SHARDS = str(FIXTURES / "tfrecord" / "train-*")
ONE_SHARD = str(FIXTURES / "tfrecord" / "train-00000-of-00002")
# the trainer in this process, its peak resident memory printed at the end
PEAK_RSS = (
    "import resource, sys; from training.__main__ import main; code = main(sys.argv[1:]); "
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
)


def start(args: list[str], fault: str = "", **env: str) -> subprocess.Popen[str]:
    return start_child("-m", "training", *args, env=child_env(GPUDIAG_FAULT=fault, **env))


def image_folder(root: Path, per_class: int, size: int) -> Path:
    """Two classes told apart by brightness; smooth images, so PNG writes them fast and small."""
    ramp = np.linspace(0, 60, size, dtype=np.float32)[None, :, None]
    for label, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.broadcast_to(ramp + 120 * label + i % 50, (size, size, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:04d}.png", compress_level=1)
    return root


def test_tfrecords_and_a_large_image_folder_train_validate_and_evaluate(tmp_path):
    """TFRecords: train with a held-out part, then evaluate the saved model on the shards. Image
    folder: 800 PNGs of 768x768 (5.3 GiB as float32) train at --image-size 16 while the process,
    TensorFlow's own ~0.6-0.9 GiB included, peaks at under a third of that; its undecodable file
    is skipped and counted."""
    folder = image_folder(tmp_path / "images", per_class=400, size=768)
    (folder / "dark" / "broken.png").write_bytes(b"\x00 not a png")
    decoded_bytes = 800 * 768 * 768 * 3 * 4
    common = ["--cpu-replicas", "2", "--model", "mlp", "--seed", "3", "-q"]
    cache = {"GPUDIAG_CACHE_DIR": str(tmp_path / "cache")}
    model = tmp_path / "model.keras"
    records = start(
        [*common, "--data", SHARDS, "--image-size", "16", "--epochs", "2", "--global-batch-size", "4",
         "--validation-split", "0.25", "--save-model", str(model),
         "--summary-json", str(tmp_path / "records.json")], **cache,
    )  # fmt: skip
    images = start_child(
        "-c", PEAK_RSS, *common, "--data", str(folder), "--image-size", "16", "--epochs", "1",
        "--global-batch-size", "32", "--summary-json", str(tmp_path / "images.json"),
        env=child_env(**cache),
    )  # fmt: skip
    code, _out, err = finish(records)
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "records.json").read_text())
    assert summary["examples"] == 12 and summary["validation_examples"] == 4
    evaluate = start(
        ["evaluate", str(model), "--cpu-replicas", "2", "--data", SHARDS, "--image-size", "16",
         "--global-batch-size", "6", "--summary-json", str(tmp_path / "eval.json")], **cache,
    )  # fmt: skip
    code, out, err = finish(images)
    assert code == 0, err[-3000:]
    assert "skipped 1 of 801 files that are not images (e.g. broken.png)" in err
    peak = int(out.split("PEAK_RSS_KIB")[1].split()[0]) * 1024
    assert 3 * peak < decoded_bytes, (
        f"peak {peak / 2**30:.2f} GiB for {decoded_bytes / 2**30:.2f} GiB decoded"
    )
    summary = json.loads((tmp_path / "images.json").read_text())
    assert summary["examples"] == 800 and summary["examples_dropped"] == 1
    code, _out, err = finish(evaluate)
    assert code == 0, err[-3000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["examples"] == 16 and result["batches"] == 3  # 16 in batches of 6: 2 weight-0 copies
    assert 0.0 <= result["accuracy"] <= 1.0 and np.isfinite(result["loss"])


def _seen(folder: Path, steps: int) -> list[list[int]]:
    """Each worker's example ids of the batches it trained (built-ahead batches left out): a
    batch there holds a global batch of the worker's stream, 2 steps' worth on 2 workers."""
    steps //= 2
    workers = []
    for path in sorted(folder.glob("ids-*.txt")):
        ids: list[int] = []
        for line in path.read_text().splitlines():
            batch, *values = (int(v) for v in line.split())
            if batch < steps:
                ids.extend(values)
        workers.append(ids)
    return workers


def test_two_workers_see_disjoint_examples_by_file_or_by_data(tmp_path):
    """2 shards: one each (file sharding); 1 shard: each keeps every other example, with one line."""
    runs = {"files": SHARDS, "data": ONE_SHARD}
    steps = {"files": 4, "data": 2}  # one epoch: 16 and 8 examples in global batches of 4
    procs = {}
    for name, data in runs.items():
        seen = tmp_path / name
        seen.mkdir()
        procs[name] = start(
            ["--local-workers", "2", "--model", "mlp", "--data", data, "--image-size", "8", "--epochs", "1",
             "--steps-per-epoch", str(steps[name]), "--global-batch-size", "4", "-q",
             "--collective-timeout", "60"],
            GPUDIAG_SEEN_IDS=str(seen), GPUDIAG_CACHE_DIR=str(tmp_path / "cache"),
        )  # fmt: skip
    for name, proc in procs.items():
        code, _out, err = finish(proc)
        assert code == 0, err[-3000:]
        workers = _seen(tmp_path / name, steps[name])
        assert len(workers) == 2
        a, b = (set(ids) for ids in workers)
        total = 16 if name == "files" else 8
        assert not a & b, f"{name}: both workers trained on {sorted(a & b)}"
        assert a | b == set(range(total)) and len(workers[0]) + len(workers[1]) == total
        warned = [line for line in err.splitlines() if "file(s) for 2 workers" in line]
        assert len(warned) == (1 if name == "data" else 0), err[-2000:]


def test_a_kill_mid_epoch_on_a_streamed_image_folder_resumes_to_the_same_weights(tmp_path):
    folder = image_folder(tmp_path / "images", per_class=24, size=20)

    def args(directory: Path) -> list[str]:
        return [
            "--cpu-replicas", "2", "--model", "mlp", "--data", str(folder), "--image-size", "8",
            "--epochs", "2", "--global-batch-size", "8", "--seed", "5", "-q",
            "--checkpoint-dir", str(directory / "ckpt"), "--save-freq", "2",
        ]  # fmt: skip

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    runs = [start(args(whole)), start(args(killed), "kill_after_step=7")]  # 6 steps per epoch
    code, _out, err = finish(runs[0])
    assert code == 0, err[-3000:]
    code, _out, err = finish(runs[1])
    assert code != 0 and CheckpointStore(killed / "ckpt").peek() is not None, err[-3000:]
    code, _out, err = finish(start(args(killed)))
    assert code == 0, err[-3000:]
    final = "ckpt-00000012.npz"
    with np.load(whole / "ckpt" / final) as a, np.load(killed / "ckpt" / final) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert np.array_equal(a[key], b[key]), f"weights {key} differ from the uninterrupted run"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
