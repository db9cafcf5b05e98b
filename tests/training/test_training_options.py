"""Every trainer option trains for real at least once: a few steps each on 2 CPU replicas, four
processes started together (each costs a TensorFlow start). A flag that broke training, or that
silently did nothing, fails here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from support import start_child

BASE = ["--cpu-replicas", "2", "--epochs", "1", "--steps-per-epoch", "3", "-q"]


def image_folder(root, size=(24, 24), per_class=16):
    for value, name in ((40, "dark"), (210, "light")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((*size, 3), value + i, np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_each_option_trains(tmp_path):
    images = image_folder(tmp_path / "images")
    runs = {
        "adam-mixed-hierarchical-logs": [
            "--model", "mlp", "--optimizer", "adam", "--mixed-precision",
            "--cross-device-ops", "hierarchical", "--global-batch-size", "32",
            "--log-dir", str(tmp_path / "tb"),
        ],
        "xla-reduce-to-one": ["--model", "cnn", "--jit-compile", "--cross-device-ops", "reduce-to-one",
                              "--global-batch-size", "32"],
        "resnet50-nccl": ["--model", "resnet50", "--cross-device-ops", "nccl", "--global-batch-size", "4"],
        "image-folder": ["--data", str(images), "--global-batch-size", "8", "--optimizer", "plain-sgd",
                         "--validation-data", str(images)],
    }  # fmt: skip
    procs = {}
    for name, args in runs.items():
        summary = tmp_path / f"{name}.json"
        procs[name] = (
            start_child("-m", "training", *BASE, *args, "--summary-json", str(summary)),
            summary,
        )
    results = {}
    for name, (proc, summary) in procs.items():
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, err[-2000:])
        results[name] = (json.loads(summary.read_text()), err)
    for name, (summary, _err) in results.items():
        assert summary["steps"] == 3 and summary["replicas"] == 2, name
        assert math.isfinite(summary["final_loss"]), name

    adam, _ = results["adam-mixed-hierarchical-logs"]
    assert adam["optimizer"] == "adam" and adam["dtype_policy"] == "mixed_float16"
    assert adam["cross_device_ops"] == "hierarchical"
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*")), "--log-dir wrote no TensorBoard event file"

    xla, _ = results["xla-reduce-to-one"]
    assert xla["jit_compile"] is True and xla["cross_device_ops"] == "reduce-to-one"
    assert xla["dtype_policy"] == "float32"

    resnet, err = results["resnet50-nccl"]
    assert resnet["model"] == "resnet50" and resnet["per_replica_batch_size"] == 2
    assert "--cross-device-ops nccl needs GPUs: using reduce-to-one on the CPU" in err

    folder, _ = results["image-folder"]
    assert folder["examples"] == 32 and folder["data"].endswith("images")
    assert folder["validation_examples"] == 32 and math.isfinite(folder["final_val_loss"])
    assert folder["learning_rate"] == 0.01  # plain SGD's default
