"""`nvidia-smi -q -x` dumps of real machines (tests/fixtures/nvidia-smi/, sources in its README) as
inventories: every field gpudiag uses, old and new DTDs, Windows, MIG, unknown products, and bad
files as one line with exit 2, through gpudiag and the trainer alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diag_support import ctx_for, run_one

from diagnostics import cli
from diagnostics.inventory import InventoryError, load_inventory
from diagnostics.nvidia_smi import to_snapshot
from training.__main__ import main as trainer_main

DUMPS = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


def dump(name: str) -> str:
    return str(DUMPS / name)


def run(capsys, main, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", sorted(DUMPS.glob("*.xml")), ids=lambda p: p.name)
def test_every_dump_reads_with_a_driver_and_gpus_in_document_order(path):
    inv = load_inventory(path)
    assert inv.gpus and [g.index for g in inv.gpus] == list(range(len(inv.gpus)))
    assert inv.driver_version and inv.origin and inv.origin.startswith("nvidia-smi -q -x")
    assert all(g.uuid.startswith("GPU-") and g.memory_total_mib > 0 for g in inv.gpus)


def test_index_is_the_position_in_the_document_not_the_minor_number():
    """Azure 4x K80 (v10): minor numbers run 1, 2, 3, 0; nvidia-smi's numbering is the document's."""
    inv = load_inventory(dump("k80-4x-azure-v10.xml"))
    assert [g.pci_bus_id for g in inv.gpus] == [
        "00001580:00:00.0",
        "00002DF7:00:00.0",
        "00004968:00:00.0",
        "0000F8D6:00:00.0",
    ]
    assert inv.gpus[0].uuid == "GPU-c3b26f7a-8dcb-619c-fa1b-8029265a4db0"  # its minor_number is 1
    assert inv.cuda_driver_version is None  # <cuda_version>Not Found</cuda_version>
    assert all(g.compute_capability == "3.7" for g in inv.gpus)


def test_every_used_field_of_an_old_v9_dump():
    """2x GTX 1070 (driver 384.66, DTD v9, no cuda_version): memory, display, PCIe, power, processes."""
    inv = load_inventory(dump("gtx1070-2x-display-v9.xml"))
    g0, g1 = inv.gpus
    assert (inv.driver_version, inv.cuda_driver_version, inv.captured_at) == (
        "384.66",
        None,
        "2017-09-11T20:12:12",
    )
    assert (g0.memory_total_mib, g0.memory_used_mib, g0.compute_capability) == (8112, 2028, "6.1")
    assert (g0.display_active, g0.display_mode, g1.display_active) == (True, False, False)
    assert (g0.temperature_c, g0.power_draw_w, g0.power_limit_w, g0.utilization_gpu_pct) == (
        60.0,
        119.47,
        180.0,
        100.0,
    )
    assert g0.pcie is not None and (g0.pcie.width_current, g0.pcie.width_max, g0.pcie.gen_max) == (1, 16, 3)
    assert g0.ecc_uncorrected_volatile is None and g0.clocks_event_reasons == ()
    assert g0.processes is not None
    assert [(p.pid, p.type, p.used_memory_mib) for p in g0.processes] == [
        (1357, "graphics", 99),
        (2384, "graphics", 79),
        (3093, "compute", 2283),
    ]
    assert g0.mig_enabled is None


def test_a_v13_dump_with_deprecated_fields():
    """Driver 595 (v13): display_mode says "Requested functionality has been deprecated" and
    display_attached replaces it; power is under gpu_power_readings; ECC by SRAM/DRAM kind."""
    inv = load_inventory(dump("rtx3080-v13.xml"))
    gpu = inv.gpus[0]
    assert inv.cuda_driver_version == "13.2" and gpu.compute_capability == "8.6"
    assert gpu.display_mode is True and gpu.display_active is False
    assert (gpu.power_draw_w, gpu.power_limit_w) == (142.33, 320.0)
    assert gpu.ecc_uncorrected_volatile is None and gpu.clocks_event_reasons == ()


def test_a_windows_dump():
    """RTX 2080 under WDDM: desktop applications are C+G processes without a memory figure."""
    inv = load_inventory(dump("rtx2080-windows-v11.xml"))
    gpu = inv.gpus[0]
    assert gpu.display_active is True and gpu.processes
    assert all(p.type == "graphics" and p.used_memory_mib is None for p in gpu.processes)
    assert any(p.name and p.name.endswith("explorer.exe") for p in gpu.processes)


def test_a_dump_without_doctype_or_xml_declaration_reads_the_same(tmp_path):
    original = DUMPS / "tesla-t4-v11.xml"
    text = original.read_bytes()
    bare = text[text.index(b"<nvidia_smi_log>") :]  # no <?xml ...?>, no <!DOCTYPE>
    path = tmp_path / "bare.xml"
    path.write_bytes(bare)
    assert load_inventory(path).gpus == load_inventory(original).gpus
    assert load_inventory(dump("gtx1660ti-no-doctype.xml")).origin == "nvidia-smi -q -x (no DTD named)"


def test_unreadable_values_and_missing_elements_are_none(tmp_path):
    doc = (
        '<nvidia_smi_log><driver_version>N/A</driver_version><gpu id="00000000:65:00.0">'
        "<product_name>NVIDIA L4</product_name><fb_memory_usage><total>[N/A]</total></fb_memory_usage>"
        "<temperature><gpu_temp>Requested functionality has been deprecated</gpu_temp></temperature>"
        "<mig_mode><current_mig>[Not Supported]</current_mig></mig_mode></gpu></nvidia_smi_log>"
    )
    path = tmp_path / "sparse.xml"
    path.write_text(doc)
    inv = load_inventory(path)
    gpu = inv.gpus[0]
    assert inv.driver_version is None and gpu.pci_bus_id == "00000000:65:00.0" and gpu.uuid == ""
    assert (gpu.memory_total_mib, gpu.temperature_c, gpu.mig_enabled, gpu.pcie) == (0, None, None, None)
    assert gpu.processes is None and gpu.compute_capability == "8.9"
    assert json.loads(load_inventory(path).to_json())["gpus"][0]["memory_used_mib"] is None


def test_an_unknown_product_name_leaves_compute_capability_null_and_the_check_skips():
    """The GTX 1660 Ti on driver 418 was still called "Graphics Device"."""
    inv = load_inventory(dump("gtx1660ti-no-doctype.xml"))
    assert inv.gpus[0].name == "Graphics Device" and inv.gpus[0].compute_capability is None
    findings = run_one("compute-capability", ctx_for("nvidia-smi/gtx1660ti-no-doctype.xml"))
    assert [f.status for f in findings] == ["skip"]
    assert "compute capability unknown" in findings[0].message and findings[0].gpus == (0,)


def test_a_gpu_in_mig_mode_is_never_selected_and_the_reason_names_the_fix(capsys):
    inv = load_inventory(dump("a100-sxm4-80gb-mig-v12.xml"))
    gpu = inv.gpus[0]
    assert gpu.mig_enabled is True and gpu.memory_total_mib == 81920  # the card's, not a MIG slice's
    code, out, _ = run(capsys, cli.main, "list", "--inventory", dump("a100-sxm4-80gb-mig-v12.xml"), "--json")
    data = json.loads(out)
    assert code == 0 and data["selected"] == []
    assert any("MIG mode is on" in r and "-mig 0" in r for r in data["gpus"][0]["reasons"])
    finding = run_one("selection", ctx_for("nvidia-smi/a100-sxm4-40gb-mig-v11.xml"))[0]
    assert finding.status == "fail" and "old-and-mig-gpus" in finding.remedy


def test_four_k80s_are_not_planned_as_four_gpus(capsys):
    """Issue 9: a 4x Tesla K80 machine was planned as 4 GPUs, and TensorFlow then found none."""
    code, out, err = run(capsys, trainer_main, "--dry-run", "--inventory", dump("k80-4x-azure-v10.xml"))
    assert code == 0 and "1 replica(s) on the CPU" in out
    assert out.count("compute capability 3.7 (Kepler) is below 6.0") == 4
    assert "warning: training on the CPU: no GPU is eligible" in err


def test_check_list_and_trainer_accept_a_dump(capsys):
    code, out, _ = run(capsys, cli.main, "check", "--inventory", dump("rtx4090-v12.xml"), "--json")
    assert code in (0, 1) and {f["check"] for f in json.loads(out)["findings"]} >= {"driver", "health"}
    code, out, _ = run(capsys, cli.main, "list", "--inventory", dump("tesla-t4-v11.xml"))
    assert code == 0 and "Tesla T4" in out
    code, out, _ = run(capsys, trainer_main, "--dry-run", "--inventory", dump("rtx4090-v12.xml"))
    assert code == 0 and "/gpu:0 = NVML GPU 0 NVIDIA GeForce RTX 4090" in out


def test_snapshot_converts_a_dump_to_the_snapshot_format(capsys, tmp_path):
    target = tmp_path / "inv.json"
    code, _, err = run(
        capsys, cli.main, "snapshot", "--inventory", dump("k80-4x-azure-v10.xml"), "-o", str(target)
    )
    assert code == 0 and "written" in err
    data = json.loads(target.read_text())
    assert data["schema"] == "gpudiag-inventory/3" and data["software"] is None
    assert data["origin"] == "nvidia-smi -q -x (nvsmi_device_v10.dtd)"
    assert load_inventory(target).gpus == load_inventory(dump("k80-4x-azure-v10.xml")).gpus


BAD_XML = {
    "truncated.xml": (DUMPS / "tesla-t4-v11.xml").read_bytes()[:3000],
    "other.xml": b'<?xml version="1.0"?><project><name>x</name></project>',
    "no-gpus.xml": b"<nvidia_smi_log><driver_version>550.54.14</driver_version></nvidia_smi_log>",
    "garbage.xml": b"<\x00\xff\xfe not xml",
}
EXPECTED = {
    "truncated.xml": "not a readable XML document",
    "other.xml": "not `nvidia-smi -q -x` output",
    "no-gpus.xml": "lists no GPU",
    "garbage.xml": "not a readable XML document",
}


@pytest.mark.parametrize("name", sorted(BAD_XML))
def test_bad_xml_is_one_line_exit_2_everywhere(capsys, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_XML[name])
    with pytest.raises(InventoryError, match=EXPECTED[name]):
        load_inventory(path)
    for main, args, prefix in (
        (cli.main, ["check", "--inventory", str(path)], "gpudiag: error: "),
        (cli.main, ["list", "--inventory", str(path)], "gpudiag: error: "),
        (cli.main, ["snapshot", "--inventory", str(path)], "gpudiag: error: "),
        (trainer_main, ["--dry-run", "--inventory", str(path)], "error: "),
    ):
        code, out, err = run(capsys, main, *args)
        assert code == 2 and out == "", (args, out, err)
        assert err.count("\n") == 1 and err.startswith(prefix) and str(path) in err, err


def test_any_truncation_of_a_dump_reads_or_fails_in_one_line(tmp_path):
    data = (DUMPS / "a100-sxm4-40gb-mig-v11.xml").read_bytes()
    path = tmp_path / "cut.xml"
    for cut in range(1, len(data), 499):
        path.write_bytes(data[:cut])
        try:
            load_inventory(path)
        except InventoryError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)


def test_the_converter_writes_only_the_snapshot_keys():
    snap = to_snapshot((DUMPS / "rtx3080-v13.xml").read_bytes())
    assert snap["schema"] == "gpudiag-inventory/2" and snap["links"] is None and snap["host"] is None
