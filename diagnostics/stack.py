"""The installed software stack (TensorFlow, Keras, NCCL, cuDNN, CUDA wheels and the same libraries
installed system-wide), read WITHOUT importing TensorFlow: versions come from package metadata, TF's
build facts from its build_info.py as text, system libraries from the loader's folders (syslibs.py).

Importing TensorFlow costs seconds and hundreds of MB and can itself hang on a broken CUDA setup;
reading the generated build_info.py takes well under a millisecond.

A snapshot records the Stack (`to_dict` / `stack_from_dict`), so a replayed bug report is judged on
the software of the machine it came from.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import platform
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from diagnostics import syslibs

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
    # CUDA, cuDNN, NCCL the loader finds outside pip ("nccl" -> "2.21.5"), as in NVIDIA's containers
    system_libraries: dict[str, str] = field(default_factory=dict)
    os: str | None = None  # platform.platform(), recorded by a snapshot

    @property
    def nccl_version(self) -> str | None:
        """The NCCL TensorFlow loads: the pip wheel's if installed, else the system's."""
        return self.nccl or self.system_libraries.get("nccl")

    @property
    def nccl_origin(self) -> str:
        return "pip" if self.nccl else "system" if "nccl" in self.system_libraries else "none"

    def provides(self, wheel: str) -> bool:
        """The library a CUDA wheel would bring is there: pip-installed, or system-wide in the major
        version TensorFlow loads (libcudart.so.12 for a CUDA 12 build; a CUDA 13 runtime is no use)."""
        if wheel in self.cuda_wheels:
            return True
        library = syslibs.WHEEL_LIBRARY.get(wheel, "")
        version = self.system_libraries.get(library)
        if version is None:
            return False
        build = self.tf_build
        need = None
        if build is not None and library in ("cudart", "cublas"):
            need = build.cuda_version
        elif build is not None and library == "cudnn":
            need = build.cudnn_version
        return need is None or version.split(".")[0] == need.split(".")[0]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.tf_build is not None:
            data["tf_build"]["compute_capabilities"] = list(self.tf_build.compute_capabilities)
        return data


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


def read_stack(
    version_of: VersionOf = installed_version,
    tf_dir: Path | str | None = "find",
    libs_root: Path | str | None = "/",
    env: Mapping[str, str] | None = None,
) -> Stack:
    """The stack of this Python environment. Every lookup can be replaced, for tests; `libs_root`
    None leaves system libraries out."""
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
        # Only a stack without every CUDA wheel and NCCL needs to know what is installed system-wide
        # (NVIDIA's containers); a pip install with tensorflow[and-cuda] skips the folder scan.
        system_libraries={}
        if libs_root is None or (nccl and len(wheels) == len(CUDA_WHEELS))
        else syslibs.detect(libs_root, env),
    )


def stack_from_dict(data: Any) -> Stack:
    """A recorded Stack (a snapshot's "software"); raises ValueError naming the field that is wrong.
    Unknown keys are ignored, as everywhere in the snapshot format."""
    if not isinstance(data, Mapping):
        raise ValueError("must be an object")
    known = {f.name: f for f in fields(Stack)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known or value is None:
            continue
        if key == "tf_build":
            values[key] = _build_from_dict(value)
        elif key in ("cuda_wheels", "system_libraries"):
            if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                raise ValueError(f"{key} must map names to version strings")
            values[key] = {str(k): v for k, v in value.items()}
        elif not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        else:
            values[key] = value
    if "python" not in values:
        raise ValueError("python is missing")
    return Stack(**values)


def _build_from_dict(data: Any) -> TfBuild:
    if not isinstance(data, Mapping) or not isinstance(data.get("is_cuda_build"), bool):
        raise ValueError("tf_build must be an object with is_cuda_build true/false")
    caps = data.get("compute_capabilities") or []
    if not isinstance(caps, list | tuple) or not all(isinstance(c, str) for c in caps):
        raise ValueError("tf_build.compute_capabilities must be a list of strings")
    for key in ("cuda_version", "cudnn_version"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"tf_build.{key} must be a string")
    return TfBuild(data["is_cuda_build"], data.get("cuda_version"), data.get("cudnn_version"), tuple(caps))
