"""Property tests: arbitrary combinations of the trainer's and gpudiag's arguments exit 0, 1 or 2
with no traceback (and no "internal error": the catch-all would hide a bug), and a snapshot
damaged in several places at once loads as a valid inventory or fails with one clear line.

Everything runs in this process and ends before TensorFlow: the trainer always gets --dry-run,
gpudiag never gets --deep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diagnostics import cli as gpudiag_cli
from diagnostics.inventory import Inventory, InventoryError, load_inventory
from training import __main__ as trainer_cli
from training.checkpoints.store import CheckpointStore, Manifest

FIXTURES = Path(__file__).parents[1] / "fixtures"
INVENTORIES = sorted(FIXTURES.glob("*.json"))
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _files() -> dict[str, str]:
    """Paths of every kind the flags may name: good, bad, missing, a folder, a checkpoint dir."""
    root = Path(tempfile.mkdtemp(prefix="gpudiag-props-"))
    np.savez(root / "good.npz", x=np.ones((300, 4), np.float32), y=np.arange(300) % 3)
    np.savez(root / "nan.npz", x=np.full((10, 2), np.nan), y=np.zeros(10))
    (root / "broken.npz").write_bytes(b"PK\x03\x04 broken")
    (root / "good.toml").write_text("[training]\nepochs = 3\nmodel = 'mlp'\n")
    (root / "bad.toml").write_text("epochs = = 3")
    (root / "typed.toml").write_text("save_freq = 0\nauto_batch_size = 'maybe'\n")
    (root / "empty.json").write_text("")
    (root / "file").write_text("x")
    store = CheckpointStore(root / "ckpt")
    store.save(Manifest(8, 2, 0, {"model": "cnn", "global_batch_size": 128}), ["w"], [np.zeros(3)])
    return {p.name: str(p) for p in root.iterdir()} | {"missing": str(root / "missing" / "x")}


FILES = _files()
_paths = st.sampled_from([*FILES.values(), *map(str, INVENTORIES[:4])])
_ints = st.sampled_from(["-1", "0", "1", "2", "3", "7", "64", "128", "130", "99999999", "x", "1.5", ""])
_floats = st.sampled_from(["-3", "0", "0.5", "1e-3", "8", "80", "inf", "nan", "lots", "1e309"])

TRAINER_FLAGS: dict[str, st.SearchStrategy[list[str]] | None] = {
    "--device-mode": st.sampled_from(["multi", "single", "custom", "all"]).map(lambda v: [v]),
    "--custom-gpus": st.lists(_ints, min_size=1, max_size=3),
    "--min-gpu-memory": _floats.map(lambda v: [v]),
    "--include-display-gpus": None,
    "--cpu-replicas": _ints.map(lambda v: [v]),
    "--require-gpu": None,
    "--cross-device-ops": st.sampled_from(["auto", "nccl", "ring"]).map(lambda v: [v]),
    "--inventory": _paths.map(lambda v: [v]),
    "--model": st.sampled_from(["cnn", "mlp", "resnet50", "vgg", ""]).map(lambda v: [v]),
    "--data": _paths.map(lambda v: [v]),
    "--epochs": _ints.map(lambda v: [v]),
    "--steps-per-epoch": _ints.map(lambda v: [v]),
    "--global-batch-size": _ints.map(lambda v: [v]),
    "--learning-rate": _floats.map(lambda v: [v]),
    "--optimizer": st.sampled_from(["sgd", "adam", "lion"]).map(lambda v: [v]),
    "--scale-learning-rate": st.sampled_from(["none", "linear", "sqrt", "cubic"]).map(lambda v: [v]),
    "--reference-batch-size": _ints.map(lambda v: [v]),
    "--warmup-epochs": _floats.map(lambda v: [v]),
    "--validation-split": st.sampled_from(["0.2", "0.5", "0.01", "0", "1", "-1", "nan", "x"]).map(
        lambda v: [v]
    ),
    "--validation-data": _paths.map(lambda v: [v]),
    "--seed": _ints.map(lambda v: [v]),
    "--mixed-precision": None,
    "--jit-compile": None,
    "--warmup-steps": _ints.map(lambda v: [v]),
    "--config": _paths.map(lambda v: [v]),
    "--log-dir": _paths.map(lambda v: [v]),
    "--summary-json": _paths.map(lambda v: [v]),
    "--save-model": st.sampled_from(["m.keras", "m.h5", FILES["missing"] + ".keras"]).map(lambda v: [v]),
    "--checkpoint-dir": _paths.map(lambda v: [v]),
    "--save-freq": st.sampled_from(["epoch", "EPOCH", "10", "0", "-1", "often"]).map(lambda v: [v]),
    "--steps-per-execution": st.sampled_from(["auto", "1", "7", "0", "1001", "x"]).map(lambda v: [v]),
    "--auto-batch-size": None,
    "--quiet": None,
    "--no-such-flag": None,
}
# mostly unset: a bad spec ends the run at once, so it would hide the flags' own checks
FAULT_SPECS = st.sampled_from(
    ["", "", "", "", "oom_above_batch=8", "nan_at_step=x", "bogus", "sleep_per_step=-1"]
)


@st.composite
def trainer_argv(draw: st.DrawFn) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(TRAINER_FLAGS)), max_size=6, unique=True))
    groups = [["--dry-run"]]
    for name in names:
        values = TRAINER_FLAGS[name]
        groups.append([name, *(draw(values) if values is not None else [])])
    return [token for group in draw(st.permutations(groups)) for token in group]


def call(main, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(code: int, err: str, prefix: str) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(f"{prefix}error: "), err


@SETTINGS
@given(trainer_argv(), FAULT_SPECS)
def test_trainer_flags_always_exit_0_1_or_2(argv, fault):
    """Any mix of flags, values, files and GPUDIAG_FAULT: 0, 1 or 2, and bad input is one line."""
    code, _out, err = call(trainer_cli.main, argv, {"GPUDIAG_FAULT": fault})
    assert_clean_exit(code, err, "")


EVALUATE_FLAGS: dict[str, st.SearchStrategy[list[str]] | None] = {
    name: TRAINER_FLAGS[name]
    for name in (
        "--device-mode", "--custom-gpus", "--min-gpu-memory", "--include-display-gpus", "--cpu-replicas",
        "--require-gpu", "--cross-device-ops", "--skip-preflight", "--data", "--seed", "--global-batch-size",
        "--config", "--summary-json", "--quiet", "--no-such-flag", "--epochs",
    )
    if name in TRAINER_FLAGS
} | {"--skip-preflight": None}  # fmt: skip


@st.composite
def evaluate_argv(draw: st.DrawFn) -> list[str]:
    """`evaluate MODEL [flags]` where MODEL is never a Keras model: it ends before TensorFlow."""
    model = draw(_paths)
    names = draw(st.lists(st.sampled_from(sorted(EVALUATE_FLAGS)), max_size=5, unique=True))
    groups = [
        [name, *(draw(values) if (values := EVALUATE_FLAGS[name]) is not None else [])] for name in names
    ]
    groups.append([model])
    return ["evaluate", *(token for group in draw(st.permutations(groups)) for token in group)]


@SETTINGS
@given(evaluate_argv())
def test_evaluate_flags_always_exit_0_1_or_2(argv):
    code, _out, err = call(trainer_cli.main, argv)
    assert_clean_exit(code, err, "")
    assert code == 2  # no path here is a Keras model


_inventories = st.sampled_from([*map(str, INVENTORIES), FILES["empty.json"], FILES["missing"], FILES["file"]])
_selection = st.fixed_dictionaries(
    {},
    optional={
        "--device-mode": st.sampled_from(["multi", "single", "custom", "x"]).map(lambda v: [v]),
        "--custom-gpus": st.lists(_ints, min_size=1, max_size=3),
        "--min-gpu-memory": _floats.map(lambda v: [v]),
        "--include-display-gpus": st.just([]),
    },
)


@st.composite
def gpudiag_argv(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["check", "list", "snapshot", "monitor", "nope"]))
    flags: dict[str, list[str]] = {}
    if command in ("check", "list", "monitor"):
        flags |= draw(_selection)
    if command in ("check", "list"):
        flags |= draw(
            st.fixed_dictionaries(
                {}, optional={"--inventory": _inventories.map(lambda v: [v]), "--json": st.just([])}
            )
        )
    if command == "check":
        flags |= draw(
            st.fixed_dictionaries(
                {},
                optional={"--list-checks": st.just([]), "--deep-timeout": _floats.map(lambda v: [v])},
            )
        )
    if command == "snapshot":
        # into the temporary folder: without a driver, a snapshot is still written (with the NVML error)
        outputs = st.sampled_from([*FILES.values(), str(Path(FILES["file"]).parent / "snap")])
        flags |= draw(st.fixed_dictionaries({}, optional={"-o": outputs.map(lambda v: [v + ".out"])}))
    if command == "monitor":
        # tiny intervals and durations: on a machine with GPUs this samples for real
        flags |= draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "--interval": st.sampled_from(["0.01", "0", "-1", "x"]).map(lambda v: [v]),
                    "--duration": st.sampled_from(["0.02", "0", "nan"]).map(lambda v: [v]),
                },
            )
        )
        flags.setdefault("--duration", ["0.02"])
        flags.setdefault("--interval", ["0.01"])
    argv = [command]
    for name, values in flags.items():
        argv += [name, *values]
    return argv


@SETTINGS
@given(gpudiag_argv())
def test_gpudiag_flags_always_exit_0_1_or_2(argv):
    code, _out, err = call(gpudiag_cli.main, argv)
    assert_clean_exit(code, err, "gpudiag: ")


# -- the inventory loader over damaged snapshots ---------------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_edit = st.tuples(st.sampled_from(["replace", "delete", "add"]), st.integers(0, 10**6), _json_values)


def _paths_in(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths_in(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths_in(value, (*prefix, i))


def _apply(data, kind: str, pick: int, value) -> None:
    paths = [p for p in _paths_in(data) if p]
    if not paths:
        return
    path = paths[pick % len(paths)]
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if kind == "delete":
        del parent[path[-1]]
    elif kind == "add" and isinstance(parent, dict):
        parent[f"extra{pick % 7}"] = value
    elif kind == "add" and isinstance(parent, list):
        parent.append(value)
    else:
        parent[path[-1]] = value


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(INVENTORIES),
    st.lists(_edit, min_size=1, max_size=4),
    st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.binary(max_size=4))),
)
def test_damaged_snapshots_load_as_valid_inventories_or_fail_in_one_line(source, edits, text_damage):
    """Several edits at once, then perhaps bytes cut or spliced into the text: InventoryError with
    one line naming the file, or an inventory that round-trips and that gpudiag can check."""
    data = json.loads(source.read_text())
    for kind, pick, value in edits:
        _apply(data, kind, pick, value)
    blob = json.dumps(data).encode()
    if text_damage is not None:
        cut, splice = text_damage
        cut %= len(blob) + 1
        blob = blob[:cut] + splice
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inv.json"
        path.write_bytes(blob)
        try:
            inventory = load_inventory(path)
        except InventoryError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            return
        assert isinstance(inventory, Inventory)
        again = Path(folder) / "again.json"
        inventory.write(again)
        assert load_inventory(again) == inventory
        for command in (["list", "--json"], ["check", "--json"]):
            code, _out, err = call(gpudiag_cli.main, [*command, "--inventory", str(path)])
            assert_clean_exit(code, err, "gpudiag: ")
