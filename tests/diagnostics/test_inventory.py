"""The snapshot format: round trips, and one clear error naming the file and field for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diagnostics.inventory import InventoryError, load_inventory

EXAMPLE = Path(__file__).parents[1] / "fixtures" / "example-workstation-2x4090.json"


def test_examples_load_and_round_trip(tmp_path, fixture_path):
    """Both shared examples load, and writing then reading gives the same inventory."""
    for name in ("example-server-4xa100.json", "example-workstation-2x4090.json"):
        inv = load_inventory(fixture_path(name))
        out = tmp_path / name
        inv.write(out)
        assert load_inventory(out) == inv
    server = load_inventory(fixture_path("example-server-4xa100.json"))
    assert [g.index for g in server.gpus] == [0, 1, 2, 3]
    assert server.link(1, 0) is not None and server.link(1, 0).topology == "nvlink"


def test_unsupported_fields_are_null_and_optional_keys_may_be_absent(tmp_path):
    """A snapshot with only the required keys loads; the rest are None."""
    data = {
        "schema": "gpudiag-inventory/1",
        "driver_version": None,
        "cuda_driver_version": None,
        "gpus": [
            {
                "index": 0,
                "name": "X",
                "uuid": "GPU-1",
                "pci_bus_id": "0:1:0.0",
                "memory_total_mib": 100,
                "compute_capability": "8.0",
                "display_active": None,
                "future_field": 1,
            }
        ],
    }
    path = tmp_path / "min.json"
    path.write_text(json.dumps(data))
    gpu = load_inventory(path).gpus[0]
    assert gpu.temperature_c is None and gpu.pcie is None and gpu.display_active is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("schema"), "missing required field 'schema'"),
        (lambda d: d.update(schema="other/2"), "field 'schema' is 'other/2'"),
        (lambda d: d["gpus"][1].pop("uuid"), "missing required field 'gpus[1].uuid'"),
        (
            lambda d: d["gpus"][0].update(memory_total_mib="24 GB"),
            "'gpus[0].memory_total_mib' must be an integer",
        ),
        (
            lambda d: d["gpus"][0].update(compute_capability="sm_89"),
            "'gpus[0].compute_capability' must look like",
        ),
        (  # found by the property test: an empty text is not "not known"
            lambda d: d["gpus"][0].update(compute_capability=""),
            "'gpus[0].compute_capability' must look like \"8.6\", got ''",
        ),
        (lambda d: d["gpus"][0].update(display_active=1), "'gpus[0].display_active' must be true/false"),
        (lambda d: d.pop("driver_version"), "missing required field 'driver_version'"),
        (lambda d: d["gpus"][1].update(index=0), "two GPUs have index 0"),
        (lambda d: d["links"][0].update(gpus=[0]), "'links[0].gpus' must be two GPU indices"),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path, mutate, expected):
    data = json.loads(EXAMPLE.read_text())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_not_json_missing_file_and_directory(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(InventoryError, match=r"x\.json: not JSON"):
        load_inventory(bad)
    with pytest.raises(InventoryError, match="no such file"):
        load_inventory(tmp_path / "missing.json")
    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(tmp_path)


def _mutations():
    """Replace one value anywhere in the example with an arbitrary JSON value, or delete a key."""
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=5,
    )
    return st.tuples(st.integers(0, 10**6), json_values, st.booleans())


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_mutations())
def test_mutated_snapshots_load_or_fail_clearly(tmp_path, mutation):
    """Any single mutation gives either a valid inventory or an InventoryError, nothing else."""
    pick, value, delete = mutation
    data = json.loads(EXAMPLE.read_text())
    paths = [p for p in _paths(data) if p]
    path = paths[pick % len(paths)]
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    file = tmp_path / "mutated.json"
    file.write_text(json.dumps(data))
    try:
        inv = load_inventory(file)
    except InventoryError as exc:
        assert str(file) in str(exc) and "\n" not in str(exc)
    else:
        assert all(isinstance(g.memory_total_mib, int) for g in inv.gpus)


V3 = Path(__file__).parents[1] / "fixtures" / "inv-v3-container-4xa100-small-shm.json"


def test_version_3_round_trips_its_system_facts_and_sm_clocks(tmp_path):
    """The system object and the SM clocks survive writing and reading; the file is version 3."""
    inv = load_inventory(Path(__file__).parents[1] / "fixtures" / "inv-v3-hot-throttling-clocks.json")
    assert inv.system is not None and inv.system.iommu == "passthrough" and inv.gpus[1].sm_clock_mhz == 1125
    out = tmp_path / "again.json"
    inv.write(out)
    assert json.loads(out.read_text())["schema"] == "gpudiag-inventory/3" and load_inventory(out) == inv


def test_versions_1_and_2_load_without_system_facts(tmp_path):
    """An older snapshot has no system object: None, which the checks report as predating it."""
    data = json.loads(EXAMPLE.read_text())
    for schema in ("gpudiag-inventory/1", "gpudiag-inventory/2"):
        path = tmp_path / "old.json"
        path.write_text(json.dumps({**data, "schema": schema}))
        inv = load_inventory(path)
        assert inv.system is None and inv.gpus[0].sm_clock_mhz is None


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ([], "field 'system' must be an object"),
        ({"iommu": "sometimes"}, "field 'system': iommu must be one of"),
        ({"shm_bytes": -1}, "field 'system': shm_bytes must be a byte count"),
        ({"acs_bridges": [{"gpus": [0]}]}, "field 'system': acs_bridges entries need an address"),
        ({"net_interfaces": "eth0"}, "field 'system': net_interfaces must be a list"),
    ],
)
def test_a_bad_system_object_names_the_field(tmp_path, system, expected):
    data = json.loads(V3.read_text())
    data["system"] = system
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InventoryError, match=expected):
        load_inventory(path)
