"""The benchmark worker: a long-lived process with one fixed device set that runs measured work on
request, and `WorkerClient`, the parent's side of the protocol (which never imports TensorFlow).

Why a process per device set: TensorFlow fixes its devices when its runtime starts, a second
MirroredStrategy over a different device set in the same process fails, and TensorFlow never gives
GPU memory back, so an out-of-memory configuration also needs a fresh process after it.

Protocol (gpudiag-worker/1): the parent writes one JSON object per line on the worker's stdin; the
worker answers one JSON object per line on its stdout. TensorFlow and Keras print to fd 1 from C++
and Python, so the worker keeps a private copy of the real stdout for the protocol and points fd 1
at stderr before TensorFlow is imported.

    worker -> {"event": "ready", "replicas": 2, "devices": [...], "tensorflow": "2.21.0", ...}
    parent -> {"cmd": "prepare", "kind": "train", "model": "cnn", "batch_per_replica": 32}
    worker -> {"ok": true, "seconds": 3.1, "first_step_seconds": 1.9, "flops_per_sample": ...}
    parent -> {"cmd": "run", "kind": "train", "model": "cnn", "batch_per_replica": 32, "steps": 20}
    worker -> {"ok": true, "seconds": 0.84, "loss": 2.1}
    worker -> {"ok": false, "error": "oom" | "error", "message": "..."}   on failure

Kinds: "train" (k training steps of the Trainer for (model, batch)), "input" (k global batches
from the trainer's own tf.data pipeline, distributed to the replicas, no model), "allreduce" (k
chained all-reduces of a float32 message of `bytes` per replica). "prepare" builds and traces
(the compile cost the sweep does not count as benchmark work); "run" is what is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from training.faults import (
    WORKER_FAULT_ENV,
    WorkerFault,
    inject_worker_fault,
    parse_worker_faults,
    worker_fault_for,
)

PROTOCOL = "gpudiag-worker/1"
KINDS = ("train", "input", "allreduce")
# All-reduces traced into one function call: amortises the strategy's per-call dispatch (about
# 0.8 ms on a 2-core CPU) over several, while keeping the tracing cost of each size small.
ALLREDUCE_UNROLL = 4
# TensorFlow's start-up log lines (absl INFO/WARNING), which would crowd the reason out of a crash report
_TF_CHATTER = re.compile(r"^([IW]\d{4} |WARNING: All log messages before absl)|oneDNN custom operations")


# -- FLOPs ----------------------------------------------------------------------------------------


def model_flops_per_sample(model: Any) -> float:
    """Training FLOPs per example: 6 x the multiply-accumulates of the Conv and Dense layers.

    A multiply-accumulate is 2 FLOPs and the backward pass costs about twice the forward one
    (gradients for the inputs and for the weights), hence 2 x 3. Pooling, normalisation,
    activations and the optimizer are left out: they are a few per cent for conv nets, which is
    why this is the usual estimate (e.g. Kaplan et al. 2020, "6N per token").
    """
    import keras

    macs = 0.0
    for layer in _leaf_layers(model):
        try:
            in_shape = tuple(layer.input.shape)
            out_shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            macs += _prod(out_shape[1:]) * kh * kw
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.Conv1D | keras.layers.Conv3D):
            in_channels = in_shape[-1] // getattr(layer, "groups", 1)
            macs += _prod(out_shape[1:]) * _prod(layer.kernel_size) * in_channels
        elif isinstance(layer, keras.layers.Dense):
            macs += _prod(out_shape[1:]) * in_shape[-1]
    return 6.0 * macs


def _leaf_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            found.extend(_leaf_layers(layer))
        else:
            found.append(layer)
    return found


def _prod(values: Sequence[Any]) -> float:
    out = 1.0
    for v in values:
        out *= int(v)
    return out


# -- the worker process ---------------------------------------------------------------------------


class Worker:
    """The measured work for one DeviceSetup; caches one Trainer per (model, batch per replica)."""

    def __init__(self, setup: Any, faults: Sequence[WorkerFault] = (), seed: int = 42) -> None:
        import tensorflow as tf

        self.tf, self.setup, self.strategy = tf, setup, setup.strategy
        self.replicas = setup.num_replicas
        self.faults, self.seed = list(faults), seed
        self.trainers: dict[tuple[str, int], Any] = {}
        self.inputs: dict[int, tuple[Any, Any]] = {}
        self.allreduces: dict[tuple[int, int], tuple[Any, Any]] = {}  # by (bytes, unroll)
        self._examples: Any = None

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

    def _examples_for(self, global_batch: int) -> Any:
        from training import data

        # a few batches at least, so that shuffling and the endless repeat behave as in training
        needed = max(data.SYNTHETIC_EXAMPLES, 4 * global_batch)
        if self._examples is None or len(self._examples) < needed:
            self._examples = data.synthetic(self.seed, num_examples=needed)
        return self._examples

    def _prepare_train(self, request: dict[str, Any]) -> dict[str, Any]:
        from training.config import TrainConfig
        from training.train import Trainer

        model, batch = str(request["model"]), int(request["batch_per_replica"])
        global_batch = batch * self.replicas
        key = (model, batch)
        started = time.perf_counter()
        trainer = self.trainers.get(key)
        if trainer is None:
            config = TrainConfig(model=model, global_batch_size=global_batch, seed=self.seed, warmup_steps=0)
            trainer = Trainer(config, self.setup, self._examples_for(global_batch))
            self.trainers[key] = trainer
        built = time.perf_counter()
        trainer.run_steps(1)  # traces the step function: compile time, not benchmark time
        done = time.perf_counter()
        params = sum(int(_prod(v.shape)) for v in trainer.model.trainable_variables)
        gradient_bytes = sum(
            int(_prod(v.shape)) * self.tf.as_dtype(v.dtype).size for v in trainer.model.trainable_variables
        )
        return {
            "seconds": done - started,
            "build_seconds": built - started,
            "first_step_seconds": done - built,
            "global_batch": global_batch,
            "flops_per_sample": model_flops_per_sample(trainer.model),
            "trainable_params": params,
            "gradient_bytes": gradient_bytes,
        }

    def _run_train(self, request: dict[str, Any]) -> dict[str, Any]:
        key = (str(request["model"]), int(request["batch_per_replica"]))
        if key not in self.trainers:
            self._prepare_train(request)
        trainer = self.trainers[key]
        steps = int(request["steps"])
        started = time.perf_counter()
        loss = trainer.run_steps(steps)  # ends with a host sync on the last loss
        return {"seconds": time.perf_counter() - started, "loss": loss, "steps": steps}

    # -- input pipeline --

    def _prepare_input(self, request: dict[str, Any]) -> dict[str, Any]:
        from training import data

        tf, strategy = self.tf, self.strategy
        batch = int(request["batch_per_replica"])
        global_batch = batch * self.replicas
        started = time.perf_counter()
        if batch not in self.inputs:
            with strategy.scope():
                dataset = data.make_dataset(self._examples_for(global_batch), global_batch, self.seed)
                iterator = iter(data.distribute(strategy, dataset))

            @tf.function
            def fetch(iterator: Any) -> Any:
                x, y = next(iterator)
                # a scalar from each replica's batch: the batch must be produced and copied to the
                # device, and fetching the result does not copy the batch back
                return strategy.run(lambda x, y: tf.reduce_sum(x[0]) + tf.cast(y[0], x.dtype), args=(x, y))

            self.inputs[batch] = (iterator, fetch)
        self._fetch(batch, 1)
        return {"seconds": time.perf_counter() - started, "global_batch": global_batch}

    def _fetch(self, batch: int, steps: int) -> None:
        iterator, fetch = self.inputs[batch]
        out = None
        for _ in range(steps):
            out = fetch(iterator)
        if out is not None:
            for value in self.strategy.experimental_local_results(out):
                float(value)

    def _run_input(self, request: dict[str, Any]) -> dict[str, Any]:
        batch = int(request["batch_per_replica"])
        if batch not in self.inputs:
            self._prepare_input(request)
        steps = int(request["steps"])
        started = time.perf_counter()
        self._fetch(batch, steps)
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
    p = argparse.ArgumentParser(prog="python -m training.worker", description=__doc__.split("\n")[0])
    p.add_argument("--cpu-replicas", type=int, help="N CPU logical devices")
    p.add_argument("--gpus", type=int, help="use the first N selected GPUs")
    p.add_argument("--device-mode", default="multi")
    p.add_argument("--custom-gpus", type=int, nargs="+")
    p.add_argument("--min-gpu-memory", type=float, default=8.0)
    p.add_argument("--include-display-gpus", action="store_true")
    p.add_argument("--cross-device-ops", default="auto")
    p.add_argument("--seed", type=int, default=42)
    return p


def _answer(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main(argv: Sequence[str] | None = None) -> int:
    # The protocol gets a private copy of the real stdout; fd 1 (where TensorFlow's C++ and
    # Keras' progress output go) becomes stderr.
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_worker_parser().parse_args(argv)
    try:
        faults = parse_worker_faults(os.environ.get(WORKER_FAULT_ENV))
        setup = _setup(args)
        import keras
        import tensorflow as tf
    except Exception as exc:  # the parent reports it; the worker is of no use without devices
        _answer(channel, {"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    plan = setup.plan
    _answer(
        channel,
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
        },
    )
    worker = Worker(setup, faults, args.seed)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            _answer(channel, {"ok": False, "error": "error", "message": f"not JSON: {exc}"})
            continue
        if request.get("cmd") == "quit":
            _answer(channel, {"ok": True})
            break
        try:
            answer = worker.handle(request)
        except tf.errors.ResourceExhaustedError as exc:
            answer = {"ok": False, "error": "oom", "message": _first_line(exc)}
        except Exception as exc:  # one bad configuration must not end the sweep's worker
            answer = {"ok": False, "error": "error", "message": f"{type(exc).__name__}: {_first_line(exc)}"}
        _answer(channel, answer)
    return 0


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (str(text).strip().splitlines() or [type(exc).__name__])[0][:500]


def _setup(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from training.devices import plan_devices, setup_device_strategy

    plan = plan_devices(
        args.device_mode,
        args.custom_gpus,
        args.min_gpu_memory,
        args.include_display_gpus,
        args.cpu_replicas,
    )
    if args.gpus is not None and plan.kind == "gpu":
        if args.gpus > len(plan.gpus):
            raise ValueError(f"{args.gpus} GPUs asked for, {len(plan.gpus)} selected")
        plan = replace(plan, gpus=plan.gpus[: args.gpus])
    return setup_device_strategy(plan, args.cross_device_ops)


# -- the parent's side ----------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A request that did not succeed. kind: oom | error | crash | timeout | start."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class WorkerClient:
    """Starts `python -m training.worker ARGS` and talks to it; every read has a timeout.

    A worker that dies is reported as kind "crash" (with the tail of its stderr), one that does not
    answer in time is killed and reported as "timeout"; neither is waited on forever.
    """

    args: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    start_timeout: float = 600.0
    proc: subprocess.Popen[str] | None = None
    ready: dict[str, Any] | None = None
    start_seconds: float = 0.0

    def start(self) -> dict[str, Any]:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        started = time.perf_counter()
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (lives as long as the worker)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training.worker", *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        message = self._receive(self.start_timeout, "start")
        self.start_seconds = time.perf_counter() - started
        if message.get("event") != "ready":
            self.close()
            raise WorkerError("start", str(message.get("message", message)))
        self.ready = message
        return message

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                self.kill()
                raise WorkerError(
                    "timeout", f"worker did not answer {what} within {timeout:g} s: killed it"
                ) from None
            if line is None:
                code = self.proc.wait() if self.proc else None
                raise WorkerError("crash", f"worker exited with code {code} during {what}{self._tail()}")
            try:
                return dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError):
                continue  # stray output on the protocol channel: not an answer

    def request(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None:
            raise WorkerError("crash", "worker is not running")
        what = f"{payload.get('cmd')} {payload.get('kind', '')}".strip()
        try:
            self.proc.stdin.write(json.dumps(payload) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            code = self.proc.wait(timeout=10)
            raise WorkerError(
                "crash", f"worker exited with code {code} before {what}{self._tail()}"
            ) from None
        answer = self._receive(timeout, what)
        if not answer.get("ok"):
            raise WorkerError(str(answer.get("error", "error")), str(answer.get("message", answer)))
        return answer

    def _tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            text = [t for t in text if t.strip() and not _TF_CHATTER.match(t)]
            if text:
                return ": " + " | ".join(text[-lines:])[-800:]
        return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def close(self, timeout: float = 0.2) -> None:
        """Ask the worker to quit; kill it if it has not exited within `timeout`.

        The worker keeps nothing worth a clean exit, and TensorFlow's interpreter shutdown takes
        seconds (measured: about 6 s on 2 CPU cores), which the sweep would pay per device count.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(OSError):
            self._log.close()
        self.proc = None


if __name__ == "__main__":
    sys.exit(main())
