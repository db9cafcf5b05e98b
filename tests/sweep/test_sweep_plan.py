"""Where the sweep runs (bench/sweep_plan.py), without TensorFlow: the cluster from `--local-workers`
or TF_CONFIG, the device counts each worker sweeps, what cannot run together (one usage line), and
the worker processes one step starts. GPU machines are recorded inventories."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sweep_options as so
import sweep_plan
from test_sweep_options import options

from diagnostics.selection import SelectionOptions
from training.devices.setup import plan_devices

TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]}}


def tf_config(index: int) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({**TWO_WORKERS, "task": {"type": "worker", "index": index}})}


def test_local_workers_on_cpu_sweep_one_device_each(tmp_path):
    opts, plan = options("--local-workers", "2", "--report-dir", str(tmp_path))
    assert opts.placement == sweep_plan.Placement(workers=2, local=True)
    assert opts.gpu_counts == (1,) and plan.kind == "cpu"
    launches = sweep_plan.launches(plan, opts.placement, 1, "auto", 30.0)
    configs = [json.loads(launch.env["TF_CONFIG"]) for launch in launches]
    # one cluster of fresh localhost ports, each worker its own task
    assert configs[0]["cluster"] == configs[1]["cluster"] and len(configs[0]["cluster"]["worker"]) == 2
    assert [c["task"] for c in configs] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    for launch in launches:
        args = list(launch.args)
        assert args[args.index("--cpu-replicas") + 1] == "1" and args[-2:] == ["--cluster", "tf-config"]
        assert args[args.index("--collective-timeout") + 1] == "30"
    assert [launch.name for launch in launches] == ["worker 0", "worker 1"]


def test_one_machine_is_one_launch_with_the_cross_device_ops(tmp_path):
    opts, plan = options("--cpu-replicas", "2", "--report-dir", str(tmp_path))
    assert not opts.placement.several and opts.placement.is_chief
    (launch,) = sweep_plan.launches(plan, opts.placement, 2, "hierarchical", 30.0)
    assert list(launch.args) == ["--cpu-replicas", "2", "--cross-device-ops", "hierarchical"]
    assert not launch.env


def test_tf_config_makes_this_process_one_task_and_only_the_chief_writes(tmp_path):
    for index in (0, 1):
        opts, plan = options("--report-dir", str(tmp_path), env=tf_config(index))
        placement = opts.placement
        assert placement.workers == 2 and not placement.local and placement.task is not None
        assert placement.is_chief == (index == 0)
        (launch,) = sweep_plan.launches(plan, placement, 1, "auto", 300.0)
        assert list(launch.args)[-2:] == ["--cluster", "tf-config"] and not launch.env  # inherits TF_CONFIG
    opts, _ = options("--report-dir", str(tmp_path), "--cluster", "none", env=tf_config(1))
    assert not opts.placement.several  # --cluster none: this machine alone, TF_CONFIG or not


def test_local_gpu_workers_each_take_their_own_gpus(fixture_path):
    plan = plan_devices(
        SelectionOptions(mode="custom", custom_ids=(0, 1, 2, 3)),
        inventory=str(fixture_path("example-server-4xa100.json")),
    )
    placement, plan = sweep_plan.place("auto", 2, plan, {})
    assert sweep_plan.per_worker(plan, placement) == 2
    assert sweep_plan.device_counts((), plan, placement, "4 GPU(s)") == (1, 2)
    uuids = [g.uuid for g in plan.gpus]
    for count in (1, 2):
        launches = sweep_plan.launches(plan, placement, count, "auto", 300.0)
        given = [[a for a in launch.args if a in uuids] for launch in launches]
        # disjoint slices of the first count x 2 GPUs
        assert given == [uuids[:count], uuids[count : 2 * count]]
    with pytest.raises(sweep_plan.PlacementError, match="leave 2 each"):
        sweep_plan.device_counts((4,), plan, placement, "4 GPU(s)")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--local-workers", "2", "--cpu-replicas", "2"], {}, "drop --cpu-replicas"),
        (["--local-workers", "2", "--gpus", "2"], {}, "each has one CPU device"),
        (["--local-workers", "2"], tf_config(0), "TF_CONFIG is set"),
        (["--local-workers", "2", "--cluster", "slurm"], {}, "drop --cluster slurm"),
        (["--local-workers", "2", "--cross-device-ops", "auto", "reduce-to-one"], {}, "drop --cross-device"),
        (["--cluster", "tf-config"], {}, "TF_CONFIG is not set"),
    ],
)
def test_what_cannot_run_across_workers_is_one_usage_line(tmp_path, args, env, message):
    with pytest.raises(so.SweepUsageError, match=message) as raised:
        options(*args, "--report-dir", str(tmp_path), env=env)
    assert "\n" not in str(raised.value)
