"""Validation data, the learning rate in use and `python -m training evaluate`, up to where
TensorFlow would start: the held-out split, bad input (one line, exit 2), each optimizer's default
rate, scaling and warm-up, and the checkpoint fingerprint. All in this process, no TensorFlow;
tests/e2e/test_validation_e2e.py trains and evaluates for real.
"""

from __future__ import annotations

import zipfile
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from training.__main__ import main
from training.checkpoints.store import CheckpointStore, Manifest, fingerprint
from training.inputs import data, validation
from training.loop.learning_rate import rate_plan
from training.settings.config import ConfigError, TrainConfig


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def image_folder(root, classes=("dark", "light"), per_class=4):
    for value, name in zip((40, 210), classes, strict=True):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), value + i, np.uint8)).save(root / name / f"{i}.png")
    return root


def npz(path, count=300, shape=(6,), classes=3):
    x = np.random.default_rng(0).normal(size=(count, *shape)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(count) % classes)
    return str(path)


# -- the held-out split ------------------------------------------------------------------------------


def test_the_split_is_seeded_disjoint_and_keeps_the_data_order():
    examples = data.synthetic(seed=1, num_examples=1000, shape=(4,))
    train, held = validation.split(examples, 0.2, seed=5, global_batch_size=64)
    assert (len(train), len(held)) == (800, 200)
    again_train, again_held = validation.split(examples, 0.2, seed=5, global_batch_size=64)
    assert np.array_equal(held.x, again_held.x) and np.array_equal(train.y, again_train.y)
    _, other = validation.split(examples, 0.2, seed=6, global_batch_size=64)
    assert not np.array_equal(held.x, other.x)  # another seed holds out other examples
    rows = {row.tobytes() for row in examples.x}
    train_rows = [row.tobytes() for row in train.x]
    held_rows = [row.tobytes() for row in held.x]
    assert not set(train_rows) & set(held_rows) and set(train_rows) | set(held_rows) == rows
    position = {row.tobytes(): i for i, row in enumerate(examples.x)}
    assert [position[r] for r in train_rows] == sorted(position[r] for r in train_rows)
    assert held.source == f"20% of {examples.source} held out (200 examples)"
    assert train.source == examples.source and held.num_classes == examples.num_classes


def test_held_out_examples_of_an_image_folder_come_from_every_class(tmp_path):
    """Not the last fraction, as Keras' validation_split: a folder is read class by class."""
    examples = data.load(str(image_folder(tmp_path / "images", per_class=20)), seed=0)
    _train, held = validation.split(examples, 0.25, seed=42, global_batch_size=8)
    assert sorted(set(held.y.tolist())) == [0, 1]
    assert held.class_names == ("dark", "light")


# -- bad input: one line, exit 2, before TensorFlow ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--validation-split", "0"], "--validation-split must be a fraction between 0 and 1"),
        (["--validation-split", "1"], "--validation-split must be a fraction between 0 and 1"),
        (["--validation-split", "-0.2"], "both excluded, got -0.2"),
        (
            ["--validation-split", "0.02"],
            "--validation-split 0.02 of 4096 examples leaves 4014 for training and 82 for validation: "
            "each side needs one global batch (128) at least",
        ),
        (["--validation-split", "0.99", "--global-batch-size", "64"], "leaves 41 for training"),
        (["--validation-split", "0.2", "--validation-data", "{val}"], "give one"),
        (["--validation-data", "{missing}"], "--validation-data {missing}: no such file or folder"),
        (["--validation-data", "{wide}"], "examples of shape (7,), but the training data's are (6,)"),
        (
            ["--validation-data", "{classes}"],
            "--validation-data {classes}: 5 classes, but the training data has 3",
        ),
        (["--scale-learning-rate", "cubic"], "invalid choice: 'cubic'"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be a number of epochs >= 0, got -1"),
        (["--warmup-epochs", "nan"], "'nan' is not a finite number"),
        (["--reference-batch-size", "0"], "--reference-batch-size must be a positive integer"),
        (["--learning-rate", "0"], "--learning-rate must be a positive number"),
    ],
)
def test_bad_validation_and_rate_flags_exit_2(capsys, tmp_path, args, message):
    paths = {
        "val": npz(tmp_path / "val.npz"),
        "wide": npz(tmp_path / "wide.npz", shape=(7,)),
        "classes": npz(tmp_path / "classes.npz", classes=5),
        "missing": str(tmp_path / "missing.npz"),
    }
    args = [a.format(**paths) for a in args]
    data_args = ["--data", npz(tmp_path / "train.npz")] if "--validation-data" in args else []
    code, _out, err = run(capsys, "--dry-run", *data_args, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message.format(**paths) in err


def test_bad_settings_from_a_config_file_or_the_environment_exit_2(capsys, tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text("scale_learning_rate = 'cubic'\n")
    code, _out, err = run(capsys, "--dry-run", "--config", str(config))
    assert (
        code == 2 and err.strip() == "error: unknown --scale-learning-rate 'cubic': choose none, linear, sqrt"
    )
    config.write_text("optimizer = 'lion'\n")
    code, _out, err = run(capsys, "--dry-run", "--config", str(config))
    assert code == 2 and "unknown --optimizer 'lion': choose sgd, plain-sgd, adam" in err
    monkeypatch.setenv("TRAINING_WARMUP_EPOCHS", "-2")
    code, _out, err = run(capsys, "--dry-run")
    assert code == 2 and "--warmup-epochs must be a number of epochs >= 0, got -2" in err
    monkeypatch.setenv("TRAINING_WARMUP_EPOCHS", "0.5")
    monkeypatch.setenv("TRAINING_VALIDATION_SPLIT", "half")
    code, _out, err = run(capsys, "--dry-run")
    assert code == 2 and "validation_split must be float, got 'half'" in err


def test_image_folders_must_have_the_same_classes(capsys, tmp_path):
    train = image_folder(tmp_path / "train")
    image_folder(tmp_path / "val", classes=("dark", "pale"))
    code, _out, err = run(
        capsys, "--dry-run", "--data", str(train), "--validation-data", str(tmp_path / "val")
    )
    assert code == 2 and err.count("\n") == 1
    assert "classes dark, pale, but the training data's are dark, light" in err
    image_folder(tmp_path / "same")
    code, out, err = run(
        capsys, "--dry-run", "--data", str(train), "--validation-data", str(tmp_path / "same")
    )
    assert code == 0, err
    assert f"validation: {tmp_path / 'same'}, evaluated after each epoch" in out


def test_validation_data_of_the_wrong_shape_for_synthetic_data(capsys, tmp_path):
    """--dry-run on synthetic data checks against its known shape without generating it."""
    code, _out, err = run(capsys, "--dry-run", "--validation-data", npz(tmp_path / "v.npz"))
    assert code == 2 and "examples of shape (6,), but the training data's are (32, 32, 3)" in err


def test_evaluate_refuses_what_is_not_a_keras_model(capsys, tmp_path):
    """Exit 2 with one line, before TensorFlow: a text file, a zip without a model, a folder, nothing."""
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    archive = tmp_path / "other.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "[1, 2]")
    weights_only = tmp_path / "weights.keras"
    with zipfile.ZipFile(weights_only, "w") as z:
        z.writestr("model.weights.h5", "")
    for path, message in [
        (text, "not a Keras model"),
        (archive, "not a Keras model"),
        (weights_only, "not a Keras model"),
        (tmp_path, "is a folder"),
        (tmp_path / "missing.keras", "no such file"),
    ]:
        code, _out, err = run(capsys, "evaluate", str(path), "--cpu-replicas", "2")
        assert code == 2, (path, err)
        assert err == f"error: evaluate {path}: {message}" + (
            " (a .keras file that model.save() or --save-model wrote)\n"
            if message == "not a Keras model"
            else "\n"
        )
    code, _out, err = run(capsys, "evaluate")
    assert code == 2 and "the following arguments are required: MODEL.keras" in err
    code, _out, err = run(capsys, "evaluate", str(text), "--epochs", "3")
    assert code == 2 and "unrecognized arguments: --epochs 3" in err
    code, _out, err = run(capsys, "evaluate", str(text), "--inventory", "x.json")
    assert code == 2 and "unrecognized arguments" in err


# -- the learning rate in use ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ([], "optimizer sgd, learning rate 0.01 (sgd's default)"),
        (["--optimizer", "plain-sgd"], "optimizer plain-sgd, learning rate 0.01 (plain-sgd's default)"),
        (["--optimizer", "adam"], "optimizer adam, learning rate 0.001 (adam's default)"),
        (["--optimizer", "adam", "--learning-rate", "0.0003"], "learning rate 0.0003 (--learning-rate)"),
        (
            ["--global-batch-size", "512", "--scale-learning-rate", "linear"],
            "learning rate 0.04 = 0.01 (sgd's default) x 512/128 (--scale-learning-rate linear)",
        ),
        (
            ["--optimizer", "adam", "--global-batch-size", "512", "--scale-learning-rate", "sqrt"],
            "learning rate 0.002 = 0.001 (adam's default) x sqrt(512/128) (--scale-learning-rate sqrt)",
        ),
        (
            ["--global-batch-size", "256", "--scale-learning-rate", "linear", "--reference-batch-size", "32",
             "--learning-rate", "0.1", "--warmup-epochs", "2"],
            "learning rate 0.8 = 0.1 (--learning-rate) x 256/32 (--scale-learning-rate linear), "
            "reached by a linear warm-up over 2 epoch(s) (32 steps) from 0.1",
        ),
        (
            ["--warmup-epochs", "0.5", "--validation-split", "0.25"],
            "learning rate 0.01 (sgd's default), reached by a linear warm-up over 0.5 epoch(s) (12 steps) "
            "from 0.000833333",
        ),
    ],
)  # fmt: skip
def test_the_plan_prints_the_rate_in_use(capsys, args, line):
    code, out, err = run(capsys, "--dry-run", "--cpu-replicas", "2", *args)
    assert code == 0, err
    assert line in out


def test_rate_arithmetic():
    config = TrainConfig()
    assert config.learning_rate is None and config.base_learning_rate == 0.01
    assert replace(config, optimizer="adam").base_learning_rate == 0.001
    assert replace(config, optimizer="adam", learning_rate=0.05).base_learning_rate == 0.05
    goyal = rate_plan(replace(config, global_batch_size=1024, scale_learning_rate="linear", warmup_epochs=5))
    assert goyal.target == pytest.approx(0.08) and goyal.warmup_steps(10) == 50
    assert goyal.rate_at(0, 10) == pytest.approx(0.01)  # from the reference batch's rate ...
    assert goyal.rate_at(25, 10) == pytest.approx(0.045)  # ... linearly ...
    assert goyal.rate_at(50, 10) == goyal.rate_at(500, 10) == pytest.approx(0.08)  # ... to the scaled one
    smaller = rate_plan(replace(config, global_batch_size=32, scale_learning_rate="sqrt", warmup_epochs=1))
    assert smaller.target == pytest.approx(0.005)  # sqrt(32/128) = 0.5
    assert smaller.rate_at(0, 4) == pytest.approx(0.005 / 4)  # not scaled up: from (almost) zero
    assert rate_plan(replace(config, warmup_epochs=0.01)).warmup_steps(10) == 1
    assert rate_plan(config).warmup_steps(10) == 0 and rate_plan(config).rate_at(0, 10) == 0.01


# -- the checkpoint fingerprint ----------------------------------------------------------------------------


def test_the_fingerprint_records_split_scaling_and_warmup_only_where_used():
    plain = fingerprint(TrainConfig(), 4096, 32)
    assert not {"validation_split", "scale_learning_rate", "warmup_epochs"} & set(plain)
    used = fingerprint(
        TrainConfig(validation_split=0.2, scale_learning_rate="sqrt", warmup_epochs=2.0, validation_data="v"),
        3277,
        25,
    )
    assert used["validation_split"] == 0.2 and used["scale_learning_rate"] == "sqrt"
    assert used["reference_batch_size"] == 128 and used["warmup_epochs"] == 2.0 and used["examples"] == 3277
    assert "validation_data" not in used  # it changes what is reported, not what is trained
    assert fingerprint(TrainConfig(learning_rate=0.5), 4096, 32) == plain  # lowering the rate is a resume


def test_a_checkpoint_with_a_split_resumes_only_with_it(capsys, tmp_path):
    config = TrainConfig(validation_split=0.25)
    saved = fingerprint(config, validation.training_size(config, data.SYNTHETIC_EXAMPLES), 24)
    CheckpointStore(tmp_path).save(Manifest(24, 1, 0, saved), ["a"], [np.zeros(2, np.float32)])
    code, out, err = run(capsys, "--dry-run", "--checkpoint-dir", str(tmp_path), "--validation-split", "0.25")
    assert code == 0, err
    assert "will resume from" in out and "(after epoch 1, global step 24)" in out
    code, _out, err = run(capsys, "--dry-run", "--checkpoint-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "examples 3072 there, 4096 here" in err and "validation_split 0.25 there, not set here" in err
    code, _out, err = run(
        capsys,
        "--dry-run",
        "--checkpoint-dir",
        str(tmp_path),
        "--validation-split",
        "0.25",
        "--warmup-epochs",
        "1",
    )
    assert code == 2 and "warmup_epochs not set there, 1.0 here" in err


def test_split_sizes_are_checked_against_the_batch():
    assert validation.split_sizes(1000, 0.2, 128) == (800, 200)
    with pytest.raises(ConfigError, match="leaves 900 for training and 100 for validation"):
        validation.split_sizes(1000, 0.1, 128)
