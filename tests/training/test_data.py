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


@pytest.mark.parametrize(("count", "batch", "padding"), [(19, 8, 5), (16, 8, 0), (3, 8, 5)])
def test_the_evaluation_stream_pads_its_last_batch_with_weightless_copies(count, batch, padding):
    """Full global batches only (a replica's empty share fails on some machines): the examples in
    order with weight 1, then copies of weight 0 up to the next multiple of the batch."""
    examples = data.synthetic(seed=5, num_examples=count, shape=(3,))
    assert data.eval_padding(count, batch) == padding
    batches = list(data.make_eval_dataset(examples, batch))
    assert [int(b[0].shape[0]) for b in batches] == [batch] * ((count + padding) // batch)
    x, y, weight = (np.concatenate([b[i].numpy() for b in batches]) for i in range(3))
    assert np.array_equal(x[:count], examples.x) and np.array_equal(y[:count], examples.y)
    assert weight.tolist() == [1.0] * count + [0.0] * padding
    # the padding is made of the data's own examples: inputs the model can take
    rows = {row.tobytes() for row in examples.x}
    assert all(row.tobytes() in rows for row in x[count:])


def test_the_training_stream_has_only_full_batches_past_the_end_of_the_data():
    """A batch that reaches the end of the data goes on into the next pass: no partial batch, for
    any number of steps (19 examples, batches of 8: the 3rd, 5th, ... straddle two passes)."""
    examples = data.synthetic(seed=5, num_examples=19, shape=(3,))
    sizes = [int(x.shape[0]) for x, _y in data.make_dataset(examples, 8, seed=1).take(10)]
    assert sizes == [8] * 10
