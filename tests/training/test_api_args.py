"""The Python API's checks that need no TensorFlow: `training.setup_device_strategy()` refuses bad
arguments with a one-line UserError before TensorFlow is imported, `import training` stays free of
TensorFlow, and the throughput arithmetic (training.api.rates) excludes the warm-up and bounds the
median.
"""

from __future__ import annotations

import pytest
from support import child_env, run_child

from common.errors import UserError
from training.api import setup_device_strategy
from training.api.rates import StepRates

BAD_ARGUMENTS = [
    ({"device_mode": "bogus"}, "unknown --device-mode 'bogus'"),
    ({"cpu_replicas": 0}, "--cpu-replicas must be >= 1, got 0"),
    ({"cpu_replicas": "2"}, "cpu_replicas must be not a string"),
    ({"cpu_replicas": 2.5}, "cpu_replicas must be int"),
    ({"min_gpu_memory": -1.0}, "--min-gpu-memory must be a number >= 0"),
    ({"custom_gpus": [0, 1]}, "--custom-gpus needs --device-mode custom"),
    ({"device_mode": "custom"}, "--device-mode custom needs --custom-gpus"),
    ({"device_mode": "custom", "custom_gpus": ["a"]}, "custom_gpus must be a list of GPU ids"),
    ({"device_mode": "custom", "custom_gpus": 1}, "custom_gpus must be a list of GPU ids"),
    ({"cluster": "everywhere"}, "unknown --cluster 'everywhere'"),
    ({"cross_device_ops": "fast"}, "unknown --cross-device-ops 'fast'"),
    ({"include_display_gpus": "yes"}, "include_display_gpus must be not a string"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS, ids=lambda v: str(v)[:40])
def test_bad_arguments_are_a_one_line_user_error(kwargs, message):
    """Each bad argument is bad input: a UserError whose one line says which and why."""
    with pytest.raises(UserError) as caught:
        setup_device_strategy(**kwargs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_arguments_are_refused_before_tensorflow_is_imported():
    """In a fresh process: `import training` and every refusal leave TensorFlow unimported."""
    script = f"""
import sys
import training
assert "tensorflow" not in sys.modules, "import training imported TensorFlow"
from common.errors import UserError
for kwargs, _ in {BAD_ARGUMENTS!r}:
    try:
        training.setup_device_strategy(**kwargs)
    except UserError:
        pass
    else:
        raise SystemExit(f"no error for {{kwargs}}")
assert "tensorflow" not in sys.modules, "a refusal imported TensorFlow"
assert "keras" not in sys.modules
print("ok")
"""
    done = run_child("-c", script, timeout=60, env=child_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_unknown_attribute_of_training_is_an_attribute_error():
    import training

    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = training.nonsense  # type: ignore[attr-defined]


def test_warmup_steps_are_not_timed():
    """The first `warmup_steps` steps count as steps but not in the rates."""
    rates = StepRates(global_batch_size=64, warmup_steps=3)
    for _ in range(10):
        rates.call_done(1, 0.01)
    assert rates.steps == 10
    assert rates.measured_steps == 7
    assert rates.median == pytest.approx(6400)
    assert "median of 7 steps after 3 warm-up" in rates.describe(replicas=2)


def test_a_call_of_several_steps_that_holds_a_warmup_step_is_warmup():
    """With several steps per call, a call is timed only if all its steps are past the warm-up."""
    rates = StepRates(global_batch_size=10, warmup_steps=5)
    for _ in range(4):
        rates.call_done(4, 0.02)
    assert rates.measured_steps == 8  # calls 3 and 4; call 2 (steps 4-7) held warm-up step 4
    assert rates.median == pytest.approx(4 * 10 / 0.02)
    assert "2 calls (8 steps) after 8 warm-up" in rates.describe(replicas=1)


def test_untimed_calls_are_not_counted():
    rates = StepRates(global_batch_size=8, warmup_steps=0)
    rates.call_done(1, None)
    rates.call_done(1, 0.0)
    assert rates.median is None and rates.interval is None and rates.overall is None
    assert "not measured" in rates.describe(replicas=1)


def test_interval_bounds_the_median_and_needs_six_calls():
    rates = StepRates(global_batch_size=1000, warmup_steps=0)
    for seconds in (0.5, 0.25, 1.0, 0.2, 0.4):
        rates.call_done(1, seconds)
    assert rates.interval is None
    assert "no 95% interval" in rates.describe(replicas=1)
    for seconds in (0.3, 0.1, 0.125, 0.8, 0.9):
        rates.call_done(1, seconds)
    assert rates.interval is not None and rates.median is not None
    low, high = rates.interval
    assert low <= rates.median <= high
    assert rates.describe(replicas=2).startswith(
        "throughput: 2,917 samples/s (1,458 per replica, 2 replicas), "
        "95% CI [1,111, 8,000], median of 10 steps"
    )


@pytest.mark.parametrize(("batch", "warmup"), [(0, 5), (True, 5), (64, -1), (64, 1.5)])
def test_bad_callback_arguments_are_user_errors(batch, warmup):
    with pytest.raises(UserError, match="ThroughputCallback: "):
        StepRates(batch, warmup)
