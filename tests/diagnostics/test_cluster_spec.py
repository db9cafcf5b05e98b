"""diagnostics.cluster: TF_CONFIG's every refusal, the ClusterTask the trainer builds on, choosing a
cluster, and Slurm parity with TensorFlow's own SlurmClusterResolver (the one test that imports
TensorFlow, once, for all its layouts)."""

from __future__ import annotations

import json
import pickle
import socket

import pytest

from common.errors import UserError
from diagnostics.cluster import (
    CLUSTER_MODES,
    SLURM_PORT_BASE,
    ClusterError,
    ClusterTask,
    discover,
    expand_hostlist,
    expand_tasks_per_node,
    in_slurm_step,
    parse_tf_config,
    slurm_task,
)


def tf_config(cluster: object, task: object = None) -> str:
    return json.dumps({"cluster": cluster, "task": task or {"type": "worker", "index": 0}})


TWO = {"worker": ["node1:2222", "node2:2222"]}

# -- TF_CONFIG ---------------------------------------------------------------------------------------


def test_a_standard_tf_config_gives_the_task_and_its_equivalent():
    task = parse_tf_config(
        tf_config({"worker": ["w0:2222", "w1:2222"], "chief": ["c0:2222"]}, {"type": "worker", "index": 1})
    )
    assert task.source == "tf-config" and (task.task_type, task.task_index) == ("worker", 1)
    assert task.jobs == {"chief": ("c0:2222",), "worker": ("w0:2222", "w1:2222")}
    assert list(task.jobs) == ["chief", "worker"]  # a fixed order, whatever TF_CONFIG's
    assert task.address == "w1:2222" and task.name == "worker 1"
    assert task.num_workers == 3 and not task.is_chief
    assert (task.local_rank, task.local_tasks) == (0, 1)
    assert parse_tf_config(json.dumps(task.tf_config())) == task
    assert task.to_dict() == {
        "source": "tf-config",
        "cluster": {"chief": ["c0:2222"], "worker": ["w0:2222", "w1:2222"]},
        "task": {"type": "worker", "index": 1},
        "workers": 3,
    }
    assert pickle.loads(pickle.dumps(task)) == task and hash(task) == hash(pickle.loads(pickle.dumps(task)))


def test_the_chief_is_the_chief_job_or_else_worker_0():
    with_chief = {"chief": ["c:1"], "worker": ["w:1"]}
    assert parse_tf_config(tf_config(with_chief, {"type": "chief", "index": 0})).is_chief
    assert not parse_tf_config(tf_config(with_chief, {"type": "worker", "index": 0})).is_chief
    assert parse_tf_config(tf_config(TWO, {"type": "worker", "index": 0})).is_chief
    assert not parse_tf_config(tf_config(TWO, {"type": "worker", "index": 1})).is_chief


def test_an_evaluator_job_is_tolerated_but_does_not_train_and_cannot_be_this_task():
    cluster = {"worker": ["w:1", "w:2"], "evaluator": ["e:1"]}
    task = parse_tf_config(tf_config(cluster))
    assert task.num_workers == 2 and task.jobs["evaluator"] == ("e:1",)
    with pytest.raises(ClusterError, match="evaluator"):
        parse_tf_config(tf_config(cluster, {"type": "evaluator", "index": 0}))


def test_ipv6_and_ip_addresses_are_accepted():
    task = parse_tf_config(tf_config({"worker": ["[::1]:2222", "10.0.0.2:2222"]}))
    assert task.address == "[::1]:2222"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", ["not JSON", '"cluster"']),
        ('["worker"]', ["not a JSON object"]),
        ('{"task": {"type": "worker", "index": 0}}', ["no cluster"]),
        (tf_config({}), ["no cluster"]),
        (tf_config({"ps": ["p:1"], "worker": ["w:1"]}), ['"ps"', "ParameterServerStrategy"]),
        (tf_config({"trainer": ["t:1"]}), ["'trainer'", "cannot use"]),
        (tf_config({"evaluator": ["e:1"]}), ['no "chief" or "worker"']),
        (tf_config({"worker": "w:1"}), ["must be a list"]),
        (tf_config({"worker": []}), ["no tasks"]),
        (tf_config({"chief": ["a:1", "b:1"], "worker": ["w:1"]}), ["'chief'", "only one"]),
        (tf_config({"worker": ["node1"]}), ["'node1'", "not host:port"]),
        (tf_config({"worker": ["node1:0"]}), ["'0'", "1 to 65535"]),
        (tf_config({"worker": ["node1:70000"]}), ["70000", "1 to 65535"]),
        (tf_config({"worker": ["node1:http"]}), ["'http'"]),
        (tf_config({"worker": ["grpc://node1:2222"]}), ["no scheme"]),
        (tf_config({"worker": [":2222"]}), ["not host:port"]),
        (tf_config({"worker": ["::1:2222"]}), ["host name"]),
        (tf_config({"worker": ["w:1", "w:1"]}), ["w:1 twice", "worker 0 and worker 1"]),
        (tf_config({"chief": ["w:1"], "worker": ["w:1"]}), ["twice", "chief 0"]),
        (json.dumps({"cluster": TWO}), ["no task"]),
        (tf_config(TWO, {"type": "chief", "index": 0}), ["'chief'", "not a job"]),
        (tf_config(TWO, {"index": 0}), ["None", "not a job"]),
        (tf_config(TWO, {"type": "worker"}), ["has no index"]),
        (tf_config(TWO, {"type": "worker", "index": "1"}), ['"1"', "not an integer"]),
        (tf_config(TWO, {"type": "worker", "index": True}), ["not an integer"]),
        (tf_config(TWO, {"type": "worker", "index": 2}), ["index 2 is out of range", "0 to 1"]),
        (tf_config(TWO, {"type": "worker", "index": -1}), ["out of range"]),
    ],
)
def test_every_unusable_tf_config_is_one_line_naming_the_problem(text, words):
    with pytest.raises(ClusterError) as info:
        parse_tf_config(text)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert message.startswith("TF_CONFIG")
    for word in words:
        assert word in message, message


def test_a_task_built_directly_is_checked_and_copied():
    jobs = {"worker": ["a:1", "b:1"]}
    task = ClusterTask("tf-config", jobs, "worker", 1)
    jobs["worker"].append("c:1")  # the caller's list is not the task's
    assert task.jobs == {"worker": ("a:1", "b:1")}
    with pytest.raises(ClusterError, match="out of range"):
        ClusterTask("tf-config", {"worker": ("a:1",)}, "worker", 1)
    with pytest.raises(ClusterError, match="not a job"):
        ClusterTask("tf-config", {"worker": ("a:1",)}, "chief", 0)


# -- Slurm -------------------------------------------------------------------------------------------


def slurm_env(nodelist: str, per_node: str, tasks: int, rank: int, **extra: str) -> dict[str, str]:
    return {
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_STEP_TASKS_PER_NODE": per_node,
        **extra,
    }


# (nodelist, tasks per node, tasks): one node, three nodes, uneven, and hosts whose sorted order is
# not Slurm's (node10 sorts before node9), which the resolver sorts all the same.
LAYOUTS = [
    ("gpu01", "2", 2),
    ("node[01-03]", "2(x3)", 6),
    ("a1,b1", "2,1", 3),
    ("node[9-10]", "1(x2)", 2),
    ("z[1-2],a[5,7]", "1,2,1,1", 5),
]


def test_slurm_matches_tensorflows_resolver(monkeypatch):
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import SlurmClusterResolver

    for nodelist, per_node, tasks in LAYOUTS:
        for rank in range(tasks):
            env = slurm_env(nodelist, per_node, tasks, rank)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            # gpus_per_node=0 makes the resolver divide its GPUs in steps of 0 (a ValueError), and
            # fewer GPUs than tasks on a node drops tasks: one GPU per task keeps every task.
            most = max(expand_tasks_per_node(per_node))
            resolver = SlurmClusterResolver(port_base=8888, gpus_per_node=most, auto_set_gpu=False)
            ours = slurm_task(env)
            jobs = {job: list(addresses) for job, addresses in ours.jobs.items()}
            assert jobs == resolver.cluster_spec().as_dict(), (nodelist, per_node, rank)
            assert (ours.task_type, ours.task_index) == resolver.get_task_info(), (nodelist, rank)
            assert ours.source == "slurm" and ours.num_workers == tasks


def test_slurm_task_places_ports_per_node_and_counts_local_tasks():
    env = slurm_env("node[01-03]", "2(x3)", 6, 3, SLURM_LOCALID="1", SLURMD_NODENAME="node02")
    task = slurm_task(env)
    assert task.jobs["worker"] == tuple(f"node0{n}:{SLURM_PORT_BASE + k}" for n in (1, 2, 3) for k in (0, 1))
    assert task.address == "node02:8889" and task.local_rank == 1 and task.local_tasks == 2
    uneven = slurm_task(slurm_env("a1,b1", "2,1", 3, 2, SLURM_LOCALID="0", SLURMD_NODENAME="b1"))
    assert uneven.address == "b1:8888" and uneven.local_tasks == 1
    fallback = slurm_task(slurm_env("g", "2", 2, 1, SLURM_STEP_NUM_TASKS="", SLURM_NTASKS="2"))
    assert fallback.address == "g:8889"


def test_without_a_node_name_the_host_name_places_the_task(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "a1")
    task = slurm_task(slurm_env("a1,b1", "2,1", 3, 1))
    assert task.address == "a1:8889" and task.local_tasks == 2
    with pytest.raises(ClusterError, match="placed task 2 on a1"):
        slurm_task(slurm_env("a1,b1", "2,1", 3, 2))  # b1's task, but running on a1


def test_hostlists_expand_as_tensorflow_expands_them():
    assert expand_hostlist("n[1-2],m5,o[3-4,6,7-9]") == ["n1", "n2", "m5", "o3", "o4", "o6", "o7", "o8", "o9"]
    assert expand_hostlist("node[08-10]") == ["node08", "node09", "node10"]
    assert expand_hostlist("node[8-10]") == ["node8", "node9", "node10"]
    assert expand_tasks_per_node("3(x2),2,1") == [3, 3, 2, 1]
    for bad in ("n[1-2", "n[1-2]x", "a,,b", "n[a-b]", "n[1-2-3]"):
        with pytest.raises(ValueError):
            expand_hostlist(bad)
    with pytest.raises(ValueError):
        expand_tasks_per_node("2(x)")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (slurm_env("g", "2", 2, 0, SLURM_PROCID="x"), ["SLURM_PROCID", "not a number"]),
        ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}, ["SLURM_PROCID is not set", "srun"]),
        (slurm_env("", "2", 2, 0), ["SLURM_STEP_NODELIST is not set"]),
        (slurm_env("g", "", 2, 0), ["SLURM_STEP_TASKS_PER_NODE is not set"]),
        (slurm_env("n[1-2", "1(x2)", 2, 0), ["SLURM_STEP_NODELIST='n[1-2'"]),
        (slurm_env("n[1-2]", "two", 2, 0), ["SLURM_STEP_TASKS_PER_NODE='two'"]),
        (slurm_env("n[1-2]", "1(x2)", 3, 0), ["3 tasks", "places 2"]),
        (slurm_env("g", "2", 2, 2), ["SLURM_PROCID=2", "out of range"]),
        # block distribution puts task 0 on node9; the resolver sorts node10 first
        (slurm_env("node[9-10]", "1(x2)", 2, 0, SLURMD_NODENAME="node9"), ["on node9", "on node10"]),
        # cyclic distribution: task 1 is node a's second task, not b's first
        (slurm_env("a,b", "2,2", 4, 1, SLURM_LOCALID="0"), ["local task 0", "local task 1", "block"]),
    ],
)
def test_unusable_slurm_steps_are_one_line_naming_the_variable(env, words):
    with pytest.raises(ClusterError) as info:
        slurm_task(env)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_slurm_step_is_srun_with_more_than_one_task():
    assert in_slurm_step(slurm_env("g", "2", 2, 0))
    assert in_slurm_step({"SLURM_STEP_ID": "3", "SLURM_NTASKS": "4"})
    batch_script = {k: v for k, v in slurm_env("g", "2", 2, 0).items() if k != "SLURM_STEP_ID"}
    assert not in_slurm_step(batch_script)
    assert not in_slurm_step(slurm_env("g", "1", 1, 0))
    assert not in_slurm_step({})


# -- discover ----------------------------------------------------------------------------------------


def test_discover_prefers_tf_config_then_a_slurm_step_then_none():
    step = slurm_env("g", "2", 2, 1)
    with_tf = {**step, "TF_CONFIG": tf_config(TWO, {"type": "worker", "index": 1})}
    assert CLUSTER_MODES == ("auto", "tf-config", "slurm", "none")
    auto = discover("auto", with_tf)
    assert auto is not None and auto.source == "tf-config" and auto.address == "node2:2222"
    from_slurm = discover("auto", step)
    assert from_slurm is not None and from_slurm.source == "slurm" and from_slurm.address == "g:8889"
    assert discover("auto", {"TF_CONFIG": "  "}) is None
    assert discover("auto", slurm_env("g", "1", 1, 0)) is None
    assert discover("auto", {}) is None
    forced = discover("slurm", with_tf)
    assert forced is not None and forced.source == "slurm"
    assert discover("none", with_tf) is None
    with pytest.raises(ClusterError, match="not JSON"):
        discover("auto", {"TF_CONFIG": "{"})


@pytest.mark.parametrize(
    ("mode", "env", "words"),
    [
        ("tf-config", {}, ["TF_CONFIG is not set"]),
        ("tf-config", slurm_env("g", "2", 2, 0), ["TF_CONFIG is not set"]),
        ("slurm", {}, ["outside a Slurm job step", "srun"]),
        ("slurm", {"TF_CONFIG": tf_config(TWO)}, ["outside a Slurm job step"]),
        ("slurm", slurm_env("g", "1", 1, 0), ["one task", "--ntasks"]),
        ("mpi", {}, ["unknown cluster mode 'mpi'", "auto, tf-config, slurm, none"]),
    ],
)
def test_discover_refuses_what_a_mode_needs_but_does_not_have(mode, env, words):
    with pytest.raises(ClusterError) as info:
        discover(mode, env)
    for word in words:
        assert word in str(info.value), str(info.value)
