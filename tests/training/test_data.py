"""Data loading without TensorFlow: image folders, the synthetic set, and filtering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training.inputs import data


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


@pytest.mark.parametrize("skip", [0, 4])
def test_the_index_shuffle_gives_the_batches_of_shuffling_the_examples(skip):
    """make_dataset shuffles indices and gathers batches (cheaper); the stream must equal that of
    the plain pipeline it replaced, across reshuffled epochs and after a resume's skip, so that a
    checkpoint written before the change resumes onto the same batches."""
    import tensorflow as tf

    examples = data.synthetic(seed=5, num_examples=300)
    plain = (
        tf.data.Dataset.from_tensor_slices((examples.x, examples.y))
        .shuffle(len(examples), seed=7, reshuffle_each_iteration=True)
        .repeat()
        .skip(skip * 32)
        .batch(32, drop_remainder=True)
    )
    batches = zip(plain, data.make_dataset(examples, 32, seed=7, skip_batches=skip), strict=False)
    first_labels = []
    for _, ((xa, ya), (xb, yb)) in zip(range(30), batches, strict=False):  # 30 batches: 3 epochs of 9
        assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya.numpy(), yb.numpy())
        first_labels.append(int(ya[0]))
    assert len(first_labels) == 30 and len(set(first_labels)) > 1  # batches differ: not one repeated
