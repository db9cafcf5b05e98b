"""bench/sweep_harness.py without TensorFlow: option checking, device counts, the list of cases."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import sweep_harness as sh


def options(**given: Any) -> tuple[sh.SweepOptions, Any]:
    return sh.parse_options(lambda name: given.get(name))


def test_defaults_on_cpu_replicas(tmp_path):
    opts, plan = options(cpu_replicas="4", report_dir=str(tmp_path))
    assert plan.kind == "cpu" and opts.gpu_counts == (1, 2, 4)
    assert opts.batch_sizes == (32, 64, 128) and opts.scaling == "weak" and opts.model == "cnn"
    assert opts.allreduce_bytes[0] == 1024 and opts.allreduce_bytes[-1] == 256 * 2**20


def test_default_counts_end_at_the_number_selected():
    assert sh.default_counts(1) == (1,)
    assert sh.default_counts(3) == (1, 2, 3)
    assert sh.default_counts(8) == (1, 2, 4, 8)


def test_sizes_take_binary_suffixes():
    assert [sh.parse_size(s) for s in ("1K", "64k", "1M", "1G", "4096", "2MiB")] == [
        1024, 65536, 2**20, 2**30, 4096, 2 * 2**20,
    ]  # fmt: skip
    with pytest.raises(sh.SweepUsageError, match="at least 4 bytes"):
        sh.parse_size("2")
    with pytest.raises(sh.SweepUsageError, match="not a size"):
        sh.parse_size("big")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"scaling": "sideways"}, "--scaling: choose one of weak, strong, both"),
        ({"gpus": ["x"]}, "--gpus: 'x' is not an integer"),
        ({"rounds": "0"}, "--rounds: values must be >= 1"),
        ({"warmup_steps": "-1"}, "--warmup-steps: values must be >= 0"),
        ({"cpu_replicas": "0"}, "--cpu-replicas: values must be >= 1"),
        ({"worker_timeout": "0"}, "--worker-timeout: must be > 0 seconds"),
        ({"device_mode": "all"}, "--device-mode: choose one of single, multi, custom"),
        ({"cpu_replicas": "1", "gpus": ["2"]}, "more devices than selected"),
    ],
)
def test_bad_options_are_one_message(tmp_path, given, message):
    with pytest.raises(sh.SweepUsageError, match=message.replace("(", r"\(")):
        options(report_dir=str(tmp_path), **given)


def test_cases_are_grouped_by_count_and_strong_scaling_adds_configs(tmp_path):
    opts, _ = options(cpu_replicas="4", gpus=["1", "2", "4"], batch_sizes=["8", "12"], scaling="both",
                      allreduce_bytes=["1K"], report_dir=str(tmp_path))  # fmt: skip
    # strong: global 8 -> 4 per device on 2, 2 on 4; global 12 -> 6 on 2, 3 on 4
    assert sh.training_configs(opts) == [(1, 8), (1, 12), (2, 4), (2, 6), (2, 8), (2, 12), (4, 2), (4, 3),
                                         (4, 8), (4, 12)]  # fmt: skip
    cases = sh.plan_cases(opts)
    assert [c.gpus for c in cases] == sorted(c.gpus for c in cases)
    assert [c.id for c in cases if c.gpus == 2] == [
        "2dev-b4", "2dev-b6", "2dev-b8", "2dev-b12", "2dev-b4", "2dev-b6", "2dev-b8", "2dev-b12", "2dev-1KiB",
    ]  # fmt: skip
    assert not [c for c in cases if c.gpus == 1 and c.benchmark == "allreduce"]


def test_large_messages_run_fewer_iterations(tmp_path):
    opts, _ = options(cpu_replicas="2", report_dir=str(tmp_path))
    assert sh.allreduce_iters(opts, 1024) == 20
    assert sh.allreduce_iters(opts, 256 * 2**20) == 4
    assert sh.allreduce_iters(opts, 2 * 2**30) == 1


def test_process_start_is_before_now():
    import time

    started = sh.process_started_at()
    assert started is None or started <= time.time()
