"""A `pynvml` that behaves as nvidia-ml-py does on a machine without an NVIDIA driver: the module
imports, and nvmlInit() raises NVMLError_LibraryNotFound. Tests put this folder first on
PYTHONPATH (or in sys.modules) to run the no-driver paths on any machine, GPU hosts included:
NVML ignores CUDA_VISIBLE_DEVICES, so hiding GPUs from CUDA does not hide them from NVML.
"""

from __future__ import annotations


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    def __str__(self) -> str:
        return "NVML Shared Library Not Found"


class NVMLError_DriverNotLoaded(NVMLError):
    pass


def nvmlInit() -> None:
    raise NVMLError_LibraryNotFound()


def nvmlShutdown() -> None:
    raise NVMLError_LibraryNotFound()
