"""The report's figures as typed rows: what reports.analysis and reports.variant_figures compute,
reports.recommend argues from, and reports.markdown and reports.plots render. scaling.json's
"figures" is `Figures.to_json()` (the codec of reports/codec.py: the fields are the keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reports.codec import fields_to_json, to_json
from reports.results import Failure, Harness, NotApplicable
from reports.stats import Summary


@dataclass(kw_only=True)
class Utilization:
    mean_pct: dict[str, float]  # NVML index (text) -> mean utilisation over the measured rounds
    imbalanced: bool
    lagging_gpus: list[str]  # well below the busiest GPU (diagnostics.monitor.lagging)


@dataclass(kw_only=True)
class TrainFigure:
    gpus: int
    batch_per_gpu: int
    global_batch: int
    samples_per_sec: Summary
    samples_per_sec_per_gpu: float
    step_seconds: float
    achieved_tflops: float | None
    peak_fp32_tflops: float | None  # the datasheet FP32 peaks summed (None: unknown or CPU)
    fraction_of_peak: float | None
    utilization: Utilization | None


@dataclass(kw_only=True)
class SeriesPoint:
    gpus: int
    batch_per_gpu: int
    global_batch: int
    samples_per_sec: float | None  # None: the configuration failed
    speedup: float | None  # over the series' smallest count
    efficiency: float | None
    ideal_samples_per_sec: float | None


@dataclass(kw_only=True)
class Series:
    """Weak scaling keeps the batch per device; strong scaling the global batch."""

    scaling: str  # weak | strong
    batch: int
    label: str
    base_gpus: int
    points: list[SeriesPoint]


@dataclass(kw_only=True)
class AllreduceFigure:
    gpus: int
    bytes: int
    size: str
    iters: int
    time_us: Summary
    algbw_gbps: float
    busbw_gbps: Summary
    link_gbps_per_direction: float | None
    fraction_of_link: float | None


@dataclass(kw_only=True)
class InputFigure:
    gpus: int
    batch_per_gpu: int
    global_batch: int
    pipeline_samples_per_sec: Summary
    train_samples_per_sec: float | None
    headroom: float | None  # pipeline rate / training rate


@dataclass(kw_only=True)
class CaseBottleneck:
    """Where one training case's step time goes, judged by the trainer's own rule
    (common.bottleneck.judge) from the sweep's rows: the input pipeline alone at the same devices
    and batch, the all-reduce interpolated to the gradients' size, the FLOPs against the peak."""

    gpus: int
    batch_per_gpu: int
    samples_per_sec: float  # the training rate judged (median)
    verdict: str  # input | communication | compute | balanced
    shares: dict[str, float]  # input, communication, compute: fractions of one step (as judged)
    input_headroom: float | None  # pipeline rate / training rate (None: not measured)
    allreduce_seconds: float | None  # one all-reduce of the gradients (None: one device, or not measured)
    gradient_bytes: int | None
    fraction_of_peak: float | None  # of the datasheet peak of the variant's precision


@dataclass(kw_only=True)
class InputCost:
    """With --data: one case on the user's data and on synthetic images of the same size."""

    gpus: int
    batch_per_gpu: int
    real_samples_per_sec: Summary
    synthetic_samples_per_sec: Summary
    synthetic_shape: list[int] | None  # the synthetic examples' shape, as the worker built them
    cost: float  # 1 - real / synthetic: the share of the synthetic rate the data loses
    apart: bool | None  # the two 95% confidence intervals do not overlap (None: too few rounds)


@dataclass(kw_only=True)
class VariantCell:
    """One variant in one configuration."""

    variant: dict[str, Any]
    label: str
    status: str  # measured | failed | not run | n/a
    error: str | None = None
    samples_per_sec: Summary | None = None
    speedup: float | None = None  # over the baseline variant in the same configuration
    apart: bool | None = None  # the two 95% confidence intervals do not overlap

    def to_json(self) -> dict[str, Any]:
        """A measured cell has its rate; any other its error."""
        out: dict[str, Any] = {"variant": self.variant, "label": self.label, "status": self.status}
        if self.status == "measured":
            return {
                **out,
                "samples_per_sec": to_json(self.samples_per_sec),
                "speedup": self.speedup,
                "apart": self.apart,
            }
        return {**out, "error": self.error}


@dataclass(kw_only=True)
class VariantConfig:
    gpus: int
    batch_per_gpu: int
    cells: list[VariantCell]  # in the order of VariantFigures.labels, the baseline first


@dataclass(kw_only=True)
class VariantSummary:
    """One variant other than the baseline, over the configurations where both ran."""

    variant: dict[str, Any]
    label: str
    configurations: int
    failed: int
    median_speedup: float | None
    min_speedup: float | None
    max_speedup: float | None
    faster: int  # configurations faster beyond the confidence intervals
    slower: int


@dataclass(kw_only=True)
class OpsAllreduce:
    """One (devices, size): bus bandwidth per cross-device ops and the speedup over the baseline's."""

    gpus: int
    bytes: int
    size: str
    busbw_gbps: dict[str, float]
    speedup: dict[str, float]
    apart: dict[str, bool | None]


@dataclass(kw_only=True)
class VariantFigures:
    baseline: dict[str, Any]
    baseline_label: str
    axes: dict[str, list[Any]]
    labels: list[str]
    train: list[VariantConfig]
    summary: list[VariantSummary]
    allreduce: list[OpsAllreduce]
    not_applicable: list[NotApplicable]


@dataclass(frozen=True)
class Recommendation:
    kind: str  # best-batch | bottleneck | imbalance | failure | variant | note
    text: str
    gpus: int | None = None
    batch_per_gpu: int | None = None
    bottleneck: str | None = None  # input | allreduce | compute | throttling


@dataclass(kw_only=True)
class Figures:
    """Every figure of one report; the scaling figures are the baseline variant's."""

    title: str
    unit: str  # GPU | CPU device
    train: list[TrainFigure]
    series: list[Series]
    allreduce: list[AllreduceFigure]
    input: list[InputFigure]
    variants: VariantFigures | None  # None: a sweep of one variant
    failures: list[Failure]
    harness: Harness
    bottlenecks: list[CaseBottleneck] = field(default_factory=list)  # per training case, as `train`
    input_costs: list[InputCost] = field(default_factory=list)  # with --data: real against synthetic
    recommendations: list[Recommendation] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return fields_to_json(self)
