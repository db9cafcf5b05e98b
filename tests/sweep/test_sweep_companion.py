"""With --data, each baseline training case of the sweep has a companion on synthetic images of the
data's size (bench/sweep_cases.py), right after it; its row goes inside the real one's. No TensorFlow."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sweep_cases
from test_sweep_options import options

from reports.results import TrainRow
from training.children.protocol import TrainWork
from training.inputs.data import IMAGE_SIZE


def npz(tmp_path: Path, shape: tuple[int, ...], compressed: bool = False) -> Path:
    path = tmp_path / "data.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, x=np.zeros((16, *shape), np.float32), y=np.arange(16) % 2)
    return path


def sweep_on(tmp_path: Path, data: Path | None, *more: str):
    given = ["--data", str(data)] if data is not None else []
    opts, _ = options(*given, "--cpu-replicas", "2", "--gpus", "1", "2", "--batch-sizes", "8", "16",
                      "--allreduce-bytes", "1K", "--report-dir", str(tmp_path / "r"), *more)  # fmt: skip
    return opts


def test_each_baseline_training_case_is_followed_by_its_synthetic_companion(tmp_path):
    opts = sweep_on(tmp_path, npz(tmp_path, (8, 8, 3)), "--mixed-precision", "off", "on")
    cases = sweep_cases.plan_cases(opts)
    companions = [c for c in cases if c.synthetic_size is not None]
    assert [(c.gpus, c.batch_per_gpu) for c in companions] == [(1, 8), (1, 16), (2, 8), (2, 16)]
    for c in companions:
        real, batch = cases[cases.index(c) - 1], c.batch_per_gpu or 0  # right before it, same worker
        assert real.synthetic_size is None and real.variant == c.variant
        assert not c.mixed_precision and c.synthetic_size == 8  # the baseline only, at the data's size
        assert sweep_cases.work_of(c, opts) == TrainWork(
            model=opts.model, batch_per_replica=batch, image_size=8
        )
        assert sweep_cases.work_of(real, opts) == TrainWork(
            model=opts.model, batch_per_replica=batch, data=str(opts.data)
        )
    assert len({(c.benchmark, c.id) for c in cases}) == len(cases)  # each case its own test id
    assert companions[0].id == "1dev-b8-synthetic"
    # nothing else changed: the same cases in the same order without the companions
    without = sweep_cases.plan_cases(sweep_on(tmp_path, None, "--mixed-precision", "off", "on"))
    assert [c for c in cases if c.synthetic_size is None] == without


@pytest.mark.parametrize(
    ("shape", "compressed", "size"),
    [((12, 12, 3), True, 12), ((28, 28, 1), False, None), ((20,), False, None), ((8, 6, 3), False, None)],
    ids=["compressed-square-rgb", "greyscale", "features", "not-square"],
)
def test_the_companion_takes_an_npz_s_size_from_its_header_and_needs_square_rgb_images(
    tmp_path, shape, compressed, size
):
    opts = sweep_on(tmp_path, npz(tmp_path, shape, compressed))
    assert sweep_cases.companion_size(opts) == size
    assert any(c.synthetic_size for c in sweep_cases.plan_cases(opts)) == (size is not None)


def test_streamed_data_is_decoded_to_the_trainer_s_image_size_and_no_data_has_no_companion(tmp_path):
    folder = tmp_path / "images"
    (folder / "cats").mkdir(parents=True)
    assert sweep_cases.companion_size(sweep_on(tmp_path, folder)) == IMAGE_SIZE[0]
    assert sweep_cases.companion_size(sweep_on(tmp_path, None)) is None
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    assert sweep_cases.companion_size(sweep_on(tmp_path, broken)) is None  # the real case says why


def _row(gpus: int, batch: int, seconds: float, **more) -> TrainRow:
    return TrainRow(
        gpus=gpus, round_seconds=[seconds], batch_per_gpu=batch, global_batch=gpus * batch, steps=1, **more
    )


def test_a_companion_s_row_goes_inside_its_real_row_and_its_progress_line_says_synthetic(tmp_path):
    baseline = {
        "jit_compile": False,
        "mixed_precision": False,
        "cross_device_ops": "auto",
        "steps_per_execution": "auto",
    }
    mixed = {**baseline, "mixed_precision": True}
    rows = [
        _row(2, 8, 1.0, variant=baseline),
        _row(2, 8, 0.9, variant=mixed),
        _row(2, 16, 1.0, variant=baseline),
    ]
    companion = _row(2, 8, 0.5, variant=baseline)
    assert sweep_cases.attach_companion(rows, companion)
    assert rows[0].synthetic is companion and rows[1].synthetic is None and rows[2].synthetic is None
    assert not sweep_cases.attach_companion(rows, _row(1, 8, 0.5, variant=baseline))  # its real case failed
    opts = sweep_on(tmp_path, npz(tmp_path, (8, 8, 3)))
    case = next(c for c in sweep_cases.plan_cases(opts) if c.synthetic_size)
    line = sweep_cases.progress_line(
        case, {"round_seconds": [1.0], "global_batch": 8, "steps": 10}, None, "CPU device"
    )
    assert line == "train 1 CPU device x 8 (synthetic 8x8 images, not --data): 80 samples/s"
