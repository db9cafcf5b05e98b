"""Monitor sampling and the imbalance rule, on recorded samples."""

from __future__ import annotations

from diagnostics.monitor import Sample, imbalance, sample_loop


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
    from diagnostics.inventory import Inventory

    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(s: float) -> None:
        now[0] += s

    batches = list(sample_loop(lambda: Inventory("570", "12.8"), 1.0, 3.0, clock, sleep))
    assert len(batches) == 4
