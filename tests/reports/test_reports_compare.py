"""`python -m reports compare BASE.json NEW.json`: verdicts from the confidence intervals and the
threshold, and the three exit codes (0 no regression, 1 a regression, 2 bad input), on results
built here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reports import compare as cmp
from reports.__main__ import main
from reports.results import REPORT_SCHEMA, SCHEMA

ROOT = Path(__file__).resolve().parents[2]
# per-round spread of +-2%: with 6 rounds the median's 95% interval is [min, max]
SPREAD = (0.98, 0.99, 1.0, 1.0, 1.01, 1.02)


def train_row(gpus: int, batch: int, rate: float, **extra: Any) -> dict[str, Any]:
    return {
        "gpus": gpus,
        "batch_per_gpu": batch,
        "global_batch": gpus * batch,
        "steps": 10,
        "round_seconds": [gpus * batch * 10 / (rate * f) for f in SPREAD],
        **extra,
    }


def allreduce_row(gpus: int, nbytes: int, gbps: float, **extra: Any) -> dict[str, Any]:
    return {
        "gpus": gpus,
        "bytes": nbytes,
        "iters": 20,
        "round_seconds": [nbytes * 20 / (gbps * 1e9 * f) for f in SPREAD],
        **extra,
    }


def results(train_rates: dict[tuple[int, int], float], **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": SCHEMA,
        "device_kind": "gpu",
        "model": "cnn",
        "gpu_counts": [1, 2],
        "batch_sizes": [32],
        "environment": {"tensorflow": "2.21.0", "driver_version": "570.86"},
        "train": [train_row(g, b, r) for (g, b), r in train_rates.items()],
        "input": [],
        "allreduce": [allreduce_row(2, 2**20, 10.0)],
        "failures": [],
    }
    base.update(overrides)
    return base


BASE = {(1, 32): 1000.0, (2, 32): 1900.0}


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def run(tmp_path: Path, base: Any, new: Any, *args: str) -> tuple[int, str, str]:
    write(tmp_path / "base.json", base), write(tmp_path / "new.json", new)
    proc = subprocess.run(  # the files named as a user in their folder names them
        [sys.executable, "-m", "reports", "compare", "base.json", "new.json", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def table(out: str) -> dict[str, list[str]]:
    """The printed table's rows by case name, cells stripped."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()]
    return {
        r[0]: r[1:] for r in rows if len(r) == 8 and r[0] not in ("case", "") and not r[0].startswith("-")
    }


def verdicts(comparison: cmp.Comparison) -> dict[str, str]:
    return {c.name: c.verdict for c in comparison.changes}


def test_a_significant_drop_beyond_the_threshold_is_a_regression():
    new = results({(1, 32): 1000.0, (2, 32): 1500.0})  # 2 GPUs: -21%, intervals far apart
    comparison = cmp.compare(results(BASE), new)
    assert verdicts(comparison) == {
        "train 1 GPU x 32 (default)": cmp.NOISE,
        "train 2 GPUs x 32 (default)": cmp.REGRESSED,
        "all-reduce 2 GPUs 1 MiB (default)": cmp.NOISE,
    }
    change = next(c for c in comparison.changes if c.verdict == cmp.REGRESSED)
    assert change.change == pytest.approx(1500 / 1900 - 1)
    assert [c.name for c in comparison.regressed] == ["train 2 GPUs x 32 (default)"]


def test_apart_but_within_the_threshold_is_the_same_and_a_rise_is_an_improvement():
    new = results({(1, 32): 1050.0, (2, 32): 2300.0})  # +5.0% (intervals apart), +21%
    comparison = cmp.compare(results(BASE), new, threshold=0.06)
    assert verdicts(comparison)["train 1 GPU x 32 (default)"] == cmp.SAME
    assert verdicts(comparison)["train 2 GPUs x 32 (default)"] == cmp.IMPROVED
    assert comparison.regressed == []


def test_overlapping_intervals_are_noise_however_large_the_change():
    wide = results(BASE)
    wide["train"][1]["round_seconds"] = [640 / r for r in (1000, 1500, 1900, 1900, 2300, 2800)]
    new = results({(1, 32): 1000.0, (2, 32): 1700.0})
    comparison = cmp.compare(wide, new)
    assert verdicts(comparison)["train 2 GPUs x 32 (default)"] == cmp.NOISE


def test_one_round_has_no_interval_so_no_verdict():
    base, new = results(BASE), results({(1, 32): 500.0, (2, 32): 1900.0})
    for r in base["train"] + new["train"]:
        r["round_seconds"] = r["round_seconds"][:1]
    assert verdicts(cmp.compare(base, new))["train 1 GPU x 32 (default)"] == cmp.NO_CI


def test_cases_match_by_variant_and_a_case_that_failed_in_new_is_a_regression():
    base = results(BASE)
    base["train"].append(train_row(2, 32, 2500.0, variant={"jit_compile": True}))
    new = results({(1, 32): 1000.0})
    new["train"].append(train_row(2, 32, 2500.0, variant={"jit_compile": True, "cross_device_ops": "auto"}))
    new["train"].append(train_row(2, 64, 3000.0))
    new["failures"] = [{"benchmark": "train", "gpus": 2, "batch_per_gpu": 32, "error": "oom"}]
    got = verdicts(cmp.compare(base, new))
    assert got["train 2 GPUs x 32 (XLA)"] == cmp.NOISE
    assert got["train 2 GPUs x 32 (default)"] == cmp.FAILED
    assert got["train 2 GPUs x 64 (default)"] == cmp.ONLY_NEW


def test_environment_changes_are_named():
    new = results(BASE, environment={"tensorflow": "2.22.0", "driver_version": "570.86"})
    assert cmp.compare(results(BASE), new).environment == ["tensorflow 2.21.0 -> 2.22.0"]


def test_threshold_is_a_percentage():
    assert cmp.parse_threshold("5%") == pytest.approx(0.05)
    assert cmp.parse_threshold("2.5") == pytest.approx(0.025)
    for bad in ("x", "-1", "100"):
        with pytest.raises(ValueError, match="--threshold"):
            cmp.parse_threshold(bad)


# -- the command and its three exit codes -----------------------------------------------------


def test_exit_0_when_nothing_regressed(tmp_path):
    code, out, err = run(tmp_path, results(BASE), {"schema": REPORT_SCHEMA, "results": results(BASE)})
    assert (code, err) == (0, "")
    assert table(out)["train 2 GPUs x 32 (default)"] == [
        "samples/s", "1,900", "[1,862, 1,938]", "1,900", "[1,862, 1,938]", "+0.0%", cmp.NOISE,
    ]  # fmt: skip
    assert out.rstrip().endswith("No case regressed.")
    assert out.startswith("BASE: base.json (undated, TensorFlow 2.21.0, driver 570.86)\nNEW:  new.json (")


def test_exit_1_when_a_case_regressed(tmp_path):
    code, out, err = run(tmp_path, results(BASE), results({(1, 32): 1000.0, (2, 32): 1500.0}))
    assert (code, err) == (1, "")
    assert table(out)["train 2 GPUs x 32 (default)"][-2:] == ["-21.1%", cmp.REGRESSED]
    assert "1 case(s) regressed: train 2 GPUs x 32 (default)." in out


def test_the_threshold_flag_changes_the_verdict(tmp_path):
    code, _out, _err = run(
        tmp_path, results(BASE), results({(1, 32): 1000.0, (2, 32): 1500.0}), "--threshold", "25%"
    )
    assert code == 0


BAD_INPUT = [
    ({"schema": "gpudiag-sweep/0"},
     "different schemas: base.json is 'gpudiag-sweep/1', new.json is 'gpudiag-sweep/0'"),
    (results(BASE, model="mlp"),
     "the runs measured different things: model cnn in base.json, mlp in new.json"),
    (results(BASE, device_kind="cpu"), "devices gpu in base.json, cpu in new.json"),
    (json.dumps(results(BASE))[:300], "new.json: truncated: the JSON ends before it is complete"),
    (results({(4, 8): 1.0}, allreduce=[]), "base.json and new.json have no case in common"),
    (results(BASE, train=[{"gpus": 1}]), "new.json: train[0] has no field 'batch_per_gpu'"),
]  # fmt: skip


@pytest.mark.parametrize(("new", "message"), BAD_INPUT, ids=["schema", "model", "devices", "truncated",
                                                               "disjoint", "invalid"])  # fmt: skip
def test_exit_2_for_bad_input_in_one_line(tmp_path, new, message):
    code, out, err = run(tmp_path, results(BASE), new)
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_rerendering_a_saved_run_still_works(tmp_path, capsys):
    saved = write(tmp_path / "results.json", results(BASE))
    assert main([str(saved), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "scaling.md").exists()
    assert main(["compare", str(saved), str(saved)]) == 0
    assert "No case regressed." in capsys.readouterr().out
