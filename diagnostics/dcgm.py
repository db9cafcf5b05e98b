"""NVIDIA DCGM's own diagnostic, where it is installed: `dcgmi diag -r 1 -j` (the quick level:
deployment checks, a minute at most) run by `gpudiag check --deep` within its deadline, its JSON
turned into findings under the id "dcgm".

`parse_diag` is a pure function (dcgmi's output text -> findings), tested on a real output
(tests/fixtures/dcgm/); `run_diag` starts dcgmi through common.child, so a dcgmi that hangs (a
stuck host engine) is killed with its process group at the deadline like any other child.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common import child
from diagnostics.checks.base import Finding

CHECK = "dcgm"
COMMAND = ("dcgmi", "diag", "-r", "1", "-j")
# dcgmi's result words (3.x: "PASS", "Pass"; "Skip", "Warn", "Fail", "Not Run") -> finding statuses
_STATUS = {"pass": "pass", "warn": "warn", "fail": "fail", "skip": "skip", "not run": "skip"}
_RANK = ("pass", "skip", "warn", "fail")
REMEDY = "read `dcgmi diag -r 1` for the failing test's details; DCGM's guide lists each test's causes"


def _gpu_ids(value: Any) -> tuple[int, ...]:
    """dcgmi writes "gpu_ids" as "0,1,2" for a test run once for several GPUs, or as one integer."""
    if isinstance(value, int):
        return (value,)
    return tuple(int(p) for p in str(value or "").split(",") if p.strip().isdigit())


def _warnings(result: dict[str, Any]) -> list[str]:
    found = result.get("warnings") or result.get("warning") or []
    items = found if isinstance(found, list) else [found]
    return [str(w.get("warning", w) if isinstance(w, dict) else w) for w in items if w]


def parse_diag(text: str) -> list[Finding]:
    """Findings from `dcgmi diag -j` output: one pass for every test that passed, one finding per
    test that did not. dcgmi may print lines before its JSON (a warning): they are skipped."""
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError as exc:
        return [Finding(CHECK, "fail", f"dcgmi diag printed no JSON it could be read as: {exc}", REMEDY)]
    root = data.get("DCGM GPU Diagnostic") or data.get("DCGM Diagnostic") if isinstance(data, dict) else None
    if not isinstance(root, dict):
        return [Finding(CHECK, "fail", "dcgmi diag printed no diagnostic results", REMEDY)]
    passed: list[str] = []
    gpus: set[int] = set()
    findings: list[Finding] = []
    for category in root.get("test_categories") or []:
        for test in category.get("tests") or []:
            if not isinstance(test, dict):  # DCGM 3.1 writes a null between tests
                continue
            results = [r for r in test.get("results") or [] if isinstance(r, dict)]
            statuses = [_STATUS.get(str(r.get("status", "")).lower(), "warn") for r in results]
            worst = max(statuses or ["skip"], key=_RANK.index)
            ids = tuple(sorted({i for r in results for i in _gpu_ids(r.get("gpu_ids", r.get("gpu_id")))}))
            name = f"{category.get('category', '?')}: {test.get('name', '?')}"
            if worst == "pass":
                passed.append(name)
                gpus.update(ids)
                continue
            notes = "; ".join(w for r in results for w in _warnings(r))
            message = f"DCGM {name}: {worst}" + (f" ({notes})" if notes else "")
            findings.append(Finding(CHECK, worst, message, REMEDY if worst in ("warn", "fail") else "", ids))
    version = root.get("version")
    if passed:
        summary = f"DCGM {version or ''} diag -r 1: {len(passed)} test(s) passed ({', '.join(passed)})"
        findings.insert(0, Finding(CHECK, "pass", " ".join(summary.split()), "", tuple(sorted(gpus))))
    return findings or [Finding(CHECK, "skip", "dcgmi diag reported no tests")]


def run_diag(
    timeout_s: float, gpu_ids: Iterable[int] = (), which: Callable[[str], str | None] = shutil.which
) -> list[Finding]:
    """Run `dcgmi diag -r 1 -j` (on `gpu_ids`, else every GPU) within `timeout_s`; no findings at all
    where dcgmi is not on PATH (DCGM is optional, and most workstations have none)."""
    if which(COMMAND[0]) is None:
        return []
    command = [*COMMAND, *(["-i", ",".join(map(str, gpu_ids))] if gpu_ids else [])]
    fd, name = tempfile.mkstemp(prefix="gpudiag-dcgmi-", suffix=".json")
    os.close(fd)
    out = Path(name)
    try:
        # dcgmi's JSON spans many lines, which common.child's line channel does not keep: the
        # shell writes it to a file, and common.child bounds and kills it like every child
        outcome = child.run(["sh", "-c", 'exec "$@" > "$0"', str(out), *command], timeout_s)
        text = out.read_text(encoding="utf-8", errors="replace")
    finally:
        out.unlink(missing_ok=True)
    if outcome.kind == child.TIMEOUT:
        return [Finding(CHECK, "fail", f"dcgmi diag -r 1 gave no answer within {timeout_s:g} s", REMEDY)]
    if "{" not in text:  # a failed test exits non-zero with JSON; no JSON at all is dcgmi's own error
        last = outcome.stderr_lines[-1] if outcome.stderr_lines else f"exit code {outcome.returncode}"
        return [Finding(CHECK, "skip", f"dcgmi diag could not run: {last}")]
    return parse_diag(text)
