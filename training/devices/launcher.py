"""`python -m training --local-workers N ...`: a multi-worker cluster on this machine, for trying
multi-worker training without a scheduler and for the tests. It starts N copies of the same
command, each with a TF_CONFIG naming free localhost ports and its own task index, and with its
equal share of the selected GPUs (CPU runs: one CPU replica each); prefixes each worker's output
with its name; forwards SIGINT and SIGTERM to every worker; and exits with the worst exit code.

No TensorFlow here: the workers are `python -m training` processes, each on
MultiWorkerMirroredStrategy through TF_CONFIG as on separate machines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from training.devices.setup import DevicePlan

HOST = "127.0.0.1"
# after a worker failed, how long the others get to notice (the lost peer surfaces in their next
# collective) before the launcher stops them itself
GRACE_S = 30.0


def free_ports(count: int) -> list[int]:
    """Ports the system had free a moment ago (bound to port 0, then released together)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line without --local-workers (a worker must not launch workers)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--local-workers":
            skip = True
        elif not arg.startswith("--local-workers="):
            out.append(arg)
    return out


def exit_code(returncode: int) -> int:
    """A shell's view: killed by signal S is 128 + S."""
    return 128 - returncode if returncode < 0 else returncode


def _pump(stream: IO[str], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(prefix + line)
            out.flush()


def run(argv: Sequence[str], count: int, plan: DevicePlan, collective_timeout: float) -> int:
    """Start the workers, wait for them all, return the worst exit code."""
    ports = free_ports(count)
    cluster = {"worker": [f"{HOST}:{port}" for port in ports]}
    base = worker_argv(argv)
    print(f"--local-workers {count}: workers on {', '.join(cluster['worker'])}", file=sys.stderr, flush=True)
    procs: list[subprocess.Popen[str]] = []
    pumps: list[threading.Thread] = []
    lock = threading.Lock()
    for index in range(count):
        share = plan.share(index, count)
        devices = ["--device-mode", "custom", "--custom-gpus", *(str(g.index) for g in share.gpus)]
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "training",
                *base,
                *(devices if share.kind == "gpu" else []),
                "--cluster",
                "tf-config",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        procs.append(proc)
        prefix = f"[worker {index}] "
        assert proc.stdout is not None and proc.stderr is not None
        for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            pump = threading.Thread(target=_pump, args=(stream, prefix, out, lock), daemon=True)
            pump.start()
            pumps.append(pump)

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed_at: float | None = None
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > collective_timeout + GRACE_S:
                for p in procs:
                    if p.poll() is None:
                        print(f"[launcher] stopping worker {procs.index(p)}: a peer failed", file=sys.stderr)
                        p.kill()
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for pump in pumps:
        pump.join(timeout=5)
    codes = [exit_code(p.returncode) for p in procs]
    if any(codes):
        listed = ", ".join(f"worker {i} {code}" for i, code in enumerate(codes))
        print(f"[launcher] exit codes: {listed}", file=sys.stderr)
    return max(codes)
