"""docs/inventory.schema.json, the project's own copy of the snapshot format (version 3), against every
recorded inventory, every nvidia-smi dump as converted, and what `gpudiag snapshot` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diag_support import OFFICIAL_STACK
from schema_check import errors

from diagnostics.inventory import READABLE_SCHEMAS, SCHEMA_ID, Inventory, load_inventory
from diagnostics.nvidia_smi import to_snapshot
from diagnostics.snapshot import take_snapshot

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SCHEMA = json.loads((ROOT / "docs" / "inventory.schema.json").read_text())
JSON_FIXTURES = sorted(FIXTURES.glob("*.json"))
DUMPS = sorted((FIXTURES / "nvidia-smi").glob("*.xml"))


def test_the_schema_is_version_3_and_names_every_readable_version():
    assert SCHEMA["$id"] == SCHEMA_ID == "gpudiag-inventory/3"
    assert set(SCHEMA["properties"]["schema"]["enum"]) == set(READABLE_SCHEMAS)


@pytest.mark.parametrize("path", JSON_FIXTURES, ids=lambda p: p.name)
def test_every_recorded_inventory_validates_as_written_and_as_rewritten(path):
    """Each fixture (version 1, 2 or 3) validates, and so does the version 3 file gpudiag writes from it."""
    assert errors(json.loads(path.read_text()), SCHEMA) == []
    assert errors(load_inventory(path).to_dict(), SCHEMA) == []


@pytest.mark.parametrize("path", DUMPS, ids=lambda p: p.name)
def test_every_nvidia_smi_dump_converts_to_a_valid_snapshot(path):
    assert errors(to_snapshot(path.read_bytes()), SCHEMA) == []
    assert errors(load_inventory(path).to_dict(), SCHEMA) == []


def test_a_snapshot_of_a_machine_without_a_driver_validates():
    from diagnostics.nvml import NvmlUnavailable

    def no_driver() -> Inventory:
        raise NvmlUnavailable("no NVIDIA driver found: NVML library not loaded")

    snap = take_snapshot(no_driver, stack=OFFICIAL_STACK, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert errors(snap.to_dict(), SCHEMA) == []


def test_the_validator_sees_violations():
    bad = json.loads((FIXTURES / "inv-3x5090-tf221-nccl2251.json").read_text())
    bad["gpus"][0]["compute_capability"] = "sm_120"
    bad["software"]["cuda_wheels"] = {"nvidia-cudnn-cu12": 9}
    del bad["driver_version"]
    found = errors(bad, SCHEMA)
    assert any("compute_capability" in e for e in found)
    assert any("cuda_wheels" in e for e in found)
    assert any("driver_version" in e for e in found)
