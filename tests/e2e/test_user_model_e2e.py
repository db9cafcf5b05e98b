"""A user's own model for real, on 2 CPU replicas under MirroredStrategy in child processes: a
function in a file trained a few steps (its model ends in a softmax and uses a custom layer from a
neighbouring file), saved, then fine-tuned from the .keras file: refused without the code that
defines the custom layer (the line names the class), accepted with --custom-objects. And the
one-line refusals of a function that raises, returns no model, or does not fit the data.

Each process costs a TensorFlow start, so those that do not depend on each other run side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import FIXTURES, finish, start_child

pytestmark = pytest.mark.slow

MODELS = FIXTURES / "models"
TINY = MODELS / "tiny.py"
SCALE = MODELS / "scale_layer.py"
SHORT = ["--cpu-replicas", "2", "--epochs", "1", "--steps-per-epoch", "3", "--global-batch-size", "32"]

# Builds models under a 2-replica strategy in one process, and prints each refusal's line.
BUILD_EACH = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
from training.inputs import models
for name in sys.argv[1:]:
    with strategy.scope():
        try:
            models.build(name, (32, 32, 3), 10)
            print("BUILT", name)
        except models.ModelError as exc:
            print("REFUSED", exc)
"""


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_train_a_function_from_a_file_then_fine_tune_its_saved_model(tmp_path: Path):
    saved, first, second = tmp_path / "tiny.keras", tmp_path / "first.json", tmp_path / "second.json"
    spec = f"{TINY}:build"
    train = start_child(
        "-m", "training", "--model", spec, *SHORT, "--save-model", str(saved), "--summary-json", str(first)
    )
    raises = start_child("-m", "training", "--model", f"{TINY}:raises", *SHORT)
    code, _out, err = finish(train)
    assert code == 0, err
    summary = json.loads(first.read_text())
    assert summary["model"] == spec and summary["replicas"] == 2 and summary["steps"] == 3
    assert f"model {spec}, data synthetic" in err  # the plan names it as given

    fine_tune = start_child(
        "-m", "training", "--model", str(saved), "--custom-objects", str(SCALE), *SHORT,
        "--summary-json", str(second),
    )  # fmt: skip
    # the saved model first, before tiny.py (imported for the others) defines its custom layer
    names = [str(saved), f"{TINY}:not_a_model", f"{TINY}:wrong_units", f"{TINY}:wrong_input"]
    each = start_child("-c", BUILD_EACH, *names)

    code, _out, err = finish(raises)
    assert code == 2, err
    assert last_line(err) == (
        f"error: --model {TINY}:raises: raises(input_shape=(32, 32, 3), num_classes=10) raised "
        "ValueError: no model for 10 classes today"
    )
    code, out, err = finish(each)
    assert code == 0, err
    refused = out.strip().splitlines()
    assert refused == [
        f"REFUSED --model {saved}: the model uses the custom class Scale (saved from module "
        "scale_layer), which is not defined here: name the file or module that defines it (decorated "
        "with @keras.saving.register_keras_serializable) with --custom-objects PATH.py or MODULE",
        f"REFUSED --model {TINY}:not_a_model: not_a_model(input_shape=(32, 32, 3), num_classes=10) "
        "returned a Dense, not a keras.Model",
        f"REFUSED --model {TINY}:wrong_units: the model's output has 3 units, but the data has 10 classes",
        f"REFUSED --model {TINY}:wrong_input: the model takes inputs of shape (8,), but the data has "
        "examples of shape (32, 32, 3)",
    ]
    code, _out, err = finish(fine_tune)
    assert code == 0, err
    tuned = json.loads(second.read_text())
    assert tuned["model"] == str(saved)
    # trained on from its weights: it starts where the first run left off, not from chance (2.3)
    assert tuned["final_loss"] < summary["final_loss"] + 0.2
