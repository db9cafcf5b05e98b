"""pytest options, fixtures and hooks of the scaling sweep (`pytest bench --benchmark-only`).

Options come from the one table in sweep_options.py, each with its converter, so pytest reports a
bad value as a usage error naming the flag; pytest_configure then checks what needs several options
or the devices (one line from pytest's usage error, exit 4). Both happen before any worker starts or
any file is written. The report is written when the session ends.
Other benchmark modules in bench/ use none of this: the sweep's fixtures are requested only by
test_sweep.py, and its option destinations all start with `sweep_`. Those modules are the project's
self-benchmarks (marker `selfbench`): deselected unless `--self-benchmarks` is given, so that
`pytest bench --benchmark-only` is the user's sweep alone. Each sweep case writes one progress line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest
from sweep import CaseFailed, Sweep
from sweep_cases import BENCHMARKS, Case, plan_cases, progress_line
from sweep_env import machine_info as gpu_machine_info
from sweep_options import PREFIX, SweepOptions, SweepUsageError, add_sweep_options, check_options

from training.devices.setup import DevicePlan

_OPTIONS = pytest.StashKey[tuple[SweepOptions, DevicePlan]]()
_SWEEP = pytest.StashKey[Sweep]()
_OTHER_TESTS_SECONDS = pytest.StashKey[list[float]]()
_REPORT = pytest.StashKey[str]()
_DESELECTED_SELF = pytest.StashKey[int]()
_CASES = pytest.StashKey[list[int]]()  # [cases done, cases collected]
_PROGRESS = pytest.StashKey[str]()  # on an item: its case's line, written after its result
SELF_BENCHMARKS = "self_benchmarks"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpudiag sweep", "GPU-count x batch-size scaling sweep (bench/test_sweep.py)")
    add_sweep_options(group.addoption)
    parser.getgroup("gpudiag self-benchmarks").addoption(
        "--self-benchmarks",
        action="store_true",
        dest=SELF_BENCHMARKS,
        help="also run the project's own speed targets (marker selfbench: trainer vs hand loop, gpudiag "
        "speed, multi-worker overhead, the harness share of a fixed sweep, the bottleneck verdict against a "
        "profile); `tox -e selfbench`",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sweep(benchmark): a case of the scaling sweep (train, input, allreduce)"
    )
    try:
        config.stash[_OPTIONS] = check_options(lambda name: config.getoption(PREFIX + name))
    except SweepUsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_OTHER_TESTS_SECONDS] = []
    config.stash[_CASES] = [0, 0]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """GPU details (NVML inventory, driver, TensorFlow/NCCL versions; no TensorFlow import) in
    pytest-benchmark's machine info, so that --benchmark-json and --benchmark-compare files carry them."""
    if _OPTIONS in config.stash:
        machine_info.update(gpu_machine_info(config.stash[_OPTIONS][1]))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sweep_case" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("sweep")
    assert marker is not None, "a test that takes sweep_case needs @pytest.mark.sweep(benchmark)"
    options, _plan = metafunc.config.stash[_OPTIONS]
    cases = [c for c in plan_cases(options) if c.benchmark == marker.args[0]]
    metafunc.parametrize("sweep_case", cases, ids=[c.id for c in cases])


def _case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("sweep_case") if callspec is not None else None
    return case if isinstance(case, Case) else None  # an empty parameter set holds NOTSET


@pytest.hookimpl(trylast=True)  # after -k and -m: the cases counted are those that will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the self-benchmarks out unless asked for; run the sweep's cases grouped by (device
    count, cross-device ops): one worker start for each, in plan order."""
    if not config.getoption(SELF_BENCHMARKS):
        mine = [item for item in items if item.get_closest_marker("selfbench") is not None]
        if mine:
            config.hook.pytest_deselected(items=mine)
            items[:] = [item for item in items if item.get_closest_marker("selfbench") is None]
            config.stash[_DESELECTED_SELF] = len(mine)
    positions = [i for i, item in enumerate(items) if _case_of(item) is not None]
    if not positions:
        return
    order = {b: i for i, b in enumerate(BENCHMARKS)}
    options, _plan = config.stash[_OPTIONS]
    ops_order = {o: i for i, o in enumerate(options.cross_device_ops)}

    def key(item: pytest.Item) -> tuple[int, int, int]:
        case = _case_of(item)
        assert case is not None
        return case.gpus, ops_order[case.cross_device_ops], order[case.benchmark]

    ours = sorted((items[i] for i in positions), key=key)  # stable: keeps size/batch order
    for i, item in zip(positions, ours, strict=True):
        items[i] = item
    config.stash[_CASES][1] = len(positions)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    # time spent in other benchmark modules is not the sweep's: leave it out of the harness figure
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        if _case_of(item) is None:
            item.config.stash[_OTHER_TESTS_SECONDS].append(time.perf_counter() - started)
        else:
            _write_progress(item)


def _write_progress(item: pytest.Item) -> None:
    """One line per case once its result is out ("case 3/12: train 2 CPU devices x 32: 1,234
    samples/s"): pytest captures the case's own output, and a sweep runs for minutes."""
    counts = item.config.stash[_CASES]
    counts[0] += 1
    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and _PROGRESS in item.stash:
        if reporter.verbosity < 0:  # under -q the result's dot has no line of its own to end
            reporter.write("\n")
        reporter.write_line(f"case {counts[0]}/{counts[1]}: {item.stash[_PROGRESS]}")


@pytest.fixture
def harness_now(sweep: Sweep, pytestconfig: pytest.Config) -> Callable[[], dict[str, Any]]:
    """The sweep's harness figure when called, other benchmark modules' time left out (as in the report)."""
    other: list[float] = pytestconfig.stash[_OTHER_TESTS_SECONDS]
    return lambda: sweep.harness(other_tests_seconds=math.fsum(other))


@pytest.fixture(scope="session")
def sweep(pytestconfig: pytest.Config) -> Sweep:
    if _SWEEP not in pytestconfig.stash:
        options, plan = pytestconfig.stash[_OPTIONS]
        pytestconfig.stash[_SWEEP] = Sweep(options, plan)
    return pytestconfig.stash[_SWEEP]


@pytest.fixture
def run_case(benchmark: Any, sweep: Sweep, sweep_case: Case, request: pytest.FixtureRequest) -> Any:
    """Runs the case; a recorded out-of-memory is a skip, a crash or hang a failure."""

    def run() -> dict[str, Any] | None:
        failed: CaseFailed | None = None
        row: dict[str, Any] | None = None
        try:
            row = sweep.run(benchmark, sweep_case)
        except CaseFailed as exc:
            failed = exc
        failure = None if failed is None else str(failed).splitlines()[0]
        request.node.stash[_PROGRESS] = progress_line(sweep_case, row, failure, sweep.unit, sweep.workers)
        if failed is not None:  # outside the except block: the failure is the message, no chain
            if failed.ends_sweep:  # the cases so far are kept: the session's end writes them
                pytest.exit(str(failed), returncode=pytest.ExitCode.TESTS_FAILED)
            if failed.expected:
                pytest.skip(str(failed))
            pytest.fail(str(failed), pytrace=False)
        if row is not None:
            benchmark.extra_info.update(_extra_info(sweep_case, row))
        return row

    return run


def _extra_info(case: Case, row: dict[str, Any]) -> dict[str, Any]:
    import statistics

    seconds = statistics.median(row["round_seconds"])
    info: dict[str, Any] = {"benchmark": case.benchmark, "devices": case.gpus, **case.variant}
    if case.benchmark == "allreduce":
        info.update({"bytes": row["bytes"], "algbw_gbps": row["bytes"] * row["iters"] / seconds / 1e9})
    else:
        info.update(
            {
                "batch_per_device": row["batch_per_gpu"],
                "global_batch": row["global_batch"],
                "samples_per_sec": row["global_batch"] * row["steps"] / seconds,
            }
        )
    return info


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _SWEEP not in config.stash:
        return
    sweep = config.stash[_SWEEP]
    sweep.close_worker()
    task = sweep.options.placement.task
    if task is not None and not task.is_chief:
        config.stash[_REPORT] = f"{task.name}: the chief writes the results and the scaling report"
        return
    if not sweep.has_data():
        return
    from reports.write import ReportDirError, write_report

    other_tests: list[float] = config.stash[_OTHER_TESTS_SECONDS]
    # the harness figure is taken before the report is drawn: it is data the report shows
    results = sweep.results(
        complete=exitstatus != pytest.ExitCode.INTERRUPTED, other_tests_seconds=math.fsum(other_tests)
    )
    try:
        written = write_report(results, sweep.options.report_dir)
    except (OSError, ReportDirError) as exc:
        config.stash[_REPORT] = f"scaling report NOT written to {sweep.options.report_dir}: {exc}"
        return
    harness = results["harness"]
    config.stash[_REPORT] = (
        f"scaling report: {next(p for p in written if p.name == 'scaling.md')} "
        f"(harness: {harness['fraction']:.0%} of {harness['wall_seconds']:.1f} s "
        "in measured or warm-up steps; more --steps or --rounds raise it)"
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _REPORT in config.stash:
        terminalreporter.write_line(config.stash[_REPORT])
    if config.stash.get(_DESELECTED_SELF, 0):
        terminalreporter.write_line(
            f"{config.stash[_DESELECTED_SELF]} self-benchmark(s) not run: add --self-benchmarks "
            "(or run `tox -e selfbench`)"
        )
