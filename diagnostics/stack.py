"""The installed software stack (TensorFlow, Keras, NCCL, cuDNN, CUDA wheels), read WITHOUT importing
TensorFlow: versions come from package metadata and TF's build facts from its build_info.py as text.

Importing TensorFlow costs seconds and hundreds of MB and can itself hang on a broken CUDA setup;
reading the generated build_info.py takes well under a millisecond.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Distributions that provide the `tensorflow` package, in the order we report them.
TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-gpu", "tensorflow-intel")
# The CUDA libraries `pip install tensorflow[and-cuda]` brings in; without them (or a system CUDA),
# a CUDA build of TensorFlow finds no GPU.
CUDA_WHEELS = ("nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12")
NCCL_DISTRIBUTIONS = ("nvidia-nccl-cu12", "nvidia-nccl-cu13")


@dataclass(frozen=True)
class TfBuild:
    """Facts from tensorflow/python/platform/build_info.py."""

    is_cuda_build: bool
    cuda_version: str | None = None
    cudnn_version: str | None = None
    compute_capabilities: tuple[str, ...] = ()  # "sm_80" = native code, "compute_90" = PTX


@dataclass(frozen=True)
class Stack:
    python: str
    tensorflow: str | None = None  # version; None when not installed
    tensorflow_distribution: str | None = None
    tf_build: TfBuild | None = None
    tf_build_error: str | None = None  # why build_info.py could not be read
    keras: str | None = None
    nccl: str | None = None  # from the nvidia-nccl-cu1x wheel; None when not pip-installed
    cudnn: str | None = None
    cuda_wheels: dict[str, str] = field(default_factory=dict)  # distribution -> version


VersionOf = Callable[[str], "str | None"]


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorflow_dir() -> Path | None:
    """Where the tensorflow package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def parse_build_info(text: str) -> TfBuild:
    """Read `build_info = collections.OrderedDict([...])` (or a dict literal) without executing it."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "build_info" for t in node.targets)
        ):
            continue
        value: Any = node.value
        if isinstance(value, ast.Call) and value.args:
            value = value.args[0]
        raw = ast.literal_eval(value)
        info = dict(raw)
        caps = info.get("cuda_compute_capabilities") or ()
        return TfBuild(
            is_cuda_build=bool(info.get("is_cuda_build", False)),
            cuda_version=_str_or_none(info.get("cuda_version")),
            cudnn_version=_str_or_none(info.get("cudnn_version")),
            compute_capabilities=tuple(str(c) for c in caps),
        )
    raise ValueError("no build_info assignment")


def _str_or_none(value: object) -> str | None:
    return None if value in (None, "") else str(value)


def read_stack(version_of: VersionOf = installed_version, tf_dir: Path | str | None = "find") -> Stack:
    """The stack of this Python environment. Both lookups can be replaced, for tests."""
    tf_version, tf_dist = None, None
    for dist in TF_DISTRIBUTIONS:
        tf_version = version_of(dist)
        if tf_version:
            tf_dist = dist
            break
    where = tensorflow_dir() if tf_dir == "find" else tf_dir
    build, build_error = None, None
    if tf_version or where is not None:
        if where is None:
            build_error = "the tensorflow package directory was not found"
        else:
            path = Path(where) / "python" / "platform" / "build_info.py"
            try:
                build = parse_build_info(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
                build_error = f"cannot read {path}: {exc}"
    nccl = next((v for v in (version_of(d) for d in NCCL_DISTRIBUTIONS) if v), None)
    wheels = {d: v for d in CUDA_WHEELS if (v := version_of(d))}
    return Stack(
        python=platform.python_version(),
        tensorflow=tf_version,
        tensorflow_distribution=tf_dist,
        tf_build=build,
        tf_build_error=build_error,
        keras=version_of("keras"),
        nccl=nccl,
        cudnn=wheels.get("nvidia-cudnn-cu12"),
        cuda_wheels=wheels,
    )
