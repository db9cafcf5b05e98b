"""The sweep's raw results (schema gpudiag-sweep/1): what `bench/` writes and every report reads.

The raw per-round times are the source of truth; every derived figure is recomputed from them, so
a saved results file re-renders into the same report on any machine.

    {"schema": "gpudiag-sweep/1", "device_kind": "gpu" | "cpu", "model": "cnn", "scaling": "both",
     "gpu_counts": [1, 2], "batch_sizes": [32, 64], "method": {...}, "environment": {...},
     "harness": {...}, "train": [...], "input": [...], "allreduce": [...], "failures": [...]}

train:     {"gpus", "batch_per_gpu", "global_batch", "steps", "round_seconds": [...],
            "warmup_seconds", "flops_per_sample", "gradient_bytes", "gpu_names", "utilization",
            "variant": {"jit_compile", "mixed_precision", "cross_device_ops"}, "dtype_policy"}
input:     {"gpus", "batch_per_gpu", "global_batch", "steps", "round_seconds": [...]}
allreduce: {"gpus", "bytes", "iters", "round_seconds": [...], "variant": {"cross_device_ops"}}
failures:  {"benchmark", "gpus", "batch_per_gpu" | "bytes", "error", "message", "summary", "variant"}

Optional, added with the variant axes (a file without them reads as one default variant):
"variants": {"axes": {axis: [values]}, "baseline": {axis: value}, "not_applicable": [{"gpus",
"variant", "reason"}]}, "image_size" and "data" (what was trained on). See reports/variants.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import read_json

SCHEMA = "gpudiag-sweep/1"
REPORT_SCHEMA = "gpudiag-scaling-report/1"


class ResultsError(UserError):
    """A results file that cannot be rendered: names the file and what is wrong."""


_REQUIRED_ROW_FIELDS = {
    "train": ("gpus", "batch_per_gpu", "global_batch", "steps", "round_seconds"),
    "input": ("gpus", "batch_per_gpu", "global_batch", "steps", "round_seconds"),
    "allreduce": ("gpus", "bytes", "iters", "round_seconds"),
}


def validate(data: Any, source: str = "<results>") -> dict[str, Any]:
    """Check the shape the renderers rely on; raise ResultsError naming the first problem."""
    if not isinstance(data, dict):
        raise ResultsError(f"{source}: top level must be an object")
    if data.get("schema") == REPORT_SCHEMA and isinstance(data.get("results"), dict):
        data = data["results"]  # a scaling.json carries the raw results it was made from
    if data.get("schema") != SCHEMA:
        raise ResultsError(f"{source}: field 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
    for section, needed in _REQUIRED_ROW_FIELDS.items():
        rows = data.get(section, [])
        if not isinstance(rows, list):
            raise ResultsError(f"{source}: field '{section}' must be a list")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ResultsError(f"{source}: {section}[{i}] must be an object")
            for key in needed:
                if key not in row:
                    raise ResultsError(f"{source}: {section}[{i}] has no field '{key}'")
            times = row["round_seconds"]
            if (
                not isinstance(times, list)
                or not times
                or not all(isinstance(t, int | float) and t > 0 for t in times)
            ):
                raise ResultsError(f"{source}: {section}[{i}].round_seconds must be positive numbers")
    if not isinstance(data.get("failures", []), list):
        raise ResultsError(f"{source}: field 'failures' must be a list")
    return data


def read(path: str | Path) -> Any:
    """The parsed JSON of a results file; a file cut short (an interrupted copy) says so."""
    try:
        return read_json(path, ResultsError, "a results file")
    except ResultsError as exc:
        if "not JSON" in str(exc) and _ends_early(Path(path)):
            raise ResultsError(
                f"{path}: truncated: the JSON ends before it is complete (an interrupted write or copy?)"
            ) from None
        raise


def _ends_early(path: Path) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return bool(text.strip()) and exc.pos >= len(text.rstrip())
    return False


def load(path: str | Path) -> dict[str, Any]:
    return validate(read(path), str(path))


def failure_summary(
    benchmark: str,
    gpus: int,
    error: str,
    batch_per_gpu: int | None = None,
    nbytes: int | None = None,
    unit: str = "GPU",
) -> str:
    """'OOM at 256 per GPU on 2 GPUs', 'crash at 1 MiB all-reduce on 4 GPUs', ..."""
    what = {
        "oom": "OOM",
        "crash": "worker crashed",
        "timeout": "worker hung (killed)",
        "start": "worker failed to start",
        "error": "error",
    }.get(error, error)
    plural = "s" if gpus != 1 else ""
    if benchmark == "allreduce" and nbytes is not None:
        at = f"{format_bytes(nbytes)} all-reduce"
    elif batch_per_gpu is not None:
        at = f"{batch_per_gpu} per {unit}" + ("" if benchmark == "train" else f" ({benchmark} pipeline)")
    else:
        at = benchmark
    return f"{what} at {at} on {gpus} {unit}{plural}"


def format_bytes(nbytes: float) -> str:
    """Binary units as nccl-tests prints sizes: 1 KiB = 1024 bytes."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(nbytes)} B"
