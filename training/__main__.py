"""`python -m training`: parse flags, plan the devices, train, print the summary, exit 0 / 1 / 2.
`python -m training evaluate MODEL.keras --data PATH`: the same for evaluating a saved model.

Everything that can be checked without TensorFlow (flags, config and inventory files, data, the
checkpoint directory) is checked before TensorFlow is imported, so bad input costs a fraction of a
second, prints one line on stderr, exits 2 and writes nothing. Then gpudiag's fast checks run on the
selected GPUs (training.app.preflight): a failure exits 1 before TensorFlow starts, unless --skip-preflight.

Exit codes come from the exception's class: a `common.errors.UserError` is bad input (2); a failed
run (NaN loss, out of memory, no GPU with --require-gpu) is 1 with a message that says what to do;
anything else is a bug: one "internal error" line and exit 1 (the traceback with GPUDIAG_DEBUG=1).
130 / 143: stopped by SIGINT / SIGTERM (after a checkpoint, if --checkpoint-dir).
docs/faults.md has the table of what happens on each fault and how to resume.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from common import files
from common.child import is_out_of_memory
from common.cli import EXIT_FAILED, EXIT_OK, run_main
from common.errors import UserError
from diagnostics.cluster import ClusterTask
from training.app import batch_size, render
from training.checkpoints import resume
from training.devices import cluster as cluster_mod
from training.devices import multiworker
from training.devices.setup import DevicePlan, DeviceSetup, DeviceSetupError, NoGpuError, plan_devices
from training.inputs import models
from training.inputs import validation as validation_mod
from training.loop import faults as faults_mod
from training.settings.batch import per_replica_batch
from training.settings.cli import parse_config, parse_evaluate
from training.settings.config import TrainConfig, resolve_steps_per_epoch


@dataclass
class Ending:
    """How this process ends. One worker of several leaves without TensorFlow's shutdown: a worker
    whose peer is gone can wait a long time there (the coordination service's barrier), and all is
    said and saved by then."""

    several_workers: bool = False

    def exit(self, code: int) -> NoReturn:
        if self.several_workers:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)


def main(argv: Sequence[str] | None = None, ending: Ending | None = None) -> int:
    """The exit code: the house's policy (common.cli.run_main): bad input 2, a failed run 1 (NoGpuError
    with --require-gpu included), a bug one "internal error" line and 1, stopped by a signal 130/143."""
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        try:
            # a subcommand in front of the flat trainer flags: `python -m training [flags]`
            if args[:1] == ["evaluate"]:
                return _evaluate(args[1:])
            return _main(args, ending or Ending())
        except _Terminated:
            print("stopped by SIGTERM outside the training loop: nothing more was saved", file=sys.stderr)
            return 128 + signal.SIGTERM

    return run_main(
        body,
        failures=(NoGpuError,),
        interrupted="\nstopped by SIGINT outside the training loop: nothing more was saved",
    )


def _main(argv: list[str], ending: Ending) -> int:
    faults_mod.from_env()  # a typo in GPUDIAG_FAULT is bad input, found before TensorFlow
    config, quiet = parse_config(argv)
    plan = plan_devices(config.selection, config.cpu_replicas, config.require_gpu, config.inventory)
    if config.local_workers is not None:
        return _launch(argv, config, plan)
    cluster, plan = cluster_mod.place(config, plan, os.environ)
    replicas = plan.num_replicas * (cluster.num_workers if cluster else 1)
    per_replica_batch(config.global_batch_size, replicas, config.accumulate_steps)
    examples = None
    if not config.dry_run or config.data:
        from training.inputs import data

        # .npz in memory; image folders listed and TFRecords counted here, streamed later
        examples = data.open_source(config.data, config.seed, config.image_size)
        _warn_dropped(examples)
    # (training, validation): held out, or loaded and checked against the training data
    examples, validation = validation_mod.prepare(config, examples)
    examples = _this_workers_share(examples, cluster)
    if validation is not None and config.validation_data:
        _warn_dropped(validation, "--validation-data: ")
    config, resume_from = resume.check_before_start(config, plan, examples)
    if not _preflight_passes(config, plan):
        return EXIT_FAILED
    search = config.auto_batch_size and resume_from is None
    if config.dry_run:
        _print_dry_run(config, plan, resume_from, search, examples)
        if cluster is not None:
            print(cluster_mod.describe(cluster, plan))
        return EXIT_OK
    assert examples is not None
    if search:
        found = batch_size.search(argv, config, plan, len(examples))
        if found is None:
            return EXIT_FAILED
        config = replace(config, global_batch_size=found)
    ending.several_workers = cluster is not None
    return _train(config, plan, examples, validation, quiet, argv, cluster)


def _this_workers_share(examples: Any, cluster: ClusterTask | None) -> Any:
    """A streamed source reads this worker's files (or its share of the examples: one line why)."""
    from training.inputs import streaming

    examples = streaming.this_workers_share(examples, cluster)
    note = examples.sharding_note() if isinstance(examples, streaming.Streamed) else None
    if note and cluster is not None and cluster.is_chief:
        print(f"warning: {note}", file=sys.stderr)
    return examples


def _warn_dropped(examples: Any, prefix: str = "") -> None:
    if examples.dropped:
        print(f"warning: {prefix}{examples.drop_detail}", file=sys.stderr)


def _preflight_passes(config: TrainConfig, plan: DevicePlan) -> bool:
    """Print the plan's warnings and gpudiag's preflight findings; False where a check failed."""
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.skip_preflight:
        return True
    from training.app import preflight

    if preflight.report(preflight.preflight(plan, config.jit_compile), sys.stderr):
        print(
            "error: the preflight checks above failed: fix them, or add --skip-preflight to try anyway",
            file=sys.stderr,
        )
        return False
    return True


def _steps_per_epoch(config: TrainConfig, examples: Any) -> int:
    if examples is None:  # --dry-run on synthetic data: its size is known without generating it
        from training.inputs.data import SYNTHETIC_EXAMPLES

        return resolve_steps_per_epoch(config, validation_mod.training_size(config, SYNTHETIC_EXAMPLES))
    return resolve_steps_per_epoch(config, len(examples))


def _print_dry_run(
    config: TrainConfig, plan: DevicePlan, resume_from: str | None, search: bool, examples: Any
) -> None:
    render.print_plan(config, plan, steps_per_epoch=_steps_per_epoch(config, examples))
    if config.checkpoint_dir:
        print(
            f"checkpoints: will resume from {resume_from}"
            if resume_from
            else f"checkpoints: none yet in {config.checkpoint_dir}: starting fresh"
        )
    if search:
        print("--auto-batch-size: would search the largest per-replica batch that fits, a child per try")


class _Terminated(Exception):
    """SIGTERM outside the training loop (which handles it itself, after a whole step)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM while TensorFlow starts or the model builds: a one-line exit 143, not a bare kill."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_command(argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "training", *argv])


def _start_devices(
    config: TrainConfig, plan: DevicePlan, cluster: ClusterTask | None = None
) -> DeviceSetup | None:
    """TensorFlow starts here, on the planned devices; None (said on stderr) where it cannot."""
    # TensorFlow's C++ start-up chatter hides the messages that matter; keep errors only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if plan.kind == "cpu" else "2")
    from training.devices.setup import setup_device_strategy

    try:
        setup = setup_device_strategy(
            plan, config.cross_device_ops, cluster, config.communication, config.collective_timeout
        )
    except DeviceSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    for warning in setup.warnings[len(plan.warnings) :]:
        print(f"warning: {warning}", file=sys.stderr)
    return setup


def _launch(argv: list[str], config: TrainConfig, plan: DevicePlan) -> int:
    """--local-workers N: check what can be checked here, then start the workers."""
    from training.devices import launcher

    cluster_mod.check_launch(config, plan, os.environ)
    return launcher.run(argv, cluster_mod.local_workers(config), plan, config.collective_timeout)


def _train(
    config: TrainConfig,
    plan: DevicePlan,
    examples: Any,
    validation: Any,
    quiet: bool,
    argv: list[str],
    cluster: ClusterTask | None = None,
) -> int:
    with _sigterm_raises():
        code = _train_inner(config, plan, examples, validation, quiet, argv, cluster)
    if cluster is not None and (code == EXIT_OK or code >= 128):
        # finished, or stopped by a signal after the step all workers agreed on: the chief may
        # still be writing; a worker leaving now would fail the chief's writes (its peer is gone)
        multiworker.leave_together(config.collective_timeout)
    return code


def _train_inner(
    config: TrainConfig,
    plan: DevicePlan,
    examples: Any,
    validation: Any,
    quiet: bool,
    argv: list[str],
    cluster: ClusterTask | None,
) -> int:
    setup = _start_devices(config, plan, cluster)
    if setup is None:
        return EXIT_FAILED
    from training.app.run import run
    from training.loop.errors import TrainingDiverged, TrainingInterrupted

    if cluster is not None:
        print(cluster_mod.describe(cluster, plan), file=sys.stderr, flush=True)
        if not cluster.is_chief:  # only the chief writes what the user sees
            config = replace(config, summary_json=None, save_model=None, log_dir=None)
    render.print_plan(config, plan, sys.stderr, steps_per_epoch=_steps_per_epoch(config, examples))
    try:
        summary = run(config, setup, examples, verbose=0 if quiet else 1, validation=validation)
    except TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        if exc.checkpoint:
            print(f"resume with: {resume_command(argv)}", file=sys.stderr)
        elif config.checkpoint_dir:
            print(f"no checkpoint yet: start again with: {resume_command(argv)}", file=sys.stderr)
        else:
            print("nothing was saved: add --checkpoint-dir DIR to make a run resumable", file=sys.stderr)
        return exc.exit_code
    except TrainingDiverged as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UserError:  # data or a checkpoint found wanting once training started: bad input, exit 2
        raise
    except Exception as exc:
        if cluster is not None and multiworker.lost_peer(exc):
            message = multiworker.lost_peer_message(exc, cluster, config.collective_timeout)
            print(f"\nerror: {message}", file=sys.stderr)
            return EXIT_FAILED
        if not is_out_of_memory(exc):
            raise
        message = batch_size.oom_message(config.global_batch_size, setup.num_replicas)
        print(f"\nerror: {message}", file=sys.stderr)
        return EXIT_FAILED
    render.print_summary(summary)
    _write_summary(config, summary.as_dict())
    return EXIT_OK


def _write_summary(config: TrainConfig, summary: dict[str, Any]) -> None:
    if config.summary_json:
        files.write_text(config.summary_json, json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {config.summary_json}")


def _evaluate(argv: list[str]) -> int:
    """`python -m training evaluate MODEL.keras [--data PATH] [device flags]`."""
    model_path, config, quiet = parse_evaluate(argv)
    models.check_model_file(model_path)  # a file that is not a Keras model: exit 2, before TensorFlow
    plan = plan_devices(config.selection, config.cpu_replicas, config.require_gpu)
    per_replica_batch(config.global_batch_size, plan.num_replicas)
    from training.inputs import data

    examples = data.open_source(config.data, config.seed, config.image_size)
    _warn_dropped(examples)
    if not _preflight_passes(config, plan):
        return EXIT_FAILED
    with _sigterm_raises():
        setup = _start_devices(config, plan)
        if setup is None:
            return EXIT_FAILED
        from training.loop import evaluate

        render.print_devices(config, plan, sys.stderr)
        try:
            summary = evaluate.run(model_path, config, setup, examples, verbose=0 if quiet else 1)
        except UserError:  # a file Keras cannot load, or data that does not fit the model: exit 2
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            print(
                f"error: {batch_size.oom_message(config.global_batch_size, setup.num_replicas)}",
                file=sys.stderr,
            )
            return EXIT_FAILED
    render.print_evaluation(summary)
    _write_summary(config, summary)
    return EXIT_OK


if __name__ == "__main__":
    process = Ending()
    process.exit(main(ending=process))
