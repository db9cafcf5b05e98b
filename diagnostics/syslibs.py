"""CUDA, cuDNN and NCCL installed system-wide (NVIDIA's TensorFlow container, distribution packages),
found where the dynamic loader finds them: LD_LIBRARY_PATH, the folders /etc/ld.so.conf names (with
its includes, as ldconfig reads them) and the default folders.

A version comes from the library's file name (libnccl.so.2.21.5, libcudart.so.12.4.127); where the
files carry only the major version (libnccl.so.2), from the version header (nccl.h, cudnn_version.h,
cuda_runtime_api.h). Every path is looked up under `root`, so the tests run it on a fake root, and a
folder that cannot be read is skipped: this never raises.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

# What TensorFlow loads, by the short name the snapshot uses -> the library's file name prefix.
LIBRARIES = {
    "cudart": "libcudart.so.",
    "cublas": "libcublas.so.",
    "cudnn": "libcudnn.so.",
    "nccl": "libnccl.so.",
}
# The pip wheel that provides each library (tensorflow[and-cuda] installs them).
WHEEL_LIBRARY = {
    "nvidia-cuda-runtime-cu12": "cudart",
    "nvidia-cublas-cu12": "cublas",
    "nvidia-cudnn-cu12": "cudnn",
    "nvidia-nccl-cu12": "nccl",
}
# glibc's built-in search folders (after LD_LIBRARY_PATH and ld.so.conf); Debian/Ubuntu multiarch too.
DEFAULT_FOLDERS = (
    "/lib",
    "/usr/lib",
    "/lib64",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
)
# (header, the macros that make up the version); CUDART_VERSION is one number, 12040 = 12.4.
HEADERS = {
    "nccl": ("nccl.h", ("NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH")),
    "cudnn": ("cudnn_version.h", ("CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL")),
    "cudart": ("cuda_runtime_api.h", ("CUDART_VERSION",)),
}
HEADER_FOLDERS = ("/usr/include", "/usr/local/cuda/include", "/usr/local/include")


def detect(root: str | Path = "/", env: Mapping[str, str] | None = None) -> dict[str, str]:
    """{"nccl": "2.21.5", "cudart": "12.4.127", ...} for the libraries the loader would find."""
    env = os.environ if env is None else env
    base = Path(root)
    found: dict[str, str] = {}
    for folder in _loader_folders(base, env):
        names = _listing(base, folder)
        for short, prefix in LIBRARIES.items():
            if short in found and found[short].count(".") >= 2:
                continue  # the first folder in search order with a full version wins, as for the loader
            versions = [n[len(prefix) :] for n in names if n.startswith(prefix)]
            versions = [v for v in versions if re.fullmatch(r"\d+(\.\d+)*", v)]
            if versions:
                best = max(versions, key=lambda v: (v.count("."), [int(p) for p in v.split(".")]))
                if short not in found or best.count(".") > found[short].count("."):
                    found[short] = best
    for short, version in list(found.items()):
        if "." not in version:  # libnccl.so.2 alone: the header has the rest
            found[short] = _header_version(base, short) or version
    return found


def _loader_folders(base: Path, env: Mapping[str, str]) -> Iterator[str]:
    seen: set[str] = set()
    ordered = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    ordered += list(_ld_so_conf(base, "/etc/ld.so.conf", depth=0))
    ordered += DEFAULT_FOLDERS
    for folder in ordered:
        if folder not in seen:
            seen.add(folder)
            yield folder


def _ld_so_conf(base: Path, conf: str, depth: int) -> Iterator[str]:
    """The folders an ld.so.conf file lists, following `include` lines (globs) a few levels deep."""
    try:
        lines = _under(base, conf).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include") and depth < 4:
            pattern = line.split(None, 1)[1] if " " in line else ""
            if not pattern.startswith("/"):
                pattern = str(Path(conf).parent / pattern)
            for match in sorted(glob.glob(str(_under(base, pattern)))):
                yield from _ld_so_conf(base, "/" + str(Path(match).relative_to(base)), depth + 1)
        elif line.startswith("/"):
            yield line


def _listing(base: Path, folder: str) -> list[str]:
    try:
        with os.scandir(_under(base, folder)) as entries:
            return [e.name for e in entries if e.name.startswith("lib")]
    except OSError:
        return []


def _header_version(base: Path, short: str) -> str | None:
    if short not in HEADERS:
        return None
    header, macros = HEADERS[short]
    for folder in HEADER_FOLDERS:
        try:
            text = _under(base, f"{folder}/{header}").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        values = [re.search(rf"#define\s+{m}\s+(\d+)", text) for m in macros]
        if not all(values):
            continue
        numbers = [int(v.group(1)) for v in values if v]
        if short == "cudart":  # CUDART_VERSION 12040 -> 12.4
            return f"{numbers[0] // 1000}.{numbers[0] % 1000 // 10}"
        return ".".join(map(str, numbers))
    return None


def _under(base: Path, path: str) -> Path:
    return base / path.lstrip("/")
