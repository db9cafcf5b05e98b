"""One out-of-memory classifier (common.child.is_out_of_memory) for the trainer, the worker and the
batch-size search, tested on errors TensorFlow really raises inside a traced function."""

from __future__ import annotations

import json

import pytest
from support import run_helper

from common.child import is_out_of_memory


def test_text_from_a_child_is_classified_like_the_exception():
    assert is_out_of_memory(
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating"
    )
    assert is_out_of_memory("CUDA_ERROR_OUT_OF_MEMORY: out of memory")
    assert not is_out_of_memory("InvalidArgumentError: Matrix size-incompatible: In[0]: [2,3], In[1]: [2,3]")


@pytest.mark.slow
def test_real_tensorflow_errors_inside_a_traced_function():
    proc = run_helper("real_oom.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["allocation"]["type"] == "ResourceExhaustedError" and found["allocation"]["oom"], found
    # the one line a user is shown says what failed, not "Graph execution error:"
    assert found["allocation"]["message"].startswith("OOM when allocating tensor with shape"), found
    assert found["cuda_internal"]["type"] == "InternalError" and found["cuda_internal"]["oom"], found
    assert found["shape_mismatch"]["type"] == "InvalidArgumentError", found
    assert not found["shape_mismatch"]["oom"], found
