"""The `cluster` check: the multi-worker cluster this machine would join (TF_CONFIG, or a Slurm job
step as TensorFlow's Slurm resolver reads it; diagnostics.cluster) is usable before every worker is
started: a valid description, this task's port free to bind, every host name resolving.

It never connects to a peer: before a run the peers need not be up yet, so an unreachable one means
nothing. Name lookups run in daemon threads with one short deadline for all of them, so a slow DNS
server costs `gpudiag check` at most RESOLVE_TIMEOUT_S (and a warning), never a hang.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable

from diagnostics.checks.base import Context, Finding, fail, passed, see, skip, warn
from diagnostics.cluster import ClusterError, ClusterTask, discover, split_address

# Long enough for a working resolver (well under a millisecond from /etc/hosts, a few ms from DNS),
# short enough that `gpudiag check` stays quick when DNS does not answer.
RESOLVE_TIMEOUT_S = 1.0

Lookup = Callable[[str], list[str]]  # host name -> its addresses; raises OSError when it has none


def cluster(ctx: Context) -> list[Finding]:
    """Multi-worker cluster: TF_CONFIG or Slurm step valid, own port free, host names resolve."""
    try:
        task = discover("auto", ctx.env)
    except ClusterError as exc:
        where = "TF_CONFIG" if ctx.env.get("TF_CONFIG", "").strip() else "the srun command line"
        return [
            fail(
                str(exc),
                f"correct {where} as the message says; every worker needs the same cluster and its own "
                f"task {see('multi-worker')}",
            )
        ]
    if task is None:
        return [skip("single machine: no TF_CONFIG or Slurm step")]
    head = f"{task.name} of {task.num_workers} training task(s) ({task.source}), this task at {task.address}"
    if ctx.inventory_path is not None:
        # A replay runs on another machine: its ports and name lookups say nothing about the recorded one.
        return [passed(f"{head}; port and host names not checked on a replay (run gpudiag check there)")]
    return _judge(task, head)


def _judge(task: ClusterTask, head: str) -> list[Finding]:
    host, port = split_address(task.address)
    who = f"{task.name} ({task.source}) at {task.address}"
    findings: list[Finding] = []
    problem = port_problem(port)
    if problem:
        findings.append(fail(f"{who}: cannot listen on port {port}: {problem}", _port_remedy(task, port)))
    hosts = sorted({split_address(address)[0] for addresses in task.jobs.values() for address in addresses})
    results = resolve_all(hosts)
    unknown = [h for h in hosts if isinstance(results[h], str)]
    slow = [h for h in hosts if results[h] is None]
    addresses = {h: r for h, r in results.items() if isinstance(r, list) and r}
    if unknown:
        why = "; ".join(f"{h}: {results[h]}" for h in unknown)
        findings.append(
            fail(
                f"{who}: host name(s) that do not resolve here: {why}",
                "correct the name in the cluster description, or add it to DNS or /etc/hosts on every "
                f"machine {see('multi-worker')}",
            )
        )
    if slow:
        findings.append(
            warn(
                f"{who}: no answer within {RESOLVE_TIMEOUT_S:g} s when resolving {', '.join(slow)}",
                "check the DNS server (`getent hosts NAME`), or use IP addresses or /etc/hosts entries "
                f"{see('multi-worker')}",
            )
        )
    own = addresses.get(host)
    if own and not any(_is_local(a) for a in own):
        findings.append(
            warn(
                f"{who}: {host} resolves to {', '.join(own)}, not an address of this machine",
                "this machine is probably given another worker's task: give each machine its own "
                f"task index (TF_CONFIG's task.index) {see('multi-worker')}",
            )
        )
    loopback = [h for h, found in addresses.items() if all(_loopback(a) for a in found)]
    if loopback and len(loopback) < len(addresses):
        findings.append(
            warn(
                f"{who}: loopback host(s) {', '.join(loopback)} in a cluster that spans machines",
                "a worker on another machine cannot reach a loopback address: use host names or IP "
                f"addresses the other machines reach {see('multi-worker')}",
            )
        )
    if findings:
        return findings
    return [passed(f"{head}: port {port} free, {len(hosts)} host name(s) resolve (peers not contacted)")]


def _port_remedy(task: ClusterTask, port: int) -> str:
    held = f"find what holds it (`ss -ltnp 'sport = :{port}'`) and stop it"
    if task.source == "slurm":
        return (
            f"{held}: TensorFlow's Slurm resolver gives the tasks on each node ports 8888, 8889, ..., so "
            f"another job on this node may hold it; or write TF_CONFIG with other ports {see('multi-worker')}"
        )
    return f"{held}, or give this task another port in TF_CONFIG on every worker {see('multi-worker')}"


def port_problem(port: int) -> str | None:
    """Why this machine cannot listen on `port` (all interfaces), or None when it can; bound for an
    instant only."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As gRPC does: a port whose earlier connections linger in TIME_WAIT is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "another process is using it"
            if exc.errno == errno.EACCES:
                return "permission denied (ports below 1024 need root)"
            return exc.strerror or str(exc)
    return None


def lookup(host: str) -> list[str]:
    """The addresses `host` resolves to. Names under .invalid never resolve (RFC 6761, which asks
    resolvers to answer so at once rather than ask DNS)."""
    if host.rstrip(".").lower().endswith(".invalid") or host.lower() == "invalid":
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def resolve_all(
    hosts: Iterable[str], timeout_s: float | None = None, look: Lookup | None = None
) -> dict[str, list[str] | str | None]:
    """host -> its addresses, or why it does not resolve (text), or None when no answer came in time.
    Lookups run side by side in daemon threads: one that never returns is abandoned, not waited for."""
    results: dict[str, list[str] | str | None] = {}
    # Module names looked up at each call, so a test can monkeypatch them.
    look = look or lookup
    timeout_s = RESOLVE_TIMEOUT_S if timeout_s is None else timeout_s

    def one(host: str) -> None:
        try:
            results[host] = look(host)
        except (OSError, UnicodeError) as exc:
            results[host] = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)

    threads = {host: threading.Thread(target=one, args=(host,), daemon=True) for host in hosts}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    return {host: results.get(host) for host in threads}


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_local(address: str) -> bool:
    """This machine has `address`: binding to it works (port 0: any free port, for an instant)."""
    if _loopback(address):
        return True
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
    except OSError as exc:
        # Only "no such address here" says it is not ours; anything else (no IPv6 at all) says nothing.
        return exc.errno != errno.EADDRNOTAVAIL
    return True
