"""A CUDA_VISIBLE_DEVICES set before a run (Slurm, Kubernetes, docker, the user) bounds the selection:
gpudiag and the trainer choose within it, say so, and the trainer never widens it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from diag_support import FIXTURES, OFFICIAL_STACK, run_one

from diagnostics import cli, nvml
from diagnostics.checks import make_context
from diagnostics.inventory import Inventory, load_inventory
from diagnostics.selection import Limits, SelectionError, SelectionOptions, select_gpus
from diagnostics.visible import read_visible
from training.__main__ import main as trainer_main
from training.devices import setup as devices
from training.devices.setup import DeviceSetupError, narrowed_visible_devices, plan_devices

DGX = load_inventory(FIXTURES / "inv-dgx-8xh100.json")  # 8 H100s, UUIDs GPU-...


def live(inventory: Inventory) -> Inventory:
    return dataclasses.replace(inventory, source="live")


def limits(value: str | None, order: str | None = "PCI_BUS_ID") -> Limits:
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    if order:
        env["CUDA_DEVICE_ORDER"] = order
    return Limits.of(env, OFFICIAL_STACK)


def test_indices_uuids_prefixes_and_where_cuda_stops():
    uuid = DGX.gpus[5].uuid
    assert read_visible(None, DGX.gpus) is None
    assert read_visible("0,2", DGX.gpus).indices == (0, 2)  # type: ignore[union-attr]
    assert read_visible(f"{uuid[:12]},1", DGX.gpus).indices == (5, 1)  # type: ignore[union-attr]
    empty = read_visible("", DGX.gpus)
    assert empty is not None and empty.indices == () and "it is empty" in empty.describe()
    stopped = read_visible("1,x,2", DGX.gpus)
    assert stopped is not None and stopped.indices == (1,) and stopped.ignored == ("x", "2")
    nothing = read_visible("7,8", load_inventory(FIXTURES / "inv-mixed.json").gpus)
    assert nothing is not None and nothing.indices == () and "names no GPU" in nothing.describe()


def test_mig_instances_map_to_their_gpu_where_the_inventory_knows_them():
    gpus = list(DGX.gpus)
    gpus[3] = dataclasses.replace(gpus[3], mig_enabled=True, mig_devices=("MIG-aaaa-1111", "MIG-bbbb-2222"))
    assert read_visible("MIG-bbbb", gpus).indices == (3,)  # type: ignore[union-attr]
    legacy = read_visible(f"MIG-{gpus[2].uuid}/1/0", gpus)
    assert legacy is not None and legacy.indices == (2,) and legacy.mig
    unknown = read_visible("MIG-cccc-3333", gpus)
    assert unknown is not None and unknown.indices == () and unknown.mig == ("MIG-cccc-3333",)
    # a GPU in MIG mode is never selected, whatever names it
    inv = dataclasses.replace(DGX, gpus=tuple(gpus))
    sel = select_gpus(inv, limits=limits("MIG-bbbb"))
    assert sel.selected == () and any("MIG mode is on" in r for r in sel.choices[3].reasons)


def test_selection_stays_within_the_bound_and_says_so():
    sel = select_gpus(DGX, "multi", limits=limits("6,2"))
    assert sel.selected_indices == [2, 6]
    assert sel.notes[0].startswith("CUDA_VISIBLE_DEVICES='6,2' was set before this run: choosing only among")
    assert "not in CUDA_VISIBLE_DEVICES='6,2'" in sel.choices[0].reasons[0]
    assert select_gpus(DGX, "single", limits=limits("6,2")).selected_indices == [2]
    assert select_gpus(DGX, "multi", limits=limits("")).selected == ()


def test_custom_gpus_outside_the_bound_are_bad_input():
    with pytest.raises(SelectionError, match=r"GPU 0 .* cannot be used: not in CUDA_VISIBLE_DEVICES='1,2'"):
        select_gpus(DGX, "custom", [1, 0], limits=limits("1,2"))
    assert select_gpus(DGX, "custom", [2, 1], limits=limits("1,2")).selected_indices == [2, 1]


def test_positions_on_a_mixed_machine_get_a_note():
    mixed = load_inventory(FIXTURES / "inv-mixed.json")
    sel = select_gpus(mixed, limits=limits("1,2", order=None), min_memory_gb=1)
    assert any("fastest first" in note for note in sel.notes)


def test_gpudiag_list_and_check_on_a_live_machine_with_a_scheduler_grant(capsys, monkeypatch):
    monkeypatch.setattr(nvml, "read_inventory", lambda **kw: live(DGX))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert cli.main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["selected"] == [1, 3] and "choosing only among GPU 1, GPU 3" in data["notes"][0]
    cli.main(["list"])
    assert "note: CUDA_VISIBLE_DEVICES='1,3' was set before this run" in capsys.readouterr().out
    ctx = make_context(SelectionOptions(), stack=OFFICIAL_STACK, read_live=lambda: live(DGX))
    finding = run_one("selection", ctx)[0]
    assert finding.status == "pass" and "CUDA_VISIBLE_DEVICES='1,3'" in finding.message


def test_a_grant_naming_nothing_is_an_empty_list_and_a_cpu_fallback(capsys, monkeypatch):
    monkeypatch.setattr(nvml, "read_inventory", lambda **kw: live(DGX))
    monkeypatch.setattr(devices, "read_inventory", lambda **kw: live(DGX))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000000-dead")
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selected"] == []
    code = trainer_main(["--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0 and "1 replica(s) on the CPU" in out
    assert err.startswith("warning: training on the CPU: no GPU is eligible") and err.count("\n") == 1
    assert "names no GPU of this machine" in err


def test_the_trainer_plans_within_the_grant_and_never_widens_it(capsys, monkeypatch):
    monkeypatch.setattr(devices, "read_inventory", lambda **kw: live(DGX))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    code = trainer_main(["--dry-run", "--skip-preflight", "--global-batch-size", "256"])
    out, _ = capsys.readouterr()
    assert code == 0 and "4 replica(s) on GPUs" in out and "/gpu:0 = NVML GPU 4" in out
    assert "note: CUDA_VISIBLE_DEVICES='4,5,6,7' was set before this run" in out
    plan = plan_devices(SelectionOptions())
    assert narrowed_visible_devices(plan, "4,5,6,7") == ",".join(g.uuid for g in DGX.gpus[4:])
    wider = plan_devices(SelectionOptions(), inventory=dataclasses.replace(live(DGX)))
    with pytest.raises(DeviceSetupError, match="never widens it"):
        narrowed_visible_devices(dataclasses.replace(wider, gpus=DGX.gpus[:2]), "4,5,6,7")


def test_a_replay_is_bounded_by_its_recorded_grant_not_this_machines(capsys, monkeypatch, tmp_path):
    recorded = dataclasses.replace(DGX, environment={"CUDA_VISIBLE_DEVICES": "4,5"})
    path = tmp_path / "slurm-job.json"
    recorded.write(path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # this machine's: says nothing about the recorded one
    assert cli.main(["list", "--inventory", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selected"] == [4, 5]
    assert cli.main(["list", "--inventory", str(FIXTURES / "inv-dgx-8xh100.json"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["selected"]) == 8
