"""The bottleneck verdict's rules, its text line, --profile-steps parsing and how a profile range
cuts the loop's calls and leaves the throughput: pure Python, no TensorFlow."""

from __future__ import annotations

import pytest

from common.bottleneck import Measurements, describe, judge
from training.app.bottleneck import INPUT_MAX_SECONDS, INPUT_MIN_SECONDS, input_budget
from training.loop.state import ThroughputMeter
from training.loop.steps import ProfileRange, chunk_steps
from training.settings.checks import parse_profile_steps
from training.settings.config import TrainConfig, validate
from training.settings.table import ConfigError


def measured(
    rate: float = 1000.0,
    input_rate: float | None = 10_000.0,
    allreduce: float | None = None,
    replicas: int = 2,
    **more: float,
) -> Measurements:
    # batch 100 at 1000 samples/s: a step of 0.1 s
    return Measurements(rate, 100, replicas, input_rate, allreduce, 4_000_000, **more)


def test_a_pipeline_under_1_2x_the_training_rate_is_input_bound():
    """Headroom 1.1: input, whatever the all-reduce costs."""
    found = judge(measured(input_rate=1100.0, allreduce=0.08))
    assert found is not None
    assert found.verdict == "input"
    assert found.input_headroom == pytest.approx(1.1)
    assert found.shares["input"] == pytest.approx(1 / 1.1, abs=1e-4)
    assert "--image-size" in found.remedy and "TFRecord" in found.remedy


def test_an_all_reduce_of_40_percent_of_the_step_is_communication_bound():
    found = judge(measured(allreduce=0.05))
    assert found is not None
    assert found.verdict == "communication"
    assert found.shares["communication"] == pytest.approx(0.5)
    assert found.shares["compute"] == pytest.approx(0.5)
    assert "--cross-device-ops" in found.remedy and "batch" in found.remedy


def test_a_fast_pipeline_and_a_cheap_all_reduce_leave_compute():
    found = judge(measured(allreduce=0.005))
    assert found is not None
    assert found.verdict == "compute"
    assert "--mixed-precision" in found.remedy and "--jit-compile" in found.remedy


@pytest.mark.parametrize(
    ("input_rate", "allreduce"),
    [(1500.0, 0.005), (10_000.0, 0.025)],
    ids=["input-near-its-limit", "all-reduce-a-quarter"],
)
def test_two_parts_near_their_limits_are_balanced(input_rate, allreduce):
    found = judge(measured(input_rate=input_rate, allreduce=allreduce))
    assert found is not None and found.verdict == "balanced"


def test_one_replica_has_no_communication_share():
    """With one replica there is no all-reduce: its share is 0 even if a figure was passed."""
    found = judge(measured(allreduce=0.09, replicas=1))
    assert found is not None
    assert found.verdict == "compute" and found.shares["communication"] == 0.0


def test_no_input_figure_judges_the_rest_and_leaves_the_input_share_out():
    found = judge(measured(input_rate=None, allreduce=0.001))
    assert found is not None
    assert found.verdict == "compute" and "input" not in found.shares


def test_no_training_rate_gives_no_verdict():
    assert judge(measured(rate=0.0)) is None


def test_fraction_of_peak_where_flops_and_peak_are_known():
    found = judge(measured(flops_per_sample=1e9, peak_flops=1e13))
    assert found is not None and found.fraction_of_peak == pytest.approx(0.1)
    found = judge(measured())
    assert found is not None and found.fraction_of_peak is None


def test_the_text_line_names_the_verdict_the_figures_and_the_section():
    found = judge(measured(input_rate=1100.0, allreduce=0.01, flops_per_sample=1e9, peak_flops=1e13))
    assert found is not None
    line = describe(found.as_dict())
    assert line.startswith("input (input pipeline 1.10x the training rate, all-reduce 10% of a step")
    assert "compute 90% (10% of peak)" in line
    assert line.endswith("(see TROUBLESHOOTING.md#why-is-it-slow)")


def test_the_input_measurement_takes_a_bounded_share_of_training():
    assert input_budget(1.0) == INPUT_MIN_SECONDS
    assert input_budget(20.0) == pytest.approx(0.4)
    assert input_budget(10_000.0) == INPUT_MAX_SECONDS


# -- --profile-steps ----------------------------------------------------------------------------


def test_profile_steps_parse_as_a_closed_range():
    assert parse_profile_steps("20:24") == (20, 24)
    assert parse_profile_steps(" 3:3 ") == (3, 3)


@pytest.mark.parametrize("text", ["5:3", "0:2", "a:b", "3", "3:", ":4", "-1:2", "2:3:4"])
def test_bad_profile_ranges_are_one_line(text):
    with pytest.raises(ConfigError) as caught:
        parse_profile_steps(text)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--profile-steps must be A:B")


def test_profile_steps_need_a_log_dir():
    with pytest.raises(ConfigError, match=r"--profile-steps .* --log-dir"):
        validate(TrainConfig(profile_steps="2:3"))
    assert validate(TrainConfig(profile_steps="2:3", log_dir="/tmp/x")).profile_steps == "2:3"


def test_a_profile_range_cuts_the_calls_before_its_first_step_and_after_its_last():
    """K=10 from step 0 with the range 5:8: a call of 4 (steps 1-4), one of 4 (5-8), then 10."""
    cuts = ProfileRange(5, 8, "/tmp/x").cuts()
    assert chunk_steps(10, 0, 100, 0, None, cuts) == 4
    assert chunk_steps(10, 4, 100, 4, None, cuts) == 4
    assert chunk_steps(10, 8, 100, 8, None, cuts) == 10
    profile = ProfileRange(1, 2, "/tmp/x")
    assert chunk_steps(10, 0, 100, 0, None, profile.cuts()) == 2  # from the first step: no cut before
    assert profile.covers(1) and profile.covers(2) and not profile.covers(3)


def test_a_profile_that_records_nothing_starts_and_stops_without_tensorflow():
    """Workers other than the chief cut their calls alike but run no profiler."""
    profile = ProfileRange(2, 3, "/tmp/x", record=False)
    profile.start()
    profile.stop()
    assert not profile.active and profile.trace_dir is None


def test_steps_skipped_by_a_pause_are_not_measured():
    """What the loop does for profiled steps: pause, and no step_done for them."""
    meter = ThroughputMeter(global_batch_size=10, warmup_steps=0)
    for t in (0.0, 1.0, 2.0):
        meter.step_done(t)
    meter.pause()  # the profiled steps run here, 100 s of them, and are not counted
    for t in (102.0, 103.0):
        meter.step_done(t)
    assert meter.measured_steps == 3
    assert meter.samples_per_sec == pytest.approx(10.0)


def test_an_all_reduce_not_timed_leaves_the_split_unknown_and_claims_no_compute_bound():
    """Several replicas without an all-reduce figure (a report whose sweep measured none at that
    count): the input is still judged; communication and compute are not made up."""
    found = judge(measured(allreduce=None, replicas=2))
    assert found is not None and found.verdict == "balanced"
    assert "communication" not in found.shares and "compute" not in found.shares
    assert "all-reduce not timed" in describe(found.as_dict())
    assert judge(measured(input_rate=1100.0, allreduce=None)).verdict == "input"  # type: ignore[union-attr]
