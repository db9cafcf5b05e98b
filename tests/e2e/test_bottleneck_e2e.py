"""Where a run's step time goes, in real training processes on CPU replicas: the MLP fed by JPEG
decoding says input, the CNN on in-memory synthetic data does not, and --profile-steps writes a
TensorBoard profile of exactly its steps, which the throughput leaves out; a range outside the run
is one line, exit 2. Four children in two pairs: the input-bound run must not share the CPUs with
a training run, or its pipeline would be slowed in training and not in the measurement after it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import finish, start_training

pytestmark = pytest.mark.slow

PROFILED = (10, 14)


def jpeg_folder(root: Path, per_class: int = 16, size: int = 768) -> Path:
    """Noise JPEGs: large and incompressible, so each costs real decoding work."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg", quality=95)
    return root


def common(tmp: Path, name: str, steps: int) -> list[str]:
    return ["--epochs", "1", "--steps-per-epoch", str(steps), "--summary-json", str(tmp / f"{name}.json")]


def test_verdicts_and_a_profile_on_cpu_replicas(tmp_path):
    """MLP on 768x768 JPEGs decoded to --image-size 64 (1 replica): input, headroom < 1.2. CNN on
    synthetic data (2 replicas): not input. MLP with --profile-steps 10:14 (2 replicas, K=4): the
    trace exists, the calls were cut around it, and samples_per_sec counts none of its steps."""
    images = jpeg_folder(tmp_path / "images")
    slow_input = start_training(
        ["--cpu-replicas", "1", "--model", "mlp", "--data", str(images), "--image-size", "64",
         "--global-batch-size", "16", *common(tmp_path, "input", 30)]
    )  # fmt: skip
    outside = start_training(
        ["--cpu-replicas", "1", "--model", "mlp", "--profile-steps", "8:40",
         "--log-dir", str(tmp_path / "never"), *common(tmp_path, "outside", 10)]
    )  # fmt: skip
    input_run, outside_run = finish(slow_input), finish(outside)
    cnn = start_training(["--cpu-replicas", "2", "--model", "cnn", *common(tmp_path, "cnn", 40)])
    logs = tmp_path / "logs"
    profiled = start_training(
        ["--cpu-replicas", "2", "--model", "mlp", "--steps-per-execution", "4",
         "--profile-steps", f"{PROFILED[0]}:{PROFILED[1]}", "--log-dir", str(logs),
         *common(tmp_path, "profiled", 30)]
    )  # fmt: skip
    cnn_run, profiled_run = finish(cnn), finish(profiled)

    assert input_run[0] == 0, input_run[2][-3000:]
    found = json.loads((tmp_path / "input.json").read_text())["bottleneck"]
    print("input-bound run:", found)
    assert found["verdict"] == "input", found
    assert found["input_headroom"] < 1.2
    assert "communication" in found["shares"] and found["shares"]["communication"] == 0.0
    assert "bottleneck: input (" in input_run[1] and "TROUBLESHOOTING.md#why-is-it-slow" in input_run[1]

    code, _, err = outside_run
    assert code == 2, err[-3000:]
    assert err.strip().splitlines()[-1].endswith("--profile-steps 8:40: this run trains global steps 1 to 10")

    assert cnn_run[0] == 0, cnn_run[2][-3000:]
    found = json.loads((tmp_path / "cnn.json").read_text())["bottleneck"]
    print("cnn run:", found)
    assert found["verdict"] != "input", found
    assert found["input_headroom"] > 2
    assert found["allreduce_seconds"] > 0 and found["gradient_bytes"] > 0

    code, _, err = profiled_run
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "profiled.json").read_text())
    profile = summary["profile"]
    assert profile["steps"] == list(PROFILED)
    assert list(Path(profile["trace_dir"]).glob("*.xplane.pb")), profile
    assert Path(profile["trace_dir"]).parent == logs / "plugins" / "profile"
    assert f"tensorboard --logdir {logs}" in err and "pip install -e '.[profile]'" in err
    assert summary["steps"] == 30
    # 30 steps less 5 of warm-up, the 5 profiled, and the first after them (the meter restarts its
    # clock there, as after any pause)
    assert summary["throughput_steps"] == 30 - 5 - 5 - 1
    assert summary["bottleneck"] is not None
