"""The sweep's options, device counts and cases without TensorFlow (bench/sweep_options.py,
bench/sweep_cases.py, bench/sweep_env.py), parsed as pytest parses them: the same declarations,
so a bad value is rejected by its converter with the flag's name, the rest by check_options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sweep_cases
import sweep_env
import sweep_options as so
import sweep_plan

from diagnostics.selection import SelectionOptions


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # pytest turns this into its usage error (exit 4)
        raise pytest.UsageError(message)


def options(*argv: str, env: dict[str, str] | None = None) -> tuple[so.SweepOptions, Any]:
    """Parse `argv` with the declarations bench/conftest.py gives pytest, then check_options (in
    `env`: no cluster unless given)."""
    parser = _Parser()
    so.add_sweep_options(parser.add_argument)
    namespace = parser.parse_args(argv)
    return so.check_options(lambda name: getattr(namespace, so.PREFIX + name), env or {})


def test_every_field_but_the_devices_is_an_option_of_the_table():
    import dataclasses

    from_table = {row.field.name for row in so.ROWS}
    fields = {f.name for f in dataclasses.fields(so.SweepOptions)}
    # from the plan and the cluster
    assert fields - from_table == {"selection", "device_kind", "xla_not_applicable", "placement"}
    flags = [row.flag for row in so.ROWS]
    assert len(set(flags)) == len(flags) and "--gpus" in flags and flags[-1] == "--harness-min-share"


def test_defaults_on_cpu_replicas(tmp_path):
    opts, plan = options("--cpu-replicas", "4", "--report-dir", str(tmp_path))
    assert plan.kind == "cpu" and opts.gpu_counts == (1, 2, 4)
    assert opts.batch_sizes == (32, 64, 128) and opts.scaling == "weak" and opts.model == "cnn"
    assert opts.allreduce_bytes[0] == 1024 and opts.allreduce_bytes[-1] == 256 * 2**20
    assert (opts.steps, opts.rounds, opts.warmup_steps, opts.allreduce_iters) == (20, 10, 10, 20)
    assert (opts.worker_timeout, opts.worker_start_timeout) == (300.0, 600.0)
    assert opts.selection == SelectionOptions()  # multi, 8 GB minimum, no display GPUs


def test_list_values_take_commas_and_are_sorted_without_repeats(tmp_path):
    opts, _ = options("--cpu-replicas", "4", "--gpus", "4,1", "2", "1", "--batch-sizes", "64", "8,64",
                      "--allreduce-bytes", "1M", "1K", "1024", "--report-dir", str(tmp_path))  # fmt: skip
    assert opts.gpu_counts == (1, 2, 4) and opts.batch_sizes == (8, 64)
    assert opts.allreduce_bytes == (1024, 2**20)


def test_selection_flags_become_one_selection_options(tmp_path):
    opts, _ = options("--cpu-replicas", "1", "--device-mode", "single", "--min-gpu-memory", "24",
                      "--include-display-gpus", "--report-dir", str(tmp_path))  # fmt: skip
    assert opts.selection == SelectionOptions("single", (), 24.0, True)


def test_default_counts_end_at_the_number_selected():
    assert sweep_plan.default_counts(1) == (1,)
    assert sweep_plan.default_counts(3) == (1, 2, 3)
    assert sweep_plan.default_counts(8) == (1, 2, 4, 8)


def test_sizes_take_binary_suffixes():
    from common.cli import size_in_bytes

    assert [size_in_bytes(s) for s in ("1K", "64k", "1M", "1G", "4096", "2MiB")] == [
        1024, 65536, 2**20, 2**30, 4096, 2 * 2**20,
    ]  # fmt: skip
    with pytest.raises(argparse.ArgumentTypeError, match="at least 4 bytes"):
        size_in_bytes("2")
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        size_in_bytes("big")


# A bad value: argparse's usage error names the flag ("argument --rounds: ...") and the reason.
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scaling", "sideways"],
         "argument --scaling: invalid choice: 'sideways' (choose from 'weak', 'strong', 'both')"),
        (["--gpus", "x"], "argument --gpus: 'x' is not an integer"),
        (["--gpus", "0"], "argument --gpus: values must be >= 1, got 0"),
        (["--batch-sizes", "16", "-8"], "argument --batch-sizes: values must be >= 1, got -8"),
        (["--steps", "0"], "argument --steps: values must be >= 1, got 0"),
        (["--rounds", "0"], "argument --rounds: values must be >= 1, got 0"),
        (["--rounds", "1,2"], "argument --rounds: expected one integer, got '1,2'"),
        (["--warmup-steps", "-1"], "argument --warmup-steps: values must be >= 0, got -1"),
        (["--cpu-replicas", "0"], "argument --cpu-replicas: values must be >= 1, got 0"),
        (["--cpu-replicas", "x"], "argument --cpu-replicas: 'x' is not an integer"),
        (["--worker-timeout", "0"], "argument --worker-timeout: must be > 0 seconds, got 0"),
        (["--worker-start-timeout", "soon"],
         "argument --worker-start-timeout: 'soon' is not a number of seconds"),
        (["--allreduce-bytes", "2"],
         "argument --allreduce-bytes: sizes must be at least 4 bytes (one float32), got 2"),
        (["--device-mode", "all"],
         "argument --device-mode: invalid choice: 'all' (choose from 'single', 'multi', 'custom')"),
        (["--min-gpu-memory", "lots"], "argument --min-gpu-memory: 'lots' is not a number"),
        (["--model", "nope"], "argument --model: unknown --model 'nope': known models are cnn, mlp"),
        (["--model", "nosuch.py:build"], "argument --model: --model nosuch.py:build: no such file"),
    ],
)  # fmt: skip
def test_bad_values_are_one_message_naming_the_flag(tmp_path, argv, message):
    with pytest.raises(pytest.UsageError) as caught:
        options("--report-dir", str(tmp_path), *argv)
    assert str(caught.value).startswith(message)


# What needs several options, the file system or the devices: check_options, one line.
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cpu-replicas", "1", "--gpus", "2"], "--gpus 2: more devices than selected (--cpu-replicas 1)"),
        (["--cpu-replicas", "1", "--custom-gpus", "0"], "--custom-gpus needs --device-mode custom"),
        (["--cpu-replicas", "1", "--device-mode", "custom"], "--device-mode custom needs --custom-gpus"),
        (["--cpu-replicas", "1", "--min-gpu-memory", "-1"], "--min-gpu-memory must be a number >= 0, got -1"),
    ],
)  # fmt: skip
def test_bad_combinations_are_one_message(tmp_path, argv, message):
    with pytest.raises(so.SweepUsageError) as caught:
        options("--report-dir", str(tmp_path), *argv)
    assert str(caught.value).startswith(message)


def test_unwritable_report_dir_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(so.SweepUsageError, match=r"^--report-dir: report directory .* cannot be created"):
        options("--cpu-replicas", "1", "--report-dir", str(blocker / "report"))


def test_cases_are_grouped_by_count_and_strong_scaling_adds_configs(tmp_path):
    opts, _ = options("--cpu-replicas", "4", "--gpus", "1", "2", "4", "--batch-sizes", "8", "12", "--scaling",
                      "both", "--allreduce-bytes", "1K", "--report-dir", str(tmp_path))  # fmt: skip
    # strong: global 8 -> 4 per device on 2, 2 on 4; global 12 -> 6 on 2, 3 on 4
    assert sweep_cases.training_configs(opts) == [(1, 8), (1, 12), (2, 4), (2, 6), (2, 8), (2, 12), (4, 2),
                                                  (4, 3), (4, 8), (4, 12)]  # fmt: skip
    cases = sweep_cases.plan_cases(opts)
    assert [c.gpus for c in cases] == sorted(c.gpus for c in cases)
    assert [c.id for c in cases if c.gpus == 2] == [
        "2dev-b4", "2dev-b6", "2dev-b8", "2dev-b12", "2dev-b4", "2dev-b6", "2dev-b8", "2dev-b12", "2dev-1KiB",
    ]  # fmt: skip
    assert not [c for c in cases if c.gpus == 1 and c.benchmark == "allreduce"]


def test_large_messages_run_fewer_iterations(tmp_path):
    opts, _ = options("--cpu-replicas", "2", "--report-dir", str(tmp_path))
    assert sweep_cases.allreduce_iters(opts, 1024) == 20
    assert sweep_cases.allreduce_iters(opts, 256 * 2**20) == 4
    assert sweep_cases.allreduce_iters(opts, 2 * 2**30) == 1


def test_process_start_is_before_now():
    import time

    started = sweep_env.process_started_at()
    assert started is None or started <= time.time()


def test_machine_info_has_the_gpus_stable_fields_and_the_stack():
    """What pytest-benchmark's machine_info gains: from a recorded 8 x H100 inventory, no TensorFlow."""
    from training.devices.setup import plan_devices

    plan = plan_devices(inventory=str(Path(__file__).parents[1] / "fixtures" / "inv-dgx-8xh100.json"))
    info = sweep_env.machine_info(plan)
    assert info["benchmark_device_kind"] == "gpu" and len(info["benchmark_devices"]) == plan.num_replicas
    assert len(info["gpus"]) == 8 and info["nvidia_driver"] == plan.inventory.driver_version
    first = info["gpus"][0]
    assert set(first) >= set(sweep_env.MACHINE_GPU_FIELDS) and "H100" in first["name"]
    assert "temperature_c" not in first and "memory_used_mib" not in first  # they change run to run
    assert {"tensorflow", "nccl", "tf_build"} <= set(info)


def test_the_conftest_hook_adds_the_plan_s_gpus_to_pytest_benchmark_s_machine_info(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_conftest", Path(sweep_env.__file__).with_name("conftest.py")
    )
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    _opts, plan = options("--cpu-replicas", "2", "--report-dir", str(tmp_path))

    class Config:
        stash = pytest.Stash()

    Config.stash[conftest._OPTIONS] = (_opts, plan)
    info: dict[str, Any] = {"node": "here"}
    conftest.pytest_benchmark_update_machine_info(Config(), info)
    assert info["node"] == "here" and info["benchmark_device_kind"] == "cpu"
    assert info["benchmark_devices"] == ["/cpu:0 = CPU logical device 0", "/cpu:1 = CPU logical device 1"]
    assert "gpus" in info and "nvidia_driver" in info


def test_variant_axes_are_lists_with_the_default_first(tmp_path):
    opts, _ = options("--cpu-replicas", "2", "--jit-compile", "on", "off", "on", "--mixed-precision",
                      "on", "--cross-device-ops", "hierarchical", "auto", "nccl",
                      "--report-dir", str(tmp_path))  # fmt: skip
    assert opts.jit_compile == (False, True) and opts.mixed_precision == (True,)
    assert opts.cross_device_ops == ("auto", "hierarchical", "nccl") and opts.device_kind == "cpu"
    plain, _ = options("--cpu-replicas", "2", "--report-dir", str(tmp_path))
    assert plain.jit_compile == plain.mixed_precision == (False,) and plain.cross_device_ops == ("auto",)
    assert plain.steps_per_execution == ("auto",)
    steps, _ = options("--cpu-replicas", "2", "--steps-per-execution", "20", "1", "AUTO", "20",
                       "--report-dir", str(tmp_path))  # fmt: skip
    assert steps.steps_per_execution == ("auto", 20, 1)  # the trainer's default first: the baseline
    cases = sweep_cases.plan_cases(steps)
    assert [c.id for c in cases if c.benchmark == "train" and c.gpus == 2 and c.batch_per_gpu == 32] == [
        "2dev-b32", "2dev-b32-k20", "2dev-b32-k1"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jit-compile", "maybe"],
         "argument --jit-compile: invalid choice: 'maybe' (choose from 'on', 'off')"),
        (["--mixed-precision", "off", "1"], "argument --mixed-precision: invalid choice: '1'"),
        (["--cross-device-ops", "ring"],
         "argument --cross-device-ops: invalid choice: 'ring' (choose from 'auto'"),
        (["--steps-per-execution", "0"],
         "argument --steps-per-execution: must be from 1 to 1000 steps (or 'auto'), got '0'"),
        (["--steps-per-execution", "auto", "many"],
         "argument --steps-per-execution: must be 'auto' or a number of steps >= 1, got 'many'"),
    ],
)  # fmt: skip
def test_an_unknown_variant_value_is_a_usage_error_naming_the_flag(tmp_path, argv, message):
    with pytest.raises(pytest.UsageError) as caught:
        options("--cpu-replicas", "2", "--report-dir", str(tmp_path), *argv)
    assert str(caught.value).startswith(message)


def test_every_training_case_runs_for_every_variant_and_nccl_on_cpu_is_not_applicable(tmp_path):
    opts, _ = options("--cpu-replicas", "2", "--gpus", "1", "2", "--batch-sizes", "8", "--allreduce-bytes",
                      "1K", "--jit-compile", "off", "on", "--mixed-precision", "off", "on",
                      "--cross-device-ops", "auto", "nccl", "hierarchical",
                      "--report-dir", str(tmp_path))  # fmt: skip
    cases = sweep_cases.plan_cases(opts)
    assert [c.id for c in cases] == [
        "1dev-b8", "1dev-b8-mixed", "1dev-b8-xla", "1dev-b8-xla-mixed", "1dev-b8",  # then the pipeline
        "2dev-b8", "2dev-b8-mixed", "2dev-b8-xla", "2dev-b8-xla-mixed", "2dev-b8", "2dev-1KiB",
        "2dev-b8-hierarchical", "2dev-b8-mixed-hierarchical", "2dev-b8-xla-hierarchical",
        "2dev-b8-xla-mixed-hierarchical", "2dev-1KiB-hierarchical",
    ]  # fmt: skip
    assert [c.benchmark for c in cases].count("input") == 2  # the pipeline depends on no axis
    workers = [(c.gpus, c.cross_device_ops) for c in cases]
    assert list(dict.fromkeys(workers)) == [(1, "auto"), (2, "auto"), (2, "hierarchical")]  # one start each
    assert sweep_cases.not_applicable(opts) == [
        {"gpus": 1, "variant": {"cross_device_ops": "nccl"}, "reason": "NCCL all-reduce needs GPUs: these "
         "are CPU logical devices"},
        {"gpus": 1, "variant": {"cross_device_ops": "hierarchical"}, "reason": "one device has nothing to "
         "all-reduce: only the first cross-device ops runs"},
        {"gpus": 2, "variant": {"cross_device_ops": "nccl"}, "reason": "NCCL all-reduce needs GPUs: these "
         "are CPU logical devices"},
    ]  # fmt: skip
    assert cases[2].variant == {
        "jit_compile": True, "mixed_precision": False, "cross_device_ops": "auto",
        "steps_per_execution": "auto",
    }  # fmt: skip
    assert cases[-1].variant == {"cross_device_ops": "hierarchical"} and cases[4].variant == {}


def test_nccl_runs_on_gpus(tmp_path):
    opts, _ = options("--cpu-replicas", "2", "--cross-device-ops", "nccl", "--report-dir", str(tmp_path))
    gpu_opts = so.SweepOptions(**{**vars(opts), "device_kind": "gpu"})
    assert sweep_cases.not_applicable(gpu_opts) == []
    assert {c.cross_device_ops for c in sweep_cases.plan_cases(gpu_opts)} == {"nccl"}


def test_image_size_and_data_are_checked_before_anything_runs(tmp_path):
    import sweep

    opts, _ = options("--cpu-replicas", "1", "--image-size", "224", "--report-dir", str(tmp_path))
    assert opts.image_size == 224 and opts.data is None
    assert sweep.data_request(opts) == {"image_size": 224}
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"")
    opts, _ = options("--cpu-replicas", "1", "--data", str(npz), "--report-dir", str(tmp_path))
    assert sweep.data_request(opts) == {"data": str(npz.absolute())}
    with pytest.raises(so.SweepUsageError, match=r"^--data .*nope: no such file or folder$"):
        options("--cpu-replicas", "1", "--data", str(tmp_path / "nope"), "--report-dir", str(tmp_path))
    with pytest.raises(so.SweepUsageError, match=r"^--image-size sets the size of synthetic images"):
        options("--cpu-replicas", "1", "--data", str(npz), "--image-size", "8", "--report-dir", str(tmp_path))
    with pytest.raises(pytest.UsageError, match=r"^argument --image-size: values must be >= 1, got 0"):
        options("--cpu-replicas", "1", "--image-size", "0", "--report-dir", str(tmp_path))


def test_the_harness_share_is_reported_not_asserted_unless_asked_for():
    """A user's sweep is never failed for the harness's own share; --harness-min-share opts in."""
    assert options("--cpu-replicas", "2")[0].harness_min_share == 0
    assert options("--cpu-replicas", "2", "--harness-min-share", "0.6")[0].harness_min_share == 0.6


PROGRESS = [
    (sweep_cases.Case("train", 2, 32), {"global_batch": 64, "steps": 10, "round_seconds": [0.5, 0.4, 0.6]},
     None, "train 2 CPU devices x 32: 1,280 samples/s"),
    (sweep_cases.Case("input", 1, 8), {"global_batch": 8, "steps": 100, "round_seconds": [0.1]},
     None, "input 1 CPU device x 8: 8,000 samples/s"),
    (sweep_cases.Case("allreduce", 2, nbytes=2**20), {"bytes": 2**20, "iters": 20, "round_seconds": [0.01]},
     None, "all-reduce 2 CPU devices 1 MiB: 2.1 GB/s algbw"),
    (sweep_cases.Case("train", 2, 32, jit_compile=True),
     {"global_batch": 64, "steps": 1, "round_seconds": [1.0, 3.0]},
     None, "train 2 CPU devices x 32 (XLA): 32 samples/s"),
    (sweep_cases.Case("train", 2, 16), None, "OOM at 16 per CPU device on 2 CPU devices: out of memory",
     "OOM at 16 per CPU device on 2 CPU devices: out of memory"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "row", "failure", "line"), PROGRESS, ids=[p[3][:24] for p in PROGRESS])
def test_each_case_has_a_progress_line_with_its_median_rate(case, row, failure, line):
    assert sweep_cases.progress_line(case, row, failure, "CPU device") == line


def test_xla_is_not_applicable_on_rtx_5090s_with_a_build_without_sm_120(tmp_path):
    """Recorded 3 x RTX 5090 with TF 2.21's build (sm_60 ... compute_90): the XLA variant is
    recorded as not applicable, with the reason, and no XLA case is planned; on 8 x H100 it runs."""
    import dataclasses

    from training.devices.setup import plan_devices

    fixtures = Path(__file__).parents[1] / "fixtures"
    opts, _ = options("--cpu-replicas", "2", "--jit-compile", "off", "on", "--report-dir", str(tmp_path))
    for fixture, blocked in (("inv-3x5090-tf221-nccl2251.json", True), ("inv-dgx-8xh100.json", False)):
        plan = plan_devices(
            SelectionOptions(mode="custom", custom_ids=(0, 1)), inventory=str(fixtures / fixture)
        )
        reasons = sweep_plan.xla_not_applicable(plan, (1, 2))
        assert bool(reasons) == blocked, (fixture, reasons)
        gpu_opts = dataclasses.replace(opts, device_kind="gpu", gpu_counts=(1, 2), xla_not_applicable=reasons)
        xla_cases = [c for c in sweep_cases.plan_cases(gpu_opts) if c.benchmark == "train" and c.jit_compile]
        skipped = [r for r in sweep_cases.not_applicable(gpu_opts) if r["variant"] == {"jit_compile": True}]
        if blocked:
            assert not xla_cases and [r["gpus"] for r in skipped] == [1, 2]
            assert "sm_120" in skipped[0]["reason"] and "tensorflow/tensorflow#111958" in skipped[0]["reason"]
        else:
            assert xla_cases and not skipped


def test_the_sweep_takes_a_users_model_as_the_trainer_does(tmp_path):
    """--model PATH.py:FUNCTION passes the trainer's checks before TensorFlow (bad ones are usage
    errors naming --model, above); a missing function in the file is found without running it."""
    tiny = Path(__file__).parents[1] / "fixtures" / "models" / "tiny.py"
    opts, _ = options("--cpu-replicas", "1", "--model", f"{tiny}:build", "--report-dir", str(tmp_path))
    assert opts.model == f"{tiny}:build"
    with pytest.raises(pytest.UsageError, match="has no function biuld"):
        options("--cpu-replicas", "1", "--model", f"{tiny}:biuld", "--report-dir", str(tmp_path))
