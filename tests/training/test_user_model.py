"""A user's own --model (PATH.py:FUNCTION, package.module:FUNCTION, MODEL.keras): what is refused
before TensorFlow, in one line with exit 2; the checkpoint fingerprint of a user's model; the FLOP
estimate that says "not known" rather than make one up. Training one is tests/e2e/test_user_model_e2e.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import FIXTURES, ROOT, child_env

from training.__main__ import main
from training.checkpoints.store import fingerprint
from training.settings.config import TrainConfig

TINY = FIXTURES / "models" / "tiny.py"


def refusal(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """The one line `python -m training FLAGS --dry-run` prints as it exits 2."""
    code = main([*flags, "--dry-run", "--cpu-replicas", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_bad_model_specs_are_one_line_and_exit_2_before_tensorflow(capsys, tmp_path: Path):
    """Files, modules and function names are found wanting without running the user's code."""
    broken = tmp_path / "broken.py"
    broken.write_text("def build(input_shape, num_classes\n")
    not_keras = tmp_path / "model.keras"
    not_keras.write_text("not a zip")
    cases = {
        "nosuch.py:build": "--model nosuch.py:build: no such file nosuch.py",
        f"{TINY}:nope": f"--model {TINY}:nope: {TINY} has no function nope (it defines build, ",
        f"{TINY}": f"--model {TINY}: name the function that builds the model: --model {TINY}:FUNCTION",
        f"{TINY}:1x": "'1x' is not a function name",
        f"{broken}:build": f"{broken} line 1: '(' was never closed",
        "nosuch_pkg.models:build": "no module named nosuch_pkg.models",
        f"{tmp_path}:build": "is a folder, not a Python file",
        str(not_keras): f"--model {not_keras}: not a Keras model",
        "nosuch.keras": "--model nosuch.keras: no such file",
        "resnet": "unknown --model 'resnet': known models are cnn, mlp, resnet50, or PATH.py:FUNCTION",
    }
    for model, expected in cases.items():
        assert expected in refusal(capsys, "--model", model), model
    line = refusal(capsys, "--custom-objects", "nosuch_layers.py")
    assert line == "error: --custom-objects nosuch_layers.py: no such file nosuch_layers.py"
    # a good spec passes: the plan names the model as given
    assert main(["--model", f"{TINY}:build", "--dry-run", "--cpu-replicas", "2"]) == 0
    assert f"model {TINY}:build, data synthetic" in capsys.readouterr().out


def test_checking_a_model_spec_never_imports_tensorflow():
    """The user's file imports keras, yet the checks before TensorFlow only read its source."""
    code = (
        "import sys\nfrom training.__main__ import main\n"
        f"assert main(['--model', {str(TINY) + ':build'!r}, '--dry-run', '--cpu-replicas', '2']) == 0\n"
        f"assert main(['--model', {str(TINY) + ':nope'!r}, '--dry-run']) == 2\n"
        "assert main(['--model', 'json:nope', '--dry-run']) == 2\n"
        "sys.stderr.write('TF-IMPORTED' if 'tensorflow' in sys.modules else 'NO-TF')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=child_env()
    )
    assert proc.returncode == 0 and proc.stderr.strip().endswith("NO-TF"), proc.stderr


def test_a_changed_model_file_does_not_resume_an_old_checkpoint(tmp_path: Path):
    """The fingerprint holds a user's file's sha256; a built-in model's has none (old checkpoints
    still resume)."""
    source = tmp_path / "mine.py"
    source.write_text("def build(shape, n):\n    return None\n")
    before = fingerprint(TrainConfig(model=f"{source}:build"), 4096, 32)
    source.write_text("def build(shape, n):\n    return 1\n")
    after = fingerprint(TrainConfig(model=f"{source}:build"), 4096, 32)
    assert before["model"] == after["model"] == f"{source}:build"
    assert len(before["model_sha256"]) == 64 and before["model_sha256"] != after["model_sha256"]
    assert "model_sha256" not in fingerprint(TrainConfig(model="cnn"), 4096, 32)


def test_flops_are_estimated_only_where_every_layer_is_known():
    """Conv and Dense layers are costed; a custom layer makes the estimate unknown (None)."""
    import keras

    from training.inputs import models

    cnn = models.build("cnn", (32, 32, 3), 10)
    assert models.estimate_flops_per_sample(cnn) == models.model_flops_per_sample(cnn) > 0
    sys.path.insert(0, str(TINY.parent))
    try:
        from scale_layer import Scale
    finally:
        sys.path.remove(str(TINY.parent))
    custom = keras.Sequential([keras.Input((4,)), Scale(2.0), keras.layers.Dense(3)])
    assert models.estimate_flops_per_sample(custom) is None
