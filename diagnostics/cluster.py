"""Which multi-worker cluster this process belongs to, read without TensorFlow: from `TF_CONFIG`, or
from a Slurm job step exactly as TensorFlow's `SlurmClusterResolver(port_base=8888,
auto_set_gpu=False)` computes it. The trainer builds its `MultiWorkerMirroredStrategy` from the
`ClusterTask` this returns; `gpudiag check` (the `cluster` check) judges the same object before a
run, so both read the environment one way.

A `ClusterError` is bad input (one line, exit 2) and says what to fix.

Job types: MultiWorkerMirroredStrategy trains on "chief" (at most one task) and "worker" tasks. A
parameter-server job ("ps") or any other name is refused. An "evaluator" job is tolerated in the
cluster (TensorFlow leaves it out of the collective group, so it never blocks training), but this
process cannot be the evaluator: the trainer evaluates in-process and runs no side-car evaluator.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import UserError

CLUSTER_MODES = ("auto", "tf-config", "slurm", "none")
SLURM_PORT_BASE = 8888  # SlurmClusterResolver's default port_base

TRAINING_JOBS = ("chief", "worker")
# The order jobs are kept in; also every job name a cluster may have.
_JOB_ORDER = (*TRAINING_JOBS, "evaluator")
# A host name or IPv4 address (no scheme, no path); IPv6 goes in brackets, as gRPC writes it.
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]")


class ClusterError(UserError):
    """A cluster description that cannot be used: one line saying what is wrong and what to do."""


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster."""

    source: str  # "tf-config" or "slurm"
    jobs: Mapping[str, tuple[str, ...]]  # job name -> "host:port" addresses, in TF's order
    task_type: str
    task_index: int
    local_rank: int = 0  # Slurm: SLURM_LOCALID; TF_CONFIG: 0
    local_tasks: int = 1  # Slurm: tasks of this step on this node; TF_CONFIG: 1

    def __post_init__(self) -> None:
        # A copy with tuples, so a caller's dict of lists cannot change the cluster afterwards; a plain
        # dict (not a read-only proxy) so the task pickles and deep-copies.
        frozen = {str(job): tuple(self.jobs[job]) for job in sorted(self.jobs, key=_job_rank)}
        object.__setattr__(self, "jobs", frozen)
        if self.task_type not in self.jobs:
            raise ClusterError(f"task type {self.task_type!r} is not a job of the cluster ({_names(frozen)})")
        if not 0 <= self.task_index < len(self.jobs[self.task_type]):
            raise ClusterError(
                f"task index {self.task_index} is out of range: job {self.task_type!r} has "
                f"{len(self.jobs[self.task_type])} task(s)"
            )

    def __hash__(self) -> int:
        fields = (self.task_type, self.task_index, self.local_rank, self.local_tasks)
        return hash((self.source, tuple(self.jobs.items()), *fields))

    @property
    def address(self) -> str:
        """This task's host:port."""
        return self.jobs[self.task_type][self.task_index]

    @property
    def num_workers(self) -> int:
        """Tasks that train: chief and workers (an evaluator does not)."""
        return sum(len(self.jobs.get(job, ())) for job in TRAINING_JOBS)

    @property
    def is_chief(self) -> bool:
        """The chief task if the cluster has a "chief" job, else worker 0 (TensorFlow's rule)."""
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"

    def tf_config(self) -> dict[str, Any]:
        """The equivalent TF_CONFIG."""
        return {
            "cluster": {job: list(addresses) for job, addresses in self.jobs.items()},
            "task": {"type": self.task_type, "index": self.task_index},
        }

    def to_dict(self) -> dict[str, Any]:
        """What the training summary records."""
        return {"source": self.source, **self.tf_config(), "workers": self.num_workers}


def _job_rank(job: str) -> tuple[int, str]:
    return (_JOB_ORDER.index(job) if job in _JOB_ORDER else len(_JOB_ORDER), job)


def _names(jobs: Mapping[str, Any]) -> str:
    return ", ".join(jobs) or "no jobs"


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of a "host:port" or "[v6]:port" address; ValueError says what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError("is not host:port")
    if not (_HOST.fullmatch(host) or _IPV6.fullmatch(host)):
        raise ValueError("has no valid host name before the port (no scheme, spaces or path)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"has port {port!r}: a port is a number from 1 to 65535")
    return host.strip("[]"), int(port)


# -- TF_CONFIG ---------------------------------------------------------------------------------------

_TF_CONFIG_FIX = 'TF_CONFIG must look like {"cluster": {"worker": ["host1:12345", "host2:12345"]}, ' + (
    '"task": {"type": "worker", "index": 0}}'
)


def parse_tf_config(text: str) -> ClusterTask:
    """The ClusterTask a TF_CONFIG describes; any problem is one ClusterError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(
            f"TF_CONFIG is not JSON ({exc.msg} at column {exc.colno}): {_TF_CONFIG_FIX}"
        ) from None
    if not isinstance(data, dict):
        raise ClusterError(f"TF_CONFIG is not a JSON object: {_TF_CONFIG_FIX}")
    cluster = data.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterError(f"TF_CONFIG has no cluster (or an empty one): {_TF_CONFIG_FIX}")
    jobs = {str(job): _parse_job(str(job), addresses) for job, addresses in cluster.items()}
    if not any(job in jobs for job in TRAINING_JOBS):
        raise ClusterError(
            'TF_CONFIG\'s cluster has no "chief" or "worker" job: list the training tasks there'
        )
    seen: dict[str, str] = {}
    for job, addresses in jobs.items():
        for index, address in enumerate(addresses):
            if address in seen:
                raise ClusterError(
                    f"TF_CONFIG lists {address} twice ({seen[address]} and {job} {index}): "
                    "each task needs its own host:port"
                )
            seen[address] = f"{job} {index}"
    task = data.get("task")
    if not isinstance(task, dict):
        raise ClusterError(
            'TF_CONFIG has no task: add "task": {"type": "worker", "index": N}, N different on each machine'
        )
    task_type, task_index = task.get("type"), task.get("index")
    if task_type == "evaluator":
        raise ClusterError(
            "TF_CONFIG's task is the evaluator: the trainer evaluates in-process and runs no side-car "
            'evaluator; start the trainer only as "chief" or "worker" tasks'
        )
    if not isinstance(task_type, str) or task_type not in jobs:
        raise ClusterError(
            f"TF_CONFIG's task type {task_type!r} is not a job of its cluster ({_names(jobs)}): "
            'set "task": {"type": ...} to one of them'
        )
    if not isinstance(task_index, int) or isinstance(task_index, bool):
        what = "has no index" if task_index is None else f"index {json.dumps(task_index)} is not an integer"
        raise ClusterError(f'TF_CONFIG\'s task {what}: set "index" to 0, 1, ... (its place in the job)')
    size = len(jobs[task_type])
    if not 0 <= task_index < size:
        raise ClusterError(
            f"TF_CONFIG's task index {task_index} is out of range: job {task_type!r} has {size} task(s), "
            f"so the index is 0 to {size - 1}"
        )
    return ClusterTask("tf-config", jobs, task_type, task_index)


def _parse_job(job: str, addresses: Any) -> tuple[str, ...]:
    if job == "ps":
        raise ClusterError(
            'TF_CONFIG has a "ps" (parameter server) job, which is for ParameterServerStrategy: '
            'MultiWorkerMirroredStrategy uses "chief" and "worker" jobs only; remove it'
        )
    if job not in _JOB_ORDER:
        raise ClusterError(
            f"TF_CONFIG has a job {job!r} that MultiWorkerMirroredStrategy cannot use: "
            'name the training tasks "worker" (and at most one "chief")'
        )
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise ClusterError(f'TF_CONFIG\'s job {job!r} must be a list of "host:port" strings')
    if not addresses:
        raise ClusterError(f"TF_CONFIG's job {job!r} has no tasks: list its host:port addresses or remove it")
    if job != "worker" and len(addresses) > 1:
        raise ClusterError(f"TF_CONFIG's job {job!r} has {len(addresses)} tasks; it may have only one")
    for address in addresses:
        try:
            split_address(address)
        except ValueError as exc:
            raise ClusterError(
                f"TF_CONFIG's job {job!r}: address {address!r} {exc} (e.g. node1:12345 or [::1]:12345)"
            ) from None
    return tuple(addresses)


# -- Slurm -------------------------------------------------------------------------------------------


def _step_tasks(env: Mapping[str, str]) -> str | None:
    return env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")


def in_slurm_step(env: Mapping[str, str]) -> bool:
    """Inside a Slurm job step (srun, not only sbatch's script) that has more than one task."""
    tasks = _step_tasks(env) or ""
    return "SLURM_STEP_ID" in env and tasks.isdigit() and int(tasks) > 1


def expand_hostlist(hostlist: str) -> list[str]:
    """A Slurm host list ("n[1-2],m5,o[3-4,6]") as host names, in order, not deduplicated: exactly
    SlurmClusterResolver's expand_hostlist (zero padding from the range's first number; a range
    only at the end of a name), with ValueError where it fails."""
    hosts: list[str] = []
    for part in _split_hostlist(hostlist):
        m = re.match(r"([^,[\]]*)(\[([^\]]+)\])?$", part)
        if m is None:
            raise ValueError(f"invalid part {part!r}")
        prefix = m.group(1) or ""
        if m.group(3) is None:
            hosts.append(prefix)
        else:
            hosts.extend(prefix + number for number in _expand_range(m.group(3)))
    return hosts


def _split_hostlist(hostlist: str) -> Iterator[str]:
    """Split at commas outside brackets."""
    in_brackets, current = False, ""
    for c in hostlist:
        if in_brackets:
            if c == "[":
                raise ValueError("nested '['")
            if c == "]":
                in_brackets = False
        elif c == "[":
            in_brackets = True
        elif c == ",":
            if not current:
                raise ValueError("empty host name")
            yield current
            current = ""
            continue
        current += c
    if current:
        yield current


def _expand_range(expression: str) -> Iterator[str]:
    for part in expression.split(","):
        bounds = part.split("-")
        if len(bounds) == 1:
            bounds = bounds * 2
        elif len(bounds) != 2:
            raise ValueError(f"invalid range {part!r}")
        digits = len(bounds[0])
        for i in range(int(bounds[0]), int(bounds[1]) + 1):
            yield str(i).zfill(digits)


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm's tasks per node ("3(x2),2,1" -> [3, 3, 2, 1]), as SlurmClusterResolver reads it."""
    result: list[int] = []
    for part in text.split(","):
        m = re.match(r"(\d+)(\(x(\d+)\))?$", part)
        if m is None:
            raise ValueError(f"invalid part {part!r}")
        result.extend([int(m.group(1))] * int(m.group(3) or 1))
    return result


def _slurm_int(name: str, value: str | None) -> int:
    if value is None:
        raise ClusterError(f"{name} is not set: is this a Slurm job step? Start the trainer with srun")
    if not value.strip().isdigit():
        raise ClusterError(f"{name}={value!r} is not a number: start the trainer with srun")
    return int(value)


def slurm_task(env: Mapping[str, str]) -> ClusterTask:
    """This Slurm task's place, as SlurmClusterResolver(port_base=8888, auto_set_gpu=False) computes it:
    hosts sorted by name, each host's tasks on ports 8888, 8889, ..., job "worker", index
    SLURM_PROCID. Also refuses a step whose tasks Slurm placed where the resolver does not expect
    them (it assumes block distribution: consecutive ranks on one node)."""
    rank = _slurm_int("SLURM_PROCID", env.get("SLURM_PROCID"))
    num_tasks = _slurm_int("SLURM_STEP_NUM_TASKS", _step_tasks(env))
    for name in ("SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE"):
        if not env.get(name):
            raise ClusterError(f"{name} is not set: is this a Slurm job step? Start the trainer with srun")
    nodelist, per_node = env["SLURM_STEP_NODELIST"], env["SLURM_STEP_TASKS_PER_NODE"]
    try:
        hosts = expand_hostlist(nodelist)
    except ValueError as exc:
        raise ClusterError(
            f"SLURM_STEP_NODELIST={nodelist!r} cannot be read the way TensorFlow reads it ({exc})"
        ) from None
    try:
        counts = expand_tasks_per_node(per_node)
    except ValueError as exc:
        raise ClusterError(f"SLURM_STEP_TASKS_PER_NODE={per_node!r} cannot be read ({exc})") from None
    # As the resolver: pair hosts with counts by position (zip, a dict), then sort the hosts.
    configuration = dict(zip(hosts, counts, strict=False))
    if sum(configuration.values()) != num_tasks:
        raise ClusterError(
            f"the step has {num_tasks} tasks but SLURM_STEP_NODELIST={nodelist!r} with "
            f"SLURM_STEP_TASKS_PER_NODE={per_node!r} places {sum(configuration.values())}: start the "
            "trainer with srun inside the allocation"
        )
    if rank >= num_tasks:
        raise ClusterError(f"SLURM_PROCID={rank} is out of range for a step of {num_tasks} tasks")
    placed = [(host, offset) for host, count in sorted(configuration.items()) for offset in range(count)]
    addresses = tuple(f"{host}:{SLURM_PORT_BASE + offset}" for host, offset in placed)
    host, offset = placed[rank]
    # srun sets SLURMD_NODENAME; SLURM_NODENAME is read too, for launchers that set that instead, and
    # the host name where it is one of the step's nodes.
    node = env.get("SLURMD_NODENAME") or env.get("SLURM_NODENAME")
    if not node and socket.gethostname() in configuration:
        node = socket.gethostname()
    local_rank = int(env["SLURM_LOCALID"]) if env.get("SLURM_LOCALID", "").isdigit() else offset
    if (node and node != host) or local_rank != offset:
        # The resolver assumes block distribution over hosts sorted by name; elsewhere this task would
        # serve another task's address and the workers would wait for each other forever.
        where = f"on {node}" if node else "elsewhere"
        raise ClusterError(
            f"Slurm placed task {rank} {where} as local task {local_rank}, but TensorFlow's Slurm resolver "
            f"expects it on {host} as local task {offset}: use srun --distribution=block and node names "
            "that sort in Slurm's order (node09, node10), or write TF_CONFIG and use --cluster tf-config"
        )
    return ClusterTask("slurm", {"worker": addresses}, "worker", rank, local_rank, configuration[host])


# -- choosing ----------------------------------------------------------------------------------------


def discover(mode: str, env: Mapping[str, str]) -> ClusterTask | None:
    """The cluster `mode` asks for, or None for a single machine. "auto": TF_CONFIG when set, else a
    Slurm step of more than one task, else None."""
    if mode not in CLUSTER_MODES:
        raise ClusterError(f"unknown cluster mode {mode!r}: choose one of {', '.join(CLUSTER_MODES)}")
    tf_config = env.get("TF_CONFIG", "").strip()
    if mode == "none":
        return None
    if mode == "tf-config" or (mode == "auto" and tf_config):
        if not tf_config:
            raise ClusterError(
                "--cluster tf-config but TF_CONFIG is not set: export TF_CONFIG on every worker "
                "(or use --cluster auto)"
            )
        return parse_tf_config(tf_config)
    if in_slurm_step(env):
        return slurm_task(env)
    if mode == "auto":
        return None
    if "SLURM_STEP_ID" in env:
        raise ClusterError(
            "--cluster slurm in a Slurm job step of one task: start one task per worker (srun --ntasks=N ...)"
        )
    raise ClusterError(
        "--cluster slurm outside a Slurm job step: run it under srun (srun --ntasks=N python -m training ...)"
    )
