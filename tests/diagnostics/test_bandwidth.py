"""gpudiag bandwidth without TensorFlow: the nccl-tests arithmetic, the size range, the link peak and
verdict line from recorded inventories, and bad input (one line, exit 2)."""

from __future__ import annotations

import argparse

import pytest
from diag_support import FIXTURES

from common.cli import UsageError
from diagnostics import bandwidth, cli, knowledge
from diagnostics.inventory import load_inventory
from diagnostics.selection import SelectionOptions


def test_busbw_is_algbw_times_2_n_minus_1_over_n():
    row = bandwidth.make_row(1 << 20, 1e-3, 20, 8, None)
    assert row.algbw_gbps == pytest.approx((1 << 20) / 1e-3 / 1e9)
    assert row.busbw_gbps == pytest.approx(row.algbw_gbps * 2 * 7 / 8)
    assert bandwidth.bus_factor(2) == 1.0 and row.link_fraction is None


def test_sizes_double_from_min_to_max():
    assert bandwidth.sizes(8, 65536) == [8 << i for i in range(14)]
    assert bandwidth.sizes(8, 100) == [8, 16, 32, 64]
    assert bandwidth.sizes(8, 8) == [8]


def test_nvlink_peak_and_verdict_on_a_dgx_h100():
    inv = load_inventory(FIXTURES / "inv-dgx-8xh100.json")
    peak = bandwidth.link_peak(inv, inv.gpus)
    assert peak is not None and peak.name == "NVLink 4.0 x18" and peak.gbps == 450.0
    rows = [bandwidth.make_row(256 << 20, (256 << 20) / 200e9, 20, 8, peak)]  # algbw 200, busbw 350
    line = bandwidth.verdict(rows, 8, "GPUs", peak)
    assert line == (
        "busbw 350 GB/s at 256 MiB over 8 GPUs = 78% of NVLink 4.0 x18 (450 GB/s per direction): "
        "as expected (nccl-tests reaches 70% or more)"
    )


def test_pcie_peak_and_a_low_verdict_on_a_workstation():
    inv = load_inventory(FIXTURES / "example-workstation-2x4090.json")
    peak = bandwidth.link_peak(inv, inv.gpus)
    assert peak is not None and peak.name == "PCIe 4.0 x16"
    assert peak.gbps == knowledge.PCIE_X16_GBPS[4][0]
    rows = [bandwidth.make_row(nbytes, nbytes / 18.2e9, 20, 2, peak) for nbytes in (1 << 20, 256 << 20)]
    line = bandwidth.verdict(rows, 2, "GPUs", peak)
    assert line.startswith("busbw 18.2 GB/s at 256 MiB over 2 GPUs = 58% of PCIe 4.0 x16")
    assert "below the 70% nccl-tests reaches" in line


def test_cpu_devices_have_no_link_peak():
    assert bandwidth.link_peak(None, ()) is None
    row = bandwidth.make_row(4 << 20, 1e-3, 20, 2, None)
    assert bandwidth.verdict([row], 2, "CPU logical devices", None).endswith(
        "no link peak to compare with (CPU logical devices share host memory)"
    )


def _ns(**kw):
    base = dict(cpu_replicas=1, min_bytes=None, max_bytes=None, iters=20, warmup_iters=5, json=True)
    return argparse.Namespace(**{**base, **kw, "timeout": 60.0})


def test_one_device_or_an_empty_range_is_refused_before_any_child():
    with pytest.raises(UsageError, match=r"1 CPU logical device\(s\) selected: nothing to all-reduce"):
        bandwidth.main(_ns(), SelectionOptions())
    with pytest.raises(UsageError, match="--min-bytes 1 MiB is above --max-bytes 64 KiB"):
        bandwidth.main(_ns(cpu_replicas=2, min_bytes=1 << 20, max_bytes=65536), SelectionOptions())


@pytest.mark.parametrize(
    "args",
    [
        ["--cpu-replicas", "2", "--min-bytes", "lots"],
        ["--cpu-replicas", "2", "--max-bytes", "2"],
        ["--cpu-replicas", "0"],
        ["--cpu-replicas", "2", "--iters", "0"],
        ["--cpu-replicas", "1"],
        ["--cpu-replicas", "2", "--min-bytes", "1M", "--max-bytes", "1K"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args):
    code = cli.main(["bandwidth", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("gpudiag: error: ")
