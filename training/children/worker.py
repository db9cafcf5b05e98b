"""The benchmark worker: a long-lived process with one fixed device set that runs measured work on
request. Its messages are `training.children.protocol`'s (documented there); the parent's side is
`training.children.worker_client.WorkerClient`; the process plumbing (channel, timeouts, kills)
is `common.child`.

Why a process per device set: TensorFlow fixes its devices when its runtime starts, a second
MirroredStrategy over a different device set in the same process fails, and TensorFlow never gives
GPU memory back, so an out-of-memory configuration also needs a fresh process after it.

TensorFlow and Keras print to fd 1 from C++ and Python, so the worker keeps a private copy of the
real stdout for the protocol and points fd 1 at stderr before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from common.child import Channel, first_line, is_out_of_memory, open_channel
from diagnostics.cluster import CLUSTER_MODES, discover
from training.children.protocol import (
    ALLREDUCE_UNROLL,
    PROTOCOL,
    AllreduceWork,
    Answer,
    Failed,
    InputWork,
    Prepared,
    Ran,
    Ready,
    Request,
    StartFailed,
    TrainWork,
    decode_request,
    encode,
)
from training.devices.multiworker import lost_peer, lost_peer_message
from training.devices.setup import add_device_args, plan_from_args
from training.inputs.models import estimate_flops_per_sample, num_elements
from training.loop.faults import (
    WORKER_FAULT_ENV,
    WorkerFault,
    inject_worker_fault,
    parse_worker_faults,
    worker_fault_for,
)
from training.loop.steps import StepsPerExecution, parse_steps_per_execution
from training.settings.config import COLLECTIVE_TIMEOUT_S

# The data a piece of work trains or feeds on: (the user's data path, synthetic image size).
Source = tuple[str | None, int | None]


class Worker:
    """The measured work for one DeviceSetup; caches one Trainer per TrainWork.trainer_key and one
    choice of steps per call per TrainWork (`auto` keeps what it measured from round to round)."""

    def __init__(
        self,
        setup: Any,
        faults: Sequence[WorkerFault] = (),
        seed: int = 42,
        collective_timeout: float = COLLECTIVE_TIMEOUT_S,
    ) -> None:
        import tensorflow as tf

        self.collective_timeout = collective_timeout  # in a cluster: how long a lost peer takes to see

        self.tf, self.setup, self.strategy = tf, setup, setup.strategy
        self.replicas = setup.num_replicas
        self.faults, self.seed = list(faults), seed
        self.trainers: dict[TrainWork, Any] = {}
        self.schedules: dict[TrainWork, StepsPerExecution] = {}
        self.inputs: dict[InputWork, tuple[Any, Any]] = {}
        self.allreduces: dict[tuple[int, int], Any] = {}  # ChainedAllreduce by (bytes, unroll)
        self._examples: dict[Source, Any] = {}

    def handle(self, request: Request) -> Answer:
        """Prepare or run the request's work (quit is the serving loop's)."""
        work, steps = request.work, request.steps or 0
        if isinstance(work, TrainWork):
            fault = worker_fault_for(self.faults, work.batch_per_replica, self.replicas)
            if fault:
                inject_worker_fault(fault, self.tf)
            return self.prepare_train(work) if request.cmd == "prepare" else self.run_train(work, steps)
        if isinstance(work, InputWork):
            return self.prepare_input(work) if request.cmd == "prepare" else self.run_input(work, steps)
        if isinstance(work, AllreduceWork):
            if request.cmd == "prepare":
                return self.prepare_allreduce(work.bytes, steps)
            return self.run_allreduce(work.bytes, steps)
        return Failed("error", f"nothing to {request.cmd}")

    # -- train --

    def _examples_for(self, global_batch: int, source: Source) -> Any:
        from training.inputs import data, streaming

        path, size = source
        if path is not None:  # the user's data, as `python -m training --data` opens it: image
            # folders and TFRecords streamed (data larger than memory), .npz in memory
            if source not in self._examples:
                opened = data.open_source(path, self.seed)
                self._examples[source] = streaming.this_workers_share(opened, self.setup.cluster)
            return self._examples[source]
        shape = (size, size, 3) if size is not None else data.SYNTHETIC_SHAPE
        # a few batches at least, so that shuffling and the endless repeat behave as in training;
        # large images get fewer examples (256 MiB of them at most beyond those batches)
        per_example = 4 * shape[0] * shape[1] * shape[2]
        needed = max(min(data.SYNTHETIC_EXAMPLES, 2**28 // per_example), 4 * global_batch)
        cached = self._examples.get(source)
        if cached is None or len(cached) < needed:
            self._examples[source] = data.synthetic(self.seed, num_examples=needed, shape=shape)
        return self._examples[source]

    def _trainer(self, work: TrainWork) -> Any:
        import keras

        from training.loop.trainer import Trainer
        from training.settings.config import TrainConfig

        key = work.trainer_key
        if key not in self.trainers:
            global_batch = work.batch_per_replica * self.replicas
            config = TrainConfig(
                model=work.model,
                global_batch_size=global_batch,
                seed=self.seed,
                warmup_steps=0,
                jit_compile=work.jit_compile,
                mixed_precision=work.mixed_precision,
            )
            # the Trainer sets mixed_float16 globally and never unsets it: a float32 variant built
            # after a mixed one in this process must not inherit it (built models keep their own)
            keras.mixed_precision.set_global_policy("mixed_float16" if work.mixed_precision else "float32")
            examples = self._examples_for(global_batch, (work.data, work.image_size))
            self.trainers[key] = Trainer(config, self.setup, examples)
        return self.trainers[key]

    def prepare_train(self, work: TrainWork) -> Prepared:
        started = time.perf_counter()
        trainer = self._trainer(work)
        built = time.perf_counter()
        # one step traces the function (compile time, not benchmark time); every K reuses the trace
        trainer.run_steps(1, self._schedule(work))
        done = time.perf_counter()
        variables = trainer.model.trainable_variables
        return Prepared(
            seconds=done - started,
            build_seconds=built - started,
            first_step_seconds=done - built,
            global_batch=work.batch_per_replica * self.replicas,
            flops_per_sample=estimate_flops_per_sample(trainer.model),  # None: not known, never made up
            trainable_params=sum(int(num_elements(v.shape)) for v in variables),
            gradient_bytes=sum(
                int(num_elements(v.shape)) * self.tf.as_dtype(v.dtype).size for v in variables
            ),
            dtype_policy=trainer.model.dtype_policy.name,
            input_shape=list(trainer.examples.input_shape),
            examples=len(trainer.examples),
        )

    def run_train(self, work: TrainWork, steps: int) -> Ran:
        if work.trainer_key not in self.trainers:
            self.prepare_train(work)
        trainer, schedule = self.trainers[work.trainer_key], self._schedule(work)
        started = time.perf_counter()
        loss, calls = trainer.run_steps(steps, schedule)
        return Ran(seconds=time.perf_counter() - started, steps=steps, loss=loss, calls=calls)

    def _schedule(self, work: TrainWork) -> StepsPerExecution:
        setting = parse_steps_per_execution(work.steps_per_execution)
        return self.schedules.setdefault(work, StepsPerExecution(setting))

    # -- input pipeline --

    def prepare_input(self, work: InputWork) -> Prepared:
        from training.inputs import data

        tf, strategy = self.tf, self.strategy
        global_batch = work.batch_per_replica * self.replicas
        started = time.perf_counter()
        if work not in self.inputs:
            with strategy.scope():
                examples = self._examples_for(global_batch, (work.data, work.image_size))
                dataset = data.make_dataset(examples, global_batch, self.seed)
                iterator = iter(data.distribute(strategy, dataset))

            @tf.function
            def fetch(iterator: Any) -> Any:
                x, y = next(iterator)
                # a scalar from each replica's batch: the batch must be produced and copied to the
                # device, and fetching the result does not copy the batch back
                return strategy.run(lambda x, y: tf.reduce_sum(x[0]) + tf.cast(y[0], x.dtype), args=(x, y))

            self.inputs[work] = (iterator, fetch)
        self._fetch(work, 1)
        return Prepared(seconds=time.perf_counter() - started, global_batch=global_batch)

    def _fetch(self, work: InputWork, steps: int) -> None:
        iterator, fetch = self.inputs[work]
        out = None
        for _ in range(steps):
            out = fetch(iterator)
        if out is not None:
            for value in self.strategy.experimental_local_results(out):
                float(value)

    def run_input(self, work: InputWork, steps: int) -> Ran:
        if work not in self.inputs:
            self.prepare_input(work)
        started = time.perf_counter()
        self._fetch(work, steps)
        return Ran(seconds=time.perf_counter() - started, steps=steps)

    # -- all-reduce --

    def prepare_allreduce(self, nbytes: int, steps: int) -> Prepared:
        from training.loop.allreduce import ChainedAllreduce

        unroll = min(steps, ALLREDUCE_UNROLL) if steps else ALLREDUCE_UNROLL
        started = time.perf_counter()
        if (nbytes, unroll) not in self.allreduces:
            self.allreduces[(nbytes, unroll)] = ChainedAllreduce(self.strategy, nbytes, unroll)
        chained = self.allreduces[(nbytes, unroll)]
        chained.run(1)  # traces: the compile cost the sweep does not count
        return Prepared(seconds=time.perf_counter() - started, elements=chained.elements)

    def run_allreduce(self, nbytes: int, steps: int) -> Ran:
        unroll = min(steps, ALLREDUCE_UNROLL)
        if (nbytes, unroll) not in self.allreduces:
            self.prepare_allreduce(nbytes, steps)
        calls = -(-steps // unroll)
        seconds = self.allreduces[(nbytes, unroll)].run(calls)
        return Ran(seconds=seconds, steps=calls * unroll)


def build_worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.children.worker", description=__doc__.split("\n")[0])
    add_device_args(p)  # the parent's resolved devices: the worker selects nothing itself
    p.add_argument("--cross-device-ops", default="auto")
    p.add_argument("--seed", type=int, default=42)
    # one task of a MultiWorkerMirroredStrategy cluster (TF_CONFIG or the Slurm step, as the trainer)
    p.add_argument("--cluster", choices=CLUSTER_MODES, default="none")
    p.add_argument("--collective-timeout", type=float, default=COLLECTIVE_TIMEOUT_S)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    channel = open_channel()  # before TensorFlow: its output must not reach the protocol
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_worker_parser().parse_args(argv)
    try:
        from training.devices.setup import setup_device_strategy

        task = discover(args.cluster, os.environ)
        faults = parse_worker_faults(os.environ.get(WORKER_FAULT_ENV), task.task_index if task else 0)
        setup = setup_device_strategy(
            plan_from_args(args),
            args.cross_device_ops,
            cluster=task,
            collective_timeout=args.collective_timeout,
        )
        import keras
        import tensorflow as tf
    except Exception as exc:  # the parent reports it; the worker is of no use without devices
        channel.send(encode(StartFailed(f"{type(exc).__name__}: {exc}")))
        return 1
    plan = setup.plan
    ready = Ready(
        protocol=PROTOCOL,
        pid=os.getpid(),
        replicas=setup.num_replicas,
        device_kind=plan.kind,
        devices=plan.describe(),
        gpu_indices=[g.index for g in plan.gpus],
        gpu_names=[g.name for g in plan.gpus],
        cross_device_ops=setup.cross_device_ops,
        tensorflow=tf.__version__,
        keras=keras.__version__,
        warnings=list(setup.warnings),
    )
    channel.send(encode(ready))
    serve(Worker(setup, faults, args.seed, args.collective_timeout), channel)
    return 0


def answer(worker: Worker, line: str) -> Answer | None:
    """The answer to one request line; None for quit. A bad request or a failing configuration is
    a Failed answer: one of them must not end the sweep's worker."""
    try:
        request = decode_request(json.loads(line))
    except (json.JSONDecodeError, ValueError) as exc:
        return Failed("error", f"not JSON: {exc}" if isinstance(exc, json.JSONDecodeError) else str(exc))
    if request.cmd == "quit":
        return None
    try:
        return worker.handle(request)
    except Exception as exc:
        if is_out_of_memory(exc):
            return Failed("oom", first_line(exc))
        cluster = worker.setup.cluster
        if cluster is not None and lost_peer(exc):
            return Failed("lost", lost_peer_message(exc, cluster, worker.collective_timeout))
        return Failed("error", f"{type(exc).__name__}: {first_line(exc)}")


def serve(worker: Worker, channel: Channel) -> None:
    """Answer requests from stdin until quit or end of input."""
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = answer(worker, line)
        if reply is None:
            channel.send({"ok": True})
            break
        channel.send(encode(reply))


if __name__ == "__main__":
    sys.exit(main())
