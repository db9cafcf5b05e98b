"""The `cluster` check of `gpudiag check`: skipped on a single machine; on a cluster, a bad description,
a port in use, a name that does not resolve and a slow resolver are each a finding with a remedy.
Loopback only: nothing here contacts a peer or another machine."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from diag_support import ctx_for, run_one
from support import child_env, installed_script

from diagnostics.checks import SECTIONS, registry, run_checks
from diagnostics.checks import cluster as cluster_checks

GPUDIAG = installed_script("gpudiag")


def tf_config(workers: list[str], index: int = 0) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check(env: dict[str, str], fixture: str | None = None):
    return run_one("cluster", ctx_for(fixture, env=env))


def test_registered_with_a_troubleshooting_section():
    assert "cluster" in dict(registry()) and "multi-worker" in SECTIONS


def test_no_cluster_is_a_skip():
    for env in ({}, {"TF_CONFIG": ""}, {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "4"}):  # sbatch, not srun
        findings = check(env)
        assert [f.status for f in findings] == ["skip"], env
        assert findings[0].message == "single machine: no TF_CONFIG or Slurm step"


def test_a_valid_cluster_on_a_free_loopback_port_passes():
    port = free_port()
    findings = check({"TF_CONFIG": tf_config([f"127.0.0.1:{port}", "localhost:2"])})
    assert [f.status for f in findings] == ["pass"], findings
    assert f"worker 0 of 2 training task(s) (tf-config), this task at 127.0.0.1:{port}" in findings[0].message
    assert f"port {port} free" in findings[0].message


def test_a_port_another_process_listens_on_fails_naming_it():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        findings = check({"TF_CONFIG": tf_config(["localhost:2", f"127.0.0.1:{port}"], index=1)})
    assert [f.status for f in findings] == ["fail"], findings
    assert f"cannot listen on port {port}: another process is using it" in findings[0].message
    assert f"sport = :{port}" in findings[0].remedy and "another port in TF_CONFIG" in findings[0].remedy
    assert "TROUBLESHOOTING.md#multi-worker" in findings[0].remedy


def test_a_slurm_port_clash_says_where_slurm_ports_come_from(monkeypatch):
    monkeypatch.setattr(cluster_checks, "port_problem", lambda port: "another process is using it")
    env = {
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_TASKS_PER_NODE": "2",
    }
    [finding] = check(env)
    assert finding.status == "fail" and "worker 1 (slurm) at localhost:8889" in finding.message
    assert "ports 8888, 8889" in finding.remedy


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{bad json", ["TF_CONFIG is not JSON"]),
        (tf_config(["127.0.0.1:99999"]), ["1 to 65535"]),
        (tf_config(["127.0.0.1:2", "127.0.0.1:3"], index=2), ["index 2 is out of range"]),
        (json.dumps({"cluster": {"ps": ["p:1"]}, "task": {"type": "ps", "index": 0}}), ['"ps"']),
    ],
)
def test_a_malformed_tf_config_fails_with_a_remedy(value, words):
    [finding] = check({"TF_CONFIG": value})
    assert finding.status == "fail"
    for word in words:
        assert word in finding.message
    assert "correct TF_CONFIG" in finding.remedy and "TROUBLESHOOTING.md#multi-worker" in finding.remedy


def test_a_host_name_that_does_not_resolve_fails():
    port = free_port()
    findings = check({"TF_CONFIG": tf_config([f"127.0.0.1:{port}", "worker-2.invalid:2222"])})
    assert [f.status for f in findings] == ["fail"], findings
    assert "do not resolve here: worker-2.invalid" in findings[0].message
    assert "/etc/hosts" in findings[0].remedy


def test_a_lookup_error_from_the_resolver_is_a_failure_too(monkeypatch):
    def no_such_name(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    results = cluster_checks.resolve_all(["peer.example"])
    assert results == {"peer.example": "Name or service not known"}


def test_a_resolver_that_never_answers_costs_one_bounded_wait_and_a_warning(monkeypatch):
    def slow(host: str) -> list[str]:
        if host != "127.0.0.1":
            time.sleep(30)  # in a daemon thread: abandoned at the deadline, never joined
        return ["127.0.0.1"]

    monkeypatch.setattr(cluster_checks, "lookup", slow)
    monkeypatch.setattr(cluster_checks, "RESOLVE_TIMEOUT_S", 0.3)
    started = time.monotonic()
    findings = check({"TF_CONFIG": tf_config([f"127.0.0.1:{free_port()}", "slow-1:2", "slow-2:2"])})
    assert time.monotonic() - started < 2.0  # one deadline for all the names, not one each
    assert [f.status for f in findings] == ["warn"], findings
    assert "no answer within 0.3 s when resolving slow-1, slow-2" in findings[0].message


def test_this_tasks_name_resolving_to_another_machine_warns(monkeypatch):
    """The usual mistake: the same TF_CONFIG, task index and all, copied to every machine."""
    fake = {"node-a": ["192.0.2.10"], "node-b": ["192.0.2.11"]}  # TEST-NET-1: never this machine's
    monkeypatch.setattr(cluster_checks, "lookup", lambda host: fake[host])
    findings = check({"TF_CONFIG": tf_config([f"node-a:{free_port()}", "node-b:2222"])})
    assert [f.status for f in findings] == ["warn"], findings
    assert "node-a resolves to 192.0.2.10, not an address of this machine" in findings[0].message
    assert "task index" in findings[0].remedy


def test_loopback_in_a_cluster_that_spans_machines_warns(monkeypatch):
    fake = {"127.0.0.1": ["127.0.0.1"], "node-b": ["192.0.2.11"]}
    monkeypatch.setattr(cluster_checks, "lookup", lambda host: fake[host])
    findings = check({"TF_CONFIG": tf_config([f"127.0.0.1:{free_port()}", "node-b:2222"])})
    assert [f.status for f in findings] == ["warn"], findings
    assert "loopback host(s) 127.0.0.1" in findings[0].message


def test_a_replay_judges_the_recorded_description_but_not_this_machines_ports(monkeypatch):
    monkeypatch.setattr(cluster_checks, "port_problem", lambda port: pytest.fail("bound a port on a replay"))
    findings = check({"TF_CONFIG": tf_config(["a:1", "b:1"], index=1)}, "inv-dgx-8xh100.json")
    assert [f.status for f in findings] == ["pass"] and "not checked on a replay" in findings[0].message
    [bad] = check({"TF_CONFIG": tf_config(["a:1"], index=3)}, "inv-dgx-8xh100.json")
    assert bad.status == "fail" and "out of range" in bad.message


def test_run_checks_includes_the_cluster_finding():
    findings = run_checks(ctx_for(None, env={"TF_CONFIG": "{"}))
    assert [f.status for f in findings if f.check == "cluster"] == ["fail"]


def test_gpudiag_check_json_reports_the_cluster_in_a_child_process():
    assert GPUDIAG.exists(), f"{GPUDIAG} is missing: install the project (pip install -e .)"
    port = free_port()
    env = child_env(TF_CONFIG=tf_config([f"127.0.0.1:{port}", "localhost:2"]))
    started = time.monotonic()
    proc = subprocess.run(
        [str(GPUDIAG), "check", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert time.monotonic() - started < 30
    assert proc.returncode == 1, proc.stderr  # no driver on the simulated machine
    [finding] = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "cluster"]
    assert finding["status"] == "pass", finding
    assert f"this task at 127.0.0.1:{port}" in finding["message"]
