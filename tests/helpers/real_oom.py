"""Child process for tests/e2e/test_out_of_memory.py: real TensorFlow errors raised inside traced
functions, each classified by common.child.is_out_of_memory. Prints one JSON object.

The out-of-memory one asks the CPU allocator for 4 PiB: malloc refuses at once, nothing is
allocated, and TensorFlow raises what a GPU that runs out of memory raises.
"""

from __future__ import annotations

import json

import tensorflow as tf

from common.child import first_line, is_out_of_memory


def caught(run) -> dict[str, object]:
    try:
        run()
    except Exception as exc:
        return {"type": type(exc).__name__, "oom": is_out_of_memory(exc), "message": first_line(exc)}
    return {"type": None, "oom": False, "message": "no error"}


@tf.function
def allocate(n):
    return tf.reduce_sum(tf.random.uniform([n, 1024, 1024, 1024]))  # n x 4 GiB


@tf.function(input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None, None])])
def mismatch(a, b):
    return tf.matmul(a, b)  # shapes known only when it runs: TensorFlow's runtime error


def cuda_out_of_memory() -> None:
    """How CUDA's own out-of-memory reaches Python from a cuBLAS or cuDNN handle."""
    raise tf.errors.InternalError(None, None, "Failed to create cuBLAS handle: CUDA_ERROR_OUT_OF_MEMORY")


print(
    json.dumps(
        {
            "allocation": caught(lambda: allocate(tf.constant(1 << 20))),
            "shape_mismatch": caught(lambda: mismatch(tf.ones([2, 3]), tf.ones([2, 3]))),
            "cuda_internal": caught(cuda_out_of_memory),
        }
    )
)
