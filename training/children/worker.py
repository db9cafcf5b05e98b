"""The benchmark worker: a long-lived process with one fixed device set that runs measured work on
request. Its parent's side is `training.children.worker_client.WorkerClient` (no TensorFlow there); the
process plumbing (channel, timeouts, kills) is `common.child`.

Why a process per device set: TensorFlow fixes its devices when its runtime starts, a second
MirroredStrategy over a different device set in the same process fails, and TensorFlow never gives
GPU memory back, so an out-of-memory configuration also needs a fresh process after it.

Protocol (gpudiag-worker/1): the parent writes one JSON object per line on the worker's stdin; the
worker answers one JSON object per line on its stdout. TensorFlow and Keras print to fd 1 from C++
and Python, so the worker keeps a private copy of the real stdout for the protocol and points fd 1
at stderr before TensorFlow is imported.

    worker -> {"event": "ready", "replicas": 2, "devices": [...], "tensorflow": "2.21.0", ...}
    parent -> {"cmd": "prepare", "kind": "train", "model": "cnn", "batch_per_replica": 32,
               "jit_compile": false, "mixed_precision": false, "steps_per_execution": "auto" | 20,
               "image_size": 224 | "data": PATH}
    worker -> {"ok": true, "seconds": 3.1, "first_step_seconds": 1.9, "flops_per_sample": ...}
    parent -> {"cmd": "run", "kind": "train", "model": "cnn", "batch_per_replica": 32, "steps": 20}
    worker -> {"ok": true, "seconds": 0.84, "loss": 2.1, "calls": 2}
    worker -> {"ok": false, "error": "oom" | "error", "message": "..."}   on failure

Kinds: "train" (k training steps of the Trainer for (model, batch, XLA, mixed precision), in traced
calls of `steps_per_execution` steps each ending on a host fetch, as the trainer's loop runs them;
the cross-device ops are the worker's own, `--cross-device-ops`, fixed with its strategy), "input"
(k global batches from the trainer's own tf.data pipeline, distributed to the replicas, no model),
"allreduce" (k chained all-reduces of a float32 message of `bytes` per replica). "prepare" builds and traces
(the compile cost the sweep does not count as benchmark work); "run" is what is timed.
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
from training.children.worker_client import ALLREDUCE_UNROLL, KINDS, PROTOCOL
from training.devices.setup import add_device_args, plan_from_args
from training.inputs.models import model_flops_per_sample, num_elements
from training.loop.faults import (
    WORKER_FAULT_ENV,
    WorkerFault,
    inject_worker_fault,
    parse_worker_faults,
    worker_fault_for,
)
from training.loop.steps import AUTO, StepsPerExecution, parse_steps_per_execution

# -- the worker process ---------------------------------------------------------------------------


class Worker:
    """The measured work for one DeviceSetup; caches one Trainer per (model, batch per replica,
    XLA, mixed precision, data) and one choice of steps per call for each setting it ran with."""

    def __init__(self, setup: Any, faults: Sequence[WorkerFault] = (), seed: int = 42) -> None:
        import tensorflow as tf

        self.tf, self.setup, self.strategy = tf, setup, setup.strategy
        self.replicas = setup.num_replicas
        self.faults, self.seed = list(faults), seed
        self.trainers: dict[tuple[Any, ...], Any] = {}
        # by (trainer key, --steps-per-execution): `auto` keeps what it measured from round to round
        self.schedules: dict[tuple[Any, ...], StepsPerExecution] = {}
        self.inputs: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self.allreduces: dict[tuple[int, int], tuple[Any, Any]] = {}  # by (bytes, unroll)
        self._examples: dict[tuple[Any, ...], Any] = {}  # by _source(request)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd, kind = request.get("cmd"), request.get("kind")
        if cmd not in ("prepare", "run") or kind not in KINDS:
            return {"ok": False, "error": "error", "message": f"unknown request {request!r}"}
        if kind == "train":
            fault = worker_fault_for(self.faults, int(request["batch_per_replica"]), self.replicas)
            if fault:
                inject_worker_fault(fault, self.tf)
        started = time.perf_counter()
        answer = getattr(self, f"_{cmd}_{kind}")(request)
        answer.setdefault("seconds", time.perf_counter() - started)
        return {"ok": True, **answer}

    # -- train --

    @staticmethod
    def _source(request: dict[str, Any]) -> tuple[str | None, int | None]:
        """The data a request trains or feeds on: a path (the user's data) or a synthetic image size."""
        size = request.get("image_size")
        return request.get("data"), int(size) if size is not None else None

    def _examples_for(self, global_batch: int, request: dict[str, Any]) -> Any:
        from training.inputs import data

        key = self._source(request)
        path, size = key
        if path is not None:  # the user's data, as `python -m training --data` loads it
            if key not in self._examples:
                self._examples[key] = data.load(path, self.seed)
            return self._examples[key]
        shape = (size, size, 3) if size is not None else data.SYNTHETIC_SHAPE
        # a few batches at least, so that shuffling and the endless repeat behave as in training;
        # large images get fewer examples (256 MiB of them at most beyond those batches)
        per_example = 4 * shape[0] * shape[1] * shape[2]
        needed = max(min(data.SYNTHETIC_EXAMPLES, 2**28 // per_example), 4 * global_batch)
        cached = self._examples.get(key)
        if cached is None or len(cached) < needed:
            self._examples[key] = data.synthetic(self.seed, num_examples=needed, shape=shape)
        return self._examples[key]

    def _train_key(self, request: dict[str, Any]) -> tuple[Any, ...]:
        return (
            str(request["model"]),
            int(request["batch_per_replica"]),
            bool(request.get("jit_compile", False)),
            bool(request.get("mixed_precision", False)),
            *self._source(request),
        )

    def _prepare_train(self, request: dict[str, Any]) -> dict[str, Any]:
        import keras

        from training.loop.trainer import Trainer
        from training.settings.config import TrainConfig

        key = self._train_key(request)
        model, batch, jit, mixed = key[:4]
        global_batch = batch * self.replicas
        started = time.perf_counter()
        trainer = self.trainers.get(key)
        if trainer is None:
            config = TrainConfig(
                model=model,
                global_batch_size=global_batch,
                seed=self.seed,
                warmup_steps=0,
                jit_compile=jit,
                mixed_precision=mixed,
            )
            # the Trainer sets mixed_float16 globally and never unsets it: a float32 variant built
            # after a mixed one in this process must not inherit it (built models keep their own)
            keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
            trainer = Trainer(config, self.setup, self._examples_for(global_batch, request))
            self.trainers[key] = trainer
        built = time.perf_counter()
        # one step traces the function (compile time, not benchmark time); every K reuses the trace
        trainer.run_steps(1, self._schedule(key, request))
        done = time.perf_counter()
        params = sum(int(num_elements(v.shape)) for v in trainer.model.trainable_variables)
        gradient_bytes = sum(
            int(num_elements(v.shape)) * self.tf.as_dtype(v.dtype).size
            for v in trainer.model.trainable_variables
        )
        return {
            "seconds": done - started,
            "build_seconds": built - started,
            "first_step_seconds": done - built,
            "global_batch": global_batch,
            "flops_per_sample": model_flops_per_sample(trainer.model),
            "trainable_params": params,
            "gradient_bytes": gradient_bytes,
            "dtype_policy": trainer.model.dtype_policy.name,  # what the variant ran as: float32 / mixed
            "input_shape": list(trainer.examples.input_shape),
            "examples": len(trainer.examples),
        }

    def _run_train(self, request: dict[str, Any]) -> dict[str, Any]:
        key = self._train_key(request)
        if key not in self.trainers:
            self._prepare_train(request)
        trainer = self.trainers[key]
        steps = int(request["steps"])
        schedule = self._schedule(key, request)
        started = time.perf_counter()
        loss, calls = trainer.run_steps(steps, schedule)
        return {"seconds": time.perf_counter() - started, "loss": loss, "steps": steps, "calls": calls}

    def _schedule(self, key: tuple[Any, ...], request: dict[str, Any]) -> StepsPerExecution:
        setting = parse_steps_per_execution(request.get("steps_per_execution", AUTO))
        return self.schedules.setdefault((*key, setting), StepsPerExecution(setting))

    # -- input pipeline --

    def _prepare_input(self, request: dict[str, Any]) -> dict[str, Any]:
        from training.inputs import data

        tf, strategy = self.tf, self.strategy
        batch = int(request["batch_per_replica"])
        key = (batch, *self._source(request))
        global_batch = batch * self.replicas
        started = time.perf_counter()
        if key not in self.inputs:
            with strategy.scope():
                examples = self._examples_for(global_batch, request)
                dataset = data.make_dataset(examples, global_batch, self.seed)
                iterator = iter(data.distribute(strategy, dataset))

            @tf.function
            def fetch(iterator: Any) -> Any:
                x, y = next(iterator)
                # a scalar from each replica's batch: the batch must be produced and copied to the
                # device, and fetching the result does not copy the batch back
                return strategy.run(lambda x, y: tf.reduce_sum(x[0]) + tf.cast(y[0], x.dtype), args=(x, y))

            self.inputs[key] = (iterator, fetch)
        self._fetch(key, 1)
        return {"seconds": time.perf_counter() - started, "global_batch": global_batch}

    def _fetch(self, key: tuple[Any, ...], steps: int) -> None:
        iterator, fetch = self.inputs[key]
        out = None
        for _ in range(steps):
            out = fetch(iterator)
        if out is not None:
            for value in self.strategy.experimental_local_results(out):
                float(value)

    def _run_input(self, request: dict[str, Any]) -> dict[str, Any]:
        key = (int(request["batch_per_replica"]), *self._source(request))
        if key not in self.inputs:
            self._prepare_input(request)
        steps = int(request["steps"])
        started = time.perf_counter()
        self._fetch(key, steps)
        return {"seconds": time.perf_counter() - started, "steps": steps}

    # -- all-reduce --

    def _prepare_allreduce(self, request: dict[str, Any]) -> dict[str, Any]:
        tf, strategy = self.tf, self.strategy
        nbytes, unroll = int(request["bytes"]), min(int(request["steps"]), ALLREDUCE_UNROLL)
        started = time.perf_counter()
        if (nbytes, unroll) not in self.allreduces:
            elements = max(1, nbytes // 4)
            # zeros: the sum stays finite however many times it is chained
            values = strategy.experimental_distribute_values_from_function(
                lambda _ctx: tf.zeros([elements], tf.float32)
            )

            def replica_fn(x: Any) -> Any:
                ctx = tf.distribute.get_replica_context()
                for _ in range(unroll):  # chained, so the all-reduces run one after another
                    x = ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)
                return x

            step = tf.function(lambda v: strategy.run(replica_fn, args=(v,)))
            self.allreduces[(nbytes, unroll)] = (values, step)
        self._allreduce(nbytes, unroll, 1)
        return {"seconds": time.perf_counter() - started, "elements": max(1, nbytes // 4)}

    def _allreduce(self, nbytes: int, unroll: int, calls: int) -> None:
        values, step = self.allreduces[(nbytes, unroll)]
        out = values
        for _ in range(calls):
            out = step(out)  # each call takes the one before as input: they run in turn
        for value in self.strategy.experimental_local_results(out):
            float(value[0])  # one element per replica: the sync copies nothing else back

    def _run_allreduce(self, request: dict[str, Any]) -> dict[str, Any]:
        nbytes, iters = int(request["bytes"]), int(request["steps"])
        unroll = min(iters, ALLREDUCE_UNROLL)
        if (nbytes, unroll) not in self.allreduces:
            self._prepare_allreduce(request)
        calls = -(-iters // unroll)
        started = time.perf_counter()
        self._allreduce(nbytes, unroll, calls)
        return {"seconds": time.perf_counter() - started, "steps": calls * unroll}


def build_worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.children.worker", description=__doc__.split("\n")[0])
    add_device_args(p)  # the parent's resolved devices: the worker selects nothing itself
    p.add_argument("--cross-device-ops", default="auto")
    p.add_argument("--seed", type=int, default=42)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    channel = open_channel()  # before TensorFlow: its output must not reach the protocol
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_worker_parser().parse_args(argv)
    try:
        from training.devices.setup import setup_device_strategy

        faults = parse_worker_faults(os.environ.get(WORKER_FAULT_ENV))
        setup = setup_device_strategy(plan_from_args(args), args.cross_device_ops)
        import keras
        import tensorflow as tf
    except Exception as exc:  # the parent reports it; the worker is of no use without devices
        channel.send({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    plan = setup.plan
    channel.send(
        {
            "event": "ready",
            "protocol": PROTOCOL,
            "pid": os.getpid(),
            "replicas": setup.num_replicas,
            "device_kind": plan.kind,
            "devices": plan.describe(),
            "gpu_indices": [g.index for g in plan.gpus],
            "gpu_names": [g.name for g in plan.gpus],
            "cross_device_ops": setup.cross_device_ops,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "warnings": list(setup.warnings),
        }
    )
    serve(Worker(setup, faults, args.seed), channel)
    return 0


def serve(worker: Worker, channel: Channel) -> None:
    """Answer requests from stdin until "quit" or end of input; one bad request ends nothing."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            channel.send({"ok": False, "error": "error", "message": f"not JSON: {exc}"})
            continue
        if request.get("cmd") == "quit":
            channel.send({"ok": True})
            break
        try:
            answer = worker.handle(request)
        except Exception as exc:  # one bad configuration must not end the sweep's worker
            kind = "oom" if is_out_of_memory(exc) else "error"
            message = first_line(exc) if kind == "oom" else f"{type(exc).__name__}: {first_line(exc)}"
            answer = {"ok": False, "error": kind, "message": message}
        channel.send(answer)


if __name__ == "__main__":
    sys.exit(main())
