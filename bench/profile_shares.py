"""Where a `--profile-steps` profile says the step time went, for comparing with the summary's
bottleneck verdict (bench/test_verdict_vs_profile.py).

A profile of CPU replicas (TensorFlow 2.21) holds one host plane, `/host:CPU`, whose lines are
threads; an event's start is its line's `timestamp_ns` plus its `offset_ps`. What is read from it:
- the profiled steps: the trainer's traced calls, events named `multi_step` (the function that
  `training.loop.steps.make_multi_step` traces), from the first call's start to the last's end;
- input: the time those calls wait in the iterator's get-next op (`IteratorGetNextOp::DoCompute`,
  on the `tf_data_iterator_get_next` threads; one per replica, waiting side by side);
- communication: the collective ops (`...:CollectiveReduceV2` and the like, on the
  `collective_ops` threads), the wait for the other replicas included;
- compute: the rest of the profiled time (the model's ops, the update, the host between calls).
Each is the union of its events' intervals within the calls, so replicas that wait side by side
count once, and communication that overlaps an input wait counts as input. Devices' own planes
(GPUs) are not read: this is for CPU replicas.

The interval arithmetic and the verdict are pure; `read_profile` imports TensorFlow's protobuf
module (and so TensorFlow) when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Interval = tuple[int, int]  # [start, end) in picoseconds since the epoch

STEP_CALL = "multi_step"
GET_NEXT = "IteratorGetNextOp::DoCompute"
# op types of TensorFlow's cross-replica reductions (an op event is named "op_name:OpType")
COLLECTIVE_TYPES = ("CollectiveReduce", "CollectiveGather", "AllReduce", "Nccl")
SHARES = ("input", "communication", "compute")


@dataclass(frozen=True)
class ProfileEvents:
    """The intervals of the three kinds of event that the shares are made of."""

    calls: list[Interval]
    get_next: list[Interval]
    collectives: list[Interval]


@dataclass(frozen=True)
class ProfileShares:
    """The profiled steps' time, split: `input` + `communication` + `compute` == 1."""

    seconds: float  # from the first profiled call's start to the last's end
    calls: int
    get_next_events: int
    collective_events: int
    shares: dict[str, float]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of the intervals, as sorted disjoint intervals."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(intervals: Iterable[Interval]) -> int:
    return sum(end - start for start, end in merge(intervals))


def clip(intervals: Iterable[Interval], windows: Iterable[Interval]) -> list[Interval]:
    """The parts of `intervals` inside `windows`."""
    inside = merge(windows)
    return [
        (max(start, w0), min(end, w1))
        for start, end in intervals
        for w0, w1 in inside
        if min(end, w1) > max(start, w0)
    ]


def shares_of(events: ProfileEvents) -> ProfileShares:
    """Input, communication and compute as fractions of the profiled time (see the module doc)."""
    if not events.calls:
        raise ValueError(f"no {STEP_CALL!r} events in the profile: has the trainer's traced call a new name?")
    span = max(end for _, end in events.calls) - min(start for start, _ in events.calls)
    waiting = clip(events.get_next, events.calls)
    communicating = clip(events.collectives, events.calls)
    input_ps = length(waiting)
    communication_ps = length(waiting + communicating) - input_ps
    shares = {
        "input": input_ps / span,
        "communication": communication_ps / span,
        "compute": 1.0 - (input_ps + communication_ps) / span,
    }
    return ProfileShares(
        seconds=span / 1e12,
        calls=len(events.calls),
        get_next_events=len(events.get_next),
        collective_events=len(events.collectives),
        shares={k: round(v, 4) for k, v in shares.items()},
    )


def implied_verdict(shares: dict[str, float]) -> str:
    """The verdict a profile's largest share implies."""
    return max(SHARES, key=lambda k: shares[k])


def compare(bottleneck: dict[str, Any], profile: ProfileShares, profiled_steps: int) -> dict[str, Any]:
    """The summary's `bottleneck` object against the profile: verdicts, shares both ways, and the
    differences (summary minus profile; the summary's `input` is the share of a step the pipeline
    needs, capped at 1, the profile's the share the step waits on it)."""
    verdict = implied_verdict(profile.shares)
    summary_shares = bottleneck["shares"]
    return {
        "summary_verdict": bottleneck["verdict"],
        "profile_verdict": verdict,
        "agree": bottleneck["verdict"] == verdict,
        "summary_shares": summary_shares,
        "profile_shares": profile.shares,
        "differences": {
            k: round(summary_shares[k] - profile.shares[k], 4) for k in SHARES if k in summary_shares
        },
        "summary_step_seconds": bottleneck["step_seconds"],
        "profile_step_seconds": profile.seconds / profiled_steps,
        "input_headroom": bottleneck["input_headroom"],
        "events": {
            "calls": profile.calls,
            "get_next": profile.get_next_events,
            "collectives": profile.collective_events,
        },
    }


# -- reading (TensorFlow's protobuf module) -----------------------------------------------------


def _is_collective(name: str) -> bool:
    op_type = name.rpartition(":")[2]
    return ":" in name and any(t in op_type for t in COLLECTIVE_TYPES)


def host_events(space: Any) -> ProfileEvents:
    """The calls, get-next waits and collectives on an XSpace's host plane."""
    calls: list[Interval] = []
    get_next: list[Interval] = []
    collectives: list[Interval] = []
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            base = line.timestamp_ns * 1000
            for event in line.events:
                name = names.get(event.metadata_id, "")
                interval = (base + event.offset_ps, base + event.offset_ps + event.duration_ps)
                if name == STEP_CALL:
                    calls.append(interval)
                elif name == GET_NEXT:
                    get_next.append(interval)
                elif _is_collective(name):
                    collectives.append(interval)
    return ProfileEvents(calls=calls, get_next=get_next, collectives=collectives)


def read_profile(trace_dir: str | Path) -> ProfileShares:
    """The shares of the one `*.xplane.pb` in a `--profile-steps` run's trace folder."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(Path(trace_dir).glob("*.xplane.pb"))
    if len(files) != 1:
        raise ValueError(f"{trace_dir}: expected one *.xplane.pb, found {len(files)}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[0].read_bytes())
    return shares_of(host_events(space))
