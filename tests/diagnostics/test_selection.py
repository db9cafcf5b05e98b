"""GPU selection over recorded inventories: the one rule the trainer, gpudiag and bench share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diagnostics.inventory import Gpu, Inventory, load_inventory
from diagnostics.selection import SelectionError, select_gpus


@pytest.fixture
def workstation(fixture_path):
    """GPU 0 drives the display (RTX 3060, 12 GB); GPUs 1 and 2 are RTX 5090s."""
    return load_inventory(fixture_path("sel-workstation-display.json"))


@pytest.fixture
def mixed(fixture_path):
    """7982 MiB "8 GB" card, a 4 GB card, a 24 GB card and a 16 GB card with 6 multiprocessors."""
    return load_inventory(fixture_path("sel-mixed-memory.json"))


def test_multi_skips_the_display_gpu_and_says_which_flag(workstation):
    sel = select_gpus(workstation, "multi")
    assert sel.selected_indices == [1, 2]
    display = sel.choices[0]
    assert not display.selected
    assert display.reasons == ("display GPU: use --include-display-gpus",)


def test_multi_includes_the_display_gpu_with_the_flag(workstation):
    assert select_gpus(workstation, "multi", include_display=True).selected_indices == [0, 1, 2]


def test_a_card_sold_as_8gb_qualifies_for_8gb(mixed):
    """NVML shows 7982 MiB for an 8 GB card: it must still count as 8 GB."""
    sel = select_gpus(mixed, "multi", min_memory_gb=8)
    assert 0 in sel.selected_indices
    too_small = next(c for c in sel.choices if c.gpu.index == 1)
    assert too_small.reasons == ("4.0 GB < 8 GB minimum: lower --min-gpu-memory",)


def test_every_reason_is_recorded_including_too_few_multiprocessors(mixed):
    sel = select_gpus(mixed, "multi", min_memory_gb=20)
    tiny = next(c for c in sel.choices if c.gpu.index == 3)
    assert len(tiny.reasons) == 2
    assert "< 20 GB minimum" in tiny.reasons[0]
    assert "6 multiprocessors < 8" in tiny.reasons[1]
    assert sel.selected_indices == [2]


def test_single_picks_the_gpu_with_most_memory(mixed):
    sel = select_gpus(mixed, "single", min_memory_gb=4)
    assert sel.selected_indices == [2]
    other = next(c for c in sel.choices if c.gpu.index == 0)
    assert "single mode uses one GPU" in other.reasons[0]


def test_custom_keeps_order_and_warns_about_filtered_gpus(workstation):
    sel = select_gpus(workstation, "custom", custom_ids=[2, 0])
    assert sel.selected_indices == [2, 0]
    assert len(sel.warnings) == 1
    assert "GPU 0 is used because --custom-gpus lists it" in sel.warnings[0]
    assert "display GPU" in sel.warnings[0]


@pytest.mark.parametrize(
    ("mode", "ids", "min_gb", "message"),
    [
        ("custom", [], 8, "--device-mode custom needs --custom-gpus"),
        ("multi", [1], 8, "--custom-gpus needs --device-mode custom"),
        ("custom", [1, 1], 8, "GPU 1 is listed twice"),
        ("custom", [-1], 8, "GPU ids are >= 0"),
        ("custom", [7], 8, "no GPU 7 on this machine (GPUs: 0, 1, 2)"),
        ("multi", [], -1, "--min-gpu-memory must be a number >= 0"),
        ("all", [], 8, "unknown --device-mode 'all'"),
    ],
)
def test_bad_arguments_raise_selection_error(workstation, mode, ids, min_gb, message):
    with pytest.raises(SelectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_gpus(workstation, mode, ids, min_gb)


def test_nothing_eligible_is_a_result_not_an_error(mixed):
    sel = select_gpus(mixed, "multi", min_memory_gb=80)
    assert sel.selected == ()
    assert all(c.reasons for c in sel.choices)
    assert len(sel.explain()) == 4


# -- properties over generated machines ---------------------------------------------------------


@st.composite
def inventories(draw):
    n = draw(st.integers(0, 8))
    gpus = tuple(
        Gpu(
            index=i,
            name=draw(st.sampled_from(["A", "B", "NVIDIA GeForce RTX 5090"])),
            uuid=f"GPU-{i}",
            pci_bus_id=f"0000:{i:02x}:00.0",
            memory_total_mib=draw(st.integers(0, 200_000)),
            compute_capability="8.0",
            display_active=draw(st.none() | st.booleans()),
            multiprocessor_count=draw(st.none() | st.integers(1, 200)),
        )
        for i in range(n)
    )
    return Inventory(driver_version="575.0", cuda_driver_version="12.9", gpus=gpus)


@given(inventories(), st.floats(0, 100), st.booleans())
def test_multi_never_picks_a_display_gpu_without_the_flag(inv, min_gb, include_display):
    sel = select_gpus(inv, "multi", min_memory_gb=min_gb, include_display=include_display)
    if not include_display:
        assert not any(g.display_active for g in sel.selected)
    assert {c.gpu.index for c in sel.choices if c.selected} == set(sel.selected_indices)
    assert all(c.reasons for c in sel.choices if not c.selected)


@given(inventories(), st.floats(0, 100))
def test_single_picks_a_gpu_of_maximal_memory(inv, min_gb):
    multi = select_gpus(inv, "multi", min_memory_gb=min_gb)
    single = select_gpus(inv, "single", min_memory_gb=min_gb)
    assert len(single.selected) == min(1, len(multi.selected))
    if single.selected:
        assert single.selected[0].memory_total_mib == max(g.memory_total_mib for g in multi.selected)


@given(inventories().filter(lambda inv: inv.gpus), st.data())
def test_custom_keeps_the_given_order(inv, data):
    ids = data.draw(st.permutations([g.index for g in inv.gpus]).map(lambda p: p[: max(1, len(p) // 2)]))
    assert select_gpus(inv, "custom", custom_ids=ids).selected_indices == list(ids)


@given(inventories(), st.data(), st.sampled_from(["multi", "single"]))
def test_limits_are_never_crossed(inv, data, mode):
    """Whatever the machine: nothing outside a pre-set CUDA_VISIBLE_DEVICES, nothing in MIG mode,
    nothing below the TensorFlow build's lowest compute capability is ever selected."""
    import dataclasses

    from diagnostics.selection import Limits

    gpus = tuple(
        dataclasses.replace(
            g,
            compute_capability=data.draw(st.sampled_from(["3.7", "5.2", "6.1", "8.0", None])),
            mig_enabled=data.draw(st.none() | st.booleans()),
        )
        for g in inv.gpus
    )
    inv = dataclasses.replace(inv, gpus=gpus)
    granted = data.draw(st.lists(st.integers(0, 9), max_size=4, unique=True))
    limits = Limits(",".join(map(str, granted)), "PCI_BUS_ID", (6, 0), "TensorFlow 2.21.0")
    sel = select_gpus(inv, mode, min_memory_gb=0, include_display=True, limits=limits)
    for g in sel.selected:
        assert g.index in granted and not g.mig_enabled
        assert g.compute_capability_tuple is None or g.compute_capability_tuple >= (6, 0)
    assert all(c.reasons for c in sel.choices if not c.selected)
