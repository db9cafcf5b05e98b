"""Monitor sampling and the imbalance rule, on recorded samples."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from diagnostics.inventory import Gpu, Inventory
from diagnostics.monitor import BackgroundSampler, Sample, imbalance, sample_loop, utilization_by_gpu


def samples(util: dict[int, list[float]]) -> list[Sample]:
    return [
        Sample(float(t), gpu, u, 0, 100.0, 50.0) for gpu, values in util.items() for t, u in enumerate(values)
    ]


def test_imbalance_flags_95_vs_40():
    text = imbalance(samples({0: [95, 96, 94], 1: [40, 41, 39]}), [0, 1])
    assert text is not None and "GPU 0" in text and "GPU 1" in text


def test_balanced_gpus_are_not_flagged():
    assert imbalance(samples({0: [90, 92], 1: [88, 91]}), [0, 1]) is None


def test_only_selected_gpus_count():
    assert imbalance(samples({0: [95], 1: [90], 2: [0]}), [0, 1]) is None


def test_unknown_utilisation_is_ignored():
    assert imbalance([Sample(0, 0, None, None, None, None), Sample(0, 1, 50, 0, 0, 0)], [0, 1]) is None


def test_sample_loop_stops_at_duration():
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(s: float) -> None:
        now[0] += s

    batches = list(sample_loop(lambda: Inventory("570", "12.8"), 1.0, 3.0, clock, sleep))
    assert len(batches) == 4


def _gpu(index: int, utilization: float | None) -> Gpu:
    return Gpu(index, "GPU", f"GPU-{index}", f"0000:0{index}:00.0", 8192, "8.9", False,
               utilization_gpu_pct=utilization)  # fmt: skip


def test_utilization_by_gpu_keeps_known_values_of_the_chosen_gpus():
    rows = [*samples({0: [95, 96], 1: [40], 2: [10]}), Sample(9, 0, None, None, None, None)]
    assert utilization_by_gpu(rows, [0, 1, 3]) == {0: [95.0, 96.0], 1: [40.0], 3: []}


def _wait_for(condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the sampler thread did not get there in 5 s"
        time.sleep(0.005)


def test_background_sampler_keeps_only_active_samples_of_its_gpus():
    reads = itertools.count()
    read_count = [0]

    def read() -> Inventory:
        read_count[0] = next(reads) + 1
        return Inventory("570", "12.8", (_gpu(0, float(read_count[0])), _gpu(1, 50.0)))

    with BackgroundSampler(read, [0], interval_s=0.005) as sampler:
        _wait_for(lambda: read_count[0] >= 3)
        assert sampler.samples == []  # not active yet: read, not kept
        sampler.active = True
        _wait_for(lambda: sampler.samples)
    assert {s.gpu for s in sampler.samples} == {0} and sampler.error is None
    assert not sampler._thread.is_alive()  # leaving the context stops the thread


def test_background_sampler_stops_quietly_when_reading_fails():
    def read() -> Inventory:
        raise RuntimeError("no NVML")

    with BackgroundSampler(read, [0], interval_s=0.01) as sampler:
        sampler._thread.join(5)
    assert isinstance(sampler.error, RuntimeError) and sampler.samples == []


def test_background_sampler_without_gpus_starts_no_thread():
    with BackgroundSampler(lambda: Inventory("570", "12.8"), [], interval_s=0.01) as sampler:
        assert not sampler._thread.is_alive()


def test_uneven_usage_is_one_definition_flagged_just_past_its_threshold():
    """gpudiag monitor and the scaling report share `lagging`: a gap of exactly IMBALANCE_POINTS is
    even, half a point more is not, in both."""
    from diagnostics.monitor import IMBALANCE_POINTS, lagging
    from reports.analysis import utilization_summary

    at, past = 90.0 - IMBALANCE_POINTS, 89.5 - IMBALANCE_POINTS
    assert lagging({0: 90.0, 1: at}) == [] and lagging({0: 90.0, 1: past}) == [1]
    assert imbalance(samples({0: [90.0], 1: [at]}), [0, 1]) is None
    assert "GPU 1" in (imbalance(samples({0: [90.0], 1: [past]}), [0, 1]) or "")
    report_at = utilization_summary({"0": [90.0], "1": [at]})
    report_past = utilization_summary({"0": [90.0], "1": [past]})
    assert report_at is not None and report_at["imbalanced"] is False
    assert report_past is not None and report_past["lagging_gpus"] == ["1"]
