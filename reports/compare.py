"""Compare two sweeps (`python -m reports compare BASE.json NEW.json`): what a user runs before and
after a driver or TensorFlow upgrade.

Per case (benchmark, workers, devices per worker, batch or message size, variant) both rates, the
change of the median, and a verdict. A change is significant when the two 95% confidence intervals of the rate
do not overlap (reports.stats.summarize: the median's interval from 6 rounds, Student's t of the
mean below) AND it exceeds the threshold; a significant drop is a regression, and so is a case
that ran in BASE and failed in NEW. As pytest-benchmark's `--benchmark-compare-fail`, the
threshold is a percentage ("5%" or "5").

Pure functions: the CLI (reports/__main__.py) loads, calls, renders and picks the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from reports import stats
from reports.results import Results, ResultsError, format_bytes, unwrap, validate
from reports.variants import label, variant_key, variant_of

DEFAULT_THRESHOLD = 0.05
# the top-level fields that say what was measured: two runs that differ here are not comparable
IDENTITY = {"model": "model", "device_kind": "devices", "image_size": "image size", "data": "data"}
# environment fields worth naming when they changed (the upgrade being judged)
ENVIRONMENT = (
    "tensorflow",
    "keras",
    "nccl",
    "tf_build",
    "driver_version",
    "cuda_driver_version",
    "cpu",
    "host",
)

REGRESSED, IMPROVED, SAME, NOISE = "REGRESSED", "improved", "same", "within noise"
FAILED, ONLY_BASE, ONLY_NEW, NO_CI = "FAILED in NEW", "only in BASE", "only in NEW", "too few rounds"


class CompareError(ResultsError):
    """Two results files that cannot be compared (bad input: one line, exit 2)."""


def parse_threshold(text: str) -> float:
    """'5%' or '5' -> 0.05 (a percentage, as pytest-benchmark's compare-fail writes it)."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--threshold must be a percentage such as 5% or 2.5, got {text!r}") from None
    if not 0 <= value < 100:
        raise ValueError(f"--threshold must be from 0% to below 100%, got {text!r}")
    return value / 100


@dataclass(frozen=True)
class Case:
    key: tuple[Any, ...]
    name: str
    unit: str
    rates: tuple[float, ...]


@dataclass(frozen=True)
class Change:
    name: str
    unit: str
    base: stats.Summary | None
    new: stats.Summary | None
    change: float | None  # new median / base median - 1
    verdict: str


@dataclass
class Comparison:
    threshold: float
    changes: list[Change]
    environment: list[str] = field(default_factory=list)  # "tensorflow 2.20.0 -> 2.21.0", ...
    runs: tuple[str, str] = ("", "")  # describe_run of BASE and NEW

    @property
    def regressed(self) -> list[Change]:
        return [c for c in self.changes if c.verdict in (REGRESSED, FAILED)]


def check_comparable(base: Any, new: Any, base_name: str, new_name: str) -> tuple[Results, Results]:
    """Both validated; raises CompareError saying what differs (schema first, then what was measured)."""
    base, new = unwrap(base), unwrap(new)
    schemas = [d.get("schema") if isinstance(d, dict) else None for d in (base, new)]
    if schemas[0] != schemas[1]:
        raise CompareError(
            f"different schemas: {base_name} is {schemas[0]!r}, {new_name} is {schemas[1]!r}; "
            "compare needs two results files of the same schema"
        )
    typed = validate(base, base_name), validate(new, new_name)
    differs = [
        f"{what} {getattr(typed[0], key)!s} in {base_name}, {getattr(typed[1], key)!s} in {new_name}"
        for key, what in IDENTITY.items()
        if getattr(typed[0], key) != getattr(typed[1], key)
    ]
    if differs:
        raise CompareError(f"the runs measured different things: {'; '.join(differs)}")
    return typed


def _unit(results: Results, n: int | None, workers: int | None = None) -> str:
    """'2 GPUs', or per worker in a cluster: '2 workers x 2 GPUs' (a merge of cluster sizes)."""
    devices = f"{n} {results.unit}{'s' if n != 1 else ''}"
    return devices if (workers or 1) == 1 else f"{workers} workers x {devices}"


def cases(results: Results) -> dict[tuple[Any, ...], Case]:
    """Every measured case by its key, with the per-round rates (higher is better)."""
    out: dict[tuple[Any, ...], Case] = {}
    for benchmark, rows in (("train", results.train), ("input", results.input)):
        for row in rows:
            variant = variant_of(row.variant, benchmark)
            key = (benchmark, row.workers or 1, row.gpus, row.batch_per_gpu, variant_key(variant))
            tail = f" ({label(variant)})" if benchmark == "train" else ""
            name = f"{benchmark} {_unit(results, row.gpus, row.workers)} x {row.batch_per_gpu}{tail}"
            out[key] = Case(key, name, "samples/s", tuple(row.rates()))
    for ar in results.allreduce:
        variant = variant_of(ar.variant, "allreduce")
        key = ("allreduce", ar.workers or 1, ar.gpus, ar.bytes, variant_key(variant))
        name = f"all-reduce {_unit(results, ar.gpus, ar.workers)} {format_bytes(ar.bytes)} ({label(variant)})"
        rates = tuple(ar.bytes * ar.iters / s / 1e9 for s in ar.round_seconds)
        out[key] = Case(key, name, "GB/s algbw", rates)
    return out


def failed_keys(results: Results) -> set[tuple[Any, ...]]:
    keys = set()
    for f in results.failures:
        if f.benchmark not in ("train", "input", "allreduce"):
            continue
        size = f.bytes if f.benchmark == "allreduce" else f.batch_per_gpu
        keys.add((f.benchmark, f.workers or 1, f.gpus, size, variant_key(variant_of(f.variant, f.benchmark))))
    return keys


def judge(base: stats.Summary, new: stats.Summary, threshold: float) -> tuple[float, str]:
    change = new.median / base.median - 1
    apart = stats.intervals_apart(base, new)
    if apart is None:
        return change, NO_CI
    if not apart:
        return change, NOISE
    if abs(change) <= threshold:
        return change, SAME
    return change, REGRESSED if change < 0 else IMPROVED


def compare(
    base: Any, new: Any, threshold: float = DEFAULT_THRESHOLD, names: tuple[str, str] = ("BASE", "NEW")
) -> Comparison:
    """Raises CompareError for runs that cannot be compared or have no case in common."""
    base, new = check_comparable(base, new, *names)
    old_cases, new_cases, new_failed = cases(base), cases(new), failed_keys(new)
    if not set(old_cases) & (set(new_cases) | new_failed):
        raise CompareError(f"{names[0]} and {names[1]} have no case in common")
    changes = []
    for key in [*old_cases, *(k for k in new_cases if k not in old_cases)]:
        old, fresh = old_cases.get(key), new_cases.get(key)
        some = old or fresh
        assert some is not None
        a = stats.summarize(old.rates) if old else None
        b = stats.summarize(fresh.rates) if fresh else None
        if a is not None and b is not None:
            change, verdict = judge(a, b, threshold)
            changes.append(Change(some.name, some.unit, a, b, change, verdict))
        else:
            verdict = ONLY_NEW if a is None else FAILED if key in new_failed else ONLY_BASE
            changes.append(Change(some.name, some.unit, a, b, None, verdict))
    env_a, env_b = base.environment, new.environment
    environment = [
        f"{k} {getattr(env_a, k)} -> {getattr(env_b, k)}"
        for k in ENVIRONMENT
        if getattr(env_a, k) != getattr(env_b, k)
    ]
    return Comparison(threshold, changes, environment, (describe_run(base), describe_run(new)))


def _rate(summary: stats.Summary | None) -> tuple[str, str]:
    if summary is None:
        return "-", ""
    fmt = ",.0f" if summary.median >= 100 else ".3g"
    ci = (
        f"[{format(summary.ci_low, fmt)}, {format(summary.ci_high, fmt)}]"
        if summary.ci_low is not None and summary.ci_high is not None
        else "n/a"
    )
    return format(summary.median, fmt), ci


def describe_run(results: Results) -> str:
    """'2026-11-27T10:00:00Z, TensorFlow 2.21.0, driver 570.86' from what the results record."""
    env = results.environment
    parts = [
        results.created_at or "undated",
        f"TensorFlow {env.tensorflow or '?'}",
        f"driver {env.driver_version}" if env.driver_version else "no NVIDIA driver",
    ]
    return ", ".join(parts)


def render(comparison: Comparison, names: tuple[str, str] = ("BASE", "NEW")) -> str:
    rows = []
    for c in comparison.changes:
        rows.append(
            [
                c.name,
                c.unit,
                *_rate(c.base),
                *_rate(c.new),
                "" if c.change is None else f"{c.change:+.1%}",
                c.verdict,
            ]
        )
    headers = ["case", "unit", "BASE", "95% CI", "NEW", "95% CI", "change", "verdict"]
    lines = [f"BASE: {names[0]} ({comparison.runs[0]})", f"NEW:  {names[1]} ({comparison.runs[1]})", ""]
    lines += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if comparison.environment:
        lines.append(f"What changed between the runs: {'; '.join(comparison.environment)}.")
    lines.append(
        f"Significant: the 95% confidence intervals of the rate do not overlap and the median moved "
        f"by more than {comparison.threshold:.1%}."
    )
    bad = comparison.regressed
    if bad:
        lines.append(f"{len(bad)} case(s) regressed: {', '.join(c.name for c in bad)}.")
    else:
        lines.append("No case regressed.")
    return "\n".join(lines) + "\n"
