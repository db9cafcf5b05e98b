"""Data loading without TensorFlow: image folders, the synthetic set, and filtering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training import data


def _image_folder(root, classes=("cats", "dogs"), per_class=3, size=(20, 30)):
    for value, name in zip((30, 220), classes, strict=False):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((*size, 3), value, np.uint8)).save(folder / f"{i}.png")
    return root


def test_image_folder_one_class_per_subfolder(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    (root / "cats" / "README.txt").write_text("not an image")
    examples = data.load(str(root), seed=0)
    assert examples.num_classes == 2
    assert examples.input_shape == (*data.IMAGE_SIZE, 3)
    assert sorted(examples.y.tolist()) == [0, 0, 0, 1, 1, 1]  # folders in sorted order
    assert examples.x.max() <= 1.0 and examples.x[examples.y == 1].mean() > examples.x[examples.y == 0].mean()


def test_image_folder_errors(tmp_path):
    with pytest.raises(data.DataError, match="one subfolder per class"):
        data.load(str(tmp_path), seed=0)
    root = _image_folder(tmp_path / "imgs")
    (root / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match=r"cannot read image .*broken\.png"):
        data.load(str(root), seed=0)


def test_synthetic_labels_are_a_fixed_function_of_the_inputs():
    """Same seed, same data; the label is the best-matching class pattern, so it can be learned."""
    a, b = data.synthetic(seed=3, num_examples=256), data.synthetic(seed=3, num_examples=256)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert len(np.unique(a.y)) == data.SYNTHETIC_CLASSES
    other = data.synthetic(seed=4, num_examples=256)
    assert not np.array_equal(a.x, other.x)
