"""One training run from checked settings and running devices to its summary: build the trainer,
resume from the newest checkpoint, train with the callbacks the settings ask for, save the model,
and summarise. `python -m training` calls `run`; so can a script that has its own devices.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras

from common.files import replacing
from training.app import bottleneck, usage, workers_speed
from training.app.summary import RunSummary, build_summary
from training.checkpoints.resume import resume_latest
from training.checkpoints.store import CheckpointStore, fingerprint
from training.devices.setup import DeviceSetup
from training.inputs import data as data_mod
from training.loop.state import RunState
from training.loop.steps import ProfileRange
from training.loop.trainer import Trainer
from training.settings.checks import parse_profile_steps, parse_save_freq
from training.settings.config import TrainConfig, resolve_steps_per_epoch
from training.settings.table import ConfigError

# what viewing a profile needs, and how to get it (the package's `profile` extra)
PROFILE_VIEWER = "tensorboard-plugin-profile: pip install -e '.[profile]'"


def save_model_atomically(model: keras.Model, path: str) -> None:
    """model.save() to a temporary .keras file beside the target, then rename over it."""
    with replacing(path, suffix=".keras") as tmp:
        model.save(tmp)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def profile_range(
    config: TrainConfig, state: RunState | None, steps_per_epoch: int, chief: bool
) -> ProfileRange | None:
    """--profile-steps A:B as the loop takes it; a ConfigError (one line, exit 2) where the range
    is not among the steps this run trains."""
    if not config.profile_steps or not config.log_dir:
        return None
    first, last = parse_profile_steps(config.profile_steps)
    done, total = (state.global_step if state else 0), config.epochs * steps_per_epoch
    if first <= done or last > total:
        raise ConfigError(
            f"--profile-steps {config.profile_steps}: this run trains global steps {done + 1} to {total}"
        )
    return ProfileRange(first, last, config.log_dir, record=chief)


def profile_facts(profile: ProfileRange | None) -> dict[str, Any] | None:
    """The summary's "profile" object: the steps, the folder written, how to view it."""
    if profile is None or not profile.record:
        return None
    return {
        "steps": [profile.first, profile.last],
        "trace_dir": profile.trace_dir,
        "view": f"tensorboard --logdir {profile.logdir}",
        "needs": PROFILE_VIEWER,
    }


def run(
    config: TrainConfig,
    setup: DeviceSetup,
    examples: data_mod.Examples,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
    notify: Callable[[str], None] = _to_stderr,
    validation: data_mod.Examples | None = None,
) -> RunSummary:
    """Train as configured and return the summary (what --summary-json writes).

    With config.checkpoint_dir: resume from the newest good checkpoint there (and say so through
    `notify`), save as --save-freq asks, and on SIGINT/SIGTERM save and raise TrainingInterrupted.
    With `validation` (held out by training.inputs.validation), evaluate on it after each epoch.
    """
    started = time.perf_counter()
    trainer = Trainer(config, setup, examples, validation)
    steps_per_epoch = resolve_steps_per_epoch(config, len(examples))
    all_callbacks = list(callbacks)
    chief = setup.is_chief  # on several workers only the chief writes what the user sees
    if config.log_dir and chief:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=config.log_dir, update_freq="epoch"))
    current = fingerprint(config, len(examples), steps_per_epoch)
    store, state = None, None
    if config.checkpoint_dir:
        store = CheckpointStore(config.checkpoint_dir, faults=trainer.faults)
        # every worker resumes from the chief's checkpoints (storage they all see); only the chief writes
        state = resume_latest(store, trainer, current, config.epochs, notify)
        store = store if chief else None
    profile = profile_range(config, state, steps_per_epoch, chief)
    setup_seconds = time.perf_counter() - started
    watched_gpus = [g.index for g in setup.plan.gpus] if setup.plan.kind == "gpu" else []
    with usage.sampler(watched_gpus) as watching:
        watching.active = True
        result = trainer.fit(
            config.epochs,
            steps_per_epoch,
            all_callbacks,
            verbose=verbose,
            state=state,
            checkpoints=store,
            save_every_steps=parse_save_freq(config.save_freq),
            handle_signals=True,
            fingerprint=current,
            profile=profile,
        )
    # every worker measures: the all-reduce is a collective
    found = bottleneck.measure(trainer, result.meter.samples_per_sec, result.train_seconds)
    speed = workers_speed.measure(trainer)  # every worker too: each waits for the others' figures
    profiled = profile_facts(profile)
    if profiled:
        notify(
            f"profile of steps {profiled['steps'][0]}-{profiled['steps'][1]} (left out of samples_per_sec): "
            f"{profiled['trace_dir']}; view it: {profiled['view']} (needs {PROFILE_VIEWER})"
        )
    if config.save_model and chief:
        save_model_atomically(trainer.model, config.save_model)
    return build_summary(
        config,
        setup,
        examples,
        result,
        validation=validation,
        global_batch_size=trainer.global_batch_size,
        per_replica_batch_size=trainer.per_replica_batch_size,
        steps_per_epoch=steps_per_epoch,
        setup_seconds=setup_seconds,
        wall_seconds=time.perf_counter() - started,
        steps_per_execution=trainer.steps_per_execution,
        first_call=trainer.chunks.first_call,
        gpu_usage=usage.summarize(watching),
        least_busy_gpu=usage.least_busy(watching),
        bottleneck=found.as_dict() if found else None,
        profile=profiled,
        workers_speed=speed,
    )
