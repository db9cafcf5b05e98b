"""The per-GPU checks against recorded inventories: compute-capability, display, memory, selection,
device-order."""

from __future__ import annotations

import dataclasses

from diag_support import OFFICIAL_BUILD, OFFICIAL_STACK, ctx_for, run_one, statuses, worst

from diagnostics import knowledge
from diagnostics.checks.gpus import code_for
from diagnostics.stack import TfBuild

CAPS = OFFICIAL_BUILD.compute_capabilities


def test_code_for_native_ptx_and_none():
    """sm_80 SASS runs on 8.6; compute_90 gives 9.0 SASS and PTX for 12.0; nothing fits 5.2."""
    assert code_for("8.0", CAPS) == ("native", "sm_80")
    assert code_for("8.6", CAPS) == ("native", "sm_80")
    assert code_for("8.9", CAPS) == ("native", "sm_89")
    assert code_for("9.0", CAPS) == ("native", "sm_90")
    assert code_for("12.0", CAPS) == ("ptx", "compute_90")
    assert code_for("5.2", CAPS) == ("none", None)


def test_compute_capability_rtx5090_official_build_warns_with_remedies():
    """An RTX 5090 under the official TF 2.21 build: a warning that names the card, says why, and gives
    every remedy (TF with sm_120, NVIDIA container, XLA off, CUDA 12.8+, driver 570+)."""
    findings = run_one("compute-capability", ctx_for("inv-workstation-2x5090-display.json"))
    warns = [f for f in findings if f.status == "warn"]
    assert [f.gpus for f in warns] == [(1,), (2,)]
    for f in warns:
        assert "RTX 5090" in f.message and "12.0" in f.message
        assert "JIT" in f.message and "CUDA_ERROR_INVALID_PTX" in f.message and "XLA" in f.message
        for remedy in ("sm_120", "container", "XLA off", "CUDA 12.8", "driver 570"):
            assert remedy in f.remedy
        assert "TROUBLESHOOTING.md#rtx-5090-and-blackwell" in f.remedy


def test_compute_capability_rtx5090_old_driver_fails():
    """A driver older than 570 cannot run sm_120 at all: failure, not warning."""
    findings = run_one("compute-capability", ctx_for("inv-5090-old-driver.json"))
    assert statuses(findings) == ["fail", "fail"]


def test_compute_capability_native_passes_on_h100_server():
    assert statuses(run_one("compute-capability", ctx_for("inv-dgx-8xh100.json"))) == ["pass"]


def test_compute_capability_no_usable_code_fails():
    """A build without kernels or PTX for an older architecture leaves nothing to run."""
    stack = dataclasses.replace(OFFICIAL_STACK, tf_build=TfBuild(True, "12.5.1", "9", ("sm_90",)))
    findings = run_one("compute-capability", ctx_for("inv-geforce-p2p-reported.json", stack=stack))
    assert statuses(findings) == ["fail", "fail"]


def test_display_gpu_excluded_by_default_passes_with_note():
    findings = run_one("display", ctx_for("inv-workstation-2x5090-display.json"))
    assert statuses(findings) == ["pass"]
    assert findings[0].gpus == (0,) and "--include-display-gpus" in findings[0].message


def test_display_gpu_included_warns():
    findings = run_one("display", ctx_for("inv-workstation-2x5090-display.json", include_display=True))
    assert statuses(findings) == ["warn"]
    assert "watchdog" in findings[0].message and "uneven-gpu-usage" in findings[0].remedy


def test_memory_names_processes_holding_memory():
    findings = run_one("memory", ctx_for("inv-hot-throttling.json"))
    assert statuses(findings) == ["warn"]
    assert "python3 (pid 4242" in findings[0].message and findings[0].gpus == (1,)


def test_memory_custom_selection_below_minimum_warns():
    findings = run_one("memory", ctx_for("inv-mixed.json", mode="custom", custom_ids=(0, 1)))
    assert any(f.status == "warn" and f.gpus == (0,) and "minimum" in f.message for f in findings)


def test_selection_nothing_selected_fails_with_every_reason_and_flag():
    findings = run_one("selection", ctx_for("inv-nothing-selected.json"))
    assert statuses(findings) == ["fail"]
    f = findings[0]
    assert "GPU 0" in f.message and "GPU 1" in f.message
    assert "--min-gpu-memory" in f.remedy and "--include-display-gpus" in f.remedy


def test_selection_mixed_models_warns():
    findings = run_one("selection", ctx_for("inv-mixed.json"))
    assert statuses(findings) == ["warn"]
    assert "RTX 3090" in findings[0].message and "RTX 4090" in findings[0].message


def test_selection_same_as_trainer_decision():
    """The check reads select_gpus' Selection: display GPU 0 is left out, 1 and 2 used."""
    ctx = ctx_for("inv-workstation-2x5090-display.json")
    assert ctx.selection is not None and ctx.selection.selected_indices == [1, 2]
    assert statuses(run_one("selection", ctx)) == ["pass"]


def test_device_order_fastest_first_on_mixed_box_warns():
    findings = run_one("device-order", ctx_for("inv-mixed.json"))
    assert worst(findings) == "warn"
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in f.remedy for f in findings)
    assert any(f.gpus == (0,) and "multiprocessors" in f.message for f in findings)


def test_device_order_same_models_pass():
    assert statuses(run_one("device-order", ctx_for("inv-dgx-8xh100.json"))) == ["pass"]


def test_device_order_visible_devices_hiding_selected_gpus_warns():
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}
    findings = run_one("device-order", ctx_for("inv-dgx-8xh100.json", env=env))
    assert statuses(findings) == ["warn"] and findings[0].gpus == (2, 3, 4, 5, 6, 7)


def test_device_order_visible_devices_by_position_on_mixed_box_warns():
    findings = run_one(
        "device-order", ctx_for("inv-workstation-2x5090-display.json", env={"CUDA_VISIBLE_DEVICES": "1,2"})
    )
    assert any("fastest-first" in f.message for f in findings)


def test_device_order_empty_visible_devices_hides_every_gpu():
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ""}
    findings = run_one("device-order", ctx_for("inv-dgx-8xh100.json", env=env))
    assert statuses(findings) == ["warn"] and "every GPU" in findings[0].message


def test_xla_is_unavailable_on_sm_120_without_its_kernels_only():
    """The rule the trainer's preflight and the sweep's XLA variant share: sm_120 under the stock
    build (PTX only) cannot run XLA; Ada, Hopper, and sm_120 under a build with sm_120 kernels can."""
    why = knowledge.xla_unavailable(["12.0", "8.9", None], CAPS)
    assert why is not None and "compute capability 12.0" in why and "no sm_120 kernels" in why
    assert "tensorflow/tensorflow#111958" in why
    assert knowledge.xla_unavailable(["8.9", "9.0"], CAPS) is None
    assert knowledge.xla_unavailable(["12.0"], (*CAPS, "sm_120")) is None
    assert knowledge.xla_unavailable(["12.0"], ()) is None  # build unknown: cannot tell
