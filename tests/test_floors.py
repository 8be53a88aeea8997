"""The floors' held-out images (pipeline.metrics.holdout): never trained on, fixed, nested."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import config_from_dict
from pipeline.data import MANIFEST_PATH, build_manifest
from pipeline.errors import PipelineError
from pipeline.metrics.classifier import train_batches
from pipeline.metrics.holdout import classifier_train_indices, holdout_indices, holdout_size


def test_held_out_and_training_indices_partition_the_split():
    held = holdout_indices(1000, 200, 200)
    train = classifier_train_indices(1000, 200)
    assert len(set(held.tolist())) == 200 and len(train) == 800
    assert set(held.tolist()).isdisjoint(train.tolist())
    assert sorted([*held.tolist(), *train.tolist()]) == list(range(1000))


def test_smaller_floors_are_prefixes_and_the_set_is_fixed():
    assert holdout_indices(1000, 200, 50).tolist() == holdout_indices(1000, 200, 200)[:50].tolist()
    assert holdout_indices(1000, 200, 200).tolist() == holdout_indices(1000, 200, 200).tolist()
    # Not the tail of the split: a uniform sample of it.
    assert holdout_indices(1000, 200, 200).min() < 500


def test_holdout_is_capped_at_half_the_split_and_a_too_large_floor_fails():
    assert holdout_size(100, 10_000) == 50
    assert len(classifier_train_indices(100, 10_000)) == 50
    with pytest.raises(PipelineError, match="raise eval.holdout"):
        holdout_indices(1000, 100, 101)


def test_the_cap_is_reported_once_however_often_it_is_asked(caplog):
    with caplog.at_level("WARNING", logger="pipeline.metrics.holdout"):
        for _ in range(3):  # a train size no other test uses: the report is once per process
            assert holdout_size(1234, 1000) == 617
    assert [record.getMessage() for record in caplog.records] == [
        "eval.holdout = 1000 exceeds half of the 1234 train images: holding out 617"]


def test_the_classifier_never_sees_a_held_out_image(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({"data": {"source": "synthetic", "max_train": 60, "max_val": 10, "image_size": 8,
                                     "synthetic_classes": 2},
                            "eval": {"holdout": 20, "classifier": {"batch_size": 60}}})
    table, _, _ = build_manifest(cfg)
    MANIFEST_PATH.parent.mkdir(parents=True)
    pq.write_table(table, MANIFEST_PATH)
    from pipeline.data import load_split_images

    images, _, _ = load_split_images(cfg, "train")
    held = {images[i].tobytes() for i in holdout_indices(60, 20, 20)}
    seen = set()
    batches = train_batches(cfg, torch.Generator().manual_seed(0))
    for _ in range(20):  # 20 batches of 60 from 40 images: every allowed image is drawn
        batch, _ = next(batches)
        seen |= {image.tobytes() for image in np.asarray(batch)}
    assert len(seen) == 40 and seen.isdisjoint(held)
