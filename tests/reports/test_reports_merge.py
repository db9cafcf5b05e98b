"""`python -m reports merge RUN1.json RUN2.json ... -o DIR`: one report from runs on different cluster
sizes, what it refuses (one line naming the difference, exit 2), and `compare` and re-rendering on
its output.

The 1-node run is a real sweep's results (tests/reports/data/results-sweep-1.json: mlp, 1 and 2 CPU
devices, batch 32, mixed precision off/on). The 2-node run is that file transformed as a 2-worker
cluster of the same nodes would have recorded it at 80% efficiency: every row gets `workers: 2`,
its global batch doubles (each worker feeds its own devices), and every round takes 1.25 x as
long, so 2 x the samples in 1.25 x the time is 1.6 x the rate: 0.8 x the ideal 2x: figures known
in advance. tests/reports/data/results-sweep-2workers.json is a real sweep across 2 workers on the
same machine, merged with the 1-node run as a user would (its command in the test below).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from reports import compare as cmp
from reports.__main__ import main
from reports.merge import MergeError, merge, points
from reports.plots import PNG_SIGNATURE
from reports.results import validate

DATA = Path(__file__).resolve().parent / "data"
ONE_NODE = DATA / "results-sweep-1.json"
SLOWDOWN = 1.25  # per round, on two nodes


def one_node() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ONE_NODE.read_text())
    return data


def as_cluster(data: dict[str, Any], workers: int, slowdown: float = SLOWDOWN) -> dict[str, Any]:
    """The documented transformation above: the same sweep on `workers` nodes."""
    out = copy.deepcopy(data)
    for section in ("train", "input", "allreduce"):
        for row in out[section]:
            row["workers"] = workers
            if "global_batch" in row:
                row["global_batch"] *= workers
            row["round_seconds"] = [s * slowdown for s in row["round_seconds"]]
    out["environment"]["host"] = f"node-{workers}"
    return out


def write(path: Path, data: dict[str, Any]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[str, str]:
    return str(ONE_NODE), write(tmp_path / "two-nodes.json", as_cluster(one_node(), 2))


def test_efficiency_is_against_the_fewest_workers_per_batch_and_devices_per_worker(two_runs):
    """Each (batch, devices per worker) on 2 workers reaches 1.6x its 1-worker rate: 80% efficiency."""
    merged = merge([(name, json.loads(Path(name).read_text())) for name in two_runs])
    got = {(p.gpus, p.workers): p for p in points(merged)}
    assert set(got) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    for gpus in (1, 2):
        assert got[(gpus, 1)].efficiency == pytest.approx(1.0)
        assert got[(gpus, 2)].speedup == pytest.approx(2 / SLOWDOWN)
        assert got[(gpus, 2)].efficiency == pytest.approx(0.8)
        assert got[(gpus, 2)].devices == 2 * gpus
    assert [(r.source, r.workers) for r in merged.runs] == [(two_runs[0], 1), (two_runs[1], 2)]


def test_a_real_sweep_across_two_workers_merges_with_the_one_node_run():
    """The 2-worker file: `pytest bench/test_sweep.py --benchmark-only --local-workers 2 --model mlp
    --batch-sizes 32 --mixed-precision off on --steps 5 --rounds 3 --warmup-steps 1 --allreduce-bytes
    1K 64K` on the 2-core build machine (one CPU device per worker under MultiWorkerMirroredStrategy)."""
    two = json.loads((DATA / "results-sweep-2workers.json").read_text())
    assert {r["workers"] for r in two["train"] + two["input"] + two["allreduce"]} == {2}
    merged = merge([(str(ONE_NODE), one_node()), ("two.json", two)])
    got = {(p.gpus, p.workers): p for p in points(merged)}
    assert set(got) == {(1, 1), (2, 1), (1, 2)}
    one, across = got[(1, 1)], got[(1, 2)]
    rates = [r for r in validate(two).train if not (r.variant or {}).get("mixed_precision")]
    assert across.samples_per_sec.median == pytest.approx(
        rates[0].global_batch * 5 / sorted(rates[0].round_seconds)[1]
    )
    # efficiency against the 1-worker rate of the same batch and devices per worker
    assert across.efficiency == pytest.approx(
        across.samples_per_sec.median / (2 * one.samples_per_sec.median)
    )
    assert across.devices == 2


def test_merge_writes_report_plots_and_results_smallest_cluster_first(two_runs, tmp_path, capsys):
    """Given largest first, the runs still come smallest first; the merged rows keep their workers."""
    out = tmp_path / "merged"
    assert main(["merge", two_runs[1], two_runs[0], "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"scaling.md", "results.json", "throughput-across-runs.png", "efficiency-across-runs.png"}
    for png in ("throughput-across-runs.png", "efficiency-across-runs.png"):
        assert (out / png).read_bytes().startswith(PNG_SIGNATURE)
    text = (out / "scaling.md").read_text()
    assert text.startswith("# Scaling across runs: mlp on CPU devices, 2 cluster sizes")
    assert "| 80%" in text and "1.60x" in text and "## All-reduce, 256 MiB" in text
    saved = validate(json.loads((out / "results.json").read_text()))
    assert [r.workers for r in saved.runs] == [1, 2]
    assert sorted({r.workers for r in saved.train}, key=lambda w: w or 1) == [None, 2]
    assert len(saved.train) == 2 * len(one_node()["train"])
    assert capsys.readouterr().out.splitlines()[-1] == str(out / "results.json")


def test_a_merged_report_re_renders_from_its_results(two_runs, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", *two_runs, "-o", str(out)]) == 0
    first = (out / "scaling.md").read_text()
    results_before = (out / "results.json").read_text()
    (out / "scaling.md").unlink()
    assert main([str(out / "results.json")]) == 0
    assert (out / "scaling.md").read_text() == first
    assert (out / "results.json").read_text() == results_before


def test_compare_reads_a_merge_case_by_workers_and_devices(two_runs, tmp_path):
    """A merge against itself: no regression; a single run against a merge: its cases match the
    1-worker ones, the 2-worker ones are only in NEW."""
    out = tmp_path / "merged"
    assert main(["merge", *two_runs, "-o", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    same = cmp.compare(merged, merged)
    assert not same.regressed and any("2 workers x 2 CPU devices x 32" in c.name for c in same.changes)
    against = cmp.compare(one_node(), merged)
    verdicts = {c.name: c.verdict for c in against.changes}
    assert verdicts["train 2 CPU devices x 32 (default)"] == cmp.NOISE
    assert verdicts["train 2 workers x 2 CPU devices x 32 (default)"] == cmp.ONLY_NEW
    assert main(["compare", str(out / "results.json"), str(out / "results.json")]) == 0


def changed(path: Path, edit: Any) -> str:
    data = as_cluster(one_node(), 2)
    edit(data)
    return write(path, data)


REFUSED = [
    ("model", lambda d: d.update(model="cnn"), "differs from {one} in model (cnn vs mlp)"),
    ("batch sizes", lambda d: d.update(batch_sizes=[32, 64]), "in batch sizes (32 64 vs 32)"),
    (
        "variants",
        lambda d: d["variants"]["axes"].update(mixed_precision=[False]),
        "in variants (jit_compile False, mixed_precision False, cross_device_ops auto, "
        "steps_per_execution auto vs jit_compile False, mixed_precision False True,",
    ),
    ("software", lambda d: d["environment"].update(tensorflow="2.20.0"), "in TensorFlow (2.20.0 vs 2.21.0)"),
    (
        "same size",
        lambda d: [r.pop("workers") for s in ("train", "input", "allreduce") for r in d[s]],
        "{one} and {other} are both 1-worker runs: merge takes one run per cluster size",
    ),
]


@pytest.mark.parametrize(("what", "edit", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_runs_that_do_not_belong_together_are_refused_naming_the_difference(
    tmp_path, capsys, what, edit, message
):
    other = changed(tmp_path / "other.json", edit)
    out = tmp_path / "merged"
    assert main(["merge", str(ONE_NODE), other, "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(one=ONE_NODE, other=other) in err[0], err
    assert not out.exists()


def test_one_file_and_an_already_merged_file_are_refused(two_runs, tmp_path, capsys):
    assert main(["merge", str(ONE_NODE), "-o", str(tmp_path / "a")]) == 2
    assert "at least two results files" in capsys.readouterr().err
    out = tmp_path / "merged"
    assert main(["merge", *two_runs, "-o", str(out)]) == 0
    four = write(tmp_path / "four.json", as_cluster(one_node(), 4))
    capsys.readouterr()
    assert main(["merge", str(out / "results.json"), four, "-o", str(tmp_path / "b")]) == 2
    assert "is already a merge of 2 runs" in capsys.readouterr().err


def test_runs_without_a_configuration_on_two_cluster_sizes_are_refused(tmp_path):
    two = as_cluster(one_node(), 2)
    for row in two["train"]:
        row["batch_per_gpu"] = 64
    with pytest.raises(MergeError, match="no training configuration"):
        merge([("one.json", one_node()), ("two.json", two)])


def test_three_cluster_sizes_each_against_the_smallest(tmp_path):
    runs = [
        ("4.json", as_cluster(one_node(), 4, 2.0)),
        ("1.json", one_node()),
        ("2.json", as_cluster(one_node(), 2)),
    ]
    merged = merge(runs)
    eff = {p.workers: p.efficiency for p in points(merged) if p.gpus == 2}
    assert eff == pytest.approx({1: 1.0, 2: 0.8, 4: 0.5})
