"""Streamed data before TensorFlow: TFRecord files written as TensorFlow's ImageNet script writes
them (tests/fixtures/tfrecord, made by make_fixtures.py there: build_image_data.py's
`_convert_to_example`), their keys, counts and count cache; image folders listed with their
undecodable files counted; the validation split of a streamed source by example id."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support import FIXTURES

from training.__main__ import main
from training.inputs import data, streaming, tfrecord, validation

SHARDS = str(FIXTURES / "tfrecord" / "train-*")
OTHER = FIXTURES / "tfrecord" / "other-keys-00000-of-00001"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(tfrecord.CACHE_ENV, str(tmp_path / "cache"))


def test_imagenet_script_records_are_parsed_without_tensorflow():
    """The first record has build_image_data.py's nine keys; labels count from 1 (0 = background)."""
    first = tfrecord.records(tfrecord.list_files(SHARDS, "--data")[0])[0]
    keys = tfrecord.features(first)
    assert sorted(keys) == sorted(
        [
            "image/height", "image/width", "image/colorspace", "image/channels", "image/class/label",
            "image/class/text", "image/format", "image/filename", "image/encoded",
        ]
    )  # fmt: skip
    assert tfrecord.int64_values(keys["image/class/label"]) == [1]
    assert tfrecord.int64_values(keys["image/height"]) == [16]


def test_tfrecords_open_as_a_streamed_source_with_counts():
    source = data.open_source(SHARDS, seed=0, image_size=8)
    assert isinstance(source, streaming.Streamed) and source.kind == "tfrecord"
    assert len(source) == 16 and source.record_counts == (8, 8)
    assert source.num_classes == 4 and source.input_shape == (8, 8, 3)
    folder = data.open_source(str(FIXTURES / "tfrecord" / "train-00000-of-00002"), seed=0)
    assert len(folder) == 8


def test_the_count_is_one_pass_then_cached(monkeypatch):
    files = tfrecord.list_files(SHARDS, "--data")
    first = tfrecord.count_files(files)

    def no_second_pass(path):
        raise AssertionError(f"counted {path} again")

    monkeypatch.setattr(tfrecord, "count_file", no_second_pass)
    assert tfrecord.count_files(files) == first


def test_records_without_the_imagenet_keys_exit_2_naming_the_keys_found(capsys):
    code = main(["--cpu-replicas", "2", "--data", str(OTHER), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "'image/encoded'" in err[0] and "has image/raw, label" in err[0]


def test_an_image_folder_is_listed_and_undecodable_files_counted(tmp_path):
    for name, value in (("cats", 30), ("dogs", 220)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image either, and not counted")
    source = data.open_source(str(tmp_path), seed=0, image_size=12)
    assert isinstance(source, streaming.Streamed) and len(source) == 6
    assert source.class_names == ("cats", "dogs") and source.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert source.dropped == 1 and "broken.png" in source.drop_detail
    assert source.input_shape == (12, 12, 3)


@pytest.mark.parametrize("kind", ["images", "tfrecord"])
def test_a_streamed_split_holds_out_disjoint_ids_chosen_by_seed(tmp_path, kind):
    if kind == "images":
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            for i in range(10):
                Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name / f"{i}.png")
        source = data.open_source(str(tmp_path), seed=0)
    else:
        source = data.open_source(SHARDS, seed=0)
    train, held = validation.split(source, 0.25, seed=3, global_batch_size=4)
    again_train, _ = validation.split(source, 0.25, seed=3, global_batch_size=4)
    assert isinstance(train, streaming.Streamed) and isinstance(held, streaming.Streamed)
    assert set(train.ids) | set(held.ids) == set(source.ids) and not set(train.ids) & set(held.ids)
    assert np.array_equal(train.ids, again_train.ids) and "held out" in held.source
    if kind == "images":  # each side lists its own files, with their labels
        assert len(train.files) == len(train) and len(set(train.files) & set(held.files)) == 0


def test_too_few_files_for_the_workers_is_one_line_saying_what_to_do():
    source = data.open_source(str(FIXTURES / "tfrecord" / "train-00000-of-00002"), seed=0)
    assert isinstance(source, streaming.Streamed)
    from dataclasses import replace

    assert replace(source, workers=2).sharding_note() is not None
    note = replace(source, workers=2).sharding_note() or ""
    assert "1 file(s) for 2 workers" in note and "split the data into at least 2 files" in note
    two = data.open_source(SHARDS, seed=0)
    assert replace(two, workers=2).sharding_note() is None
