"""Shared pytest fixtures: recorded inventories (tests/fixtures/), a machine without a driver, and
the `gpu` marker for the few tests that need a real NVIDIA GPU (deselected where there is none).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_NO_DRIVER_PYNVML = Path(__file__).resolve().parent / "fakes" / "no_driver" / "pynvml.py"
_NO_SKLEARN = Path(__file__).resolve().parent / "fakes" / "no_sklearn"


@pytest.fixture
def no_driver(monkeypatch):
    """This process, and children it starts, see a machine without an NVIDIA driver: `import pynvml`
    gets a module whose nvmlInit() fails as on such a machine, and CUDA sees no GPU. (NVML ignores
    CUDA_VISIBLE_DEVICES, so that alone does not hide a GPU host's GPUs.)"""
    spec = importlib.util.spec_from_file_location("pynvml", _NO_DRIVER_PYNVML)
    assert spec is not None and spec.loader is not None
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    paths = [str(_NO_DRIVER_PYNVML.parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU; deselected on machines without one")
    # Every child process the tests start sees no scikit-learn (tests/fakes/no_sklearn), as in an
    # install without the test extras: Keras imports it at each TensorFlow start when present,
    # about 1.5 s of a core per child. This process still imports the real one (its sys.path was
    # set when it started), and the digits data set is loaded here, never in a child.
    paths = [str(_NO_SKLEARN), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the `gpu` tests where NVML finds no GPU: a skip would hide a failure."""
    if not any(item.get_closest_marker("gpu") for item in items) or _has_gpu():
        return
    deselected = [item for item in items if item.get_closest_marker("gpu")]
    config.hook.pytest_deselected(items=deselected)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def _has_gpu() -> bool:
    from diagnostics.nvml import NvmlUnavailable, read_inventory

    try:
        return bool(read_inventory(include_links=False, include_processes=False).gpus)
    except NvmlUnavailable:
        return False


@pytest.fixture
def fixture_path():
    def get(name: str) -> Path:
        path = FIXTURES / name
        assert path.exists(), f"missing fixture {path}"
        return path

    return get
