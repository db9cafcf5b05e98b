"""The MirroredStrategy trainer: `python -m training`, and the API for a user's own script
(`training.setup_device_strategy`, `training.ThroughputCallback`, `training.BackupAndRestore`: see
training.api).

Importing this package does not import TensorFlow; the modules that need it import it themselves,
and the API's names are resolved on first use (a module `__getattr__`), so that
`import training` stays cheap and a script can still choose its devices before TensorFlow starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only: at run time the names load on first use
    from training.api import StrategySetup, setup_device_strategy
    from training.api.keras_fit import BackupAndRestore
    from training.api.throughput import ThroughputCallback

# public name -> the module that defines it
_API = {
    "setup_device_strategy": "training.api",
    "StrategySetup": "training.api",
    "ThroughputCallback": "training.api.throughput",
    "BackupAndRestore": "training.api.keras_fit",
}

__all__ = ["BackupAndRestore", "StrategySetup", "ThroughputCallback", "setup_device_strategy"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
