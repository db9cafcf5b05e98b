"""`python -m training` flags: the plan for recorded machines, and bad input (one line, exit 2).

These run `main()` in this process: every path tested here ends before TensorFlow is imported.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import run_module

from training.__main__ import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_on_the_4xa100_server(capsys, fixture_path):
    code, out, err = run(capsys, "--dry-run", "--inventory", str(fixture_path("example-server-4xa100.json")))
    assert code == 0, err
    assert "4 replica(s) on GPUs" in out
    assert "global batch 128 = 32 per replica x 4" in out
    assert out.count("NVIDIA A100-SXM4-80GB") >= 4
    assert "GPU-21749987-0000-0000-0000-000000000000" in out  # mapped by UUID, not by position


def test_dry_run_on_the_workstation_lists_reasons(capsys, fixture_path):
    path = str(fixture_path("sel-workstation-display.json"))
    code, out, err = run(capsys, "--dry-run", "--inventory", path, "--global-batch-size", "64")
    assert code == 0, err
    assert "2 replica(s) on GPUs" in out
    assert "/gpu:0 = NVML GPU 1 NVIDIA GeForce RTX 5090" in out
    assert "excluded: display GPU: use --include-display-gpus" in out


def test_dry_run_custom_warns_about_a_filtered_gpu(capsys, fixture_path):
    path = str(fixture_path("sel-workstation-display.json"))
    code, out, err = run(
        capsys, "--dry-run", "--inventory", path, "--device-mode", "custom", "--custom-gpus", "2", "0"
    )
    assert code == 0, err
    assert "/gpu:0 = NVML GPU 2" in out and "/gpu:1 = NVML GPU 0" in out
    assert "warning: GPU 0 is used because --custom-gpus lists it" in err


def test_no_eligible_gpu_falls_back_to_the_cpu_with_reasons(capsys, fixture_path):
    path = str(fixture_path("sel-mixed-memory.json"))
    code, out, err = run(capsys, "--dry-run", "--inventory", path, "--min-gpu-memory", "80")
    assert code == 0
    assert "1 replica(s) on the CPU" in out
    assert "warning: training on the CPU: no GPU is eligible" in err
    assert "< 80 GB minimum: lower --min-gpu-memory" in err


def test_require_gpu_without_a_gpu_exits_1(capsys, fixture_path):
    path = str(fixture_path("sel-mixed-memory.json"))
    code, _out, err = run(capsys, "--dry-run", "--inventory", path, "--min-gpu-memory", "80", "--require-gpu")
    assert code == 1
    assert err.startswith("error: --require-gpu: no GPU is eligible")


def test_require_gpu_on_a_machine_without_a_driver(capsys, no_driver):
    code, _out, err = run(capsys, "--dry-run", "--require-gpu")
    assert code == 1
    assert "no NVIDIA driver found" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--custom-gpus", "0"], "--custom-gpus needs --device-mode custom"),
        (["--device-mode", "custom"], "--device-mode custom needs --custom-gpus"),
        (["--device-mode", "custom", "--custom-gpus", "0", "0"], "GPU 0 is listed twice"),
        (["--device-mode", "custom", "--custom-gpus", "-1"], "GPU ids are >= 0"),
        (["--device-mode", "custom", "--custom-gpus", "x"], "'x' is not an integer"),
        (["--min-gpu-memory", "-3"], "--min-gpu-memory must be a number >= 0"),
        (["--min-gpu-memory", "lots"], "'lots' is not a number"),
        (["--global-batch-size", "0"], "--global-batch-size must be a positive integer"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--steps-per-epoch", "-2"], "--steps-per-epoch must be a positive integer"),
        (["--model", "vgg"], "unknown --model 'vgg': known models are cnn, mlp, resnet50"),
        (["--inventory", "x.json"], "only works with --dry-run"),
        (["--device-mode", "all"], "invalid choice: 'all'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--save-model", "out.h5"], "must end in .keras"),
        (["--cpu-replicas", "0"], "--cpu-replicas must be >= 1"),
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys, args, message):
    code, _out, err = run(capsys, *args, "--dry-run" if "--inventory" not in args else "--epochs=1")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err


def test_batch_not_divisible_names_the_nearest_valid_sizes(capsys, fixture_path):
    path = str(fixture_path("example-server-4xa100.json"))
    code, _out, err = run(capsys, "--dry-run", "--inventory", path, "--global-batch-size", "130")
    assert code == 2
    assert "does not split evenly over 4 replicas" in err and "128 or 132" in err


def test_accumulate_steps_must_split_each_replicas_batch(capsys, fixture_path):
    """--accumulate-steps K cuts each replica's batch into K equal micro-batches: checked before
    anything runs, naming the batches that split."""
    path = str(fixture_path("example-server-4xa100.json"))
    code, _out, err = run(capsys, "--dry-run", "--inventory", path, "--accumulate-steps", "3")
    assert code == 2 and err.count("\n") == 1
    assert "does not split evenly over 4 replicas x 3 micro-batches (--accumulate-steps)" in err
    assert "use a multiple of 12, e.g. 120 or 132" in err
    assert run(capsys, "--dry-run", "--inventory", path, "--accumulate-steps", "4")[0] == 0
    assert run(capsys, "--dry-run", "--inventory", path, "--accumulate-steps", "0")[0] == 2


def test_custom_id_not_on_the_machine(capsys, fixture_path):
    path = str(fixture_path("example-server-4xa100.json"))
    code, _out, err = run(
        capsys, "--dry-run", "--inventory", path, "--device-mode", "custom", "--custom-gpus", "9"
    )
    assert code == 2 and "no GPU 9 on this machine (GPUs: 0, 1, 2, 3)" in err


def test_malformed_inventory_and_config(capsys, tmp_path):
    bad = tmp_path / "inv.json"
    bad.write_text("[]")
    code, _out, err = run(capsys, "--dry-run", "--inventory", str(bad))
    assert code == 2 and str(bad) in err and "top level must be an object" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text("epochs = = 3")
    code, _out, err = run(capsys, "--dry-run", "--config", str(cfg))
    assert code == 2 and "not valid TOML" in err
    cfg.write_text("epochs = 'three'")
    code, _out, err = run(capsys, "--dry-run", "--config", str(cfg))
    assert code == 2 and "epochs must be int" in err
    cfg.write_text("epoch = 3")
    code, _out, err = run(capsys, "--dry-run", "--config", str(cfg))
    assert code == 2 and "unknown setting 'epoch'" in err


def test_config_file_env_and_flags_override_in_order(capsys, tmp_path, monkeypatch, fixture_path):
    path = str(fixture_path("example-server-4xa100.json"))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\nglobal_batch_size = 256\nmodel = 'mlp'\nepochs = 5\n")
    monkeypatch.setenv("TRAINING_EPOCHS", "7")
    code, out, _err = run(capsys, "--dry-run", "--inventory", path, "--config", str(cfg), "--model", "cnn")
    assert code == 0
    assert "global batch 256 = 64 per replica x 4" in out  # from the file
    assert "model cnn" in out  # the flag beats the file
    assert "7 epoch(s)" in out  # the environment beats the file


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file or folder"),
        (
            lambda p: (p.with_suffix(".csv").write_text("1,2"), p.with_suffix(".csv"))[1],
            "expected a .npz file",
        ),
        (lambda p: np.savez(p, x=np.ones((4, 3))) or p, "missing array 'y'"),
        (lambda p: np.savez(p, x=np.ones((4, 3)), y=np.ones((5,))) or p, "x has 4 examples but y has 5"),
        (lambda p: np.savez(p, x=np.ones(4), y=np.ones(4)) or p, "x must be (examples, features...)"),
        (lambda p: (p.write_bytes(b"PK\x03\x04garbage"), p)[1], "not a readable .npz file"),
    ],
)
def test_bad_data_exits_2(capsys, tmp_path, make, message):
    path = tmp_path / "d.npz"
    made = make(path) or path
    code, _out, err = run(capsys, "--dry-run", "--data", str(made))
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_filtering_reports_dropped_examples(capsys, tmp_path):
    x = np.ones((300, 6), np.float32)
    x[0, 2] = np.nan
    x[1, 0] = np.inf
    y = np.arange(300) % 3
    y[2] = 3  # outside [0, 3) once num_classes is given
    y[3] = -1
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, num_classes=3)
    code, _out, err = run(capsys, "--dry-run", "--data", str(path))
    assert code == 0
    assert "dropped 4 of 300 examples: 2 with non-finite features, 2 with labels outside [0, 3)" in err


def test_the_real_command_prints_no_traceback_for_bad_input():
    result = run_module("training", "--global-batch-size", "-5")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --global-batch-size must be a positive integer, got -5"


def test_dry_run_on_the_2x4090_workstation(capsys, fixture_path):
    """GPU 0 drives the display: multi uses GPU 1 alone, unless --include-display-gpus."""
    path = str(fixture_path("example-workstation-2x4090.json"))
    code, out, err = run(capsys, "--dry-run", "--inventory", path)
    assert code == 0, err
    assert "1 replica(s) on GPUs" in out and "/gpu:0 = NVML GPU 1 NVIDIA GeForce RTX 4090 (24.0 GB" in out
    assert (
        "GPU 0 (NVIDIA GeForce RTX 4090), 24.0 GB: excluded: display GPU: use --include-display-gpus" in out
    )
    code, out, err = run(capsys, "--dry-run", "--inventory", path, "--include-display-gpus")
    assert code == 0, err
    assert "2 replica(s) on GPUs" in out and "global batch 128 = 64 per replica x 2" in out


def test_a_bug_is_an_internal_error_not_bad_input(capsys, monkeypatch):
    """Only the project's UserError classes mean bad input (exit 2): a ValueError from a bug is exit 1
    with an "internal error" line, so the property tests cannot mistake a bug for a user error."""
    import training.__main__ as trainer

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(trainer, "plan_devices", broken)
    code, _out, err = run(capsys, "--dry-run")
    assert code == 1
    assert err.startswith("error: internal error: ValueError: a bug (rerun with GPUDIAG_DEBUG=1")
