"""`python -m training.children.bandwidth`: the TensorFlow side of `gpudiag bandwidth`
(diagnostics.bandwidth starts it by name). It is handed the devices gpudiag selected
(`--visible-gpus UUID...` or `--cpu-replicas N`), sets them up with the trainer's own
`setup_device_strategy`, and times the strategy's all-reduce of each message size from
`--min-bytes` to `--max-bytes`, doubling, with training.loop.allreduce's one timer. It reports on
its channel (`common.child`) as JSON lines: a "devices" line, then one "size" line per size (so that
a parent that has to kill it keeps the sizes already measured).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from common.child import open_channel
from diagnostics.bandwidth import sizes
from training.devices.setup import DeviceSetupError, add_device_args, plan_from_args, setup_device_strategy


def main(argv: Sequence[str] | None = None) -> int:
    channel = open_channel()  # before TensorFlow: its output must not reach the channel
    parser = argparse.ArgumentParser(
        prog="python -m training.children.bandwidth", description=__doc__.split("\n")[0]
    )
    add_device_args(parser)
    parser.add_argument("--min-bytes", type=int, default=8)
    parser.add_argument("--max-bytes", type=int, default=4 << 20)
    parser.add_argument("--iters", type=int, default=20, help="timed all-reduces per size")
    parser.add_argument("--warmup-iters", type=int, default=5, help="untimed all-reduces per size")
    args = parser.parse_args(argv)
    try:
        setup = setup_device_strategy(plan_from_args(args))
    except (DeviceSetupError, ValueError) as exc:
        channel.send({"event": "error", "message": f"the trainer's device setup failed: {exc}"})
        return 1
    from training.loop.allreduce import UNROLL, ChainedAllreduce

    channel.send({"event": "devices", "replicas": setup.num_replicas, "devices": list(setup.plan.describe())})
    calls = max(1, math.ceil(args.iters / UNROLL))  # each traced call chains UNROLL all-reduces
    warmup = max(1, math.ceil(args.warmup_iters / UNROLL))  # the first call also traces
    for nbytes in sizes(args.min_bytes, args.max_bytes):
        chained = ChainedAllreduce(setup.strategy, nbytes)
        chained.run(warmup)
        seconds = chained.run(calls) / (calls * UNROLL)
        # float32 messages: a size that is not a multiple of 4 is rounded down, as nccl-tests does
        channel.send(
            {"event": "size", "bytes": chained.elements * 4, "seconds": seconds, "iters": calls * UNROLL}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
