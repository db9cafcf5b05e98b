"""NVIDIA's TensorFlow container: CUDA, cuDNN and NCCL installed system-wide and found through the
loader, not pip. Built as a fake root folder: no false "not pip-installed" warnings, and the system
NCCL is judged like a wheel's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from diag_support import OFFICIAL_STACK, ctx_for, run_one, statuses

from diagnostics import syslibs
from diagnostics.stack import read_stack

# The official TF 2.21 wheel with none of the CUDA wheels: in a container they are system libraries.
BARE_WHEEL = dataclasses.replace(OFFICIAL_STACK, nccl=None, cudnn=None, cuda_wheels={})


def touch(root: Path, path: str, text: str = "") -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def container_root(tmp_path: Path) -> Path:
    """The layout of nvcr.io/nvidia/tensorflow: CUDA under /usr/local/cuda (named by ld.so.conf.d),
    cuDNN and NCCL in the multiarch folder, NCCL's file name carrying only its major version."""
    root = tmp_path / "container"
    touch(root, "/etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
    touch(root, "/etc/ld.so.conf.d/000_cuda.conf", "# CUDA\n/usr/local/cuda/targets/x86_64-linux/lib\n")
    for name in ("libcudart.so.12", "libcudart.so.12.8.90", "libcublas.so.12", "libcublas.so.12.8.4.1"):
        touch(root, f"/usr/local/cuda/targets/x86_64-linux/lib/{name}")
    for name in ("libcudnn.so.9", "libcudnn.so.9.8.0", "libnccl.so.2", "libnccl.so"):
        touch(root, f"/usr/lib/x86_64-linux-gnu/{name}")
    touch(root, "/usr/include/nccl.h", "#define NCCL_MAJOR 2\n#define NCCL_MINOR 25\n#define NCCL_PATCH 1\n")
    return root


def test_libraries_are_found_where_the_loader_looks(tmp_path):
    root = container_root(tmp_path)
    found = syslibs.detect(root, env={})
    assert found == {"cudart": "12.8.90", "cublas": "12.8.4.1", "cudnn": "9.8.0", "nccl": "2.25.1"}


def test_ld_library_path_and_version_headers(tmp_path):
    root = tmp_path / "r"
    touch(root, "/opt/cuda/lib/libcudart.so.12")
    touch(root, "/usr/local/cuda/include/cuda_runtime_api.h", "#define CUDART_VERSION 12040\n")
    touch(
        root,
        "/usr/include/cudnn_version.h",
        "#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 1\n#define CUDNN_PATCHLEVEL 0\n",
    )
    touch(root, "/usr/lib64/libcudnn.so.9")
    assert syslibs.detect(root, env={}) == {"cudnn": "9.1.0"}  # /opt/cuda/lib is not searched
    assert syslibs.detect(root, env={"LD_LIBRARY_PATH": "/opt/cuda/lib"}) == {
        "cudart": "12.4",
        "cudnn": "9.1.0",
    }


def test_an_empty_or_unreadable_root_finds_nothing(tmp_path):
    assert syslibs.detect(tmp_path, env={"LD_LIBRARY_PATH": "/nope::/also/nope"}) == {}
    touch(tmp_path, "/etc/ld.so.conf", "include /etc/ld.so.conf\n")  # includes itself: bounded
    assert syslibs.detect(tmp_path, env={}) == {}


def test_read_stack_records_the_system_libraries(tmp_path):
    stack = read_stack(
        {"tensorflow": "2.21.0", "keras": "3.15.1"}.get,
        tf_dir=None,
        libs_root=container_root(tmp_path),
        env={},
    )
    assert stack.system_libraries["nccl"] == "2.25.1"
    assert stack.nccl is None and stack.nccl_version == "2.25.1" and stack.nccl_origin == "system"


def test_no_false_not_pip_installed_warning_in_the_container(tmp_path):
    stack = dataclasses.replace(BARE_WHEEL, system_libraries=syslibs.detect(container_root(tmp_path), env={}))
    finding = run_one("tensorflow", ctx_for("inv-dgx-8xh100.json", stack=stack))[0]
    assert finding.status == "pass" and "system-wide: cublas 12.8.4.1, cudart 12.8.90" in finding.message
    assert statuses(run_one("tensorflow", ctx_for("inv-dgx-8xh100.json", stack=BARE_WHEEL))) == ["warn"]


def test_a_system_cuda_of_another_major_version_does_not_count():
    """A CUDA 13 runtime is no use to a CUDA 12 build of TensorFlow (it loads libcudart.so.12)."""
    stack = dataclasses.replace(
        BARE_WHEEL, system_libraries={"cudart": "13.0", "cublas": "13.0.1", "cudnn": "9.1.0"}
    )
    finding = run_one("tensorflow", ctx_for("inv-dgx-8xh100.json", stack=stack))[0]
    assert finding.status == "warn" and "nvidia-cuda-runtime-cu12" in finding.message
    assert "nvidia-cudnn-cu12" not in finding.message


def test_the_system_nccl_is_judged_like_a_wheel(tmp_path):
    stack = dataclasses.replace(BARE_WHEEL, system_libraries=syslibs.detect(container_root(tmp_path), env={}))
    failing = run_one("nccl", ctx_for("inv-workstation-2x5090-display.json", stack=stack))[0]
    assert failing.status == "fail" and "NCCL 2.25.1 (system-wide)" in failing.message
    assert "system-wide" in failing.remedy and "pip install" not in failing.remedy.split(";")[0]
    fixed = dataclasses.replace(stack, system_libraries={**stack.system_libraries, "nccl": "2.26.2"})
    assert statuses(run_one("nccl", ctx_for("inv-dgx-8xh100.json", stack=fixed))) == ["pass"]
    missing = run_one("nccl", ctx_for("inv-dgx-8xh100.json", stack=BARE_WHEEL))[0]
    assert missing.status == "warn" and "nor found by the loader" in missing.message
