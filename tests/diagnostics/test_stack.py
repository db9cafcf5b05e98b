"""Reading the software stack without importing TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from diagnostics.stack import parse_build_info, read_stack

# tensorflow/python/platform/build_info.py of the official 2.21 wheel, verbatim

BUILD_INFO = '''"""Auto-generated module providing information about the build."""
import collections

build_info = collections.OrderedDict([('cpu_compiler', 'clang'), ('cuda_compute_capabilities', ['sm_60', 'sm_70', 'sm_80', 'sm_89', 'compute_90']), ('cuda_version', '12.5.1'), ('cudnn_version', '9'), ('is_cuda_build', True), ('is_rocm_build', False), ('is_tensorrt_build', False)])
'''  # noqa: E501


def test_parse_build_info_of_the_official_wheel():
    build = parse_build_info(BUILD_INFO)
    assert build.is_cuda_build and build.cuda_version == "12.5.1" and build.cudnn_version == "9"
    assert build.compute_capabilities == ("sm_60", "sm_70", "sm_80", "sm_89", "compute_90")


def test_read_stack_with_fake_packages(tmp_path):
    platform = tmp_path / "python" / "platform"
    platform.mkdir(parents=True)
    (platform / "build_info.py").write_text(BUILD_INFO)
    versions = {
        "tensorflow": "2.21.0",
        "keras": "3.15.1",
        "nvidia-nccl-cu12": "2.25.1",
        "nvidia-cudnn-cu12": "9.3.0.75",
    }
    stack = read_stack(versions.get, tf_dir=tmp_path)
    assert stack.tensorflow == "2.21.0" and stack.keras == "3.15.1" and stack.nccl == "2.25.1"
    assert stack.tf_build is not None and stack.tf_build.cuda_version == "12.5.1"
    assert stack.cuda_wheels == {"nvidia-cudnn-cu12": "9.3.0.75"}


def test_read_stack_unreadable_build_info_is_an_error_not_a_crash(tmp_path):
    stack = read_stack({"tensorflow": "2.21.0"}.get, tf_dir=tmp_path)
    assert stack.tf_build is None and "build_info.py" in (stack.tf_build_error or "")


def test_read_stack_without_tensorflow():
    stack = read_stack(lambda name: None, tf_dir=None)
    assert stack.tensorflow is None and stack.tf_build is None and stack.tf_build_error is None


def test_read_stack_does_not_import_tensorflow():
    code = (
        "import sys; from diagnostics.stack import read_stack; s = read_stack(); "
        "print(s.tensorflow, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "False"
