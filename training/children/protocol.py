"""The benchmark worker's protocol (gpudiag-worker/1), typed: every message the sweep and the worker
(`training.children.worker`) exchange is one of the dataclasses below, and this is the only place
it is described. No TensorFlow here: the sweep imports this through `worker_client`.

One JSON object per line over `common.child`'s channel; a message is its dataclass' fields, with
`cmd` and `kind` beside them on requests:

    worker -> Ready                    {"event": "ready", "protocol": ..., "replicas": 2, ...}
              or StartFailed           {"event": "error", "message": "..."}
    parent -> Request(prepare, work)   {"cmd": "prepare", "kind": "train", <work's fields>}
    worker -> Prepared                 {"ok": true, "seconds": 3.1, <what was built>}
    parent -> Request(run, work, k)    {"cmd": "run", "kind": "train", <work's fields>, "steps": 20}
    worker -> Ran                      {"ok": true, "seconds": 0.84, "steps": 20, ...}
    worker -> Failed                   {"ok": false, "error": "oom" | "error", "message": "..."}
    parent -> Request(quit)            {"cmd": "quit"}; the worker answers {"ok": true} and ends

The work of a request is one of three kinds. TrainWork: k training steps of the Trainer for
(model, batch, XLA, mixed precision, data), in traced calls of `steps_per_execution` steps each
ending on a host fetch, as the trainer's loop runs them; the cross-device ops are the worker's own
(`--cross-device-ops`), fixed with its strategy. InputWork: k global batches from the trainer's own
tf.data pipeline, distributed to the replicas, no model. AllreduceWork: k chained all-reduces of a
float32 message of `bytes` per replica, ALLREDUCE_UNROLL to a traced call. "prepare" builds and
traces (the compile cost the sweep does not count as benchmark work); "run" is what is timed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PROTOCOL = "gpudiag-worker/1"
# All-reduces traced into one function call: amortises the strategy's per-call dispatch (about
# 0.8 ms on a 2-core CPU) over several, while keeping the tracing cost of each size small.
ALLREDUCE_UNROLL = 4

Command = Literal["prepare", "run", "quit"]


@dataclass(frozen=True)
class TrainWork:
    """Training steps of one configuration; frozen, so it is also the worker's cache key."""

    kind: ClassVar[str] = "train"
    model: str
    batch_per_replica: int
    jit_compile: bool = False
    mixed_precision: bool = False
    steps_per_execution: int | str = "auto"
    image_size: int | None = None  # synthetic images of this size (None: the model's default)
    data: str | None = None  # the user's data set, as `python -m training --data` loads it

    @property
    def trainer_key(self) -> TrainWork:
        """What one Trainer serves: every setting but the steps per call, which each run chooses."""
        return dataclasses.replace(self, steps_per_execution="auto")


@dataclass(frozen=True)
class InputWork:
    """Global batches from the input pipeline alone (no model)."""

    kind: ClassVar[str] = "input"
    batch_per_replica: int
    image_size: int | None = None
    data: str | None = None


@dataclass(frozen=True)
class AllreduceWork:
    """Chained all-reduces of a float32 message of `bytes` per replica."""

    kind: ClassVar[str] = "allreduce"
    bytes: int


Work = TrainWork | InputWork | AllreduceWork
WORK_KINDS: dict[str, type[Work]] = {w.kind: w for w in (TrainWork, InputWork, AllreduceWork)}


@dataclass(frozen=True)
class Request:
    cmd: Command
    work: Work | None = None  # None only for quit
    steps: int | None = None  # run only: steps, batches or all-reduces to time


@dataclass(frozen=True)
class Ready:
    """The worker's first message once its devices are set up."""

    protocol: str
    pid: int
    replicas: int
    device_kind: str  # gpu | cpu
    devices: list[str]
    gpu_indices: list[int]  # NVML indices of its GPUs (empty on CPU devices)
    gpu_names: list[str]
    cross_device_ops: str
    tensorflow: str
    keras: str
    warnings: list[str] = field(default_factory=list)
    event: str = "ready"


@dataclass(frozen=True)
class StartFailed:
    """The worker's only message when it cannot set up its devices (it exits 1 after it)."""

    message: str
    event: str = "error"


@dataclass(frozen=True)
class Prepared:
    """Built and traced; the train-only fields are None for the other kinds."""

    seconds: float
    global_batch: int | None = None  # train and input
    elements: int | None = None  # allreduce: float32 elements per replica
    build_seconds: float | None = None
    first_step_seconds: float | None = None  # tracing: the first step's time
    flops_per_sample: float | None = None
    trainable_params: int | None = None
    gradient_bytes: int | None = None
    dtype_policy: str | None = None  # what the variant ran as: float32 / mixed_float16
    input_shape: list[int] | None = None
    examples: int | None = None
    ok: bool = True


@dataclass(frozen=True)
class Ran:
    """One timed run; `seconds` ends on a host sync."""

    seconds: float
    steps: int  # what ran: an all-reduce runs whole traced calls of ALLREDUCE_UNROLL
    loss: float | None = None  # train
    calls: int | None = None  # train: traced calls (with auto: the steps per call it settled on)
    ok: bool = True


@dataclass(frozen=True)
class Failed:
    error: str  # oom | error
    message: str
    ok: bool = False


Answer = Prepared | Ran | Failed
Message = TypeVar("Message", bound="DataclassInstance")


def encode(message: Request | Ready | StartFailed | Answer) -> dict[str, Any]:
    """The JSON object a message travels as."""
    if isinstance(message, Request):
        out: dict[str, Any] = {"cmd": message.cmd}
        if message.work is not None:
            out.update(kind=message.work.kind, **dataclasses.asdict(message.work))
        if message.steps is not None:
            out["steps"] = message.steps
        return out
    # an unset optional field stays off the wire, so each answer carries what its kind measured
    return {k: v for k, v in dataclasses.asdict(message).items() if v is not None}


def decode(kind: type[Message], data: dict[str, Any]) -> Message:
    """`data` as a `kind`; keys it does not know are ignored, a missing required one raises TypeError."""
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in data.items() if k in names})


def decode_request(data: dict[str, Any]) -> Request:
    """Raises ValueError for a request that is not one of this protocol's."""
    cmd, kind = data.get("cmd"), data.get("kind")
    if cmd == "quit":
        return Request("quit")
    work_type = WORK_KINDS.get(str(kind))
    if cmd not in ("prepare", "run") or work_type is None:
        raise ValueError(f"unknown request {data!r}")
    try:
        work = decode(work_type, data)
    except TypeError as exc:
        raise ValueError(f"bad {cmd} {kind} request {data!r}: {exc}") from None
    steps = data.get("steps")
    if cmd == "run" and not isinstance(steps, int):
        raise ValueError(f"a run request needs whole 'steps', got {data!r}")
    return Request(cmd, work, steps)


def decode_answer(request: Request, data: dict[str, Any]) -> Answer:
    """The worker's answer to `request`: Failed, or what the command returns."""
    if not data.get("ok"):
        return Failed(str(data.get("error", "error")), str(data.get("message", data)))
    if request.cmd == "prepare":
        return decode(Prepared, data)
    return decode(Ran, data)
